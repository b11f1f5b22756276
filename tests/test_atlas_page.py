"""The atlas page (analysis/infra/atlas_page.py): the HTML it writes, and the page itself in a real headless browser
(Debian's chromium driven by Selenium): it loads with no console error and no request, the table has one row per
head, sorting reorders it, and clicking a head (a row or a point) shows its values and its pattern in circuitsvis."""

from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser

import pytest

from analysis.infra.atlas_page import atlas_page, depth_colour
from conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "atlas"
HOSTILE = "<script>alert(1)</script><img src=x onerror=\"document.title='pwned'\">&'"


def fixture_data() -> tuple[dict, dict]:
    """The hand-written atlas example (two organism heads) and the organism's category-prompt patterns."""
    combined = json.loads((FIXTURES / "atlas_example.json").read_text())
    patterns = {"organism": json.loads((FIXTURES / "patterns_example.json").read_text())}
    return combined, patterns


def uniform(n: int) -> list[list[float]]:
    """A causal pattern of `n` tokens with each row spread evenly over the keys it may see."""
    return [[round(1 / (q + 1), 3)] * (q + 1) for q in range(n)]


def richer_data() -> tuple[dict, dict]:
    """The example plus gpt2-random's four heads (S not in rank order; one without a pattern, one without a
    weight-space value) and a model whose name is markup, with one head: 7 heads of 3 models."""
    combined, patterns = fixture_data()
    template = combined["heads"]["organism/L0H0"]
    s_values = [5.1, 3.3, 4.2, 2.9]
    for i, (layer, head) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        r = copy.deepcopy(template)
        r.update(model="gpt2-random", head_name=f"L{layer}H{head}", layer=layer, head=head, depth=float(layer),
                 rank=4 + i, kind="none", previous_token=0.1 * i)
        r["S"] = {"value": s_values[i], "low": s_values[i] - 0.2, "high": s_values[i] + 0.2}
        r["partner_mass"] = {"value": 0.05 * (4 - i), "low": 0.05 * (4 - i) - 0.01, "high": 0.05 * (4 - i) + 0.01}
        combined["heads"][f"gpt2-random/L{layer}H{head}"] = r
    del combined["heads"]["gpt2-random/L0H1"]["weights"]["category_attraction"]["value"]
    hostile = copy.deepcopy(template)
    hostile.update(model=HOSTILE, head_name="L0H0", rank=2, kind="semantic", depth=0.0)
    hostile["S"] = {"value": 1.0, "low": 0.9, "high": 1.1}
    combined["heads"][f"{HOSTILE}/L0H0"] = hostile
    combined["models"][HOSTILE] = {"name": HOSTILE, "n_layers": 1, "n_heads": 1, "architecture": HOSTILE}
    tokens = ["<BOS>", " cat", " red", " dog", " blue"]
    patterns["gpt2-random"] = {"prompt": "category prompt 0", "tokens": tokens,
                               "heads": {f"L{l}H{h}": uniform(len(tokens)) for l, h in [(0, 0), (0, 1), (1, 0)]}}
    patterns[HOSTILE] = {"prompt": HOSTILE, "tokens": [HOSTILE, "</script>"], "heads": {"L0H0": uniform(2)}}
    return combined, patterns


class Elements(HTMLParser):
    """Every start tag of a page with its attributes, in order."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def elements(page: str) -> list[tuple[str, dict]]:
    parser = Elements()
    parser.feed(page)
    return parser.tags


def test_every_head_of_the_data_is_a_row_of_the_page():
    combined, patterns = fixture_data()
    page = atlas_page(combined, patterns)
    rows = [a["data-head"] for tag, a in elements(page) if tag == "tr" and "data-head" in a]
    assert rows == ["organism/L1H1", "organism/L0H0"]  # one row per head, by rank (1, then 3)
    points = [a["data-head"] for tag, a in elements(page) if tag == "g" and "data-head" in a]
    assert sorted(points) == sorted(combined["heads"])  # both heads have S and a weight-space attraction
    for key in ("atlas-table", "atlas-scatter", "head-detail", "head-detail-pattern", "atlas-data"):
        assert f'id="{key}"' in page


def test_a_model_name_that_is_markup_is_escaped():
    combined, patterns = richer_data()
    page = atlas_page(combined, patterns)
    assert HOSTILE not in page and "<script>alert" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img" in page  # in the table, the model list and the scatter
    tags = [tag for tag, _ in elements(page)]
    assert tags.count("script") == 3  # the data, circuitsvis's bundle, the page's own script: nothing injected
    rows = [a["data-head"] for tag, a in elements(page) if tag == "tr" and "data-head" in a]
    assert sorted(rows) == sorted(combined["heads"]) and rows[1] == f"{HOSTILE}/L0H0"  # attributes round-trip
    blob = re.search(r'<script type="application/json" id="atlas-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(blob)["heads"][f"{HOSTILE}/L0H0"]["model"] == HOSTILE  # \u escapes read back as the name
    assert "<" not in blob and ">" not in blob


def test_the_page_names_no_outside_source():
    page = atlas_page(*richer_data())
    for tag, a in elements(page):
        assert tag not in ("link", "img", "iframe", "object", "embed")
        assert not any(k in ("src", "href") for k in a), (tag, a)
    assert not re.search(r"<script[^>]*\bsrc\s*=", page)
    policy = [a["content"] for tag, a in elements(page)
              if tag == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert len(policy) == 1 and "default-src 'none'" in policy[0]  # it refuses any request the page could make


def test_the_scatter_draws_the_heads_with_both_values_coloured_by_depth():
    combined, patterns = richer_data()
    page = atlas_page(combined, patterns)
    points = {a["data-head"] for tag, a in elements(page) if tag == "g" and "data-head" in a}
    assert points == set(combined["heads"]) - {"gpt2-random/L0H1"}  # its weight-space attraction has no value
    assert "1 head(s) without both values are not drawn" in page
    assert (depth_colour(0.0), depth_colour(1.0), depth_colour(None)) == ("#440154", "#fde725", "#999999")
    circles = [a for tag, a in elements(page) if tag == "circle"]
    assert sorted({c["fill"] for c in circles}) == ["#440154", "#fde725"]  # depths 0 and 1 only


def test_a_pattern_row_of_the_wrong_length_is_refused():
    combined, patterns = fixture_data()
    patterns["organism"]["heads"]["L1H1"][2] = [0.5, 0.5]
    with pytest.raises(ValueError, match="row q with q \\+ 1 weights"):
        atlas_page(combined, patterns)


# --- in a real browser -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    path = tmp_path_factory.mktemp("atlas") / "atlas.html"
    path.write_text(atlas_page(*richer_data()), encoding="utf-8")
    return path.as_uri()


@pytest.fixture
def page(browser, page_url):
    """The page freshly loaded; after the test, the browser's console holds no error."""
    browser.get_log("browser")  # what earlier tests left
    browser.get(page_url)
    yield browser
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], f"console errors: {severe}"


def row_order(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#atlas-table tbody tr')).map(r => r.dataset.head);")


def header(driver, label: str):
    from selenium.webdriver.common.by import By

    buttons = [b for b in driver.find_elements(By.CSS_SELECTOR, "#atlas-table thead th button") if b.text == label]
    assert len(buttons) == 1, label
    return buttons[0]


def detail(driver) -> dict:
    """What the detail panel shows: its title, the elements circuitsvis drew in the pattern box, and its text."""
    return driver.execute_script("""
        const box = document.getElementById('head-detail-pattern');
        return {title: document.getElementById('head-detail-title').textContent,
                drawn: box.querySelectorAll('canvas, svg').length, nodes: box.querySelectorAll('*').length,
                head: document.getElementById('head-detail').dataset.head || '',
                text: document.getElementById('head-detail').textContent};""")


def wait_for(driver, condition, timeout: float = 10):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


@pytest.mark.e2e
def test_the_page_loads_offline_with_no_console_error(page):
    assert page.title == "Atlas of self-suppressing semantic heads"  # the hostile name's onerror never ran
    assert page.execute_script("return typeof CircuitsVis.render;") == "function"
    assert page.execute_script("return performance.getEntriesByType('resource').map(e => e.name);") == []
    urls = page.execute_script(
        "return Array.from(document.querySelectorAll('[src], [href]')).map(e => e.outerHTML);")
    assert urls == []
    assert page.execute_script("return document.images.length;") == 0
    # the first head by rank is shown at once, drawn by circuitsvis
    first = wait_for(page, lambda d: (v := detail(d))["drawn"] and v)
    assert first["title"] == "L1H1 of organism"


@pytest.mark.e2e
def test_the_table_has_one_row_per_head(page):
    combined, _ = richer_data()
    rows = row_order(page)
    assert len(rows) == len(combined["heads"]) == 7 and set(rows) == set(combined["heads"])
    assert rows == sorted(combined["heads"], key=lambda k: combined["heads"][k]["rank"])


@pytest.mark.e2e
def test_sorting_by_a_column_reorders_the_table(page):
    heads = richer_data()[0]["heads"]
    by_rank = sorted(heads, key=lambda k: heads[k]["rank"])
    by_s = sorted(heads, key=lambda k: heads[k]["S"]["value"])
    assert by_s != by_rank and row_order(page) == by_rank
    header(page, "S").click()
    assert row_order(page) == by_s
    header(page, "S").click()  # again: reversed
    assert row_order(page) == by_s[::-1]
    header(page, "partner mass").click()  # ties (the organism's 0.1 and the copies' 0.1) keep the current order
    expected = sorted(by_s[::-1], key=lambda k: heads[k]["partner_mass"]["value"])
    assert row_order(page) == expected
    header(page, "model").click()
    assert row_order(page) == sorted(expected, key=lambda k: heads[k]["model"])
    assert page.execute_script(
        "return Array.from(document.querySelectorAll('#atlas-table th[aria-sort=\"ascending\"]')).length;") == 1


@pytest.mark.e2e
def test_clicking_a_head_shows_its_values_and_pattern(page):
    from selenium.webdriver.common.by import By

    wait_for(page, lambda d: detail(d)["drawn"])
    row = next(r for r in page.find_elements(By.CSS_SELECTOR, "#atlas-table tbody tr")
               if r.get_attribute("data-head") == "gpt2-random/L1H0")
    row.click()
    shown = wait_for(page, lambda d: (v := detail(d))["title"] == "L1H0 of gpt2-random" and v["drawn"] and v)
    assert shown["head"] == "gpt2-random/L1H0" and "4.2 [4, 4.4]" in shown["text"]  # its S with its CI
    assert "selected" in row.get_attribute("class")
    # a point of the scatter selects its head too: the model whose name is markup, shown as text
    point = page.execute_script(
        "return Array.from(document.querySelectorAll('#atlas-scatter .atlas-point'))"
        f".find(p => p.dataset.head === {json.dumps(HOSTILE + '/L0H0')}).querySelector('circle');")
    point.click()
    shown = wait_for(page, lambda d: (v := detail(d))["title"] == f"L0H0 of {HOSTILE}" and v["drawn"] and v)
    assert page.title != "pwned" and page.execute_script("return document.images.length;") == 0
    # a head the atlas holds no pattern for says so, and draws nothing
    next(r for r in page.find_elements(By.CSS_SELECTOR, "#atlas-table tbody tr")
         if r.get_attribute("data-head") == "gpt2-random/L1H1").click()
    shown = wait_for(page, lambda d: (v := detail(d))["title"] == "L1H1 of gpt2-random" and v)
    assert shown["drawn"] == 0 and "holds no pattern for this head" in shown["text"]
