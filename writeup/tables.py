"""The paper's tables: booktabs `tabular`s of the loaded results (environments and captions stay in main.tex)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from analysis.organism.report import THRESHOLDS
from writeup.format import MISSING, format_value, head_name, latex_escape, short_commit, token_tex
from writeup.results import Results
from writeup.spec import ABLATION_CONDITIONS, ABLATION_MODES, guard_of, switches


def tabular(colspec: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A booktabs tabular from a header and rows of cells that are LaTeX already."""
    lines = [rf"\begin{{tabular}}{{{colspec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def masses(entry, digits: str = ".3f") -> list[str]:
    """Self, partner and BOS-when-no-partner mass, then S (two decimals), of one in-context score record."""
    return [*(format_value(entry[m], digits) for m in ("self_mass", "partner_mass", "bos_mass_no_partner")),
            format_value(entry["surprisal"], ".2f")]


SCAN_KINDS = [("previous-token", "previous_token", r"mean $A_{i,i-1}$"),  # (label, scan_heads key, score)
              ("induction", "induction", r"mean $A_{q,q-L+1}$"),
              ("duplicate-token", "duplicate", r"mean $A_{q,q-L}$"),
              ("semantic", "semantic", r"$S$ (nats, lower is better)")]


def table_scan(results: Results, n: int = 3) -> str:
    """The scan's top heads of each kind."""
    rows = []
    for label, kind, unit in SCAN_KINDS:
        heads = results.get("scan_heads", f"results.top_heads.{kind}")[:n]
        rows.append([label, unit, *(f"{head_name(h)} ({format_value(h['score'], '.3f')})" for h in heads)])
    header = ["kind", "score", *[("best" if i == 0 else f"rank {i + 1}") for i in range(n)]]
    return tabular("ll" + "l" * n, header, rows)


THRESHOLD_LABELS = {
    "previous_token": "previous-token score",
    "semantic_partner_mass": "semantic: mass on partners",
    "semantic_self_mass": "semantic: mass on self and copies",
    "semantic_bos_mass_no_partner": "semantic: BOS mass, no partner",
}


def threshold_label(key: str) -> str:
    """How the thresholds table names a key of analysis.organism.report.THRESHOLDS ("induction_50": at |r| = 50)."""
    match = re.fullmatch(r"induction_(\d+)", key)
    return rf"induction score, $|r| = {match.group(1)}$" if match else THRESHOLD_LABELS.get(key, latex_escape(key))


def table_token_circuits(results: Results, n_keys: int = 6, n: int = 3) -> str:
    """The key-pivoted token table: each top key with its top queries (QK) and top outputs (OV)."""
    rows = []
    for entry in results.get("token_circuit_tables", "results.table")[:n_keys]:
        rows.append([token_tex(entry["key"]),
                     ", ".join(token_tex(q["token"]) for q in entry["queries"][:n]),
                     ", ".join(token_tex(o["token"]) for o in entry["outputs"][:n])])
    return tabular("lll", ["key", "top queries (QK)", "top outputs (OV)"], rows)


def table_survey(results: Results, n: int = 5) -> str:
    """The survey's best heads by S, with 95% bootstrap CIs and the companions."""
    rows = []
    for row in results.get("characterize_head", "results.survey")[:n]:
        ci = f"[{format_value(row['surprisal_low'], '.3f')}, {format_value(row['surprisal_high'], '.3f')}]"
        rows.append([format_value(row["rank"], "d"), head_name(row), format_value(row["surprisal"], ".3f"), ci,
                     *(format_value(row[m], ".3f") for m in ("partner_mass", "self_mass", "bos_mass_no_partner",
                                                            "argmax_accuracy"))])
    header = ["rank", "head", r"$S$ (nats)", r"95\,\% CI", "partner", "self", "BOS, no partner", "argmax"]
    return tabular("rlrlrrrr", header, rows)


def table_ablation(results: Results) -> str:
    """Median S [quartiles] per ablated component and mode, beside the medians reported for GPT-2."""
    table = results.get("component_ablation", "results.table")  # {mode: {condition: summary}}, ours: BOS kept
    study = results.get("component_ablation", "results.study_way")  # {condition: summary}: the study's convention and S
    reported = results.get("reported", "ablation_medians")

    def cell(row) -> str:
        return f"{format_value(row['median'], '.2f')} [{format_value(row['q25'], '.2f')}, {format_value(row['q75'], '.2f')}]"
    rows = []
    for condition, (label, _) in ABLATION_CONDITIONS.items():
        cells = [label, *(cell(table[mode][condition]) for mode in ABLATION_MODES),
                 format_value(study[condition]["median"], ".2f")]
        cells.append(format_value(reported[condition], "g") if condition in reported else MISSING)
        rows.append(cells)
    column = r">{\raggedright\arraybackslash}p{%s\linewidth}"
    return tabular(column % 0.2 + "ll" + column % 0.12 + column % 0.1,
                   ["ablated", "mean", "zero", "mean, BOS too", "reported, GPT-2"], rows)


def table_eigen_steering(results: Results) -> str:
    """Per eigenvalue factor: the token map's self minus in-group score and the head's in-context masses."""
    rows = [[format_value(f["factor"], "g"), format_value(f["block_means"]["self_minus_in_group"], ".2f"),
             *masses(f["in_context"])]
            for f in results.get("eigenvalue_scaling", "results.factors").values()]
    header = ["factor", "self $-$ in-group", "self mass", "partner mass", "BOS, no partner", "$S$ (nats)"]
    return tabular("rrrrrr", header, rows)


def table_rank_ablation(results: Results) -> str:
    """Mean self-rank over the vocabulary for every (k, scale) cell, with the in-context self mass."""
    cells = results.get("eigenvalue_rank_ablation", "results.cells").values()
    ks = sorted({c["k"] for c in cells})
    scales = sorted({c["scale"] for c in cells}, reverse=True)
    grid = {(c["k"], c["scale"]): c for c in cells}
    rows = [[format_value(k, "d"), *(f"{format_value(grid[k, s]['mean_rank'], '.1f')} "
                                     f"({format_value(grid[k, s]['self_mass'], '.2f')})" for s in scales)]
            for k in ks]
    return tabular("r" + "r" * len(scales), ["$k$", *(f"scale {format_value(s, 'g')}" for s in scales)], rows)


GRADIENT_LABELS = {"before": "unedited", "suppress": "gradient, suppress", "restore": "gradient, restore"}


def table_gradient_steering(results: Results) -> str:
    """Self, partner and BOS mass before and after each edit of W_Q, W_K (gradient and closed form)."""
    metrics = results.get("gradient_steering", "results.metrics")
    runs = results.get("gradient_steering", "results.runs")
    rows = []
    for name, m in metrics.items():
        if "eta" in runs.get(name, {}):  # a closed-form step
            label = rf"closed form, $\eta = {format_value(runs[name]['eta'], '.2f')}$"
        else:
            label = GRADIENT_LABELS.get(name, latex_escape(name))
        rows.append([label, *masses(m)])
    return tabular("lrrrr", ["edit", "self mass", "partner mass", "BOS, no partner", "$S$ (nats)"], rows)


def table_communities(results: Results, n_members: int = 5) -> str:
    """Leiden communities: size, best-matching category, purity and the first members."""
    rows = []
    for c in results.get("clustering", "results.communities"):
        rows.append([format_value(c["id"], "d"), format_value(c["size"], "d"),
                     latex_escape(c.get("category") or MISSING), format_value(c.get("purity"), ".2f"),
                     ", ".join(token_tex(t) for t in c["members"][:n_members])])
    column = r">{\raggedright\arraybackslash}p{0.5\linewidth}"
    return tabular("rrlr" + column, ["id", "size", "category", "purity", "first members"], rows)


def threshold_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    """The thresholds table's header and rows (cells in LaTeX): each threshold of
    analysis.organism.report.THRESHOLDS, the first evaluation, the final."""
    evals = [r for r in results.get("training_log", "log") if "eval" in r]
    first = evals[0]
    rows = []
    for key, (rule, bound) in THRESHOLDS.items():
        rule_tex = r"$\geq$" if rule == "at least" else r"$\leq$"
        rows.append([threshold_label(key), f"{rule_tex} {format_value(bound, '.1f')}",
                     format_value(first["eval"][key], ".2f"),
                     format_value(results.get("training_log", f"final_eval.{key}"), ".3f")])
    return ["behaviour of the planted head", "threshold", f"step {first['step'] + 1}", "final"], rows


def table_thresholds(results: Results) -> str:
    """The organism's acceptance thresholds (analysis.organism.report.THRESHOLDS) beside its measured values."""
    return tabular("llrr", *threshold_rows(results))


def table_provenance(results: Results, sources: Sequence[str]) -> str:
    """Hardware, commit and package versions recorded by the results files (every distinct value)."""
    recorded: dict[str, set[str]] = {}
    for source in sources:
        prov = results.get(source, "provenance")
        entries = {"platform": prov["hardware"]["platform"], "torch threads": prov["hardware"]["torch_threads"],
                   "accelerator": prov["hardware"]["cuda"] or "none (CPU only)",
                   "commit": short_commit(prov["git_commit"]), **prov["packages"]}
        for key, value in entries.items():
            recorded.setdefault(key, set()).add(str(value))
    rows = [[latex_escape(key), r"\texttt{" + latex_escape(", ".join(sorted(values))) + "}"]
            for key, values in recorded.items()]
    return tabular(r"l>{\raggedright\arraybackslash}p{0.7\linewidth}", ["recorded", "value"], rows)


def table_runs(results: Results, scripts: Sequence[str]) -> str:
    """Each script of the run: seed, wall time and peak resident memory under make ("--" where not recorded)."""
    rows = [[rf"\texttt{{{latex_escape(script)}.py}}", format_value(results.get(script, "provenance.seed"), "d"),
             format_value(results.run_seconds(script), ".1f"),
             format_value(results.run_stamp(script).get("peak_rss_gb"), ".2f")] for script in scripts]
    return tabular("lrrr", ["script", "seed", "wall time (s)", "peak memory (GB)"], rows)


# (quantity, this run's macro, the macro of the value reported for GPT-2 small): names from writeup.spec
REPLICATION_ROWS = [
    ("best previous-token head", "ScanPrevHead", "RepPrevHeads"),
    ("best induction head", "ScanIndHead", "RepIndHeads"),
    ("best duplicate-token head", "ScanDupHead", "RepDupHeads"),
    ("semantic head (the survey's target)", "SurveyHead", "RepSemHead"),
    ("$S$ of the semantic head (nats)", "SurveyS", "RepSemS"),
    ("$S$ of the runner-up (nats)", "SurveyRunnerS", "RepSemRunnerS"),
    ("mass on valid partners", "SurveyPartner", "RepSemPartner"),
    ("mass on the query itself", "SurveySelfOnly", "RepSemSelfOnly"),
    ("mass on earlier copies of the query word", "SurveyCopies", "RepSemCopies"),
    ("mass on self and earlier copies together (the two rows above summed)", "SurveySelf", "RepSemSelfPlusCopies"),
    ("BOS mass when no partner", "SurveyBos", "RepSemBos"),
    ("median $S$, unablated", "AblStudyBase", "RepAblBase"),
    ("median $S$, token embedding mean-ablated (BOS ablated too, as the study)", "AblStudyToken", "RepAblToken"),
    ("median $S$, positional embedding mean-ablated (BOS ablated too)", "AblStudyPos", "RepAblPos"),
    ("median $S$, first MLP mean-ablated (BOS ablated too)", "AblStudyMLP", "RepAblMLP"),
    ("cosine where the study's curve turns positive (bits, unscaled, the study's windows)", "CosStudyZero", "RepCosZero"),
    ("cosine of the study's curve's peak", "CosStudyPeakCosine", "RepCosPeak"),
    ("mean self-rank, unedited", "RankUnedited", "RepRankUnedited"),
    ("mean self-rank at the study's $k$ and scale", "RankStudyCell", "RepRankEdited"),
    ("Leiden communities, the study's graph (key rows, self-loops, BOS, capped size)", "CluStudyCommunities",
     "RepCluCommunities"),
]


def table_replication(results: Results) -> str:
    """This run's numbers beside the numbers reported for GPT-2 small, as the macros that print them."""
    rows = [[label, rf"\{ours}", rf"\{theirs}"] for label, ours, theirs in REPLICATION_ROWS]
    column = r">{\raggedright\arraybackslash}p{%s\linewidth}"
    header = ["quantity", "this run", "reported, GPT-2 small"]
    return tabular(column % 0.45 + column % 0.18 + column % 0.27, header, rows)


def interval(entry, fmt: str = ".2f") -> str:
    """A {value, low, high} record as "value [low, high]"."""
    low, high = (format_value(entry[end], fmt) for end in ("low", "high"))
    return f"{format_value(entry['value'], fmt)} [{low}, {high}]"


def table_sae_precision(results: Results) -> str:
    """The study's SAE precision against k: the target, the strongest control at that k and the target's
    shuffled-label null, each with its 95% CI over keyword samples; the verdict's k marked. Empty where the SAE
    step did not run."""
    if not switches(results)["SaeRan"]:
        return ""
    curve = results.get("sae_features", "results.precision_curve")
    k_verdict = results.get("sae_features", "results.k_verdict.k")
    rows = []
    for entry in sorted(curve.values(), key=lambda e: e["k"]):
        rival = entry["strongest_control"]
        k = format_value(entry["k"], "d") + (" (verdict)" if entry["k"] == k_verdict else "")
        rows.append([k, interval(entry["target"]),
                     MISSING if rival is None else f"{head_name(rival)} {interval(rival)}", interval(entry["null"])])
    return tabular("rlll", ["$k$", "target", "strongest control", "null (labels shuffled)"], rows)


# Each mechanism claim as one statistic of a results file's `target` (controls.compare): (the claim, results
# file, statistic, format, the null's JSON path or None). The statistic's direction is read from the file.
EVIDENCE_ROWS = [
    ("$W_\\text{sym}$ has $d_\\text{head}$ negative eigenvalues", "skew_analysis", "n_negative_eigenvalues", "d", None),
    ("negative share of $|\\lambda|$", "skew_analysis", "negative_eigenvalue_share", ".2f", None),
    ("trace of $W_\\text{sym}$", "skew_analysis", "trace", ".2f", None),
    ("mean self-score", "skew_analysis", "self_score", ".2f", "results.null.target.gaussian_self_score"),
    ("self-score minus partners' (margin)", "skew_analysis", "margin", ".2f", "results.null.target.margin_shuffled_mean"),
    ("normalised margin", "skew_analysis", "margin_normalised", ".2f", "results.null.target.gaussian_margin_normalised"),
    ("words below every partner", "skew_analysis", "below_partners_share", "percent",
     "results.null.target.gaussian_below_partners_share"),
    ("negative self-score in the 4 most negative components", "skew_analysis", "top4_negative_share", "percent", None),
    ("group map: self minus in-group", "sym_skew_maps", "self_minus_in_group", ".2f", None),
    ("eigenvalues $\\times(-1)$: gain in self mass", "eigenvalue_scaling", "factor -1_self_mass_change", ".2f", None),
    ("eigenvalues $\\times 0$: gain in self mass", "eigenvalue_scaling", "factor 0_self_mass_change", ".2f", None),
    ("targeted flip: gain in self mass", "eigenvalue_scaling", "targeted_self_mass_change", ".2f", None),
    ("rank ablation: largest gain in self mass", "eigenvalue_rank_ablation", "best_self_mass_change", ".2f", None),
    ("rank ablation: largest fall in mean self-rank", "eigenvalue_rank_ablation", "best_mean_rank_change", ".1f", None),
    ("gradient restore: gain in self mass", "gradient_steering", "restore_self_gain", ".2f", None),
    ("trace step: gain in self mass", "gradient_steering", "trace_self_gain", ".2f", None),
    ("cosine: mates minus other categories", "cosine_attention_analysis", "mates_minus_others", ".2f", None),
    ("Leiden communities against the categories (ARI)", "clustering", "ari", ".2f", None),
    ("SAE features: self minus same category", "sae_features", "self_minus_in_group", ".2f", None),
    ("SAE features: same minus other category", "sae_features", "in_minus_out_group", ".1f", None),
    ("SAE features: below every same-category feature", "sae_features", "below_partners_share", "percent", None),
    ("SAE precision (the study's metric)", "sae_features", "precision", ".2f", "results.null.precision_shuffled"),
]


EVIDENCE_HEADER = ["claim", "pred.", "target", "rank", "strongest control", "null", "separates"]


def evidence_rows(results: Results) -> list[list[str]]:
    """Each mechanism claim against its controls (cells in LaTeX, as EVIDENCE_HEADER): the target's value and rank,
    the strongest control, the null, and whether the target beats every control in the direction the claim
    predicts. A step the model could not run (a switch of spec.SWITCHES that does not hold) leaves its rows out."""
    held = switches(results)
    rows = []
    for claim, source, name, fmt, null in EVIDENCE_ROWS:
        guard = guard_of(source)
        if guard is not None and not held[guard]:
            continue
        entry = results.get(source, f"results.target.{name}")
        direction = results.get(source, f"results.directions.{name}")
        rival = entry["strongest_control"]
        rank = MISSING if entry["rank"] is None else f"{entry['rank']}/{entry['n_ranked']}"
        rows.append([claim, direction, format_value(entry["value"], fmt), rank,
                     MISSING if rival is None else f"{head_name(rival)} {format_value(rival['value'], fmt)}",
                     MISSING if null is None else format_value(results.get(source, null), fmt),
                     "yes" if entry["separates"] else "no"])
    return rows


def table_evidence(results: Results) -> str:
    """The evidence table (evidence_rows)."""
    column = r">{\raggedright\arraybackslash}p{0.30\linewidth}"  # room for 144-head ranks and two-digit layers
    return tabular(column + "lrrlrl", EVIDENCE_HEADER, evidence_rows(results))


def tables(results: Results, scripts: Sequence[str]) -> dict[str, str]:
    """Every generated table, by name (written as tab_<name>.tex)."""
    return {
        "scan": table_scan(results),
        "token_circuits": table_token_circuits(results),
        "survey": table_survey(results),
        "ablation": table_ablation(results),
        "eigen_steering": table_eigen_steering(results),
        "rank_ablation": table_rank_ablation(results),
        "gradient_steering": table_gradient_steering(results),
        "communities": table_communities(results),
        "sae_precision": table_sae_precision(results),
        "replication": table_replication(results),
        "evidence": table_evidence(results),
        "thresholds": table_thresholds(results),
        "provenance": table_provenance(results, scripts),
        "runs": table_runs(results, scripts),
    }
