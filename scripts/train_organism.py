"""Train a model organism and write its checkpoint (weights, tokenizer, config, ground truth, training log).

The shipped checkpoint in analysis/organism/checkpoint/ was made by running this script with
its defaults on CPU (2 threads); tests and other scripts never retrain it. Training is seeded
and deterministic on CPU for a fixed thread count; the training log records how long it took.

What is planted (--organism): 'semantic' plants previous-token, induction and semantic heads;
'negative_control' plants previous-token and induction heads, a decoy that attends to its category
including itself, and a category-blind self-avoider, and no semantic head. The architecture
(--family): 'gpt2' (LayerNorm, learned positions), 'llama' (RMSNorm, rotary, gated SiLU MLP,
grouped-query attention, no biases) or 'neox' (parallel attention and MLP, partial rotary). Where
the planted heads sit: each family's default places, --planted KIND=L.H to name one, or
--draw-placement to draw them all from --seed (the previous-token head in layer 0, the rest in
the last layer). The other models the repository ships were made this way; each records its
exact configuration in training_log.json.

The new checkpoint goes to --out (default: checkpoints/organism/; load it with --model
checkpoints/organism). It is written into a fresh folder beside --out and swapped in whole, so a
kill leaves the old checkpoint or the new one, never a mixture. Replacing the shipped checkpoint
needs --replace-shipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from analysis import cli, io, models
from analysis.infra import atomic, checkpoint
from analysis.organism.files import ORGANISM_DIR
from analysis.organism.report import planted_head_report
from analysis.organism.train import (DEFAULT_PLACEMENT, FAMILIES, ORGANISM_KINDS, TrainConfig, drawn_placement,
                                     save_organism, timed_train)

DEFAULT_OUT = io.REPO_ROOT / "checkpoints" / "organism"


def build_parser():
    defaults = TrainConfig()
    p = cli.parser(__doc__, staged=False, weights=False, out_default=DEFAULT_OUT,
                   out_help="checkpoint folder to write (default: checkpoints/organism under the repository)")
    p.add_argument("--replace-shipped", action="store_true",
                   help="write the new checkpoint over the shipped one in analysis/organism/checkpoint")
    p.add_argument("--steps", type=cli.positive_int, default=defaults.steps)
    p.add_argument("--batch-size", type=cli.positive_int, default=defaults.batch_size)
    p.add_argument("--lr", type=cli.positive_float, default=defaults.lr)
    p.add_argument("--threads", type=cli.positive_int, default=2,
                   help="torch CPU threads; fixes the reduction order (default: 2)")
    p.add_argument("--eval-every", type=cli.positive_int, default=500)
    p.add_argument("--family", choices=list(FAMILIES), default=defaults.family,
                   help=f"architecture family (default: {defaults.family})")
    p.add_argument("--organism", choices=list(ORGANISM_KINDS), default="semantic",
                   help="which heads are planted (default: semantic)")
    p.add_argument("--planted", nargs="+", default=[], metavar="KIND=L.H",
                   help="place a planted head, e.g. semantic=1.2 (default: the family's places)")
    p.add_argument("--draw-placement", action="store_true",
                   help="draw every planted head's place from --seed instead of the family's default places")
    return p


def placement(args, config: TrainConfig) -> dict[str, tuple[int, int]]:
    """Where each planted kind of --organism sits: drawn from --seed, or the family's default, then --planted."""
    kinds = ORGANISM_KINDS[args.organism]
    if args.draw_placement:
        places = drawn_placement(kinds, config.n_layers, config.n_heads, args.seed)
    elif (args.family, args.organism) in DEFAULT_PLACEMENT:
        places = dict(DEFAULT_PLACEMENT[args.family, args.organism])
    else:
        places = drawn_placement(kinds, config.n_layers, config.n_heads, 0)
    for spec in args.planted:
        kind, _, head = spec.partition("=")
        if kind not in kinds:
            raise cli.UsageError(f"--planted {spec}: {kind!r} is not planted in a {args.organism} organism; its kinds "
                                 f"are {', '.join(kinds)}.")
        try:
            layer, index = (int(x) for x in head.split("."))
        except ValueError:
            raise cli.UsageError(f"--planted takes KIND=LAYER.HEAD such as semantic=1.2; got {spec!r}.") from None
        if not (0 <= layer < config.n_layers and 0 <= index < config.n_heads):
            raise cli.UsageError(f"--planted {spec}: the organism has layers 0-{config.n_layers - 1} and heads "
                                 f"0-{config.n_heads - 1}.")
        places[kind] = (layer, index)
    if len(set(places.values())) < len(places):
        raise cli.UsageError(f"Two planted kinds share a head: {places}. Give each kind its own head with --planted.")
    return places


def checkpoint_folder(args) -> Path:
    """--out, checked: the shipped checkpoint only with --replace-shipped, and never a folder of other files."""
    out = ORGANISM_DIR if args.replace_shipped and args.out == DEFAULT_OUT else Path(args.out)
    shipped = out.resolve() == ORGANISM_DIR.resolve()
    if args.replace_shipped and not shipped:
        raise cli.UsageError(f"--replace-shipped writes {ORGANISM_DIR}; leave --out out, or drop --replace-shipped.")
    if shipped and not args.replace_shipped:
        raise cli.UsageError(f"--out {out} is the shipped checkpoint. Pass --replace-shipped to overwrite it, or give "
                             "--out another folder.")
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / checkpoint.CONFIG_FILE).exists())):
        raise cli.UsageError(f"--out {out} exists and is not a checkpoint folder, so it will not be replaced. Give "
                             "--out a new folder or an earlier checkpoint.")
    return out


def main(args) -> None:
    if args.model != "organism":
        raise cli.UsageError("train_organism.py trains the organism only; leave --model at its default.")
    if args.device != "cpu":
        raise cli.UsageError("The organism is trained on CPU so that the shipped checkpoint is reproducible; "
                             "use --device cpu.")
    out = checkpoint_folder(args)
    config = dataclasses.replace(TrainConfig(), steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                 seed=args.seed, family=args.family)
    config = dataclasses.replace(config, planted_heads=placement(args, config))
    shape = models.ModelShape(config.n_layers, config.n_heads, config.d_model, config.d_head, config.d_mlp,
                              d_vocab=0, n_ctx=config.n_ctx)
    # Activations kept for the backward pass: about a dozen per-head patterns' worth per layer.
    cli.check_memory(cli.pattern_bytes(shape, config.batch_size, config.n_ctx, copies=12), "--batch-size",
                     "training activations")
    torch.set_num_threads(args.threads)
    with atomic.staged_directory(out) as folder:  # made before training: an unwritable --out fails now
        evaluate = lambda model: planted_head_report(model, config.planted_heads)  # noqa: E731
        model, log, seconds = timed_train(config, eval_every=args.eval_every, evaluate=evaluate)
        report = planted_head_report(model, config.planted_heads)
        save_organism(model, config, log, folder, seconds, report)
    print(f"trained in {seconds / 60:.1f} min; checkpoint in {out}")
    for key, value in report.items():
        print(f"  {key:>32s}: {value:.3f}")


if __name__ == "__main__":
    cli.run(main, build_parser())
