"""All-head pattern scans: one batched forward pass with a hook filter versus a loop of passes per head."""

from __future__ import annotations

import torch

from analysis import prompts, scores
from analysis.models import load_model, random_gpt2
from analysis.patterns import all_patterns, flatten_heads
from benchlib import Settings, measure, ratio


@torch.no_grad()
def per_head_loop(model, tokens: torch.Tensor) -> torch.Tensor:
    """The naive scan: one forward pass per head (each stopping after the head's layer), keeping that head only."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out = torch.empty(tokens.shape[0], n_layers, n_heads, tokens.shape[1], tokens.shape[1])
    for layer in range(n_layers):
        name = f"blocks.{layer}.attn.hook_pattern"
        for head in range(n_heads):
            _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=name, stop_at_layer=layer + 1)
            out[:, layer, head] = cache[name][:, head].float().cpu()
    return out


def bench_scan_batched_vs_per_head(settings: Settings) -> dict:
    """Induction and duplicate-token scores of all 144 heads of a random GPT-2 small: batched pass vs per-head loop."""
    # |r| = 50 as in ARENA; batch 4 rather than 10 keeps the per-head loop to minutes on a laptop CPU
    if settings.quick:
        model = random_gpt2(n_layers=2, device=settings.device)
    else:
        model = load_model("gpt2-random", settings.device)
    batch, half = (2, 20) if settings.quick else (4, 50)
    tokens = prompts.random_repeated_tokens(batch, half, model.cfg.d_vocab, prompts.bos_token_id(model), settings.seed)

    def score(pattern):
        flat = flatten_heads(pattern)
        return scores.induction_score(flat, half).mean(0), scores.duplicate_token_score(flat, half).mean(0)

    all_patterns(model, tokens[:1])  # warm-up
    batched, t_batched = measure(lambda: score(all_patterns(model, tokens)), settings.device)
    looped, t_loop = measure(lambda: score(per_head_loop(model, tokens)), settings.device)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(batched, looped)), "the two scans disagree"
    speedup = ratio(t_loop["seconds"], t_batched["seconds"])
    return {
        "model": f"random GPT-2 small shapes: {model.cfg.n_layers} layers x 12 heads, d_model 768, d_vocab 50257",
        "tokens": list(tokens.shape), "heads": model.cfg.n_layers * model.cfg.n_heads,
        "batched": t_batched, "per_head_loop": t_loop, "speedup": speedup,
        "memory_ratio": ratio(t_loop["peak_mb"], t_batched["peak_mb"]),
        "summary": [f"batched {t_batched['seconds']:.2f} s, {t_batched['peak_mb']:.0f} MB; per-head loop "
                    f"{t_loop['seconds']:.2f} s, {t_loop['peak_mb']:.0f} MB; speedup {speedup:.1f}x"],
    }
