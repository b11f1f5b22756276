"""The seed table: is the organism's result one lucky run? The primary statistics and the head scan on every
shipped organism trained with the model's recipe.

The organisms of a recipe are those whose training logs agree on every setting but the seed and the
places of the planted heads (`analysis.replication.recipe`); the shipped ones are the organism and
organism-seed-1 to -4, whose heads sit at places drawn from their seeds. For each, this reads the
results of scan_heads and evidence (`make seeds` runs scan_heads, characterize_head, skew_analysis
and evidence on each first) and records: the primary statistics with their Holm-corrected verdicts,
the two properties of the head the survey chose, the claim, whether the chosen head is the planted
semantic head, and whether the scan, told nothing, ranks each planted head first of its kind. The
summary gives each primary statistic's mean, standard deviation and range over the organisms, and
every verdict as "holds in k of n". Nothing here knows where a planted head sits but the ground truth.

A model without a training log (a pretrained or random model) has no recipe, and an organism alone in its
recipe (the negative control) has no other seeds: the results say so and the summary is empty. The model's own evidence.json must exist: its provenance names the model. Loads no
model (--device is accepted and unused).
Writes results/<model>/seeds.json and figures/<model>/seeds (each primary statistic per organism,
filled where its corrected verdict holds). --list-models prints the organisms and exits.
"""

from __future__ import annotations

from analysis import cli, io, replication
from analysis.errors import UsageError
from analysis.organism.files import ground_truth, training_config
from analysis.organism.recipes import checkpoint_directory, recipe_models
from analysis.plotting import panel_dots, save_figure

NAME = "seeds"


def build_parser():
    p = cli.parser(__doc__, weights=False)
    p.add_argument("--list-models", action="store_true",
                   help="print the organisms of the model's recipe, one per line, and exit")
    return p


def main(args) -> None:
    models = recipe_models(args.model)
    if args.list_models:
        print("\n".join(models))
        return
    own = io.read_results(args.out, args.model, "evidence", "make seeds")  # its provenance names the model
    rows = {}
    for model in models:  # every input is read before anything is written: a missing one is one paragraph
        truth = ground_truth(checkpoint_directory(model))
        if truth is None:
            raise UsageError(f"{model} has a training log but no ground truth beside it, so its planted heads are "
                             "unknown: restore its ground_truth.json or retrain it with scripts/train_organism.py.")
        evidence = own if model == args.model else io.read_results(args.out, model, "evidence", "make seeds")
        rows[model] = replication.seed_row(evidence["results"],
                                           io.read_results(args.out, model, "scan_heads", "make seeds")["results"][
                                               "top_heads"], truth["planted_heads"])
        rows[model]["seed"] = training_config(checkpoint_directory(model))["seed"]
        rows[model]["planted_heads"] = truth["planted_heads"]
    results = {
        "models": models,
        "recipe": None if not models else replication.recipe(training_config(checkpoint_directory(models[0]))),
        "organisms": rows,
        "summary": replication.seed_summary(rows) if len(rows) > 1 else None,
        "why_empty": (f"{args.model} has no training log, so no recipe to retrain" if not models else
                      None if len(models) > 1 else f"no other shipped organism shares {args.model}'s recipe"),
    }
    primary = next(iter(rows.values()))["primary"] if rows else {}
    panels = {key: {f"seed {r['seed']}": (r["primary"][key]["value"], r["primary"][key]["holds"])
                    for r in rows.values()} for key in primary}
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(own["provenance"]["model"], vars(args), args.seed))
    save_figure(panel_dots(panels, "value (filled: separates after Holm)"), args.out, args.model, NAME)
    if results["summary"] is None:
        print(results["why_empty"])
    else:
        summary = results["summary"]
        n = summary["n"]
        for key, entry in summary["primary"].items():
            print(f"{key}: mean {entry['mean']:+.3f} (sd {entry['sd']:.3f}, {entry['min']:+.3f} to "
                  f"{entry['max']:+.3f}); separates after Holm in {entry['holds']} of {n}")
        print(f"claim supported in {summary['claim_supported']} of {n}; the survey chose the planted head in "
              f"{summary['target_is_planted']} of {n}; scan ranks planted heads first: "
              + ", ".join(f"{k} {v} of {n}" for k, v in summary["planted_found_first"].items()))
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
