"""Build the PDF with latexmk and check its log: undefined references, citations or macros, overfull boxes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from analysis.errors import UsageError
from writeup.results import PAPER_DIR

OVERFULL_TOLERANCE_PT = 1.0  # overfull boxes up to this much are invisible in print
LATEXMK = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error"]
LOG_PATTERNS = {
    "undefined reference": r"LaTeX Warning: Reference `([^']+)' on page",
    "undefined citation": r"Warning: Citation `([^']+)' on page",
    "undefined macro": r"! Undefined control sequence\.\s*\n.*?(\\[A-Za-z@]+)",
    "missing file": r"LaTeX Warning: File `([^']+)' not found",
    "unstable labels": r"(Label\(s\) may have changed)",
    "missing character": r"Missing character: There is no (\S+)",
    "float too large for its page": r"LaTeX Warning: Float too large for page by (\S+pt)",
}


def log_problems(log: str, tolerance_pt: float = OVERFULL_TOLERANCE_PT) -> list[str]:
    """Undefined references, citations or macros, missing files and overfull boxes in a LaTeX log."""
    problems = []
    for what, pattern in LOG_PATTERNS.items():
        problems += [f"{what}: {m}" for m in sorted(set(re.findall(pattern, log)))]
    for kind, amount in re.findall(r"Overfull \\([hv]box) \((\d+(?:\.\d+)?)pt too", log):
        if float(amount) > tolerance_pt:
            problems.append(f"overfull \\{kind} by {amount}pt")
    return problems


def build_pdf(generated: Path | str, build_dir: Path | str,
              paper_dir: Path | str = PAPER_DIR) -> tuple[Path, list[str]]:
    """latexmk on main.tex with `generated` on TeX's input path; (the PDF, the problems in its log).

    A LaTeX error raises `UsageError` with the log's error lines.
    """
    if shutil.which("latexmk") is None:
        raise UsageError(
            "latexmk is not installed, so the paper cannot be built. On Debian or Ubuntu: apt-get install "
            "latexmk texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended texlive-science "
            "(README, Reproducing the paper)."
        )
    build_dir = Path(build_dir).resolve()
    # The trailing separator keeps TeX's own search path after the generated directory.
    env = {**os.environ, "TEXINPUTS": f"{Path(generated).resolve()}{os.pathsep}"}
    done = subprocess.run([*LATEXMK, f"-outdir={build_dir}", "main.tex"], cwd=paper_dir, env=env,
                          capture_output=True, text=True)
    log_path = build_dir / "main.log"
    log = log_path.read_text(errors="replace") if log_path.exists() else done.stdout + done.stderr
    if done.returncode != 0:
        errors = [line for line in log.splitlines() if line.startswith("!") or ":error:" in line or ".tex:" in line]
        raise UsageError(f"LaTeX failed on {Path(paper_dir) / 'main.tex'} (log: {log_path}): "
                         + " | ".join(errors[:5] or log.splitlines()[-5:]))
    return build_dir / "main.pdf", log_problems(log)
