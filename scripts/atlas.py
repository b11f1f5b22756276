"""The atlas: every head of every model profiled, labelled and ranked across models, with an offline page.

Per head (analysis/atlas.py): previous-token, induction and duplicate-token scores; S and the partner,
self (+ copies) and BOS-without-partner masses with CIs; self-avoidance and category attraction, each a
verdict with a CI, from the head's behaviour on category prompts and from its weights on the category
words' vocabulary-level inputs; a kind label from rules fixed in advance; every value's percentile and
z-score among the model's other heads. The ranking across models is decided on one prompt set (the
selection set) and every value shown is measured on another (the report set).

Each model is one job, on an existing engine (--executor): in this process (default), as local processes
(submitit), or on a SLURM cluster (submitit; --partition, --gpus, --time, --mem). Each model's folder,
OUT/models/<model id>/, is written whole or not at all, so a rerun skips finished models and resumes
after a crash (--redo runs them again).

Writes OUT/atlas.json and OUT/atlas.csv (every head, ranked across models), OUT/figures/atlas_scatter.{pdf,png}
(S against category attraction, layer depth as colour) and OUT/index.html (an offline page: sortable table,
scatter, each head's attention on a category prompt).
"""

from __future__ import annotations

import sys

from analysis import atlas, cli, io
from analysis.atlas_store import (ModelJob, check_same_settings, combine, csv_text, is_finished, model_folder,
                                  read_display, read_profile, run_model_job, table_row)
from analysis.errors import UsageError
from analysis.infra import jobs, staging
from analysis.infra.atlas_page import atlas_page
from analysis.io import REPO_ROOT
from analysis.plotting import atlas_scatter, save_figure_in
from analysis.scan import ScanSettings

DEFAULT_MODELS = ("organism", "organism-llama", "organism-neox", "organism-negative-control", "gpt2-random")


def build_parser():
    p = cli.parser(__doc__, staged=False, weights=False, out_default=REPO_ROOT / "atlas",
                   out_help="output folder: OUT/models/<model id>/ per model, OUT/atlas.json, OUT/atlas.csv, "
                            "OUT/figures/ and OUT/index.html (default: atlas/ in the repository)")
    cli.add_models_argument(p, DEFAULT_MODELS)
    cli.add_categories_argument(p)
    p.add_argument("--n-prompts", type=cli.positive_int, default=64,
                   help="category prompts in each of the selection and report sets (default: 64)")
    p.add_argument("--n-words", type=cli.int_at_least(2), default=64, help="words per category prompt (default: 64)")
    p.add_argument("--scan-prompts", type=cli.positive_int, default=16,
                   help="random and repeated prompts of the previous-token and induction probes (default: 16)")
    p.add_argument("--n-resamples", type=cli.int_at_least(100), default=1000,
                   help="bootstrap resamples of every CI (default: 1000)")
    p.add_argument("--redo", action="store_true",
                   help="profile every model again, even those already in OUT (each old folder is replaced whole "
                        "once its new one is complete)")
    p.add_argument("--executor", choices=jobs.EXECUTORS, default="inprocess",
                   help="'inprocess' (one model after another, here), 'local' (each model a local process, all at "
                        "once, through submitit) or 'slurm' (each model a SLURM job through submitit) "
                        "(default: inprocess)")
    p.add_argument("--threads", type=cli.positive_int, default=None,
                   help="torch threads per job (default: torch's own choice in process; 1 for local and slurm jobs)")
    p.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    p.add_argument("--gpus", type=cli.int_at_least(0), default=0,
                   help="GPUs per SLURM job (default: 0); give --device cuda with it")
    p.add_argument("--time", type=cli.positive_int, default=120, help="minutes per job before it is stopped "
                                                                     "(local and slurm; default: 120)")
    p.add_argument("--mem", type=cli.positive_int, default=None, help="GB of memory per SLURM job (default: the "
                                                                    "cluster's)")
    return p


def main(args) -> None:
    names = cli.chosen_models(args)
    settings = atlas.AtlasSettings(scan=ScanSettings(n_random=args.scan_prompts, n_repeated=args.scan_prompts),
                                   n_prompts=args.n_prompts, n_words=args.n_words, n_resamples=args.n_resamples)
    engine = jobs.JobSettings(executor=args.executor, folder=args.out / "jobs", timeout_min=args.time,
                              cpus=args.threads or 1, partition=args.partition, gpus=args.gpus, mem_gb=args.mem)
    jobs.check_engine(engine)
    threads = args.threads if args.threads or args.executor == "inprocess" else 1
    jobs_of = {name: ModelJob(name, args.out, args.device, args.seed, args.categories, threads, settings, args.redo)
               for name in names}
    for name in names:
        if is_finished(args.out, name) and not args.redo:
            check_same_settings(jobs_of[name])
    todo = {name: job for name, job in jobs_of.items() if args.redo or not is_finished(args.out, name)}
    for name in names:
        state = "to profile" if name in todo else "finished earlier, skipped"
        print(f"{name}: {state} ({model_folder(args.out, name)})")
    outcomes = jobs.run_jobs(run_model_job, todo, engine)
    failed = {name: o.error for name, o in outcomes.items() if not o.ok}
    for name, error in failed.items():
        print(f"{name}: FAILED, {error}; its folder is absent, a rerun profiles it again", file=sys.stderr)

    done = [name for name in names if is_finished(args.out, name)]
    if not done:
        raise UsageError("No model of --models could be profiled, so there is no atlas to write. "
                         + " ".join(f"{n}: {e}." for n, e in failed.items()))
    profiles = {name: read_profile(args.out, name) for name in done}
    combined = combine(profiles)
    provenance = io.Provenance(None, vars(args), args.seed).record()
    with staging.output_run(args.out, [args.out, args.out / "figures"]):
        io.write_output(args.out / "atlas.json", io.json_text({
            "provenance": provenance, "results": {**combined, "missing": failed}}))
        io.write_output(args.out / "atlas.csv",
                        csv_text([table_row(h["model"], h["head_name"], h) for h in combined["heads"].values()]))
        save_figure_in(atlas_scatter(combined["heads"]), args.out / "figures", "atlas_scatter")
        displays = {profiles[n]["model"]["id"]: read_display(args.out, n) for n in done}
        made = {"commit": provenance["git_commit"], "time": provenance["utc_time"], "seed": args.seed,
                "categories": args.categories, "n_prompts": args.n_prompts}
        io.write_output(args.out / "index.html", atlas_page({**combined, "provenance": made}, displays))

    for key, head in list(combined["heads"].items())[:10]:
        print(f"{head['rank']:>4d}  {key:<40s} {head['kind']:<16s} S = {head['S']['value']:.3f} "
              f"[{head['S']['low']:.3f}, {head['S']['high']:.3f}]")
    kinds = {}
    for head in combined["heads"].values():
        kinds[head["kind"]] = kinds.get(head["kind"], 0) + 1
    print(f"{len(combined['heads'])} heads of {len(done)} models: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    print(f"atlas: {args.out / 'atlas.json'}, page: {args.out / 'index.html'}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main, build_parser())
