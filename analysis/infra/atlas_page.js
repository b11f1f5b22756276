// The atlas page's own script (inlined by analysis/infra/atlas_page.py): the table sorts, a row or a point of the
// scatter selects its head, and the detail panel shows the head's values, verdicts and attention (circuitsvis).
// Every string from the data is written as text (textContent), never as markup.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("atlas-data").textContent);
  const table = document.getElementById("atlas-table");
  const tbody = table.tBodies[0];
  const headers = Array.from(table.tHead.rows[0].cells);
  const MASSES = [["S", "S"], ["partner_mass", "partner mass"], ["self_mass", "self mass"],
                  ["bos_mass_no_partner", "BOS mass, no partner"]];
  const VERDICTS = [["behaviour", "self_avoidance"], ["behaviour", "category_attraction"],
                    ["weights", "self_avoidance"], ["weights", "category_attraction"]];
  let views = 0;

  // Sorting: a header's first click sorts ascending, the next reverses; missing values stay last, ties keep order.
  function sortBy(th) {
    const column = Number(th.dataset.column);
    const numeric = th.dataset.numeric === "1";
    const direction = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    headers.forEach(function (h) { h.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", direction);
    const sign = direction === "ascending" ? 1 : -1;
    const keyed = Array.from(tbody.rows).map(function (row, i) {
      return {row: row, i: i, key: row.cells[column].dataset.sort};
    });
    keyed.sort(function (a, b) {
      const noA = a.key === "", noB = b.key === "";
      if (noA || noB) { return noA === noB ? a.i - b.i : (noA ? 1 : -1); }
      const c = numeric ? Number(a.key) - Number(b.key) : (a.key < b.key ? -1 : (a.key > b.key ? 1 : 0));
      return c !== 0 ? sign * c : a.i - b.i;
    });
    keyed.forEach(function (k) { tbody.appendChild(k.row); });
  }
  headers.forEach(function (th) {
    th.querySelector("button").addEventListener("click", function () { sortBy(th); });
  });

  function fmt(v) {
    return (typeof v !== "number" || !isFinite(v)) ? "–" : String(Number(v.toPrecision(3)));
  }
  function withCI(entry) {
    entry = entry || {};
    let text = fmt(entry.value);
    if (typeof entry.low === "number" && typeof entry.high === "number") {
      text += " [" + fmt(entry.low) + ", " + fmt(entry.high) + "]";
    }
    return text;
  }
  function element(tag, text, className) {
    const e = document.createElement(tag);
    if (text !== undefined) { e.textContent = text; }
    if (className) { e.className = className; }
    return e;
  }
  function rowsTable(caption, header, rows) {
    const t = element("table", undefined, "detail");
    t.appendChild(element("caption", caption));
    const h = t.createTHead().insertRow();
    header.forEach(function (name) { h.appendChild(element("th", name)); });
    const body = t.createTBody();
    rows.forEach(function (cells) {
      const tr = body.insertRow();
      cells.forEach(function (c, i) { tr.appendChild(element(i === 0 ? "th" : "td", c)); });
    });
    return t;
  }
  function lengthsOf(values) {
    return Object.keys(values || {}).sort(function (a, b) { return Number(a) - Number(b); });
  }

  function showValues(r) {
    const rows = [["kind", String(r.kind)], ["rank across models", fmt(r.rank)],
                  ["layer, head", fmt(r.layer) + ", " + fmt(r.head)], ["depth", fmt(r.depth)]];
    MASSES.forEach(function (m) { rows.push([m[1], withCI(r[m[0]])]); });
    rows.push(["previous-token", fmt(r.previous_token)]);
    ["induction", "duplicate"].forEach(function (kind) {
      lengthsOf(r[kind]).forEach(function (n) { rows.push([kind + " (" + n + ")", fmt(r[kind][n])]); });
    });
    const within = r.within_model || {};
    rows.push(["S percentile in its model", fmt(within.S_percentile)], ["S z-score in its model", fmt(within.S_z)]);
    const box = document.getElementById("head-detail-values");
    box.replaceChildren(rowsTable("Values [bootstrap CI]", ["statistic", "value"], rows));
  }

  function showVerdicts(r) {
    const rows = VERDICTS.map(function (v) {
      const verdict = (r[v[0]] || {})[v[1]] || {};
      return [v[0] + ": " + v[1].replace(/_/g, " "), withCI(verdict), verdict.holds === true ? "holds" : "no",
              verdict.reason ? String(verdict.reason) : ""];
    });
    document.getElementById("head-detail-verdicts").replaceChildren(
      rowsTable("Verdicts", ["property", "value [CI]", "verdict", "note"], rows));
  }

  function showPattern(r) {
    const box = document.getElementById("head-detail-pattern");
    const prompt = document.getElementById("head-detail-prompt");
    const p = DATA.patterns[r.model];
    const rows = p && p.heads[r.head_name];
    if (!rows) {
      prompt.textContent = "";
      box.replaceChildren(element("p", "The atlas holds no pattern for this head.", "missing"));
      return;
    }
    prompt.textContent = p.prompt + " (" + p.tokens.length + " tokens; rows: queries, columns: keys)";
    const n = p.tokens.length;
    const square = rows.map(function (row) { return row.concat(new Array(n - row.length).fill(0)); });
    // A fresh container for every view: React refuses a second root on one element.
    views += 1;
    const view = element("div", undefined, "pattern-view");
    view.id = "head-detail-view-" + views;
    box.replaceChildren(view);
    CircuitsVis.render(view.id, CircuitsVis.AttentionPattern,
                       {tokens: p.tokens, attention: square, maskUpperTri: true, showAxisLabels: true});
  }

  function select(key) {
    const r = DATA.heads[key];
    if (!r) { return; }
    document.querySelectorAll("[data-head].selected").forEach(function (e) { e.classList.remove("selected"); });
    document.querySelectorAll("[data-head]").forEach(function (e) {
      if (e.dataset.head === key) { e.classList.add("selected"); }
    });
    const panel = document.getElementById("head-detail");
    panel.dataset.head = key;
    document.getElementById("head-detail-title").textContent = r.head_name + " of " + r.model;
    document.getElementById("head-detail-hint").textContent = "kind: " + r.kind;
    document.querySelectorAll("#head-detail-rules dt").forEach(function (dt) {
      dt.classList.toggle("this-kind", dt.dataset.kind.replace(/_/g, "-") === String(r.kind));
    });
    showValues(r);
    showVerdicts(r);
    showPattern(r);
  }

  Array.from(tbody.rows).forEach(function (row) {
    row.addEventListener("click", function () { select(row.dataset.head); });
    row.addEventListener("keydown", function (e) { if (e.key === "Enter") { select(row.dataset.head); } });
  });
  document.querySelectorAll("#atlas-scatter .atlas-point").forEach(function (point) {
    const key = point.dataset.head;
    point.addEventListener("click", function () { select(key); });
    point.addEventListener("keydown", function (e) { if (e.key === "Enter") { select(key); } });
    point.addEventListener("mouseenter", function () {
      Array.from(tbody.rows).forEach(function (row) { row.classList.toggle("hovered", row.dataset.head === key); });
    });
    point.addEventListener("mouseleave", function () {
      Array.from(tbody.rows).forEach(function (row) { row.classList.remove("hovered"); });
    });
  });
  if (tbody.rows.length) { select(tbody.rows[0].dataset.head); }
})();
