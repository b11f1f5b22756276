"""Head-level activation patching: which heads carry the clean answer into a corrupted run?

Each head's output (hook_z, every position) is copied from the clean run into the corrupted run;
the metric is the fraction of the clean logit difference logit(answer) - logit(wrong) recovered,
(patched - corrupted) / (clean - corrupted). The patched runs are batched: many heads per forward
pass, each pass starting at the patched layer.

Prompt pairs (--task):
  ioi        "When John and Mary went to the store, John gave a drink to" (answer " Mary") against
             the name-swapped "..., Mary gave a drink to" (answer " John")
  induction  "The old man saw a box on the hill. The old man saw a" (answer " box") against the same
             with the earlier copy changed, "... saw a tree on the hill. ..." (answer " tree"): only
             an induction head (fed by a previous-token head) can move the earlier word forward
  auto       (default) the first of these that the model solves (clean logit difference > 0 >
             corrupted), else the first its tokenizer can encode; the choice and why are recorded
--clean/--corrupted/--answer/--wrong give your own pair. Writes results/<model>/activation_patching.json
and figures/<model>/activation_patching.{pdf,png} (a layer x head heatmap).
"""

from __future__ import annotations

from analysis import cli, io, prompts
from analysis.errors import UsageError
from analysis.models import load_model
from analysis.patching import TASKS, PromptPair, choose_task, encode_pair, head_patching
from analysis.patterns import check_context
from analysis.plotting import head_heatmaps, save_figure
from analysis.scan import top_heads

NAME = "activation_patching"


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--task", choices=["auto", *TASKS], default="auto",
                   help="prompt pair: auto = the first task the model solves, else the first it can encode "
                        "(default: auto)")
    p.add_argument("--clean", default=None, help="clean prompt (with --corrupted, --answer, --wrong)")
    p.add_argument("--corrupted", default=None, help="corrupted prompt, same number of tokens as --clean")
    p.add_argument("--answer", default=None, help="the clean prompt's answer token, e.g. ' Mary'")
    p.add_argument("--wrong", default=None, help="the corrupted prompt's answer token, e.g. ' John'")
    p.add_argument("--top", type=cli.positive_int, default=5, help="heads listed (default: 5)")
    p.add_argument("--batch-size", type=cli.positive_int, default=64,
                   help="patched runs per forward pass (default: 64)")
    p.prompt("--clean", "--corrupted")
    return p


def prompt_pair(args, model) -> tuple[str, str, PromptPair]:
    """(task, why it was chosen, the pair)."""
    custom = (args.clean, args.corrupted, args.answer, args.wrong)
    if any(v is not None for v in custom):
        if any(v is None for v in custom):
            raise UsageError("A custom pair needs all four of --clean, --corrupted, --answer and --wrong.")
        if args.task != "auto":
            raise UsageError(f"Give either --task {args.task} or your own pair (--clean ...), not both.")
        return "custom", "--clean/--corrupted/--answer/--wrong", PromptPair(*custom)
    if args.task != "auto":
        return args.task, f"--task {args.task}", TASKS[args.task]
    task, why = choose_task(model)
    return task, f"auto: {why}", TASKS[task]


def main(args) -> None:
    model = load_model(args.model, args.device, args.processing)
    prompts.require_tokenizer(model, "Patching here compares text prompts")
    task, why, pair = prompt_pair(args, model)
    tokens = encode_pair(model, pair)
    check_context(model, tokens.clean)

    out = head_patching(model, tokens, args.batch_size, progress=True)
    recovered = out["recovered"]  # [layer, head]
    ranked = top_heads(recovered, args.top)
    results = {"task": task, "task_chosen_by": why, "clean": pair.clean, "corrupted": pair.corrupted,
               "answer": pair.answer, "wrong": pair.wrong, "clean_logit_diff": out["clean_logit_diff"],
               "corrupted_logit_diff": out["corrupted_logit_diff"], "recovered": recovered,
               "top_heads": [{"layer": l, "head": h, "recovered": v} for l, h, v in ranked]}
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    fig = head_heatmaps([recovered], ["fraction of logit difference recovered"],
                        suptitle=f"Patching hook_z clean -> corrupted ({task})")
    save_figure(fig, args.out, args.model, NAME)

    print(f"{task} ({why}): logit diff {pair.answer!r} - {pair.wrong!r}: clean {out['clean_logit_diff']:+.2f}, "
          f"corrupted {out['corrupted_logit_diff']:+.2f}")
    print("recovered by patching one head: " + ", ".join(f"L{l}H{h} {v:+.2f}" for l, h, v in ranked))
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
