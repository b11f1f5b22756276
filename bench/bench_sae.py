"""The SAE step of sae_features.py at GPT-2's size: a random SAE of GPT-2 small's real width
(32768 features x 768) on gpt2-random, category prompts as the script's defaults (64 x 64 words).
No d_sae x d_vocab tensor: mean activations are kept for the tokens that occur (the dense float64
one that was built before is 32768 x 50257 x 8 B = 13.2 GB, 26-33 GB at its peak)."""

from __future__ import annotations

import tempfile

import torch

from analysis import prompts
from analysis.attention import attention_scores, qk_head
from analysis.models import load_model, random_gpt2
from analysis.sae import features, sources
from benchlib import MB, Settings, _rss, measure, save_random_sae

LIMIT_MB = 6 * 1024


@torch.no_grad()
def sae_step(model, sae, layer: int, head: int, tokens) -> dict:
    """What sae_features.py computes once the SAE is loaded, on category prompts `tokens: [batch, pos]`."""
    hook = sources.hook_for_layer(layer)
    by_category, by_token, seen = features.category_activations(model, sae, tokens, prompts.ALL_CATEGORIES, hook)
    _, cache = model.run_with_cache(tokens[:16].to(model.cfg.device), names_filter=hook, stop_at_layer=layer)
    explained = sources.variance_explained(sae, cache[hook][:, 1:].reshape(-1, model.cfg.d_model))
    chosen, group = features.select_features(by_category)
    token_labels = model.tokenizer.batch_decode([[int(i)] for i in seen])
    labels = [features.feature_label(by_token, int(f), token_labels) for f in chosen]
    x = features.feature_inputs(model, sae, layer, chosen)
    scores = attention_scores(x, x, qk_head(model, layer, head))
    return {"seen_tokens": len(seen), "features": len(labels), "map_shape": list(scores.shape),
            "variance_explained": explained}


def bench_sae_step_gpt2_size(settings: Settings) -> dict:
    """sae_features's SAE step with a random 32768 x 768 SAE on gpt2-random (layer 1's input, head 5)."""
    from sae_lens import SAE

    model = (random_gpt2(n_layers=2, device=settings.device) if settings.quick
             else load_model("gpt2-random", settings.device))
    d_sae = 4096 if settings.quick else 32768
    with tempfile.TemporaryDirectory() as tmp:
        sae = SAE.load_from_disk(save_random_sae(tmp, model.cfg.d_model, d_sae, settings.seed), device=settings.device)
    before_mb = _rss() / MB  # model and SAE resident
    n_prompts = 16 if settings.quick else 64  # the script's defaults: 64 prompts of 64 words
    tokens = prompts.category_probe(model, prompts.ALL_CATEGORIES, n_prompts, 64, settings.seed + 1).tokens
    out, stats = measure(lambda: sae_step(model, sae, 1, 5, tokens), settings.device)
    process_mb = before_mb + stats["peak_mb"]
    return {"d_sae": d_sae, "d_in": model.cfg.d_model, "d_vocab": model.cfg.d_vocab, **out, **stats,
            "process_before_mb": before_mb, "process_peak_mb_upper_bound": process_mb, "limit_mb": LIMIT_MB,
            "within_limit": process_mb <= LIMIT_MB,
            "summary": [f"SAE step, {d_sae} features x {model.cfg.d_model}: {stats['seconds']:.1f} s, +"
                        f"{stats['peak_mb']:.0f} MB over {before_mb:.0f} MB (model + SAE), process at most "
                        f"{process_mb:.0f} MB (limit {LIMIT_MB} MB); {out['seen_tokens']} distinct tokens, "
                        f"{out['features']} features"]}
