"""A value as the LaTeX the paper prints: numbers through siunitx, heads as L1H5, text escaped.

A format is one of
  ".3f", "d", "g", ".1e", ...   a number, typeset with siunitx's \\num ("d": rounded to an integer)
  "percent"                     a fraction as a percentage, \\SI{40}{\\percent}
  "range"                       [a, b] as \\numrange{a}{b}
  "minutes"                     seconds as minutes, one decimal
  "count"                       the number of entries of a list or mapping
  "head"                        {"layer": 1, "head": 5} or [1, 5] as L1H5
  "text"                        escaped text; "word": a token, without GPT-2's leading space
  "list", "list:3"              a list of words (all, or the first 3), comma separated ("none" if empty)
  "commit"                      a commit hash, shortened
  Words("is", "is not")         a boolean as one of two words
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
MISSING = "--"  # a number a results file stores as null (NaN): printed, never hidden


@dataclass(frozen=True)
class Words:
    """The format of a boolean printed as a word: `true` if the value holds, else `false`."""

    true: str
    false: str


Format = str | Words


def latex_escape(text: Any) -> str:
    """Plain text made safe for LaTeX: R&D_1 -> R\\&D\\_1; characters pdflatex cannot set become "?"."""
    return "".join(_LATEX_SPECIALS.get(c, c if 32 <= ord(c) < 127 else "?") for c in str(text))


def token_tex(token: str) -> str:
    """A vocabulary token in the text: its word without GPT-2's leading space, escaped, in italics."""
    return r"\emph{" + (latex_escape(token.strip()) or r"\textvisiblespace{}") + "}"


def short_commit(commit: str) -> str:
    """A commit hash as printed: its first 12 characters, plus "+dirty" for uncommitted changes."""
    return commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")


def head_name(value: Any) -> str:
    """L<layer>H<head> from {"layer": l, "head": h} or [l, h]."""
    layer, head = (value["layer"], value["head"]) if isinstance(value, Mapping) else value
    return f"L{int(layer)}H{int(head)}"


def same_head(a: Any, b: Any) -> bool:
    """Whether two heads, each {"layer": l, "head": h} or [l, h], are the same head."""
    return head_name(a) == head_name(b)


def format_value(value: Any, fmt: Format) -> str:
    """The LaTeX for one value in one format (module docstring)."""
    if isinstance(fmt, Words):
        return latex_escape(fmt.true if value else fmt.false)
    if fmt == "head":
        return head_name(value)
    if fmt in ("text", "word", "commit"):
        return latex_escape({"text": str, "word": str.strip, "commit": short_commit}[fmt](value))
    if match := re.fullmatch(r"list(?::(\d+))?", fmt):
        items = value[:int(match.group(1))] if match.group(1) else value
        return latex_escape(", ".join(str(item).strip() for item in items) or "none")
    if fmt == "count":
        return rf"\num{{{len(value)}}}"
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if fmt == "range":
        return rf"\numrange{{{value[0]}}}{{{value[1]}}}"
    if fmt == "percent":
        return rf"\SI{{{100 * value:.0f}}}{{\percent}}"
    if fmt == "minutes":
        return rf"\num{{{value / 60:.1f}}}"
    if fmt == "d":
        return rf"\num{{{int(round(value))}}}"
    return rf"\num{{{value:{fmt}}}}"
