"""OV copying scores, eigenvalue spectra and Q/K/V composition of every head, from the weights.

  copying score   sum Re(lambda) / sum |lambda| over the eigenvalues of W_V W_O (residual space) and
                  of the full circuit W_E W_V W_O W_U, both from d_head x d_head products of
                  TransformerLens FactoredMatrix objects (never a d_vocab x d_vocab matrix)
  eigenvalues     complex-plane plots for chosen heads (default: the scan's top previous-token
                  and top induction head, found by one batched pass per probe)
  composition     Q-, K- and V-composition ||W_OV^1 M^2||_F / (||W_OV^1||_F ||M^2||_F) of every
                  earlier head with every later head ("A Mathematical Framework for Transformer
                  Circuits"), against the random-matrix baseline (about 1/sqrt(d_model)); and the
                  K-composition of one head with every earlier head: --induction-head, or the scan's
                  top induction head. Where that head's score is below --min-induction-score (the
                  model has no induction head) or it sits in layer 0, the selection is recorded as
                  degenerate, with the reason; copying scores and full composition matrices are
                  written in every case

Positions (key "position_treatment"): with rotary positions the QK circuit in the Q- and K-composition scores is
W_Q W_K^T at Δ = 0 (R = I); the copying scores and V-composition read OV, which has no positions.

Writes results/<model>/qk_ov_circuits.json and figures/<model>/qk_ov_circuits{,_eigenvalues,
_composition}.{pdf,png}.
"""

from __future__ import annotations

import math

import torch

from analysis import circuits, cli, io, plotting, scores
from analysis.errors import UsageError
from analysis.models import load_model
from analysis.positions import recorded_treatment
from analysis.plotting import head_heatmaps, save_figure
from analysis.scan import ScanSettings, scan_heads, top_heads

NAME = "qk_ov_circuits"
COMPOSITION_POSITIONS = ("rotary: Q- and K-composition read each later head's W_QK = W_Q W_K^T at Δ = 0 (R = I, as "
                         "TransformerLens's composition scores), not at E_Δ[R(Δ)]; copying scores and V-composition "
                         "are of OV, which rotary positions do not turn")


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--heads", nargs="+", default=None, metavar="L.H",
                   help="heads whose eigenvalues are plotted, e.g. 0.2 1.1 "
                        "(default: the top previous-token and induction heads)")
    p.add_argument("--n-prompts", type=cli.positive_int, default=8,
                   help="prompts per scan probe used to find the heads (default: 8)")
    p.add_argument("--repeat-length", type=cli.positive_int, default=50,
                   help="|r| of the induction probe (default: 50)")
    p.add_argument("--induction-head", default=None, metavar="L.H",
                   help="head whose K-composition with every earlier head is reported, e.g. 5.1 "
                        "(default: the scan's top induction head)")
    p.add_argument("--min-induction-score", type=cli.positive_float, default=None,
                   help="floor on the scan's top induction score; below it the selection is recorded as degenerate "
                        "(default: twice the score of uniform attention, 0.027 for --repeat-length 50)")
    p.add_argument("--baseline-samples", type=cli.positive_int, default=256,
                   help="random matrix pairs for the baseline (default: 256)")
    p.fits_context("--repeat-length", lambda r: 1 + 2 * r)
    p.memory("--n-prompts or --repeat-length",
             lambda a, s: cli.pattern_bytes(s, a.n_prompts,
                                            max(1 + 2 * a.repeat_length, 1 + ScanSettings.random_length)))
    p.memory("--baseline-samples", lambda a, s: 8 * 4 * a.baseline_samples * s.d_model * s.d_head, "random matrices")
    return p


def main(args) -> None:
    model = load_model(args.model, args.device, args.processing)
    if model.cfg.n_layers < 2:
        raise UsageError("Composition needs at least two layers; this model has one.")
    chosen = cli.parse_heads(model, [args.induction_head], "--induction-head")[0] if args.induction_head else None
    if chosen is not None and chosen[0] == 0:
        raise UsageError(f"--induction-head {args.induction_head} is in layer 0, so no earlier head can compose "
                         "with it. Name a head in layer 1 or later.")

    settings = ScanSettings(n_random=args.n_prompts, n_repeated=args.n_prompts, repeat_lengths=(args.repeat_length,))
    scan = scan_heads(model, settings, seed=args.seed, categories=None, progress=True)
    previous = top_heads(scan.previous_token, 1)[0][:2]
    best = top_heads(scan.induction[args.repeat_length], 1)[0][:2]
    chance = scores.induction_chance(args.repeat_length)
    floor = args.min_induction_score if args.min_induction_score is not None else 2 * chance
    best_score = float(scan.induction[args.repeat_length][best])
    reason = None
    if chosen is None and best_score < floor:
        reason = (f"the top induction score {best_score:.4f} (L{best[0]}H{best[1]}) is below the floor {floor:.4f} "
                  f"(uniform attention scores {chance:.4f}): this model shows no induction head")
    elif chosen is None and best[0] == 0:
        reason = f"the top induction head L{best[0]}H{best[1]} is in layer 0, so no earlier head can compose with it"
    induction = chosen or best
    heads = cli.parse_heads(model, args.heads) if args.heads else list(dict.fromkeys([previous, induction]))
    copying, spectra, head_scores = circuits.head_ov_spectra(model, heads)  # copying: [layer, head] each
    comp = {mode: circuits.composition_scores(model, mode) for mode in circuits.COMPOSITION_MODES}
    baseline = circuits.random_composition_baseline(model.cfg.d_model, model.cfg.d_head, args.baseline_samples,
                                                    args.seed)
    partners = circuits.composition_partners(comp["K"], *induction) if induction[0] > 0 else []

    def head_copying(h):
        return {"residual_W_V_W_O": float(copying["residual"][h]), "full_W_E_W_V_W_O_W_U": float(copying["full"][h])}

    results = {
        "position_treatment": recorded_treatment(model, COMPOSITION_POSITIONS),
        "top_previous_token_head": {"layer": previous[0], "head": previous[1],
                                    "score": float(scan.previous_token[previous])},
        "top_induction_head": {"layer": best[0], "head": best[1], "score": best_score, "chance": chance,
                               "floor": floor, "degenerate": reason is not None, "reason": reason,
                               "copying_score": head_copying(best)},
        "composition_target": {"layer": induction[0], "head": induction[1], "copying_score": head_copying(induction),
                               "chosen_by": "--induction-head" if chosen else "scan",
                               "score": float(scan.induction[args.repeat_length][induction])},
        "copying_score": {"residual_W_V_W_O": copying["residual"], "full_W_E_W_V_W_O_W_U": copying["full"]},
        "max_copying_score": {"residual_W_V_W_O": float(copying["residual"].nan_to_num(nan=-math.inf).max()),
                              "full_W_E_W_V_W_O_W_U": float(copying["full"].nan_to_num(nan=-math.inf).max())},
        "eigenvalues": {label: {c: torch.stack([e.real, e.imag], -1) for c, e in s.items()}
                        for label, s in spectra.items()},  # [d_head, (re, im)]
        "eigenvalue_heads_copying_score": head_scores,
        "composition": comp,
        "composition_baseline": {"random_matrices": baseline,
                                 "one_over_sqrt_d_model": 1 / math.sqrt(model.cfg.d_model)},
        "induction_k_composition": [{"layer": l, "head": h, "score": s} for l, h, s in partners],
        "induction_strongest_k_partner": ({"layer": partners[0][0], "head": partners[0][1], "score": partners[0][2]}
                                          if partners else None),
    }
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))

    fig = head_heatmaps([copying["residual"].detach(), copying["full"].detach()],
                        ["OV copying score, W_V W_O", "OV copying score, W_E W_V W_O W_U"],
                        suptitle=f"OV copying scores, {args.model}")
    save_figure(fig, args.out, args.model, NAME)
    save_figure(plotting.eigenvalue_planes(spectra, head_scores), args.out, args.model, f"{NAME}_eigenvalues")
    save_figure(plotting.composition_figure(model.cfg, comp, baseline, induction, partners), args.out, args.model,
                f"{NAME}_composition")

    (pl, ph), (il, ih) = previous, induction
    print(f"top previous-token head L{pl}H{ph}, top induction head L{best[0]}H{best[1]} (score {best_score:.4f})")
    if reason is not None:
        print(f"degenerate induction head: {reason}; copying scores and composition matrices are still written")
    for label, s in head_scores.items():
        print(f"{label}: copying score {s['W_V W_O']:+.3f} (W_V W_O), {s['W_E W_V W_O W_U']:+.3f} (full OV circuit)")
    listed = ", ".join(f"L{l}H{h} {s:.3f}" for l, h, s in partners[:5])
    print(f"K-composition into L{il}H{ih}: {listed} (random baseline {baseline:.3f}, 1/sqrt(d_model) "
          f"{1 / math.sqrt(model.cfg.d_model):.3f})")
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
