"""The paper's tables: booktabs `tabular`s of the loaded results (environments and captions stay in main.tex)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from analysis.organism.report import THRESHOLDS
from analysis.properties import PROPERTIES
from writeup.format import MISSING, format_value, head_name, latex_escape, short_commit, token_tex
from writeup.results import Results
from writeup.spec import ABLATION_CONDITIONS, ABLATION_MODES, HELD_OUT_ROWS, macros, switches


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
    study = results.get("component_ablation", "results.study_way")  # {condition: summary}: its prompts, convention and S
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
                   ["ablated", "mean", "zero", "the study's way", "reported, GPT-2"], rows)


QKP_SIDES = ("query_side", "key_side", "both_sides")
QKP_ROWS = {"category_attraction": "category attraction", "self_avoidance": "self-avoidance",
            "bos_fallback": "BOS fallback"}


def table_query_key(results: Results) -> str:
    """Per property and method, the part on each side whose removal most builds it, with its change and 95% CI."""
    strongest = results.get("query_key_paths", "results.strongest")

    def cell(e) -> str:
        return (f"{latex_escape(e['label'])}: {format_value(e['value'], '+.3f')} "
                f"[{format_value(e['low'], '+.3f')}, {format_value(e['high'], '+.3f')}]")
    rows = []
    for key, label in QKP_ROWS.items():
        rows.append([label, "mean ablation", *(cell(strongest["ablation"][s]["mean"][key]) for s in QKP_SIDES)])
        rows.append(["", "path patching", *(cell(strongest["path_patching"][s][key]) for s in QKP_SIDES)])
    column = r">{\raggedright\arraybackslash}p{%s\linewidth}"
    return tabular(column % 0.13 + column % 0.1 + (column % 0.2) * 3,
                   ["property", "edit", "query side", "key side", "both sides"], rows)


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
    analysis.organism.report.THRESHOLDS that the organism's planted kinds have (its final evaluation holds a value),
    the first evaluation, the final."""
    evals = [r for r in results.get("training_log", "log") if "eval" in r]
    first = evals[0]
    final = results.get("training_log", "final_eval")
    rows = []
    for key, (rule, bound) in THRESHOLDS.items():
        if key not in final:  # a kind this organism does not plant
            continue
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


# (quantity, this run's macro, the macro of the value reported for GPT-2 small): names from writeup.spec. A label
# is LaTeX and may print macros: where this run's value is not computed the study's way, the label says how it differs.
STUDY_ABLATION = (r"the study's way: its \AblStudyDesignPrompts{} prompts of \AblStudyDesignWords{} keywords, last row "
                  r"to BOS, BOS ablated, its $S$; here \AblStudyDesignDepartures")
REPLICATION_ROWS = [
    ("best previous-token head", "ScanPrevHead", "RepPrevHeads"),
    ("best induction head", "ScanIndHead", "RepIndHeads"),
    ("best duplicate-token head", "ScanDupHead", "RepDupHeads"),
    ("semantic head (the survey's target, our design)", "SurveyHead", "RepSemHead"),
    ("semantic head, the study's design (best on its one prompt)", "StudyDesignBestHead", "RepSemHead"),
    (r"$S$ of the semantic head (nats), our design: not the study's (mean over \SurveyNPrompts{} prompts of "
     r"\SurveyNWords{} words, BOS row out)", "SurveyS", "RepSemS"),
    (r"$S$ of the semantic head, the study's design: one prompt, BOS row in, last row to BOS (median over "
     r"\StudyDesignPrompts{} prompts \StudyDesignMedian); here \StudyDesignDepartures", "StudyDesignS", "RepSemS"),
    ("$S$ of the runner-up (nats), our design", "SurveyRunnerS", "RepSemRunnerS"),
    (r"$S$ of the runner-up, the study's design (\StudyDesignRunnerHead; the study's \RepSemRunnerHead)",
     "StudyDesignRunnerS", "RepSemRunnerS"),
    ("mass on valid partners (ours: our design)", "SurveyPartner", "RepSemPartner"),
    ("mass on the query itself (ours: our design)", "SurveySelfOnly", "RepSemSelfOnly"),
    ("mass on earlier copies of the query word (ours: our design)", "SurveyCopies", "RepSemCopies"),
    ("mass on self and earlier copies together (the two rows above summed)", "SurveySelf", "RepSemSelfPlusCopies"),
    ("BOS mass when no partner (ours: our design)", "SurveyBos", "RepSemBos"),
    (rf"median $S$, unablated ({STUDY_ABLATION})", "AblStudyBase", "RepAblBase"),
    ("median $S$, token embedding mean-ablated (the study's way)", "AblStudyToken", "RepAblToken"),
    ("median $S$, positional embedding mean-ablated (the study's way)", "AblStudyPos", "RepAblPos"),
    ("median $S$, first MLP mean-ablated (the study's way)", "AblStudyMLP", "RepAblMLP"),
    ("cosine where the study's curve turns positive (bits, unscaled, the study's windows)", "CosStudyZero", "RepCosZero"),
    ("cosine of the study's curve's peak", "CosStudyPeakCosine", "RepCosPeak"),
    ("the same two, the study's curve on the study's head input (token ids in order as one prompt, mean "
     "positions and first-layer attention): where it turns positive", "CosStudyInputZero", "RepCosZero"),
    ("its peak", "CosStudyInputPeakCosine", "RepCosPeak"),
    ("mean self-rank on one scale, (rank $-$ first rank)$/V$ over the $V$ keys, unedited", "RankUneditedNorm",
     "RepRankUneditedNorm"),
    ("the same, unedited, the study's factors of $W$ on the study's head input", "RankStudyWayStudyInputUneditedNorm",
     "RepRankUneditedNorm"),
    ("the same at the study's $k$ and scale, our edit (the $k$ most negative eigenvalues of the symmetric part)",
     "RankStudyCellNorm", "RepRankEditedNorm"),
    ("the same, the study's edit (the first $k$ of the first $d$ eigenvalues of $W$, $d$ the head dimension, "
     "in the solver's order; real part ranked)", "RankStudyWayEditedNorm", "RepRankEditedNorm"),
    ("the same, the study's edit on the study's input (its vocabulary-level construction)",
     "RankStudyWayStudyInputEditedNorm", "RepRankEditedNorm"),
    ("raw mean self-rank, unedited (ours from one over this vocabulary, the study's from zero over GPT-2's: "
     "scales differ)", "RankUnedited", "RepRankUnedited"),
    ("raw mean self-rank at the study's $k$ and scale, our edit", "RankStudyCell", "RepRankEdited"),
    ("Leiden communities, the study's graph (key rows, self-loops, BOS, capped size)", "CluStudyCommunities",
     "RepCluCommunities"),
]
# A row that compares only while a switch of writeup.spec.SWITCHES holds, and leaves the table otherwise (the
# paper's text says why): a community count depends on the number of nodes.
REPLICATION_SWITCHES = {"CluStudyCommunities": "CluCountComparable"}


DERIVED_MARK = r"{}$^\dagger$"  # the mark of a value derived from the study's saved data (the caption explains it)


def derived_note(results: Results, name: str) -> str | None:
    """The note of a reported value that was derived from the study's saved data rather than reported in its
    text (paper/reported_gpt2.json: a section's `derived_from_saved_data` lists its keys), for the macro `name`
    (any of its reported entries so derived); None for a value the study reported."""
    macro = next(m for m in macros() if m.name == name)
    for source, path in macro.entries:
        section, _, key = path.partition(".")
        derived = results.get(source, f"{section}.derived_from_saved_data", default=None) if source == "reported" \
            else None
        if derived is not None and key in derived["keys"]:
            return derived["note"]
    return None


def table_replication(results: Results) -> str:
    """This run's numbers beside the numbers reported for GPT-2 small, as the macros that print them; a value the
    study did not report but that was derived from its saved data is marked (`DERIVED_MARK`, see `derived_note`).
    A row whose comparison does not hold on this model (`REPLICATION_SWITCHES`) is left out."""
    holds = switches(results)
    rows = []
    for label, ours, theirs in REPLICATION_ROWS:
        if not holds.get(REPLICATION_SWITCHES.get(ours, ""), True):
            continue
        note = derived_note(results, theirs)
        rows.append([label, rf"\{ours}", rf"\{theirs}" + ("" if note is None else DERIVED_MARK)])
    column = r">{\raggedright\arraybackslash}p{%s\linewidth}"
    header = ["quantity", "this run", "reported, GPT-2 small"]
    return tabular(column % 0.55 + column % 0.14 + column % 0.23, header, rows)


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


# The claim each compared statistic stands for, by "<results file>.<statistic>" (evidence.json's keys), and how its
# values print. A statistic without a label here is listed under its own key: every comparison appears.
EVIDENCE_LABELS = {
    "characterize_head.surprisal": ("S in context (held-out prompts)", ".3f"),
    "characterize_head.partner_mass": ("attention on category-mates", ".2f"),
    "characterize_head.self_mass": ("attention on itself and its copies", ".3f"),
    "characterize_head.bos_mass_no_partner": ("attention on BOS without a mate", ".2f"),
    "characterize_head.argmax_accuracy": ("most-attended key is a target", ".2f"),
    "skew_analysis.n_negative_eigenvalues": ("$W_\\text{sym}$ has $d_\\text{head}$ negative eigenvalues", "d"),
    "skew_analysis.negative_eigenvalue_share": ("negative share of $|\\lambda|$", ".2f"),
    "skew_analysis.trace": ("trace of $W_\\text{sym}$", ".2f"),
    "skew_analysis.self_score": ("mean self-score", ".2f"),
    "skew_analysis.self_negative_part": ("negative part of the self-score", ".2f"),
    "skew_analysis.margin": ("self-score minus partners' (margin)", ".2f"),
    "skew_analysis.margin_normalised": ("normalised margin", ".2f"),
    "skew_analysis.below_partners_share": ("words below every partner", "percent"),
    "skew_analysis.category_attraction": ("partners minus other words", ".2f"),
    "skew_analysis.self_vs_random_words": ("self minus random words (shuffled null)", ".2f"),
    "skew_analysis.top1_negative_share": ("negative self-score in the most negative component", "percent"),
    "skew_analysis.top4_negative_share": ("negative self-score in the 4 most negative components", "percent"),
    "skew_analysis.top16_negative_share": ("negative self-score in the 16 most negative components", "percent"),
    "sym_skew_maps.self_minus_in_group": ("group map: self minus in-group", ".2f"),
    "sym_skew_maps.in_minus_out_group": ("group map: in-group minus out-group", ".2f"),
    "sym_skew_maps.margin_normalised": ("group map: normalised margin", ".2f"),
    "sym_skew_maps.below_partners_share": ("group map: below every group-mate", "percent"),
    "eigenvalue_scaling.factor 1_self_mass": ("self mass, unedited", ".2f"),
    "eigenvalue_scaling.factor -1_self_mass_change": ("eigenvalues $\\times(-1)$: gain in self mass", ".2f"),
    "eigenvalue_scaling.factor 0_self_mass_change": ("eigenvalues $\\times 0$: gain in self mass", ".2f"),
    "eigenvalue_scaling.factor 0.5_self_mass_change": ("eigenvalues $\\times 0.5$: gain in self mass", ".2f"),
    "eigenvalue_scaling.targeted_self_mass_change": ("targeted flip: gain in self mass", ".2f"),
    "eigenvalue_rank_ablation.best_self_mass_change": ("rank ablation: largest gain in self mass", ".2f"),
    "eigenvalue_rank_ablation.best_mean_rank_change": ("rank ablation: largest fall in mean self-rank", ".1f"),
    "eigenvalue_rank_ablation.mean_rank": ("rank ablation: mean self-rank, unedited", ".1f"),
    "eigenvalue_rank_ablation.mean_rank_change": ("rank ablation: change in mean self-rank at the best cell", ".1f"),
    "eigenvalue_rank_ablation.self_mass_change": ("rank ablation: gain in self mass at the best cell", ".2f"),
    "gradient_steering.self_mass_before": ("self mass before steering", ".3f"),
    "gradient_steering.bos_no_partner_before": ("BOS mass without a mate, before steering", ".2f"),
    "gradient_steering.restore_partner_change": ("gradient restore: change in partner mass", ".2f"),
    "gradient_steering.restore_self_gain": ("gradient restore: gain in self mass", ".2f"),
    "gradient_steering.trace_self_gain": ("trace step: gain in self mass", ".2f"),
    "cosine_attention_analysis.mates_minus_others": ("cosine: mates minus other categories", ".2f"),
    "cosine_attention_analysis.word_mates_beat_self": ("cosine: a word's mates that beat its self-score", "percent"),
    "clustering.nmi": ("Leiden communities against the categories (NMI)", ".2f"),
    "clustering.study_ari": ("the study's graph against the categories (ARI)", ".2f"),
    "clustering.study_nmi": ("the study's graph against the categories (NMI)", ".2f"),
    "clustering.ari": ("Leiden communities against the categories (ARI)", ".2f"),
    "sae_features.self_minus_in_group": ("SAE features: self minus same category", ".2f"),
    "sae_features.in_minus_out_group": ("SAE features: same minus other category", ".1f"),
    "sae_features.margin_normalised": ("SAE features: normalised margin", ".2f"),
    "sae_features.below_partners_share": ("SAE features: below every same-category feature", "percent"),
    "sae_features.precision": ("SAE precision (the study's metric) at the $k$ fixed by its rule", ".2f"),
}
EVIDENCE_HEADER = ["claim", "role", "pred.", "target", "rank", "strongest control", r"difference [95\,\% CI]",
                   "verdict"]


CURVE_LABEL = re.compile(r"eigenvalue_scaling\.targeted k=(\d+)_(self_mass_change|self_mass_log_odds_change)")
LOG_ODDS_LABEL = re.compile(r"eigenvalue_scaling\.(.+)_self_mass_log_odds_change")


def evidence_label(key: str) -> tuple[str, str]:
    """The label and format of a compared statistic ("<file>.<statistic>"): from `EVIDENCE_LABELS`, from the
    targeted edit's curve and the log-odds gains by pattern, else the key itself (breakable)."""
    if key in EVIDENCE_LABELS:
        return EVIDENCE_LABELS[key]
    if match := CURVE_LABEL.fullmatch(key):
        k, change = match.groups()
        what = "gain in self mass" if change == "self_mass_change" else "gain in the self mass's log odds"
        return f"targeted flip of $k = {k}$ components: {what}", ".2f"
    if match := LOG_ODDS_LABEL.fullmatch(key):
        return f"{latex_escape(match.group(1))}: gain in the self mass's log odds", ".2f"
    return breakable(key), ".2f"


def breakable(key: str) -> str:
    """A results key in LaTeX that may break after its dots and underscores (an unlabelled statistic's name)."""
    return latex_escape(key).replace(r"\_", r"\_\allowbreak{}").replace(".", r".\allowbreak{}")


def _difference(entry: dict, fmt: str) -> str:
    diff = entry.get("difference")
    if not diff or diff.get("low") is None:
        return MISSING
    fmt = ".2f" if fmt in ("percent", "d") else fmt  # a difference of shares or counts prints as a plain number
    logit = " (logit)" if diff.get("scale") == "logit" else ""
    return (f"{format_value(diff['value'], fmt)} [{format_value(diff['low'], fmt)}, "
            f"{format_value(diff['high'], fmt)}]{logit}")


def evidence_rows(results: Results) -> list[list[str]]:
    """Every compared statistic of evidence.json (cells in LaTeX, as EVIDENCE_HEADER), the primary ones first: the
    target's value and rank, the strongest control, the CI of target minus strongest control, and the verdict (for
    a primary statistic, after Holm's correction over the family)."""
    rows_by_key = results.get("evidence", "results.statistics")
    family = results.get("evidence", "results.family")
    ordered = [*family, *(k for k in rows_by_key if k not in family)]  # the family in its order, then by file
    rows = []
    for key in ordered:
        if key not in rows_by_key:  # a primary statistic whose file was not run
            continue
        entry = rows_by_key[key]
        label, fmt = evidence_label(key)
        rival = entry["strongest_control"]
        rank = MISSING if entry["rank"] is None else f"{entry['rank']}/{entry['n_ranked']}"
        verdict = entry["verdict"]
        if key in family:
            corrected = "separates" if family[key]["separates_corrected"] else "does not separate"
            verdict = f"{corrected} (Holm)"
        rows.append([label, entry["role"], entry["direction"], format_value(entry["value"], fmt), rank,
                     MISSING if rival is None else f"{head_name(rival)} {format_value(rival['value'], fmt)}",
                     _difference(entry, fmt), verdict])
    return rows


def not_supported(results: Results) -> list[str]:
    """The claims the evidence does not support, as LaTeX labels: every primary statistic that does not separate
    after Holm's correction, every secondary one whose verdict is "does not separate", and each of the target's
    properties that does not hold (in behaviour or in the weights)."""
    family = results.get("evidence", "results.family")
    labels = [evidence_label(key)[0] + " (primary)" for key, entry in family.items() if not entry["separates_corrected"]]
    labels += [evidence_label(key)[0]
               for key in results.get("evidence", "results.secondary_by_verdict.does not separate")]
    for view, verdicts in results.get("evidence", "results.properties.target").items():
        labels += [f"{prop.replace('_', ' ')} ({view})" for prop in PROPERTIES
                   if verdicts is not None and not verdicts[prop]["holds"]]
    return labels


def table_not_supported(results: Results) -> str:
    """`not_supported` as an itemized list (or one item saying there is none)."""
    items = not_supported(results) or ["none"]
    return "\n".join([r"\begin{itemize}\setlength{\itemsep}{0pt}", *(rf"\item {label}" for label in items),
                      r"\end{itemize}", ""])


def table_evidence(results: Results) -> str:
    """The evidence table (evidence_rows) as a longtable that may run over pages, its header repeated; the caption
    is the paper's \evidencecaption."""
    def wrapped(width: float) -> str:
        return rf">{{\raggedright\arraybackslash}}p{{{width}\linewidth}}"
    # room for 144-head ranks and two-digit layers in "rank" and "strongest control"
    colspec = wrapped(0.24) + "llrr" + wrapped(0.13) + wrapped(0.17) + wrapped(0.11)
    header = " & ".join(EVIDENCE_HEADER) + r" \\"
    lines = [rf"\begin{{longtable}}{{{colspec}}}", r"\caption{\evidencecaption}\label{tab:evidence} \\",
             r"\toprule", header, r"\midrule", r"\endfirsthead", r"\toprule", header, r"\midrule", r"\endhead",
             r"\bottomrule", r"\endfoot"]
    lines += [" & ".join(row) + r" \\" for row in evidence_rows(results)]
    return "\n".join([*lines, r"\end{longtable}", ""])


def held_out_cell(side, fmt) -> list[str]:
    """One run of a held-out statistic (held_out.json): its value with its 95% CI where the run gives one, and
    its verdict ("--" where it has none)."""
    value = format_value(side["value"], fmt)
    if side["low"] is not None:
        value += f" [{format_value(side['low'], fmt)}, {format_value(side['high'], fmt)}]"
    return [value, side["verdict"] or MISSING]


def table_held_out(results: Results) -> str:
    """Each statistic on the supervised categories beside the held-out ones, each with its verdict by the same
    rule. Empty for a model whose ground truth lists no held-out categories."""
    if not switches(results)["HeldOut"]:
        return ""
    rows = [[label, *held_out_cell(entry["supervised"], fmt), *held_out_cell(entry["held_out"], fmt)]
            for key, entry in results.get("held_out", "results.statistics").items()
            for _, fmt, label in [HELD_OUT_ROWS[key]]]
    def wrapped(width: float) -> str:
        return rf">{{\raggedright\arraybackslash}}p{{{width}\linewidth}}"
    return tabular(wrapped(0.25) + "l" + wrapped(0.12) + "l" + wrapped(0.12),
                   ["statistic", "supervised", "verdict", "held-out", "verdict"], rows)


def tables(results: Results, scripts: Sequence[str]) -> dict[str, str]:
    """Every generated table, by name (written as tab_<name>.tex)."""
    return {
        "scan": table_scan(results),
        "token_circuits": table_token_circuits(results),
        "survey": table_survey(results),
        "ablation": table_ablation(results),
        "query_key": table_query_key(results),
        "eigen_steering": table_eigen_steering(results),
        "rank_ablation": table_rank_ablation(results),
        "gradient_steering": table_gradient_steering(results),
        "communities": table_communities(results),
        "sae_precision": table_sae_precision(results),
        "replication": table_replication(results),
        "evidence": table_evidence(results),
        "not_supported": table_not_supported(results),
        "held_out": table_held_out(results),
        "thresholds": table_thresholds(results),
        "provenance": table_provenance(results, scripts),
        "runs": table_runs(results, scripts),
    }
