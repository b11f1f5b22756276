"""The negative control: would the pipeline report a self-suppressing semantic head in a model that has none?

The negative-control organism is trained with the model's recipe, except that no semantic head is
planted; in its place sit a decoy (attends to earlier words of its category, itself and its copies
included) and a category-blind self-avoider (attends to anything but itself and its copies). Its
mechanism scripts run as on the organism (`make negative-control` runs them first). Recorded:

  properties    each planted decoy/avoider's two property verdicts in behaviour and in the weights,
                and whether they are exactly its own (decoy: category attraction only; avoider:
                self-avoidance only); the heads with both properties (there should be none)
  claim         the evidence's verdict on the negative control's chosen head
  statistics    for every compared statistic of the evidence: the organism's target value and verdict
                beside the negative control's chosen head, value and verdict, and the head the
                statistic ranks first there. A statistic that ranks a decoy or an avoider first would
                name a head without the mechanism as the semantic head: it "cannot tell them apart"
                (rule fixed in `analysis.replication` before any negative-control result was read)

A model without a negative control of its recipe (a pretrained or random model) has none: the results
say so. Loads no model (--device is accepted and unused). Writes results/<model>/negative_control.json
and figures/<model>/negative_control (the negative control's property statistics per head, with CIs).
--list-models prints the negative-control organisms and exits.
"""

from __future__ import annotations

from analysis import cli, evidence, io, replication
from analysis.controls import head_key
from analysis.errors import UsageError
from analysis.organism.files import ground_truth
from analysis.organism.recipes import checkpoint_directory, negative_controls
from analysis.plotting import property_verdicts_figure, save_figure
from analysis.properties import MIN_EFFECT
from writeup.results import lookup

NAME = "negative_control"


def build_parser():
    p = cli.parser(__doc__, weights=False)
    p.add_argument("--list-models", action="store_true", help="print the negative-control organisms and exit")
    return p


def statistics_rows(own: dict, control: dict, control_files: dict, planted: dict) -> dict[str, dict]:
    """Per statistic of the organism's evidence: its value and verdict there, the negative control's chosen head's,
    and the head the statistic ranks first on the negative control with what that says (`replication.telling_apart`)."""
    reports, _ = evidence.comparison_reports(control_files)
    rows = {}
    for key, row in own["statistics"].items():
        theirs = control["statistics"].get(key)
        report = reports.get(row["file"])
        values = replication.head_values(report, row["statistic"]) if report is not None else {}
        rows[key] = {"file": row["file"], "statistic": row["statistic"], "direction": row["direction"],
                     "role": row["role"], "organism": {"value": row["value"], "verdict": row["verdict"]},
                     "negative_control": None if theirs is None else {"value": theirs["value"],
                                                                      "verdict": theirs["verdict"]},
                     **replication.telling_apart(replication.best_head(values, row["direction"]), planted)}
    return rows


def main(args) -> None:
    controls = negative_controls(args.model)
    if args.list_models:
        print("\n".join(controls))
        return
    if len(controls) > 1:
        raise UsageError(f"{len(controls)} negative controls share the recipe of {args.model} ({', '.join(controls)}): "
                         "keep one in analysis/organism/zoo/.")
    own = io.read_results(args.out, args.model, "evidence", "make negative-control")  # provenance names the model
    results = {"negative_control": None, "why_empty": f"no shipped negative control shares {args.model}'s recipe"}
    records = {}
    if controls:
        control = controls[0]
        planted = ground_truth(checkpoint_directory(control))["planted_heads"]
        files = {source: io.read_results(args.out, control, source, "make negative-control")
                 for source in evidence.REPORTS}
        theirs = io.read_results(args.out, control, "evidence", "make negative-control")["results"]
        records = {view: lookup(files[source], path) for view, (source, path) in evidence.PROPERTY_SOURCES.items()}
        rows = statistics_rows(own["results"], theirs, files, planted)
        expected = {view: replication.expected_properties(r["by_head"], planted) for view, r in records.items()}
        results = {
            "negative_control": control, "why_empty": None, "planted_heads": planted,
            "chosen_head": head_key(theirs["target"]["layer"], theirs["target"]["head"]),
            "claim_supported": bool(theirs["claim"]["supported"]),
            "heads_with_both": theirs["properties"]["heads_with_both"],
            "properties": expected,
            "as_expected": all(e["as_expected"] for by_kind in expected.values() for e in by_kind.values()),
            "statistics": rows,
            "cannot_tell_apart": [k for k, r in rows.items() if not r["tells_apart"]],
        }
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(own["provenance"]["model"], vars(args), args.seed))
    save_figure(property_verdicts_figure(records, MIN_EFFECT), args.out, args.model, NAME)
    if not controls:
        print(results["why_empty"])
    else:
        for view, by_kind in results["properties"].items():
            for kind, entry in by_kind.items():
                held = [p for p, h in entry["holds"].items() if h]
                print(f"{view}: {kind} {entry['head']} has {', '.join(held) or 'neither property'}"
                      f" ({'as planted' if entry['as_expected'] else 'NOT as planted'})")
        print(f"heads with both properties: {results['heads_with_both']}; claim supported on the negative control: "
              f"{results['claim_supported']}")
        print(f"{len(results['cannot_tell_apart'])} of {len(results['statistics'])} statistics rank a decoy or "
              f"avoider first: {', '.join(results['cannot_tell_apart']) or 'none'}")
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
