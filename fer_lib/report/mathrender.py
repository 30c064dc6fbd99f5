"""Make rendered notebook HTML readable offline: LaTeX becomes MathML, the MathJax CDN script goes.

nbconvert leaves ``$...$`` / ``$$...$$`` in the page for MathJax, loaded from a CDN: a grader
opening the report without a network would see raw LaTeX. Chromium and Firefox render MathML
natively, so converting at build time (latex2mathml) needs no script, font or network at all.
"""
from __future__ import annotations

import html
import re

_SKIP_BLOCKS = re.compile(r"(<(script|style|pre|code|textarea)\b.*?</\2>)", re.S | re.I)
_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE = re.compile(r"(?<![\\$])\$(?!\$)([^$\n]+?)(?<!\\)\$")
# nbconvert's template loads MathJax, require.js and (on demand) mermaid from a CDN, and configures
# MathJax inline: every script that names MathJax or a remote URL goes
_REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>\s*", re.I)
_MATHJAX_CONFIG = re.compile(r"<script[^>]*>(?:(?!</script>).)*?(?:MathJax|https?://)(?:(?!</script>).)*?</script>\s*",
                             re.S)


def latex_to_mathml(latex: str, display: bool) -> str:
    from latex2mathml.converter import convert

    return convert(html.unescape(latex).strip(), display="block" if display else "inline")


def _convert_text(text: str) -> str:
    text = _DISPLAY.sub(lambda m: latex_to_mathml(m.group(1), True), text)
    return _INLINE.sub(lambda m: latex_to_mathml(m.group(1), False), text)


def offline_math(page: str) -> str:
    """Convert every formula outside script/style/pre/code blocks to MathML; drop CDN and MathJax scripts."""
    page = _MATHJAX_CONFIG.sub("", _REMOTE_SCRIPT.sub("", page))
    parts = _SKIP_BLOCKS.split(page)
    # split() with two groups yields [text, block, tagname, text, block, tagname, ...]
    out = []
    for i, part in enumerate(parts):
        kind = i % 3
        if kind == 0:
            out.append(_convert_text(part))
        elif kind == 1:
            out.append(part)
    return "".join(out)
