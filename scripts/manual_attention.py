"""Attention patterns from the raw weights, by hand, against TransformerLens and Hugging Face.

Recomputes every head's pattern with our own forward pass (embeddings, LayerNorm or RMSNorm, Q/K
projections, rotary positions, grouped-query attention, scaling, causal mask, softmax, plain or gated
MLPs, sequential or parallel blocks; analysis.manual_forward) from the model's unprocessed weights, and
compares it with TransformerLens's blocks.*.attn.hook_pattern and with Hugging Face's GPT-2, LLaMA or
GPT-NeoX (output_attentions=True, eager attention) holding the same weights, whichever holds them
exactly (results: "hugging_face" says which, or why none). Also checks that TransformerLens's default weight processing (fold_ln, centring) leaves
the patterns unchanged. Prompts: a text prompt (when the model has a tokenizer) and random tokens.

Reports the maximum absolute difference per head and plots the sharpest head's pattern (or
--layer/--head) with its causal structure. Writes results/<model>/manual_attention.json and
figures/<model>/manual_attention{,_diff}.{pdf,png}.
"""

from __future__ import annotations

import torch

from analysis import cli, hugging_face, io, manual_forward, prompts
from analysis.attention_stats import max_attention
from analysis.errors import UsageError
from analysis.heads import check_head
from analysis.models import WeightProcessing, load_model
from analysis.patterns import all_patterns, check_context, flatten_heads
from analysis.plotting import attention_pattern, head_heatmaps, save_figure, use_style
from analysis.scan import top_heads
from analysis.scores import scored_rows

NAME = "manual_attention"
TOLERANCE = 1e-5


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--prompt", default=prompts.REPEATED_SENTENCE,
                   help="text prompt, BOS prepended (default: %(default)r)")
    p.add_argument("--n-random", type=cli.positive_int, default=4, help="prompts of uniform random tokens (default: 4)")
    p.add_argument("--length", type=cli.positive_int, default=48,
                   help="tokens per random prompt after BOS (default: 48)")
    p.fits_context("--length", lambda n: 1 + n)
    p.memory("--n-random or --length", lambda a, s: cli.pattern_bytes(s, a.n_random, 1 + a.length, copies=5))
    p.prompt("--prompt")
    p.add_argument("--layer", type=int, default=None, help="layer of the plotted head (default: sharpest head)")
    p.add_argument("--head", type=int, default=None, help="index of the plotted head (default: sharpest head)")
    return p


def compare(model, tokens, processed, hf) -> dict:
    """Max |difference| per head `[layer, head]` of manual vs TransformerLens, Hugging Face (`hf`, where not None),
    processed TL."""
    check_context(model, tokens)
    manual = manual_forward.manual_patterns(model, tokens)
    out = {"manual": manual, "vs_transformer_lens": manual_forward.max_abs_difference(manual, all_patterns(model, tokens))}
    if hf is not None:
        out["vs_hugging_face"] = manual_forward.max_abs_difference(manual, hugging_face.hf_patterns(hf, tokens))
    if processed is not None:
        out["vs_processed_transformer_lens"] = manual_forward.max_abs_difference(manual, all_patterns(processed, tokens))
    return out


def main(args) -> None:
    if (args.layer is None) != (args.head is None):
        raise UsageError("Give both --layer and --head, or neither to plot the sharpest head.")
    # The model with --processing, whose patterns must not change, and its raw weights for the manual pass.
    # Where the load applied no processing (--processing none, random or saved-raw weights) there is one model.
    processed = load_model(args.model, args.device, args.processing)
    if WeightProcessing(**processed.analysis_info["weight_processing"]).is_none:
        model, processed = processed, None
    else:
        model = load_model(args.model, args.device, processing=WeightProcessing.none())
    if args.layer is not None:
        check_head(model, args.layer, args.head)
    manual_forward.check_manual_support(model)

    prompt_sets = {"random": prompts.random_tokens(args.n_random, args.length, model.cfg.d_vocab,
                                                   prompts.bos_token_id(model), args.seed,
                                                   prompts.special_token_ids(model))}
    if model.tokenizer is not None:
        prompt_sets["text"] = model.to_tokens(args.prompt).cpu()
    try:
        family, hf = hugging_face.hugging_face_model(model)
        compared = {"compared": True, "implementation": type(hf).__name__, "family": family}
    except hugging_face.HFIncompatible as err:  # no Hugging Face model holds these weights: that comparison is left out
        hf, compared = None, {"compared": False, "reason": err.reason}
    comparisons = {name: compare(model, tokens, processed, hf) for name, tokens in prompt_sets.items()}
    kinds = [k for k in comparisons["random"] if k != "manual"]
    worst = {k: torch.stack([c[k] for c in comparisons.values()]).amax(0) for k in kinds}  # [layer, head]
    within = {k: bool(v.max() <= TOLERANCE) for k, v in worst.items()}

    shown = "text" if "text" in prompt_sets else "random"
    manual = comparisons[shown]["manual"][:1]  # (1, L, nh, T, T)
    if args.layer is None:
        sharpness = max_attention(flatten_heads(manual), scored_rows(prompt_sets[shown][:1])).mean(0)
        args.layer, args.head, _ = top_heads(sharpness.reshape(model.cfg.n_layers, model.cfg.n_heads), 1)[0]
    reference = all_patterns(model, prompt_sets[shown][:1])[0, args.layer, args.head]
    head_pattern = manual[0, args.layer, args.head]

    results = {
        "tolerance": TOLERANCE,
        "max_abs_difference": {k: v for k, v in worst.items()},
        "overall_max": {k: float(v.max()) for k, v in worst.items()},
        "within_tolerance": within,
        "all_within_tolerance": all(within.values()),
        "processed_compared": processed is not None,  # false where the load applied no processing: one model
        "per_prompt_set": {name: {k: float(c[k].max()) for k in kinds} for name, c in comparisons.items()},
        "hugging_face_skipped": compared.get("reason"),
        "hugging_face": compared,  # which Hugging Face implementation was compared, or why none
        "plotted_head": {"layer": args.layer, "head": args.head},
        "prompt": args.prompt if model.tokenizer is not None else None,
    }
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))

    use_style()
    import matplotlib.pyplot as plt

    labels = (model.to_str_tokens(prompt_sets[shown][0]) if model.tokenizer is not None
              else [str(i) for i in range(head_pattern.shape[0])])
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    attention_pattern(axes[0], head_pattern, labels, f"manual L{args.layer}H{args.head}")
    attention_pattern(axes[1], reference, labels, "TransformerLens hook_pattern")
    difference = (head_pattern - reference).abs()
    attention_pattern(axes[2], difference, labels, f"|difference| (max {difference.max():.1e})",
                      vmax=max(float(difference.max()), 1e-12))
    save_figure(fig, args.out, args.model, NAME)
    fig = head_heatmaps(list(worst.values()), [k.replace("_", " ") for k in worst], fmt=".0e",
                        suptitle="max |manual - reference| per head")
    save_figure(fig, args.out, args.model, f"{NAME}_diff")

    for kind, value in results["overall_max"].items():
        verdict = "ok" if value <= TOLERANCE else f"EXCEEDS {TOLERANCE:.0e}"
        print(f"manual {kind.replace('_', ' ')}: max |diff| {value:.2e} ({verdict})")
    if compared["compared"]:
        print(f"Hugging Face implementation compared: {compared['implementation']}")
    else:
        print(f"Hugging Face comparison skipped: {results['hugging_face_skipped']}")
    print(f"plotted L{args.layer}H{args.head}; results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
