"""LaTeX in titles and abstracts: protect it from translation, show it as readable Unicode."""

from __future__ import annotations

import re
from functools import lru_cache
from xml.sax.saxutils import escape

from pylatexenc.latex2text import LatexNodes2Text

# A brace group with up to two levels of nesting: "\textbf{a \emph{b}}", "\frac{a}{b^{2}}".
_BRACES = r"\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}"
# Display math first so "$$...$$" is not read as two empty "$" spans; escaped "\$" is not math.
# Inline math is capped in length so a stray "$" cannot pair with one paragraphs later; a lone "$"
# (a price, or a typo) is protected too: DeepL would otherwise translate it as 美元.
_LATEX = re.compile(
    r"\$\$.+?\$\$|(?<!\\)\$.{1,300}?(?<!\\)\$|\\\(.+?\\\)|\\\[.+?\\\]"
    rf"|\\[a-zA-Z]+\*?(?:\[[^\]]*\])?(?:{_BRACES})+"
    r"|\\[a-zA-Z]+\b"
    r"|\\['\"`^~=.](?:\{[a-zA-Z]\}|[a-zA-Z])"
    r"|\\[$%&#_{}]"
    r"|\$",
    re.DOTALL,
)
_ESCAPED_CHARACTER = re.compile(r"\\([$%&#_{}])")
PROTECT_TAG = "x"
_PLACEHOLDER = re.compile(rf"<{PROTECT_TAG}>(\d+)</{PROTECT_TAG}>")


class LatexLost(ValueError):
    """A translation came back without (or with extra) protected LaTeX placeholders."""


def normalize_whitespace(text: str) -> str:
    """Runs of whitespace (arXiv abstracts keep their line breaks) as single spaces."""
    return " ".join(text.split())


def latex_spans(text: str) -> list[str]:
    """The LaTeX spans of `text`, in order."""
    return [match.group() for match in _LATEX.finditer(text)]


def protect_latex(text: str) -> tuple[str, list[str]]:
    """XML for DeepL: each LaTeX span replaced by a numbered placeholder in an ignored <x> tag.

    The placeholder is shorter than most spans (fewer characters billed) and is put back
    verbatim by `restore_latex`, so DeepL never sees, bills or rewrites the math itself.
    """
    spans: list[str] = []
    parts: list[str] = []
    last = 0
    for match in _LATEX.finditer(text):
        parts.append(escape(text[last:match.start()]))
        parts.append(f"<{PROTECT_TAG}>{len(spans)}</{PROTECT_TAG}>")
        spans.append(match.group())
        last = match.end()
    parts.append(escape(text[last:]))
    return "".join(parts), spans


def restore_latex(translated: str, spans: list[str]) -> str:
    """The translated XML as text with every placeholder replaced by its span; LatexLost if any is missing."""
    found = [int(number) for number in _PLACEHOLDER.findall(translated)]
    if sorted(found) != list(range(len(spans))):
        raise LatexLost(f"expected placeholders 0..{len(spans) - 1}, got {found}")
    text = _PLACEHOLDER.sub(lambda match: "\0" + match.group(1) + "\0", translated)
    if re.search(r"<[A-Za-z/][^<>]*>", text):
        raise LatexLost("the translation carries markup that was not sent")
    text = _unescape_xml(text)
    # Spans are put back last, so their "&lt;" or "&amp;" are never unescaped twice.
    return re.sub(r"\0(\d+)\0", lambda match: spans[int(match.group(1))], text)


def _unescape_xml(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&apos;", "'").replace(
        "&amp;", "&"
    )


@lru_cache(maxsize=1)
def _converter() -> LatexNodes2Text:
    return LatexNodes2Text(math_mode="text", strict_latex_spaces=False)


def latex_to_unicode(text: str) -> str:
    """Readable Unicode for simple LaTeX: "2.5$\\times$" -> "2.5×", "$\\rho(E^s)$" -> "ρ(E^s)"."""
    # Only the LaTeX spans are converted: in running text "%" and "&" are plain characters.
    return _LATEX.sub(_span_to_unicode, text)


def _span_to_unicode(match: re.Match[str]) -> str:
    span = match.group()
    if span == "$":
        return span
    escaped = _ESCAPED_CHARACTER.fullmatch(span)
    if escaped:
        return escaped.group(1)
    try:
        converted = _converter().latex_to_text(span)
    except Exception:  # pylatexenc can trip on odd input; the raw span is still readable
        return span
    return re.sub(r"\s+", " ", converted).strip() or span
