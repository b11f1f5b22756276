"""The evidence for the claim, gathered from a model's mechanism results: primary statistics corrected together.

The claim is that the target head is a self-suppressing semantic head. `analysis.evidence` names,
before any result is read, the three primary statistics (S in context, the partner margin and the
share of words below every partner, each against its strongest control head) and the decision
rule: each must separate from its strongest control after Holm's correction over the three
(one-sided alpha 0.025), and the target must have both properties of `analysis.properties`,
self-avoidance and category attraction, in its behaviour (characterize_head) and in its weights
(skew_analysis). Every other compared statistic of the mechanism scripts is secondary: listed
with its own CI and verdict, never counted towards the claim. A mechanism file that is missing
(its script not run) is recorded as missing and leaves its rows out.

Reads OUT/results/<model>/<script>.json for the scripts of `analysis.evidence.REPORTS`; loads no
model (--device is accepted and unused). Writes results/<model>/evidence.json and
figures/<model>/evidence (every head's two property statistics with CIs, in both views).
"""

from __future__ import annotations

from collections import Counter

from analysis import cli, evidence, io
from analysis.controls import LEVEL, head_key
from analysis.errors import UsageError
from analysis.plotting import property_verdicts_figure, save_figure
from analysis.properties import MIN_EFFECT, PROPERTIES
from writeup.results import lookup

NAME = "evidence"


def build_parser():
    p = cli.parser(__doc__, weights=False)
    cli.add_results_processing_argument(p)
    return p


def read_reports(args) -> tuple[dict, dict]:
    """(file -> its whole results JSON or None when missing) for every file of REPORTS; a damaged file is an error."""
    files, missing = {}, {}
    with io.filed_under(args.processing):
        for source in evidence.REPORTS:
            path = io.results_path(args.out, args.model, source)
            if not path.exists():
                files[source], missing[source] = None, f"{path} does not exist: scripts/{source}.py was not run"
                continue
            files[source] = io.read_results(args.out, args.model, source)
    if files["skew_analysis"] is None and files["characterize_head"] is None:
        raise UsageError(f"neither characterize_head nor skew_analysis has results for --model {args.model} under "
                         f"{args.out}/results/: run them first (make figures MODEL={args.model}).")
    return files, missing


def main(args) -> None:
    files, missing = read_reports(args)
    reports, no_report = evidence.comparison_reports(files)
    missing |= no_report
    rows = evidence.statistic_rows(reports)
    family = evidence.family_verdicts({(s, n): rows.get(f"{s}.{n}") for s, n in evidence.PRIMARY})
    # the head each file studied: the claim is about one head, so a disagreement is shown, not hidden
    targets = {source: [lookup(files[source], path)[k] for k in ("layer", "head")] for source, path in
               (("characterize_head", "results.target"), ("skew_analysis", "results.head")) if files[source]}
    layer, head = targets.get("skew_analysis") or targets["characterize_head"]
    target_key = head_key(layer, head)
    properties = {view: None if files[source] is None else lookup(files[source], path)
                  for view, (source, path) in evidence.PROPERTY_SOURCES.items()}
    target_properties = {view: None if record is None else record["by_head"][target_key]
                         for view, record in properties.items()}
    both = {view: None if record is None else [k for k, v in record["by_head"].items() if v["both_hold"]]
            for view, record in properties.items()}
    results = {
        "target": {"layer": layer, "head": head, "by_file": targets},
        "primary": [f"{s}.{n}" for s, n in evidence.PRIMARY],
        "rule": {"level": LEVEL, "alpha": evidence.ALPHA, "correction": "Holm over the primary statistics",
                 "properties": f"both properties hold (CI beyond ±log 2 = ±{MIN_EFFECT:.3f} nats) in every view"},
        "family": family,
        "statistics": rows,
        "properties": {"target": target_properties, "heads_with_both": both},
        "claim": evidence.claim_verdict(family, target_properties),
        "secondary_by_verdict": evidence.by_verdict(rows, "secondary"),
        "missing": missing,
    }
    model_info = ((files["skew_analysis"] or files["characterize_head"])["provenance"] or {}).get("model")
    path = io.save_results(args.out, args.model, NAME, results, io.Provenance(model_info, vars(args), args.seed))
    save_figure(property_verdicts_figure(properties, MIN_EFFECT, target_key), args.out, args.model, NAME)

    for key, entry in family.items():
        p = "-" if entry["p_holm"] is None else f"{entry['p_holm']:.4f}"
        print(f"primary {key}: {entry['verdict']}; Holm-adjusted p {p}: "
              f"{'separates' if entry['separates_corrected'] else 'does not separate'} after correction")
    for view, verdicts in target_properties.items():
        if verdicts is not None:
            held = [p for p in PROPERTIES if verdicts[p]["holds"]]
            print(f"{target_key} properties ({view}): {', '.join(held) or 'neither'}; heads with both: "
                  f"{', '.join(both[view]) or 'none'}")
    counts = Counter(row["verdict"] for row in rows.values())
    print(f"{len(rows)} compared statistics: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
    missing_note = f" (missing: {', '.join(missing)})" if missing else ""
    print(f"claim supported: {results['claim']['supported']}{missing_note}")
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
