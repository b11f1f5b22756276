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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from analysis import circuits, cli, io  # noqa: E402
from analysis.errors import UsageError  # noqa: E402
from analysis.models import load_model  # noqa: E402
from analysis.plotting import head_heatmaps  # noqa: E402
from analysis.scan import ScanSettings, scan_heads, top_heads  # noqa: E402

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


def parse_heads(model, specs: list[str]) -> list[tuple[int, int]]:
    heads = []
    for spec in specs:
        try:
            layer, head = (int(x) for x in spec.split("."))
        except ValueError:
            raise UsageError(f"--heads takes LAYER.HEAD pairs such as 1.1; got {spec!r}.") from None
        cli.check_head(model, layer, head)
        heads.append((layer, head))
    return heads


def eigenvalue_figure(spectra: dict[str, dict[str, torch.Tensor]], scores: dict[str, dict[str, float]]):
    """One complex plane per head; each circuit's eigenvalues divided by its largest |lambda|."""
    import matplotlib.pyplot as plt

    io.use_style()
    fig, axes = plt.subplots(1, len(spectra), figsize=(4.6 * len(spectra), 4.6), squeeze=False)
    for ax, (label, circuits_of_head) in zip(axes[0], spectra.items()):
        ax.add_patch(plt.Circle((0, 0), 1, fill=False, ls=":", color="grey"))
        for (circuit, eig), marker in zip(circuits_of_head.items(), "ox"):
            eig = eig / eig.abs().max()
            ax.scatter(eig.real, eig.imag, marker=marker, s=22, alpha=0.8,
                       label=f"{circuit} (copying {scores[label][circuit]:+.2f})")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), aspect="equal", title=label,
               xlabel="Re λ / max|λ|", ylabel="Im λ / max|λ|")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def composition_figure(model, comp: dict[str, torch.Tensor], baseline: float, induction: tuple[int, int],
                       partners: list[tuple[int, int, float]]):
    """Q/K/V composition of earlier (rows) with later (columns) heads, centred on the baseline; and one bar chart."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.colors import TwoSlopeNorm

    io.use_style()
    n = model.cfg.n_layers * model.cfg.n_heads
    labels = [f"L{l}H{h}" for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    fig, axes = plt.subplots(1, 4, figsize=(5.2 * 4, 5.2))
    vmax = max(float(np.nanmax(c.numpy())) for c in comp.values())
    norm = TwoSlopeNorm(vmin=0, vcenter=baseline, vmax=max(vmax, 2 * baseline))
    for ax, (mode, scores) in zip(axes, comp.items()):
        sns.heatmap(scores.reshape(n, n).numpy(), ax=ax, cmap="RdBu_r", norm=norm, square=True,
                    xticklabels=labels, yticklabels=labels, cbar_kws={"shrink": 0.6})
        ax.set(title=f"{mode}-composition", xlabel="later head", ylabel="earlier head")
        ax.tick_params(labelsize=6 if n <= 16 else 3)
    ax = axes[3]
    names = [f"L{l}H{h}" for l, h, _ in partners]
    ax.bar(range(len(partners)), [s for _, _, s in partners], color="C0")
    ax.axhline(baseline, color="C3", ls="--", label=f"random baseline {baseline:.3f}")
    ax.axhline(1 / math.sqrt(model.cfg.d_model), color="grey", ls=":", label="1/sqrt(d_model)")
    ax.set_xticks(range(len(partners)), names, rotation=90, fontsize=6 if len(partners) <= 16 else 3)
    ax.set(title=f"K-composition into L{induction[0]}H{induction[1]} (top induction head)",
           ylabel="K-composition score")
    ax.legend(fontsize=7)
    fig.suptitle(f"Composition scores (colour centred on the random baseline {baseline:.3f})")
    fig.tight_layout()
    return fig


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
    heads = parse_heads(model, args.heads) if args.heads else list(dict.fromkeys([previous, induction]))

    copying = circuits.ov_copying_scores(model)  # [layer, head] each
    residual_eig = circuits.ov_circuit(model).eigenvalues  # (L, nh, d_head)
    full_eig = circuits.full_ov_eigenvalues(model)
    spectra = {f"L{l}H{h}": {"W_V W_O": residual_eig[l, h].detach().cpu(),
                             "W_E W_V W_O W_U": full_eig[l, h].detach().cpu()} for l, h in heads}
    head_scores = {f"L{l}H{h}": {"W_V W_O": float(copying["residual"][l, h]),
                                 "W_E W_V W_O W_U": float(copying["full"][l, h])} for l, h in heads}

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
    io.save_figure(fig, args.out, args.model, NAME)
    io.save_figure(eigenvalue_figure(spectra, head_scores), args.out, args.model, f"{NAME}_eigenvalues")
    io.save_figure(composition_figure(model, comp, baseline, induction, partners), args.out, args.model,
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
