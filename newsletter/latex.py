"""LaTeX in titles and abstracts: protect it from translation, show it as readable Unicode."""

from __future__ import annotations

import re
from functools import lru_cache
from xml.sax.saxutils import escape

from pylatexenc.latex2text import LatexNodes2Text

# Display math first so "$$...$$" is not read as two empty "$" spans; escaped "\$" is not math.
_MATH = re.compile(
    r"\$\$.+?\$\$|(?<!\\)\$.+?(?<!\\)\$|\\\(.+?\\\)|\\\[.+?\\\]"
    r"|\\[a-zA-Z]+\*?(?:\[[^\]]*\])?(?:\{[^{}]*\})+"
    r"|\\[a-zA-Z]+\b"
    r"|\\['\"`^~=.](?:\{[a-zA-Z]\}|[a-zA-Z])",
    re.DOTALL,
)
PROTECT_TAG = "x"


def protect_latex(text: str) -> str:
    """XML for DeepL: math and LaTeX commands inside <x> (ignored), the rest escaped."""
    parts: list[str] = []
    last = 0
    for match in _MATH.finditer(text):
        parts.append(escape(text[last:match.start()]))
        parts.append(f"<{PROTECT_TAG}>{escape(match.group())}</{PROTECT_TAG}>")
        last = match.end()
    parts.append(escape(text[last:]))
    return "".join(parts)


def latex_spans(text: str) -> list[str]:
    """The LaTeX spans of `text`, in order (to verify a translation kept them)."""
    return [match.group() for match in _MATH.finditer(text)]


@lru_cache(maxsize=1)
def _converter() -> LatexNodes2Text:
    return LatexNodes2Text(math_mode="text", strict_latex_spaces=False)


def latex_to_unicode(text: str) -> str:
    """Readable Unicode for simple LaTeX: "2.5$\\times$" -> "2.5×", "$\\rho(E^s)$" -> "ρ(E^s)"."""
    # Only the LaTeX spans are converted: in running text "%" and "&" are plain characters.
    return _MATH.sub(_span_to_unicode, text)


def _span_to_unicode(match: re.Match[str]) -> str:
    span = match.group()
    try:
        converted = _converter().latex_to_text(span)
    except Exception:  # pylatexenc can trip on odd input; the raw span is still readable
        return span
    return re.sub(r"\s+", " ", converted).strip() or span
