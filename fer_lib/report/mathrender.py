"""Formulas readable offline: nbconvert leaves ``$...$`` and ``$$...$$`` LaTeX for MathJax, a script from a CDN;
as MathML (latex2mathml, at build time) Chromium and Firefox render them with no script, font or network."""
from __future__ import annotations

import html
import re

SKIP_BLOCKS = re.compile(r"(<(script|style|pre|code|textarea)\b.*?</\2>)", re.S | re.I)
FORMULAS = {"block": re.compile(r"\$\$(.+?)\$\$", re.S),  # display formulas first: "$$" is not two inline "$"
            "inline": re.compile(r"(?<![\\$])\$(?!\$)([^$\n]+?)(?<!\\)\$")}


def offline_math(page: str) -> str:
    """Every formula outside script, style, pre, code and textarea blocks, as MathML."""
    from latex2mathml.converter import convert

    # split() with two groups yields [text, block, tag name, text, block, tag name, ...]: convert the texts only
    parts = SKIP_BLOCKS.split(page)
    for i in range(0, len(parts), 3):
        for display, formula in FORMULAS.items():
            parts[i] = formula.sub(lambda m: convert(html.unescape(m.group(1)).strip(), display=display), parts[i])
    return "".join(p for i, p in enumerate(parts) if i % 3 != 2)
