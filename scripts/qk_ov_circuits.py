"""OV copying scores, eigenvalue spectra and Q/K/V composition of every head, from the weights.

  copying score   sum Re(lambda) / sum |lambda| over the eigenvalues of W_V W_O (residual space) and
                  of the full circuit W_E W_V W_O W_U, both from d_head x d_head products of
                  TransformerLens FactoredMatrix objects (never a d_vocab x d_vocab matrix)
  eigenvalues     complex-plane plots for chosen heads (default: the scan's top previous-token
                  and top induction head, found by one batched pass per probe)
  composition     Q-, K- and V-composition ||W_OV^1 M^2||_F / (||W_OV^1||_F ||M^2||_F) of every
                  earlier head with every later head ("A Mathematical Framework for Transformer
                  Circuits"), against the random-matrix baseline (about 1/sqrt(d_model)); and the
                  K-composition of the top induction head with every earlier head

Writes results/<model>/qk_ov_circuits.json and figures/<model>/qk_ov_circuits{,_eigenvalues,
_composition}.{pdf,png}.
"""

from __future__ import annotations

import math

import torch

from analysis import circuits, cli, io, plotting
from analysis.errors import UsageError
from analysis.models import load_model
from analysis.plotting import head_heatmaps, save_figure
from analysis.scan import ScanSettings, scan_heads, top_heads

NAME = "qk_ov_circuits"


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--heads", nargs="+", default=None, metavar="L.H",
                   help="heads whose eigenvalues are plotted, e.g. 0.2 1.1 "
                        "(default: the top previous-token and induction heads)")
    p.add_argument("--n-prompts", type=cli.positive_int, default=8,
                   help="prompts per scan probe used to find the heads (default: 8)")
    p.add_argument("--repeat-length", type=cli.positive_int, default=50,
                   help="|r| of the induction probe (default: 50)")
    p.add_argument("--baseline-samples", type=cli.positive_int, default=256,
                   help="random matrix pairs for the baseline (default: 256)")
    p.fits_context("--repeat-length", lambda r: 1 + 2 * r)
    p.memory("--n-prompts or --repeat-length",
             lambda a, s: cli.pattern_bytes(s, a.n_prompts,
                                            max(1 + 2 * a.repeat_length, 1 + ScanSettings.random_length)))
    p.memory("--baseline-samples", lambda a, s: 8 * 4 * a.baseline_samples * s.d_model * s.d_head, "random matrices")
    return p


def main(args) -> None:
    model = load_model(args.model, args.device)
    if model.cfg.n_layers < 2:
        raise UsageError("Composition needs at least two layers; this model has one.")

    settings = ScanSettings(n_random=args.n_prompts, n_repeated=args.n_prompts, repeat_lengths=(args.repeat_length,))
    scan = scan_heads(model, settings, seed=args.seed, categories=None, progress=True)
    previous = top_heads(scan.previous_token, 1)[0][:2]
    induction = top_heads(scan.induction[args.repeat_length], 1)[0][:2]
    if induction[0] == 0:
        raise UsageError(f"The top induction head L{induction[0]}H{induction[1]} is in layer 0, so no earlier "
                         "head can compose with it; this model shows no induction circuit.")
    heads = cli.parse_heads(model, args.heads) if args.heads else list(dict.fromkeys([previous, induction]))

    copying, spectra, head_scores = circuits.head_ov_spectra(model, heads)  # copying: [layer, head] each
    comp = {mode: circuits.composition_scores(model, mode) for mode in circuits.COMPOSITION_MODES}
    baseline = circuits.random_composition_baseline(model.cfg.d_model, model.cfg.d_head, args.baseline_samples,
                                                    args.seed)
    partners = circuits.composition_partners(comp["K"], *induction)

    results = {
        "top_previous_token_head": {"layer": previous[0], "head": previous[1],
                                    "score": float(scan.previous_token[previous])},
        "top_induction_head": {"layer": induction[0], "head": induction[1],
                               "score": float(scan.induction[args.repeat_length][induction]),
                               "copying_score": {"residual_W_V_W_O": float(copying["residual"][induction]),
                                                 "full_W_E_W_V_W_O_W_U": float(copying["full"][induction])}},
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
        "induction_strongest_k_partner": {"layer": partners[0][0], "head": partners[0][1], "score": partners[0][2]},
    }
    path = io.save_results(args.out, args.model, NAME, results, model_info=model.analysis_info,
                           arguments=vars(args), seed=args.seed)

    fig = head_heatmaps([copying["residual"].detach(), copying["full"].detach()],
                        ["OV copying score, W_V W_O", "OV copying score, W_E W_V W_O W_U"],
                        suptitle=f"OV copying scores, {args.model}")
    save_figure(fig, args.out, args.model, NAME)
    save_figure(plotting.eigenvalue_planes(spectra, head_scores), args.out, args.model, f"{NAME}_eigenvalues")
    save_figure(plotting.composition_figure(model.cfg, comp, baseline, induction, partners), args.out, args.model,
                f"{NAME}_composition")

    (pl, ph), (il, ih) = previous, induction
    print(f"top previous-token head L{pl}H{ph}, top induction head L{il}H{ih}")
    for label, s in head_scores.items():
        print(f"{label}: copying score {s['W_V W_O']:+.3f} (W_V W_O), {s['W_E W_V W_O W_U']:+.3f} (full OV circuit)")
    listed = ", ".join(f"L{l}H{h} {s:.3f}" for l, h, s in partners[:5])
    print(f"K-composition into L{il}H{ih}: {listed} (random baseline {baseline:.3f}, 1/sqrt(d_model) "
          f"{1 / math.sqrt(model.cfg.d_model):.3f})")
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
