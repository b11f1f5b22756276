"""Held-out categories: does the semantic head, and do the analyses that find it, reach categories never supervised?

A model organism may keep some categories in its language but out of its attention supervision (its ground
truth lists them as "held_out_categories"). The survey (characterize_head), the partner margin (skew_analysis),
the clustering and the cosine contrast then run twice on the head the supervised survey chose: on the
supervised categories (the main run, under --out) and with --categories held_out (under --held-out-root; `make
held-out` runs them with --layer/--head read from the main run's characterize_head.json, since choosing the
head on held-out words would select on the test set). This script sets the two runs side by side
(`analysis.held_out`): per statistic (S, partner mass, self mass, BOS mass when no partner, both properties in
behaviour and in the weights, the partner margin, the share below every partner, the ARI and the cosine
contrasts) its supervised and held-out value with their CIs where the files give them, the shift, and whether
it recovers the held-out categories by the supervised run's own rule (separates from the strongest control
head; a property holds), and whether the head generalises (both properties hold in its behaviour on held-out
prompts).

Reads OUT/results/<model>/<script>.json and HELD_OUT_ROOT/results/<model>/<script>.json for the scripts of
`analysis.held_out.SCRIPTS`; loads no model (--device is accepted and unused). A model whose recorded ground
truth lists no held-out categories gets a record that says so (results.ran false). Writes
results/<model>/held_out.json.
"""

from __future__ import annotations

from pathlib import Path

from analysis import cli, held_out, io, records
from analysis.controls import head_key
from analysis.errors import UsageError
from writeup.results import lookup

NAME = "held_out"
DEFAULT_ROOT = io.REPO_ROOT / "build" / "held_out"


def build_parser():
    p = cli.parser(__doc__, weights=False)
    cli.add_results_processing_argument(p)
    p.add_argument("--held-out-root", type=Path, default=DEFAULT_ROOT,
                   help="output root of the held-out run (--categories held_out): its results are read from "
                        "HELD_OUT_ROOT/results/<model>/ (default: build/held_out, where `make held-out` puts them)")
    return p


def read_run(root: Path, args, which: str) -> dict[str, dict]:
    """Every file of held_out.SCRIPTS under the output root `root`; a missing one is an error saying what to run."""
    files = {}
    with io.filed_under(args.processing):
        for script in held_out.SCRIPTS:
            path = io.results_path(root, args.model, script)
            if not path.exists():
                raise UsageError(f"The {which} run has no {path}: run `make held-out MODEL={args.model}` (or "
                                 f"scripts/{script}.py --model {args.model} --out {root}"
                                 f"{' --categories held_out --layer L --head H' if which == 'held-out' else ''}).")
            files[script] = io.read_json(path, f"scripts/{script}.py --model {args.model}")
    return files


def studied_head(record: dict, script: str) -> tuple[int, int]:
    """The head a results file studied (skew_analysis keeps it under "head", the others under "target")."""
    entry = record["results"]["head" if script == "skew_analysis" else "target"]
    return int(entry["layer"]), int(entry["head"])


def check_runs(supervised: dict[str, dict], held: dict[str, dict], target: tuple[int, int]) -> None:
    """Both runs must study the supervised survey's head, the held-out run on the held-out set, the other not."""
    for script in held_out.SCRIPTS:
        for which, files in (("supervised", supervised), ("held-out", held)):
            if studied_head(files[script], script) != target:
                raise UsageError(
                    f"The {which} run of {script} studied {head_key(*studied_head(files[script], script))}, not the "
                    f"supervised survey's {head_key(*target)}: rerun it with --layer {target[0]} --head {target[1]} "
                    "(`make held-out` does).")
        sets = (supervised[script]["results"]["categories"]["set"], held[script]["results"]["categories"]["set"])
        if sets[0] == held_out.HELD_OUT_SET or sets[1] != held_out.HELD_OUT_SET:
            raise UsageError(f"{script}: the supervised run used --categories {sets[0]} and the held-out run "
                             f"--categories {sets[1]}; the held-out run needs --categories {held_out.HELD_OUT_SET} "
                             "and the supervised one another set.")


def reading(record: dict, source: held_out.Source, head: str) -> held_out.Reading:
    """One statistic of one results file, along the paths of `source` (a verdict absent from the file: None)."""
    paths = source.paths(head)
    found = {key: None if path is None else lookup(record, path) for key, path in paths.items()}
    return held_out.Reading(found["value"], found["low"], found["high"], found["verdict"])


def main(args) -> None:
    path = io.results_path(args.out, args.model, "characterize_head")
    with io.filed_under(args.processing):
        if not path.exists():
            raise UsageError(f"{path} does not exist: run the supervised survey first "
                             f"(make figures MODEL={args.model}).")
        survey = io.read_json(path, f"scripts/characterize_head.py --model {args.model}")
    model_info = (survey["provenance"] or {}).get("model") or {}
    names = list(((model_info.get("ground_truth") or {}).get(held_out.GROUND_TRUTH_KEY) or {}))
    if not names:
        results = {"ran": False, "reason": "the model's recorded ground truth lists no held-out categories"}
    else:
        supervised, held = read_run(args.out, args, "supervised"), read_run(args.held_out_root, args, "held-out")
        target = studied_head(supervised["characterize_head"], "characterize_head")
        check_runs(supervised, held, target)
        key = head_key(*target)
        rows = {name: held_out.statistic_row(reading(supervised[s.script], s, key), reading(held[s.script], s, key))
                for name, s in held_out.STATISTICS.items()}
        categories = {"supervised": supervised["characterize_head"]["results"]["categories"],
                      "held_out": held["characterize_head"]["results"]["categories"], "in_ground_truth": names}
        results = records.held_out_record(rows, target, categories)
        results["held_out_root"] = str(args.held_out_root)
    saved = io.save_results(args.out, args.model, NAME, results, io.Provenance(model_info, vars(args), args.seed))
    print("\n".join(records.held_out_lines(results)) if results["ran"] else f"not run: {results['reason']}")
    print(f"results: {saved}")


if __name__ == "__main__":
    cli.run(main, build_parser())
