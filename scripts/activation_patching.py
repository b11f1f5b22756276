"""Head-level activation patching: which heads carry the clean answer into a corrupted run?

Each head's output (hook_z, every position) is copied from the clean run into the corrupted run
(TransformerLens's patching, one pass per head); the metric is the fraction of the clean logit
difference logit(answer) - logit(wrong) recovered, (patched - corrupted) / (clean - corrupted).

Default prompt pairs (--task auto: IOI where the model's tokenizer spells the IOI pair with " John"
and " Mary" as single tokens and the organism's vocabulary is not in use, induction otherwise):
  ioi        "When John and Mary went to the store, John gave a drink to" (answer " Mary") against
             the name-swapped "..., Mary gave a drink to" (answer " John")
  induction  "The old man saw a box on the hill. The old man saw a" (answer " box") against the same
             with the earlier copy changed, "... saw a tree on the hill. ..." (answer " tree"): only
             an induction head (fed by a previous-token head) can move the earlier word forward
--clean/--corrupted/--answer/--wrong give your own pair. Writes results/<model>/activation_patching.json
and figures/<model>/activation_patching.{pdf,png} (a layer x head heatmap).
"""

from __future__ import annotations

import torch

from analysis import cli, io, prompts
from analysis.errors import UsageError
from analysis.models import has_organism_vocabulary, load_model
from analysis.patching import head_patching
from analysis.patterns import check_context
from analysis.plotting import head_heatmaps, save_figure
from analysis.scan import top_heads

NAME = "activation_patching"
TASKS = {
    "ioi": (prompts.IOI_SENTENCE,
            "When John and Mary went to the store, Mary gave a drink to", " Mary", " John"),
    "induction": ("The old man saw a box on the hill. The old man saw a",
                  "The old man saw a tree on the hill. The old man saw a", " box", " tree"),
}


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--task", choices=["auto", *TASKS], default="auto",
                   help="default prompt pair: auto = ioi where the tokenizer has the IOI names as single tokens "
                        "(and is not the organism's), induction otherwise (default: auto)")
    p.add_argument("--clean", default=None, help="clean prompt (with --corrupted, --answer, --wrong)")
    p.add_argument("--corrupted", default=None, help="corrupted prompt, same number of tokens as --clean")
    p.add_argument("--answer", default=None, help="the clean prompt's answer token, e.g. ' Mary'")
    p.add_argument("--wrong", default=None, help="the corrupted prompt's answer token, e.g. ' John'")
    p.add_argument("--top", type=cli.positive_int, default=5, help="heads listed (default: 5)")
    p.prompt("--clean", "--corrupted")
    return p


def prompt_pair(args, tokenizer) -> tuple[str, str, str, str, str]:
    custom = (args.clean, args.corrupted, args.answer, args.wrong)
    if any(v is not None for v in custom):
        if any(v is None for v in custom):
            raise UsageError("A custom pair needs all four of --clean, --corrupted, --answer and --wrong.")
        return "custom", *custom
    task = args.task if args.task != "auto" else auto_task(tokenizer)
    return task, *TASKS[task]


def auto_task(tokenizer) -> str:
    """IOI where the tokenizer has its names as single tokens and is not the organism's; induction otherwise."""
    if tokenizer is None or has_organism_vocabulary(tokenizer):
        return "induction"
    names_fit = all(len(tokenizer.encode(word, add_special_tokens=False)) == 1 for word in TASKS["ioi"][2:])
    return "ioi" if names_fit else "induction"


def main(args) -> None:
    model = load_model(args.model, args.device, args.processing)
    prompts.require_tokenizer(model, "Patching here compares text prompts")
    task, clean_text, corrupted_text, answer_text, wrong_text = prompt_pair(args, model.tokenizer)
    clean, corrupted = model.to_tokens(clean_text).cpu(), model.to_tokens(corrupted_text).cpu()
    check_context(model, clean)
    answer, wrong = (torch.tensor(prompts.single_token_ids(model.tokenizer, [word]))
                     for word in (answer_text, wrong_text))

    out = head_patching(model, clean, corrupted, answer, wrong)
    recovered = out["recovered"]  # [layer, head]
    ranked = top_heads(recovered, args.top)
    results = {"task": task, "clean": clean_text, "corrupted": corrupted_text, "answer": answer_text,
               "wrong": wrong_text, "clean_logit_diff": out["clean_logit_diff"],
               "corrupted_logit_diff": out["corrupted_logit_diff"], "recovered": recovered,
               "top_heads": [{"layer": l, "head": h, "recovered": v} for l, h, v in ranked]}
    path = io.save_results(args.out, args.model, NAME, results, model_info=model.analysis_info,
                           arguments=vars(args), seed=args.seed)
    fig = head_heatmaps([recovered], ["fraction of logit difference recovered"],
                        suptitle=f"Patching hook_z clean -> corrupted ({task})")
    save_figure(fig, args.out, args.model, NAME)

    print(f"{task}: logit diff {answer_text!r} - {wrong_text!r}: clean {out['clean_logit_diff']:+.2f}, "
          f"corrupted {out['corrupted_logit_diff']:+.2f}")
    print("recovered by patching one head: " + ", ".join(f"L{l}H{h} {v:+.2f}" for l, h, v in ranked))
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
