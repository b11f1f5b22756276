"""Train the model organism and write its checkpoint (weights, tokenizer, config, ground truth).

The shipped checkpoint in analysis/organism/checkpoint/ was made by running this script with
its defaults on CPU (2 threads); tests and other scripts never retrain it. Training is seeded
and deterministic on CPU for a fixed thread count. About 10 minutes on 2 cores.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import cli  # noqa: E402
from analysis.models import ORGANISM_DIR  # noqa: E402
from analysis.organism import planted_head_report  # noqa: E402
from analysis.organism.train import TrainConfig, save_organism, timed_train  # noqa: E402


def build_parser():
    defaults = TrainConfig()
    p = cli.parser(__doc__)
    p.set_defaults(out=ORGANISM_DIR)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads; fixes the reduction order (default: 2)")
    p.add_argument("--eval-every", type=int, default=500)
    return p


def main(args) -> None:
    if args.model != "organism":
        raise cli.UsageError("train_organism.py trains the organism only; leave --model at its default.")
    if args.device != "cpu":
        raise cli.UsageError("The organism is trained on CPU so that the shipped checkpoint is reproducible; use --device cpu.")
    cli.check_positive("--steps", args.steps)
    torch.set_num_threads(args.threads)
    config = dataclasses.replace(TrainConfig(), steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    model, log, seconds = timed_train(config, eval_every=args.eval_every, evaluate=planted_head_report)
    report = planted_head_report(model)
    save_organism(model, config, log, Path(args.out), seconds, report)
    print(f"trained in {seconds / 60:.1f} min; checkpoint in {args.out}")
    for key, value in report.items():
        print(f"  {key:>32s}: {value:.3f}")


if __name__ == "__main__":
    cli.run(main, build_parser())
