"""The tables of the organism as a simulation study: the seed table and the negative control's statistics."""

from __future__ import annotations

from writeup.format import MISSING, format_value, latex_escape
from writeup.results import Results
from writeup.tables import evidence_label, tabular

# verdicts as the negative-control table prints them (its caption gives the key)
SHORT_VERDICTS = {"separates": "sep.", "does not separate": "not", "tie": "tie", "descriptive": "desc.",
                  "undefined": "undef."}


def table_seeds(results: Results) -> str:
    """Per primary statistic, its value in each organism of the recipe (marked * where it does not separate after
    Holm), mean and standard deviation, and the number of organisms in which it separates; then the claim, the
    survey's choice and the scan, each as k of n. Empty for a model with no recipe."""
    summary = results.get("seeds", "results.summary")
    if summary is None:
        return ""
    organisms = results.get("seeds", "results.organisms")
    n = summary["n"]
    rows = []
    for key, entry in summary["primary"].items():
        label, fmt = evidence_label(key)
        cells = [format_value(o["primary"][key]["value"], fmt) + ("" if o["primary"][key]["holds"] else "*")
                 for o in organisms.values()]
        mean = f"{format_value(entry['mean'], fmt)} $\\pm$ {format_value(entry['sd'], fmt)}"
        rows.append([label, *cells, mean, f"{entry['holds']} of {n}"])
    counts = (("claim supported", [o["claim_supported"] for o in organisms.values()], summary["claim_supported"]),
              ("survey chose the planted head", [o["target_is_planted"] for o in organisms.values()],
               summary["target_is_planted"]))
    for label, flags, k in counts:
        rows.append([label, *("yes" if f else "no" for f in flags), MISSING, f"{k} of {n}"])
    for kind, k in summary["planted_found_first"].items():
        flags = [o["planted_found_first"].get(kind, False) for o in organisms.values()]
        rows.append([f"scan ranks the planted {latex_escape(kind.replace('_', '-'))} head first",
                     *("yes" if f else "no" for f in flags), MISSING, f"{k} of {n}"])
    column = r">{\raggedright\arraybackslash}p{0.22\linewidth}"
    header = ["", *(f"seed {o['seed']}" for o in organisms.values()), r"mean $\pm$ sd", "holds"]
    return tabular(column + "r" * len(organisms) + "rr", header, rows)


def table_negative_control(results: Results) -> str:
    """Every statistic of the evidence: the organism's target value and verdict, the negative control's chosen
    head's, and the head the statistic ranks first on the negative control with its planted kind (a decoy or an
    avoider there: the statistic cannot tell them apart). A longtable; empty without a negative control."""
    if results.get("negative_control", "results.negative_control") is None:
        return ""
    rows = []
    for key, row in results.get("negative_control", "results.statistics").items():
        label, fmt = evidence_label(key)
        theirs = row["negative_control"]
        best = MISSING if row["best_head"] is None else row["best_head"] + (
            f" ({row['best_kind'].replace('_', '-')})" if row["best_kind"] else "")

        def cell(entry) -> str:
            return f"{format_value(entry['value'], fmt)} ({SHORT_VERDICTS.get(entry['verdict'], entry['verdict'])})"
        rows.append([label, cell(row["organism"]), MISSING if theirs is None else cell(theirs),
                     latex_escape(best), "yes" if row["tells_apart"] else r"\textbf{no}"])

    def wrapped(width: float) -> str:
        return rf">{{\raggedright\arraybackslash}}p{{{width}\linewidth}}"
    header = " & ".join(["statistic", "organism", "negative control", "ranked first there", "tells apart"]) + r" \\"
    lines = [rf"\begin{{longtable}}{{{wrapped(0.34) + wrapped(0.15) + wrapped(0.15) + wrapped(0.17) + 'l'}}}",
             r"\caption{\negativecontrolcaption}\label{tab:negative-control} \\", r"\toprule", header, r"\midrule",
             r"\endfirsthead", r"\toprule", header, r"\midrule", r"\endhead", r"\bottomrule", r"\endfoot"]
    lines += [" & ".join(r) + r" \\" for r in rows]
    return "\n".join([*lines, r"\end{longtable}", ""])


def table_cannot_tell_apart(results: Results) -> str:
    """The statistics that rank a decoy or an avoider first on the negative control, as an itemized list."""
    if results.get("negative_control", "results.negative_control") is None:
        return ""
    keys = results.get("negative_control", "results.cannot_tell_apart")
    items = [evidence_label(k)[0] for k in keys] or ["none"]
    return "\n".join([r"\begin{itemize}\setlength{\itemsep}{0pt}", *(rf"\item {label}" for label in items),
                      r"\end{itemize}", ""])


def simulation_tables(results: Results) -> dict[str, str]:
    return {"seeds": table_seeds(results), "negative_control": table_negative_control(results),
            "cannot_tell_apart": table_cannot_tell_apart(results)}
