"""Write the paper's generated inputs from a model's results: numbers as macros, tables as files.

Reads OUT/results/<model>/*.json (and the organism's checkpoint records and
paper/reported_gpt2.json) through the declarative spec in writeup/spec.py and writes

  paper/generated/<model>/macros.tex     one \\newcommand per number, commented with its origin
  paper/generated/<model>/tab_*.tex      booktabs tables
  paper/generated/<model>/manifest.json  every macro with its results file and entry

`make paper` runs it, then scripts/build_paper.py. With --trimmed-copy DIR it also writes only
the entries the paper reads to DIR, laid out as results/<model>/ (the paper tests' fixture is
refreshed with --trimmed-copy tests/fixtures/paper/organism). With --docs it also rewrites the generated
regions of README.md and docs/*.md (writeup/docs.py), where the results are the shipped organism's, processed as
by default; any other model's results leave them as they are.
"""

from __future__ import annotations

from pathlib import Path

from analysis import cli
from analysis.io import figures_dir
from writeup import docs
from writeup.fixture import trimmed_copy
from writeup.generate import generate
from writeup.results import PAPER_DIR, Results


def build_parser():
    p = cli.parser(__doc__, weights=False)
    p.add_argument("--scripts", nargs="*", default=[],
                   help="the run's scripts in order, for the run-time and provenance tables (make passes DEMO_SCRIPTS)")
    p.add_argument("--generated", type=Path, default=None,
                   help="directory for the generated files (default: paper/generated/<model>)")
    p.add_argument("--figures", type=Path, default=None, help="figures directory (default: OUT/figures/<model>)")
    p.add_argument("--trimmed-copy", type=Path, default=None, metavar="DIR",
                   help="also copy the entries the paper reads to DIR, laid out as results/<model>/ (test fixture)")
    p.add_argument("--docs", action="store_true",
                   help="also rewrite the generated regions of README.md and docs/*.md where the results are the "
                        "shipped organism's (others leave them as they are)")
    cli.add_results_processing_argument(p)
    return p


def main(args) -> None:
    results = Results(args.out, args.model, processing=args.processing)
    generated = args.generated or PAPER_DIR / "generated" / results.directory.name
    figures = args.figures or figures_dir(args.out, args.model)
    manifest = generate(results, generated, figures, args.scripts)
    print(f"{len(manifest)} values from {results.directory} -> {generated}")
    if args.trimmed_copy is not None:
        written = trimmed_copy(results, args.trimmed_copy, args.scripts)
        print(f"trimmed copy: {len(written)} files under {args.trimmed_copy}")
    if args.docs:
        why = docs.not_shipped_organism(results)
        if why:
            print(f"README.md and docs/ left as they are: {why}")
        else:
            changed = docs.write_regions(docs.Sources(results))
            print("generated regions rewritten in " + (", ".join(changed) if changed else "no file (up to date)"))


if __name__ == "__main__":
    cli.run(main, build_parser())
