"""What a head writes: its OV circuit on the category words, and the next-token loss the model loses without it.

OV on category words. For a source word s the head attends to, with x_s its normalised input (`vocab_input.head_input`,
the token at the mean context of the prompts), the logits the head adds are x_s W_V W_O W_U (`circuits.token_ov`,
factored; only the category words' columns of W_U are read). Softmax ignores a shift shared by every logit, so each
row is centred by its mean over the whole vocabulary, read through the factors (`x_s W_V W_O mean_v W_U[:, v]`):

    boost[s, t] = x_s W_V W_O W_U[:, t] - mean_v x_s W_V W_O W_U[:, v]    `[n_words, n_words]`

and each source word gets three numbers (`ov_boosts`): self = boost[s, s]; same = the mean of boost[s, t] over the
other words t of its category; other = the mean over the words of the other categories.

Loss without the head. Next-token cross-entropy per prompt (mean over predicted positions), with one head of the layer
mean-ablated: its z replaced at positions >= 1 by its mean over the prompts and positions >= 1 (`head_z_means`). Every
head of the layer is ablated in one batch (the prompts repeated once per head, `loss_changes`), so the target's loss
change stands beside its layer's other heads as controls, paired by prompt.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from analysis.circuits import token_ov
from analysis.organism.files import has_organism_vocabulary
from analysis.organism.language import LanguageSpec, category_text
from analysis.prompts import CategoryWords


def ov_boosts(source_input: Tensor, ov: tuple[Tensor, Tensor, Tensor], words: CategoryWords) -> dict[str, Tensor]:
    """`{"self", "same", "other": [n_words]}` and `"boost": [n_words, n_words]` (rows: the attended word s; columns:
    the word t whose logit is raised), centred per row over the vocabulary (module docstring).

    `source_input: [n_words, d_model]` the words' normalised inputs in `words.ids` order; `ov` = (W_V `[d_model,
    d_head]`, W_O `[d_head, d_model]`, W_U `[d_model, d_vocab]`); `words.category: [n_words]`. A word alone in its
    category has same = NaN."""
    W_V, W_O, W_U = ov
    circuit = token_ov(source_input, W_V, W_O, W_U[:, words.ids])  # [n_words, n_words], factored
    row_mean = circuit.A @ (W_O @ W_U.mean(-1))  # [n_words]: each row's mean over the whole vocabulary
    boost = circuit.AB - row_mean[:, None]
    same = words.category[:, None] == words.category[None, :]
    eye = torch.eye(len(words.ids), dtype=torch.bool)
    mates = same & ~eye
    mean_over = lambda m: (boost * m).sum(-1) / m.sum(-1)  # noqa: E731  (0/0 = NaN for a word with no mate)
    return {"boost": boost, "self": boost.diagonal(), "same": mean_over(mates), "other": mean_over(~same)}


def category_text_tokens(model: HookedTransformer, n_prompts: int, length: int, seed: int) -> Tensor | None:
    """`[n_prompts, length]`: the organism language's category text (`organism.language.category_text`: category
    words among fillers, a word often followed by an earlier mate) for a model whose tokenizer is the organism's,
    decided from the tokenizer; None for any other model (use category prompts then)."""
    if not has_organism_vocabulary(model.tokenizer):
        return None
    vocab = model.tokenizer.get_vocab()
    spec = LanguageSpec.from_vocabulary(sorted(vocab, key=vocab.get))
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([category_text(rng, spec, length) for _ in range(n_prompts)]))


def next_token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """`[batch]`: mean over positions t < pos - 1 of -log softmax(logits[t])[tokens[t + 1]]
    (`logits: [batch, pos, d_vocab]`, `tokens: [batch, pos]`)."""
    logp = logits[:, :-1].float().log_softmax(-1)
    return -logp.gather(-1, tokens[:, 1:, None].to(logits.device))[..., 0].mean(-1)


@torch.no_grad()
def head_z_means(model: HookedTransformer, tokens: Tensor, layer: int, batch_size: int = 16) -> Tensor:
    """`[n_heads, d_head]`: each head of `layer`'s z, mean over the prompts and positions >= 1."""
    name, total = f"blocks.{layer}.attn.hook_z", 0.0
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[start:start + batch_size].to(model.cfg.device), names_filter=name,
                                        stop_at_layer=layer + 1)
        total = total + cache[name][:, 1:].sum((0, 1))
    return (total / (tokens.shape[0] * (tokens.shape[1] - 1))).float()


@torch.no_grad()
def loss_changes(model: HookedTransformer, tokens: Tensor, layer: int, batch_size: int = 4,
                 progress: bool = False) -> Tensor:
    """`[n_heads, batch]`: each prompt's next-token loss with head h of `layer` mean-ablated (`head_z_means`) minus
    its loss with nothing ablated. The prompts run once clean and once per head, every head in one batch:
    copy h of a chunk has head h's z replaced at positions >= 1."""
    means = head_z_means(model, tokens, layer).to(model.cfg.device)
    n_heads = model.cfg.n_heads
    out = []
    for start in tqdm(range(0, tokens.shape[0], batch_size), desc=f"L{layer} heads ablated", disable=not progress,
                      leave=False):
        chunk = tokens[start:start + batch_size].to(model.cfg.device)
        n = chunk.shape[0]

        def ablate(z: Tensor, hook) -> Tensor:  # (n_heads * n, T, nh, dh)
            z = z.clone()
            for h in range(n_heads):
                z[h * n:(h + 1) * n, 1:, h] = means[h].to(z.dtype)
            return z

        clean = next_token_loss(model(chunk), chunk)
        ablated = model.run_with_hooks(chunk.repeat(n_heads, 1), fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])
        out.append(next_token_loss(ablated, chunk.repeat(n_heads, 1)).reshape(n_heads, n) - clean[None])
    return torch.cat(out, 1).cpu()
