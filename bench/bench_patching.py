"""Head-level activation patching at GPT-2 small's shape: batched (the heads of a layer as rows of one
pass that starts at that layer) against one full pass per head, on the IOI pair."""

from __future__ import annotations

import torch

from analysis import patching
from analysis.models import load_model, random_gpt2
from benchlib import Settings, measure, ratio


@torch.no_grad()
def per_head(model, corrupted, clean_z, layer, answer, wrong) -> torch.Tensor:
    """`[n_heads]` patched logit differences of one layer's heads, one full forward pass each (TransformerLens's
    `get_act_patch_attn_head_out_all_pos` does this for every layer)."""
    out = []
    for head in range(model.cfg.n_heads):
        def patch(z, hook, head=head):
            z[:, :, head] = clean_z[:, :, head]
            return z
        logits = model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])
        out.append(patching.logit_difference(logits, answer, wrong).mean())
    return torch.stack(out)


@torch.no_grad()
def bench_patching_batched_vs_per_head(settings: Settings) -> dict:
    """All 144 heads batched, against one pass per head for layer 0's heads (every head costs the same there)."""
    model = (random_gpt2(n_layers=2, device=settings.device) if settings.quick
             else load_model("gpt2-random", settings.device))
    pair = patching.encode_pair(model, patching.TASKS["ioi"])
    clean, corrupted, answer, wrong = pair
    out, batched = measure(lambda: patching.head_patching(model, pair), settings.device)

    _, cache = model.run_with_cache(clean.to(model.cfg.device), names_filter="blocks.0.attn.hook_z")
    patched, reference = measure(lambda: per_head(model, corrupted.to(model.cfg.device),
                                                  cache["blocks.0.attn.hook_z"], 0, answer, wrong), settings.device)
    recovered = patching.recovered_fraction(patched, out["clean_logit_diff"], out["corrupted_logit_diff"]).cpu()
    diff = float((recovered - out["recovered"][0]).abs().max())
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    per_head_all = reference["seconds"] * model.cfg.n_layers  # scaled from layer 0's heads to all of them
    speedup = ratio(per_head_all, batched["seconds"])
    return {"heads": n_heads, "prompt_tokens": int(clean.shape[1]), "batched": batched,
            "per_head_layer0": reference, "per_head_all_heads_seconds_scaled": per_head_all, "speedup": speedup,
            "max_abs_difference_layer0": diff,
            "summary": [f"{n_heads} heads on {clean.shape[1]} tokens: batched {batched['seconds']:.1f} s "
                        f"(+{batched['peak_mb']:.0f} MB); one pass per head: {reference['seconds']:.1f} s for layer "
                        f"0's {model.cfg.n_heads} heads, about {per_head_all:.0f} s for all ({speedup:.0f}x); "
                        f"recovered fractions agree to {diff:.1e}"]}
