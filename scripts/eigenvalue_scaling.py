"""Eigenvalue steering: scale the negative eigenvalues of W_sym, look at the group maps, then run the model.

W_sym = (W + W^T)/2 of the head's W = W_Q W_K^T has eigenpairs (λ_i, v_i). For each factor f
(--factors, default 1 0.5 0 -1) every negative λ_i becomes f λ_i and the rest of W_sym and all of
W_skew stay: W_f = W + V_neg diag((f - 1) λ_neg) V_neg^T.

  maps    E W_f E^T / attn_scale on the 30-token group set (--input, default mean), with the
          mean self, in-group and out-of-group scores
  causal  the head's scores computed from a factorisation of W_f on its layer's input (biases kept;
          what qk_edits.qk_override_hooks make the model compute) on category prompts
          (--categories, the study's 8 by default), scored with the semantic metrics: self mass,
          partner mass, BOS mass when no partner, S (exact, from the pre-softmax scores)

Controls (--controls): the same factor sweep on every control head, and a targeted edit on each head:
factor -1 on only the --targeted-k negative components that carry most of the group tokens' negative
self-score (`qk_decomposition.self_suppressing_components`). For each head and edit, the change from the
unedited head of self mass, partner mass, BOS mass when no partner and S, and of the self mass on the
logit scale ("edits"). (Self mass gained per unit of partner mass lost is not reported: a row's mass is
conserved, so it is near 1 for any such edit.) Heads of one layer are edited together in one pass that
reads only that layer's patterns.
Statistics and the direction a self-suppressing head predicts ("directions"): self_mass_change at
factor -1 and 0 high (flipping the negative eigenvalues gives self-attention back), and the targeted
edit's self_mass_change high. They are facts about specificity: the controls show whether the
edit restores self-attention only in the target. Each is a per-prompt gain (after minus before on
the same prompt), compared with the strongest control by a paired bootstrap over prompts.

The targeted edit is specific only at small k, so it is also run as a curve over k (--curve-ks, default
1 2 4 8 16, capped at the target's negative eigenvalues), on every head, each k compared against the
controls on the self mass gain and on its change on the logit scale (where gains near 1 are not squeezed):
"targeted_curve" keeps each k's comparison, the k at which the target separates and the largest of them.

Writes results/<model>/eigenvalue_scaling.json and figures/<model>/eigenvalue_scaling
(maps), eigenvalue_scaling_causal (masses against f), eigenvalue_scaling_controls and
eigenvalue_scaling_curve (the targeted edit over k, target against its strongest control).
"""

from __future__ import annotations

from analysis import cli, controls, io, prompts, qk_edits, records, scores
from analysis import qk_decomposition as qk
from analysis.attention import qk_head, word_score_matrix
from analysis.heads import control_heads, load_target
from analysis.positions import position_treatment
from analysis.plotting import group_heatmaps, save_figure, target_curve, target_vs_controls, use_style
from analysis.token_maps import InputOptions, block_means, group_tokens, token_inputs

NAME = "eigenvalue_scaling"
CURVE_STATISTICS = ("self_mass_change", "self_mass_log_odds_change")  # compared at each k of the targeted curve


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    cli.add_input_argument(p)
    cli.add_categories_argument(p)
    p.add_argument("--factors", type=float, nargs="+", default=[1.0, 0.5, 0.0, -1.0],
                   help="factors for the negative eigenvalues of W_sym (default: 1 0.5 0 -1)")
    p.add_argument("--n-prompts", type=cli.positive_int, default=64,
                   help="category prompts for the causal check (default: 64)")
    p.add_argument("--n-words", type=cli.positive_int, default=64, help="words per category prompt (default: 64)")
    p.fits_context("--n-words", lambda n: 1 + n)
    p.add_argument("--targeted-k", type=cli.positive_int, default=4,
                   help="negative components flipped by the targeted edit (default: 4)")
    p.add_argument("--curve-ks", type=cli.positive_int, nargs="+", default=list(qk_edits.CURVE_KS),
                   help="k of the targeted edit's curve, each capped at the target's negative eigenvalues "
                        f"(default: {' '.join(map(str, qk_edits.CURVE_KS))})")
    cli.add_controls_argument(p)
    p.memory("--n-prompts or --n-words", lambda a, s: cli.pattern_bytes(s, a.n_prompts, 1 + a.n_words, heads=1))
    return p


def main(args) -> None:
    model, layer, head = load_target(args)
    categories, chosen = cli.chosen_categories(args)
    treatment = position_treatment(model, categories, args.seed)  # the maps: others at M, self at Δ = 0
    own = qk_head(model, layer, head, bias=True, rotation=treatment.rotation)
    spectrum = qk.symmetric_spectrum(own)
    negative = qk.most_negative(spectrum.values)
    ids, labels, group, _ = group_tokens(model.tokenizer)
    E = token_inputs(model, layer, args.input, token_ids=ids, seed=args.seed, options=InputOptions(categories))
    probe = prompts.category_probe(model, categories, args.n_prompts, args.n_words, args.seed + 1)

    edited = {f: qk.edited_head(own, spectrum, negative, f) for f in args.factors}
    in_context = qk_edits.in_context_edits(model, probe, layer, {"base": own, **edited})
    base = in_context.pop("base")  # the unedited head
    maps = [word_score_matrix(E, e.without_bias()) for e in edited.values()]
    per_factor = [{"factor": f, "map": m, "block_means": block_means(m, group), "in_context": in_context[f]}
                  for f, m in zip(edited, maps)]
    heads = [(layer, head)] + control_heads(model, (layer, head), args.controls, args.seed)
    inputs = {l: token_inputs(model, l, args.input, token_ids=ids, seed=args.seed, options=InputOptions(categories))
              for l in {l for l, _ in heads}}
    ks = qk_edits.curve_ks(args.curve_ks, len(negative))
    sweep = qk_edits.edit_sweep(model, probe, qk_edits.eigenvalue_edits(
        {hd: qk_head(model, *hd, bias=True) for hd in heads}, {hd: inputs[hd[0]] for hd in heads}, args.factors,
        args.targeted_k, ks))
    edits = qk_edits.edit_rows(sweep)
    directions = {f"{e}_self_mass_change": "high" for e in ("factor -1", "factor 0", "targeted")}
    edit_names = list(directions)  # the controls figure's panels; the curve has its own
    points = {k: qk_edits.targeted_name(k) for k in ks}
    directions |= {f"{name}_{stat}": "high" for name in points.values() for stat in CURVE_STATISTICS}
    report = controls.compare((layer, head), qk_edits.edit_statistics(sweep), directions)
    curve = {**records.curve_record(report, points, CURVE_STATISTICS), "n_negative": len(negative),
             "asked": args.curve_ks, "capped_at": "the target's negative eigenvalues"}
    results = {"head": {"layer": layer, "head": head}, "input": args.input, "tokens": labels,
               "position_treatment": treatment.description,
               "n_negative_eigenvalues": len(negative), "unedited_in_context": base,
               "factors": {f"{row['factor']:g}": row for row in per_factor},  # keyed "1", "0.5", "0", "-1"
               "categories": chosen, "targeted_k": args.targeted_k, "targeted_curve": curve,
               **report, "target_edits": edits[(layer, head)],
               "edits": {controls.head_key(*hd): rows for hd, rows in edits.items()}}
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    fig = group_heatmaps(maps, [f"negative λ × {f:g}" for f in edited], labels, group, shared_scale=True,
                         suptitle=f"L{layer}H{head}: scaling the {len(negative)} negative eigenvalues of W_sym "
                                  f"({args.input} inputs)")
    save_figure(fig, args.out, args.model, NAME)
    save_figure(causal_figure(per_factor, layer, head), args.out, args.model, f"{NAME}_causal")
    save_figure(target_vs_controls(report, f"L{layer}H{head} against {len(heads) - 1} control heads: "
                                           "self mass restored by eigenvalue edits", names=edit_names),
                args.out, args.model, f"{NAME}_controls")
    save_figure(target_curve(curve, f"L{layer}H{head}", f"L{layer}H{head}: factor -1 on the k components carrying "
                                                        "most negative self-score, against its strongest control"),
                args.out, args.model, f"{NAME}_curve")

    print(f"L{layer}H{head}: {len(negative)} negative eigenvalues scaled; unedited self mass {base['self_mass']:.3f}")
    for row in per_factor:
        b, c = row["block_means"], row["in_context"]
        print(f"factor {row['factor']:+5.2f}: map self {b['self']:+6.2f} vs in-group {b['in_group']:+6.2f} | "
              f"in context: self {c['self_mass']:.3f}, partner {c['partner_mass']:.3f}, "
              f"BOS (no partner) {c['bos_mass_no_partner']:.3f}")
    for hd, rows in edits.items():
        print(f"{controls.head_key(*hd):>6s}: self {rows['unedited']['self_mass']:.3f} -> "
              + ", ".join(f"{n} {rows[n]['self_mass']:.3f}" for n in rows if n != "unedited")
              + f" | targeted: partner {rows['targeted']['partner_mass_change']:+.3f}")
    print("targeted edit over k (target vs strongest control):")
    print("\n".join(records.curve_lines(curve)))
    print("largest k at which the target separates: " + ", ".join(
        f"{stat} {k}" for stat, k in curve["largest_separating_k"].items()))
    print(f"results: {path}")


def causal_figure(per_factor, layer, head):
    use_style()
    import matplotlib.pyplot as plt

    factors = [row["factor"] for row in per_factor]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key in scores.MASSES:
        ax.plot(factors, [row["in_context"][key] for row in per_factor], "o-", label=key.replace("_", " "))
    ax.invert_xaxis()  # from the unedited head (1) towards flipped eigenvalues (-1)
    ax.set(title=f"L{layer}H{head} in context, negative λ scaled", xlabel="factor on negative eigenvalues",
           ylabel="attention mass", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    cli.run(main, build_parser())
