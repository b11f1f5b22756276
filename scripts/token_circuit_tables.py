"""Key-pivoted token tables of one head's QK and OV circuits in token space.

For the head (--layer/--head, default: the survey's best semantic head) every vocabulary token t
gets the head's input x_t (analysis.vocab_input.head_input, mean context of the reference prompts);
then, with p the token probabilities of a frequency file (--freq, written by token_freq.py;
uniform when absent):

  QK[q, k]   = x_q W_Q . (x_k W_K - x_BOS W_K) / attn_scale  (each query's score minus its score on BOS)
  OVc[k, o]  = x_k W_V W_O W_U[:, o] minus its mean over o      (mean-normalised per source token)
  key score  = max_q QK[q, k] * max_o OVc[k, o] * p_k^0.1       (which keys the table pivots on)
  per key    top queries by QK[q, k] * p_q^0.1, top outputs by OVc[k, o]

Positions (key "position_treatment"): with rotary positions QK[q, k] for k != q and the score on BOS are read at
M = E_Δ[R(Δ)] over the survey prompts' query-partner distances of the study's categories
(`positions.position_treatment`), and QK[q, q] has the query's score on itself at Δ = 0
(`circuits.token_self_shift`).

Both matrices stay factored (TransformerLens FactoredMatrix) and are read in vocabulary chunks of
--chunk-size tokens, so for GPT-2 no 50257 x 50257 matrix is ever resident. Writes
results/<model>/token_circuit_tables.json and figures/<model>/token_circuit_tables.{pdf,png}.
"""

from __future__ import annotations

from pathlib import Path

import torch

from analysis import circuits, cli, io, prompts
from analysis.attention import qk_head
from analysis.frequency import check_frequency_csv, read_frequency_csv
from analysis.heads import target_head
from analysis.positions import position_treatment
from analysis.models import load_model
from analysis.plotting import save_figure, use_style
from analysis.vocab_input import InputSettings, head_input

NAME = "token_circuit_tables"
BOS_POSITIONS = "a query's score on BOS, which it subtracts, is at M too"


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    p.add_argument("--freq", type=Path, default=None,
                   help="token-frequency CSV (token,id,count,probability) from token_freq.py (default: uniform p)")
    p.input_file("--freq", check_frequency_csv)
    p.add_argument("--variant", choices=["mean", "zero"], default="mean",
                   help="head input: mean context of the reference prompts, or zero (default: mean)")
    p.add_argument("--keys", type=cli.positive_int, default=12, help="keys in the table (default: 12)")
    p.add_argument("--queries", type=cli.positive_int, default=6, help="top queries per key (default: 6)")
    p.add_argument("--outputs", type=cli.positive_int, default=6, help="top output tokens per key (default: 6)")
    p.add_argument("--chunk-size", type=cli.positive_int, default=2048,
                   help="vocabulary tokens per chunk (default: 2048)")
    for flag in ("--keys", "--queries", "--outputs"):
        p.at_most(flag, lambda s: s.d_vocab, "tokens in the vocabulary")
    p.memory("--chunk-size", lambda a, s: 3 * 4 * min(a.chunk_size, s.d_vocab) * s.d_vocab, "blocks of scores")
    return p


def token_label(model, token_id) -> str:
    """The token's text, or its id for a model without a tokenizer."""
    return model.to_single_str_token(int(token_id)) if model.tokenizer is not None else str(int(token_id))


def table_figure(model, table, token_qk, ov, target):
    """QK of the top queries (rows) against the top keys (columns), and OVc of the keys against their top outputs."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    use_style()
    (qk, shift), (layer, head), keys = token_qk, target, table["key_ids"]
    queries = torch.unique(table["query_ids"].flatten(), sorted=False)[:30]
    outputs = torch.unique(table["output_ids"].flatten(), sorted=False)[:30]
    qk_block = circuits.with_self_shift(qk[queries][:, keys].AB, queries, keys, shift)  # (n_q, n_keys)
    ov_block = ov[keys].AB  # (n_keys, d_vocab)
    ov_block = (ov_block - ov_block.mean(-1, keepdim=True))[:, outputs]
    names = lambda ids: [repr(token_label(model, i))[1:-1] for i in ids]  # noqa: E731  leading spaces stay visible
    width, height = 0.32 * (len(keys) + len(outputs)) + 6, 0.3 * max(len(queries), len(keys)) + 3
    fig, axes = plt.subplots(1, 2, figsize=(width, height))
    sns.heatmap(qk_block.numpy(), ax=axes[0], cmap="RdBu_r", center=0, xticklabels=names(keys),
                yticklabels=names(queries), cbar_kws={"label": "QK minus score on BOS"})
    axes[0].set(title=f"L{layer}H{head} QK: top queries x top keys", xlabel="key", ylabel="query")
    sns.heatmap(ov_block.numpy(), ax=axes[1], cmap="RdBu_r", center=0, xticklabels=names(outputs),
                yticklabels=names(keys), cbar_kws={"label": "OV logit, mean-normalised"})
    axes[1].set(title=f"L{layer}H{head} OV: top keys x top outputs", xlabel="output token", ylabel="key (source)")
    for ax in axes:
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def main(args) -> None:
    model = load_model(args.model, args.device, args.processing)
    layer, head = target_head(model, args.layer, args.head, args.seed)
    d_vocab = model.cfg.d_vocab
    p = (circuits.token_probabilities(read_frequency_csv(args.freq), d_vocab) if args.freq is not None
         else torch.full((d_vocab,), 1.0 / d_vocab))

    reference = prompts.reference_prompts(model, args.seed) if args.variant == "mean" else None
    x = head_input(model, layer, reference, args.variant, settings=InputSettings(args.chunk_size, progress=True))
    bos = circuits.bos_key_input(model, layer)
    treatment = position_treatment(model, prompts.STUDY_CATEGORIES, args.seed)  # rotary: self at Δ = 0, others at M
    own = qk_head(model, layer, head, bias=True, rotation=treatment.rotation)
    qk, shift = circuits.token_qk(x, x, bos, own), circuits.token_self_shift(x, own)  # shift: None unless rotary
    W_V, W_O, W_U = (w.detach().float().cpu() for w in (model.W_V[layer, head], model.W_O[layer, head], model.W_U))
    ov = circuits.token_ov(x, W_V, W_O, W_U)
    table = circuits.key_pivoted_table(qk, ov, p, circuits.TableSize(args.keys, args.queries, args.outputs),
                                       args.chunk_size, shift)

    rows = []
    for i, key in enumerate(table["key_ids"]):
        rows.append({
            "key": token_label(model, key), "key_id": int(key), "key_score": float(table["key_scores"][i]),
            "qk_max": float(table["qk_max"][i]), "ov_max": float(table["ov_max"][i]),
            "queries": [{"token": token_label(model, q), "id": int(q), "score": float(s)}
                        for q, s in zip(table["query_ids"][i], table["query_scores"][i])],
            "outputs": [{"token": token_label(model, o), "id": int(o), "score": float(s)}
                        for o, s in zip(table["output_ids"][i], table["output_scores"][i])],
        })
    results = {"layer": layer, "head": head, "variant": args.variant,
               "position_treatment": treatment.described(BOS_POSITIONS),
               "token_probabilities": str(args.freq) if args.freq is not None else "uniform",
               "table": rows}
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    save_figure(table_figure(model, table, (qk, shift), ov, (layer, head)), args.out, args.model, NAME)

    print(f"L{layer}H{head} key-pivoted table (p: {results['token_probabilities']})")
    for row in rows:
        queries = " ".join(repr(q["token"]) for q in row["queries"])
        outputs = " ".join(repr(o["token"]) for o in row["outputs"])
        print(f"  key {row['key']!r:>14} {row['key_score']:8.3f} | queries {queries} | outputs {outputs}")
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
