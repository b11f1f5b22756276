"""What the semantic head writes, and what the model loses without it.

OV circuit on the category words (--categories): for each category word s as the attended key, the logits the head's
output adds to every category word t, x_s W_V W_O W_U[:, t] with x_s the head's input for s at the mean context of
category prompts (analysis.output_side.ov_boosts, through the factors; only the category words' columns of W_U),
each row centred by its mean over the whole vocabulary. Per word: the boost of itself (self), of the other words of
its category (same) and of the other categories' words (other), summarised with 95% bootstrap CIs over words.

Loss without the head: the next-token loss on category text with the head mean-ablated (its z at positions >= 1
replaced by its mean over the prompts), minus the unablated loss, per prompt, beside the same change for every other
head of its layer (controls, paired by prompt: analysis.controls.compare). Category text is the model's own category
language where its tokenizer is the organism's (analysis.output_side.category_text_tokens), else category prompts.

Writes results/<model>/head_output.json and figures/<model>/head_output.{pdf,png} (the OV summary and the loss
changes of the layer's heads).
"""

from __future__ import annotations

from analysis import cli, io, output_side, paths, prompts
from analysis import path_records as rec
from analysis.heads import load_target
from analysis.plotting import save_figure, use_style
from analysis.vocab_input import InputSettings, head_input

NAME = "head_output"


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    p.add_argument("--n-prompts", type=cli.positive_int, default=64,
                   help="prompts of category text for the loss (default: 64)")
    p.add_argument("--length", type=cli.int_at_least(2), default=64,
                   help="tokens per prompt, BOS included (default: 64)")
    p.fits_context("--length", lambda n: n)
    p.memory("--n-prompts or --length", lambda a, s: 4 * s.n_heads * 4 * a.length * s.d_vocab * 3)
    cli.add_categories_argument(p)
    return p


def figure(ov: dict, loss: dict, target: str, title: str):
    import matplotlib.pyplot as plt
    import numpy as np

    use_style()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    kinds = ("self", "same", "other")
    for i, kind in enumerate(kinds):
        e = ov["summary"][kind]
        left.bar(i, e["value"], yerr=[[e["value"] - e["low"]], [e["high"] - e["value"]]], color=f"C{i}", alpha=0.6)
        values = [w[kind] for w in ov["per_word"].values()]
        left.scatter(i + np.linspace(-0.25, 0.25, len(values)), values, s=8, color="k")
    left.axhline(0, color="k", lw=0.6)
    left.set(xticks=range(3), xticklabels=["itself", "same category", "other category"],
             ylabel="logit boost (centred over the vocabulary)", title="OV on category words")
    heads = list(loss["by_head"])
    for i, h in enumerate(heads):
        e = loss["by_head"][h]
        right.bar(i, e["value"], yerr=[[e["value"] - e["low"]], [e["high"] - e["value"]]],
                  color="C3" if h == target else "0.6")
    right.axhline(0, color="k", lw=0.6)
    right.set(xticks=range(len(heads)), xticklabels=heads, ylabel="loss change (nats)",
              title="next-token loss, head mean-ablated")
    right.tick_params(axis="x", rotation=45)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def main(args) -> None:
    model, layer, head = load_target(args)
    categories, category_record = cli.chosen_categories(args)
    probe = prompts.category_probe(model, categories, args.n_prompts, args.length - 1, args.seed)
    words = paths.category_words(prompts.category_index(model.tokenizer, categories, model.cfg.d_vocab))
    x = head_input(model, layer, probe.tokens, "mean", words.ids, InputSettings(use_cache=False))
    W_V, W_O, W_U = (w.detach().float().cpu() for w in (model.W_V[layer, head], model.W_O[layer, head], model.W_U))
    labels = [model.tokenizer.decode([int(i)]) for i in words.ids]
    ov = rec.ov_record(output_side.ov_boosts(x, (W_V, W_O, W_U), words), words, labels, args.seed)

    text = output_side.category_text_tokens(model, args.n_prompts, args.length, args.seed)
    source = "the organism's category text" if text is not None else "category prompts (--categories)"
    tokens = text if text is not None else probe.tokens
    loss = rec.loss_record(output_side.loss_changes(model, tokens, layer, progress=True), (layer, head), args.seed)
    results = {
        "target": {"layer": layer, "head": head},
        "ov": ov,
        "loss": {**loss, "text": source, "n_prompts": int(tokens.shape[0]), "length": int(tokens.shape[1])},
        # what the head is for: it raises the attended word's logit above other categories' words (copying it),
        # and the model loses more without it than without any other head of its layer
        "copies_for_prediction": bool(ov["summary"]["self"]["low"] > ov["summary"]["other"]["high"]
                                      and loss["comparison"]["target"]["loss_change"]["separates"]),
        "categories": category_record,
        "units": "OV: logits, each row centred over the vocabulary; loss: nats per predicted token, ablated minus "
                 "unablated, mean over prompts with 95% bootstrap CI",
    }
    path = io.save_results(args.out, args.model, NAME, results, io.Provenance(model.analysis_info, vars(args),
                                                                              args.seed))
    target = f"L{layer}H{head}"
    save_figure(figure(ov, loss, target, f"{args.model}: what {target} writes"), args.out, args.model, NAME)
    s = ov["summary"]
    print(f"{target} OV boost: self {s['self']['value']:+.3f}, same category {s['same']['value']:+.3f}, "
          f"other {s['other']['value']:+.3f} (same - other {s['same_minus_other']['value']:+.3f} "
          f"[{s['same_minus_other']['low']:+.3f}, {s['same_minus_other']['high']:+.3f}])")
    verdict = loss["comparison"]["target"]["loss_change"]
    print(f"loss change when mean-ablated ({source}): " + ", ".join(
        f"{h} {e['value']:+.4f}" for h, e in loss["by_head"].items()) + f"; target {verdict['verdict']}")
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
