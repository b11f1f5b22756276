"""Build paper/main.pdf from paper/main.tex and the generated inputs of one model, and check it.

Runs latexmk (pdflatex + bibtex) on paper/main.tex with paper/generated/<model>/ (written by
scripts/make_paper_inputs.py) on TeX's input path, into paper/build/<model>/, then checks the log:
undefined references, citations or macros, missing files or overfull boxes (beyond a small
tolerance) fail the build with a list of what to fix. On success the PDF is copied to
paper/main.pdf. `make paper` runs it; TeX must be installed (README, Reproducing the paper).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from analysis import cli
from analysis.ids import model_id
from writeup.build import build_pdf
from writeup.results import PAPER_DIR


def build_parser():
    p = cli.parser(__doc__, staged=False, weights=False)  # writes paper/build and --pdf, nothing under --out
    p.add_argument("--generated", type=Path, default=None,
                   help="generated inputs (default: paper/generated/<model>)")
    p.add_argument("--build-dir", type=Path, default=None, help="LaTeX's output directory (default: paper/build/<model>)")
    p.add_argument("--pdf", type=Path, default=PAPER_DIR / "main.pdf", help="where the PDF goes (default: paper/main.pdf)")
    cli.add_results_processing_argument(p)
    return p


def main(args) -> None:
    slug = model_id(args.model, args.processing)
    generated = args.generated or PAPER_DIR / "generated" / slug
    if not (generated / "macros.tex").exists():
        raise cli.UsageError(f"{generated / 'macros.tex'} does not exist: run scripts/make_paper_inputs.py "
                             f"--model {args.model} first (or make paper MODEL={args.model}).")
    pdf, problems = build_pdf(generated, args.build_dir or PAPER_DIR / "build" / slug)
    for problem in problems:
        print(f"paper: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    args.pdf.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pdf, args.pdf)
    print(f"{args.pdf} ({args.model}): no undefined references, citations or macros, no overfull boxes")


if __name__ == "__main__":
    cli.run(main, build_parser())
