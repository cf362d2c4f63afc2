"""LaTeX in titles and abstracts: one tokenizer for matching, display and translation.

`latex_spans` cuts any string into spans that join back to it exactly: plain text, math
(`$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`, environments), commands with their arguments,
accents, escapes, brace groups and a lone `$`. Every pattern is bounded, so no input makes it
raise or backtrack for long, and nothing is lost. On those spans:

- `latex_to_unicode` shows LaTeX as readable Unicode (the email, the pages, and the matcher,
  which folds that text): "2.5$\\times$" -> "2.5×", "$\\|\\nabla f(\\mathbf{x})\\|$" -> "‖∇f(𝐱)‖";
  a span it cannot read is shown as typed.
- `protect_latex` / `restore_latex` hide every non-text span from DeepL behind numbered
  placeholders and put it back verbatim.

Symbols, fonts, sub/superscripts and combining accents come from unicodeit's tables (pylatexenc
failed on `\\href{..}{..}`, `\\sqrt[3]{x}` and a bare `\\footnote`; flatlatex leaves `\\colon`,
`\\mathrm` and `\\left` as typed; tests/test_latex_display.py holds the table they were compared on).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from html import escape
from types import ModuleType

log = logging.getLogger(__name__)

PROTECT_TAG = "x"
PLACEHOLDER = re.compile(rf"<{PROTECT_TAG}>(\d+)</{PROTECT_TAG}>")
_MARKUP = re.compile(r"<[A-Za-z/!?][^<>]*>")


class LatexLost(ValueError):
    """A translation came back without (or with extra) protected LaTeX placeholders."""


class SpanKind(StrEnum):
    TEXT = "text"
    MATH = "math"
    COMMAND = "command"
    ACCENT = "accent"
    ESCAPE = "escape"
    GROUP = "group"
    DOLLAR = "dollar"


@dataclass(frozen=True, slots=True)
class Span:
    """One piece of a title or abstract: `text[start:end]` and what kind of LaTeX it is."""

    kind: SpanKind
    start: int
    end: int
    text: str


# A brace group nested up to three deep: "\textbf{a \emph{b}}", "\frac{a}{b^{2}}".
_BRACES = r"\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}"
# Three plain words in a row are prose, not math: a stray "$" ("costs $5. Then $x$") must not
# pair with the next formula's. Lengths are capped for the same reason.
_PROSE = r"(?<![\\{A-Za-z])[A-Za-z]{2,} [A-Za-z]{2,} [A-Za-z]{2,}"
_TWO_WORDS = r"(?<![\\{A-Za-z])[A-Za-z]{2,}[ ,;.]+[A-Za-z]{2,}"
_SPAN = re.compile(
    r"(?P<math>\$\$(?:[^$\\]|\\.){1,3000}?\$\$"
    # Inline math hugs its dollars ("$x$") or has space inside both ("$ x $"): "costs $5 and the
    # other $" is two dollar signs, not math.
    rf"|\$(?![^$]*?{_PROSE})(?:(?=\S)(?:[^$\\]|\\.){{1,10000}}(?<=\S)"
    rf"|(?![^$]*?{_TWO_WORDS})\s(?:[^$\\]|\\.){{0,10000}}\s)\$(?!\d)"
    r"|\\\(.{0,2000}?\\\)|\\\[.{0,3000}?\\\]"
    r"|\\begin\{(?P<env>[A-Za-z]{1,30}\*?)\}.{0,5000}?\\end\{(?P=env)\})"
    rf"|(?P<command>\\[A-Za-z]{{1,40}}\*?(?:\[[^\[\]{{}}]{{0,200}}\])?(?:{_BRACES}){{0,3}})"
    r"|(?P<accent>\\['\"`^~=.](?:\{[A-Za-z]?\}|[A-Za-z]))"
    r"|(?P<escape>\\[^A-Za-z])"
    rf"|(?P<group>{_BRACES})"
    r"|(?P<dollar>\$)",
    re.DOTALL,
)


def latex_spans(text: str) -> list[Span]:
    """`text` cut into spans of plain text and LaTeX; their texts join back to `text`."""
    spans: list[Span] = []
    last = 0
    for match in _SPAN.finditer(text):
        if match.start() > last:
            spans.append(Span(SpanKind.TEXT, last, match.start(), text[last : match.start()]))
        assert match.lastgroup is not None  # every alternative is a named group
        kind = SpanKind(match.lastgroup)  # the kind's group encloses any other (env, inside math)
        spans.append(Span(kind, match.start(), match.end(), match.group()))
        last = match.end()
    if last < len(text):
        spans.append(Span(SpanKind.TEXT, last, len(text), text[last:]))
    return spans



def has_latex(text: str) -> bool:
    """Whether `text` may hold LaTeX at all (plain text skips the tokenizer)."""
    return "\\" in text or "$" in text or "{" in text


def normalize_whitespace(text: str) -> str:
    """Runs of whitespace (arXiv abstracts keep their line breaks) as single spaces."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------
# Protection from translation
# ---------------------------------------------------------------------------------------

# Characters XML 1.0 forbids: DeepL's XML parser would refuse the whole request for one.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]+")


def protect_latex(text: str) -> tuple[str, list[str]]:
    """XML for DeepL: each LaTeX span replaced by a numbered placeholder in an ignored <x> tag.

    The placeholder is shorter than most spans (fewer characters billed) and is put back
    verbatim by `restore_latex`, so DeepL never sees, bills or rewrites the math itself.
    """
    hidden: list[str] = []
    parts: list[str] = []

    def hide(piece: str) -> None:
        parts.append(f"<{PROTECT_TAG}>{len(hidden)}</{PROTECT_TAG}>")
        hidden.append(piece)

    for span in latex_spans(text):
        if span.kind is not SpanKind.TEXT:
            hide(span.text)
            continue
        last = 0
        for invalid in _NOT_XML.finditer(span.text):
            parts.append(escape(span.text[last : invalid.start()], quote=False))
            hide(invalid.group())
            last = invalid.end()
        parts.append(escape(span.text[last:], quote=False))
    return "".join(parts), hidden


# Accents written as commands with a braced letter (\v{c}, \H{o}) and accents in a group ({\"o}).
_ACCENT_COMMAND = re.compile(r"\\[uvHckrbd]\{[A-Za-z]\}")
_ACCENT_GROUP = re.compile(r"\{\\(?:['\"`^~=.](?:\{[A-Za-z]\}|[A-Za-z])|[uvHckrbd]\{[A-Za-z]\})\}")


def resolve_accents(text: str) -> str:
    """Text accents as the letters they write (`Schr\\"odinger` -> Schrödinger); all other LaTeX as typed.

    Run before `protect_latex` for translation: an accent hidden behind a placeholder would cut
    the word in two (`Schr<x>0</x>dinger`), which DeepL cannot translate or keep whole.
    """
    if "\\" not in text:
        return text
    return "".join(
        render_span(span.kind, span.text) if _is_text_accent(span) else span.text for span in latex_spans(text)
    )


def _is_text_accent(span: Span) -> bool:
    if span.kind is SpanKind.ACCENT:
        return True
    if span.kind is SpanKind.COMMAND:
        return _ACCENT_COMMAND.fullmatch(span.text) is not None
    return span.kind is SpanKind.GROUP and _ACCENT_GROUP.fullmatch(span.text) is not None


def restore_latex(translated: str, spans: list[str]) -> str:
    """The translated XML as text with every placeholder replaced by its span; LatexLost if any is missing."""
    found = [int(number) for number in PLACEHOLDER.findall(translated)]
    if sorted(found) != list(range(len(spans))):
        raise LatexLost(f"expected placeholders 0..{len(spans) - 1}, got {found}")
    return fill_placeholders(translated, spans)


def fill_placeholders(xml: str, spans: list[str]) -> str:
    """`xml` as text with the placeholders it holds (any of them) replaced by their spans."""
    pieces: list[str] = []
    last = 0
    for placeholder in PLACEHOLDER.finditer(xml):
        pieces.append(_xml_text(xml[last : placeholder.start()]))
        pieces.append(spans[int(placeholder.group(1))])
        last = placeholder.end()
    pieces.append(_xml_text(xml[last:]))
    return "".join(pieces)


def _xml_text(xml: str) -> str:
    if _MARKUP.search(xml):
        raise LatexLost("the translation carries markup that was not sent")
    return xml.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&apos;", "'").replace(
        "&amp;", "&"
    )


# ---------------------------------------------------------------------------------------
# Tables (from unicodeit, with the few entries it gets wrong for abstracts corrected)
# ---------------------------------------------------------------------------------------

_SIMPLE_NAME = re.compile(r"\\[A-Za-z]+")
_FONT_ENTRY = re.compile(r"\\(math[a-z]+)\{\\?([A-Za-z0-9]+)\}")


def _symbol_table(unicode_tables: ModuleType) -> dict[str, str]:
    symbols = {name[1:]: char for name, char in unicode_tables.REPLACEMENTS if _SIMPLE_NAME.fullmatch(name)}
    symbols.update(
        {
            "langle": "⟨", "rangle": "⟩", "lVert": "‖", "rVert": "‖", "lvert": "|", "rvert": "|",
            "colon": ":", "setminus": "∖", "emptyset": "∅", "ell": "ℓ", "hbar": "ℏ",
            "ldots": "…", "dots": "…", "cdots": "⋯", "dotsc": "…", "dotsb": "⋯",
            "LaTeX": "LaTeX", "TeX": "TeX", "textendash": "–", "textemdash": "—",
            "textasciitilde": "~", "textbackslash": "\\", "textbar": "|", "textless": "<", "textgreater": ">",
            "i": "ı", "j": "ȷ", "o": "ø", "O": "Ø", "l": "ł", "L": "Ł", "ss": "ß",
            "ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "aa": "å", "AA": "Å",
            "item": "•", "S": "§", "P": "¶", "copyright": "©", "pounds": "£", "euro": "€", "dag": "†", "ddag": "‡",
        }
    )  # fmt: skip
    return symbols


def _font_tables(unicode_tables: ModuleType) -> dict[str, dict[str, str]]:
    fonts: dict[str, dict[str, str]] = {}
    for name, char in unicode_tables.REPLACEMENTS:
        entry = _FONT_ENTRY.fullmatch(name)
        if entry:
            fonts.setdefault(entry.group(1), {})[entry.group(2)] = char
    for alias, font in (("boldsymbol", "mathbf"), ("bm", "mathbf"), ("pmb", "mathbf"), ("mathscr", "mathcal")):
        fonts[alias] = fonts.get(font, {})
    return fonts


def _script_tables(unicode_tables: ModuleType) -> tuple[dict[str, str], dict[str, str]]:
    superscripts: dict[str, str] = {}
    subscripts: dict[str, str] = {}
    for name, char in unicode_tables.SUBSUPERSCRIPTS:
        (superscripts if name[0] == "^" else subscripts)[name[1:]] = char
    return superscripts, subscripts


@dataclass(frozen=True)
class _Tables:
    symbols: dict[str, str]
    fonts: dict[str, dict[str, str]]
    superscripts: dict[str, str]
    subscripts: dict[str, str]
    combining: dict[str, str]


@lru_cache(maxsize=1)
def _tables() -> _Tables:
    # Built on the first LaTeX rendered, not at import: plain text asks only `has_latex` (folding does,
    # for every keyword a `newsletter subscribe` checks), which must not pay for unicodeit's tables.
    from unicodeit import data as unicode_tables

    superscripts, subscripts = _script_tables(unicode_tables)
    combining = {name[1:]: mark for name, mark in unicode_tables.COMBININGMARKS}
    combining.update({"widehat": "\u0302", "widetilde": "\u0303", "check": "\u030c", "mathring": "\u030a"})
    return _Tables(_symbol_table(unicode_tables), _font_tables(unicode_tables), superscripts, subscripts, combining)


# Text-mode accents: \"o, \'{e}, \v{c}, \c{c}.
_TEXT_ACCENTS = {
    '"': "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", "=": "\u0304", ".": "\u0307",
    "u": "\u0306", "v": "\u030c", "H": "\u030b", "c": "\u0327", "k": "\u0328", "r": "\u030a", "b": "\u0331",
    "d": "\u0323",
}  # fmt: skip
_FRACTIONS = {
    ("1", "2"): "½", ("1", "3"): "⅓", ("2", "3"): "⅔", ("1", "4"): "¼", ("3", "4"): "¾", ("1", "5"): "⅕",
    ("1", "6"): "⅙", ("1", "8"): "⅛", ("3", "8"): "⅜", ("5", "8"): "⅝", ("7", "8"): "⅞",
}  # fmt: skip
_ROOTS = {"": "√", "2": "√", "3": "∛", "4": "∜"}
_OPERATORS = frozenset(
    "log ln lg exp sin cos tan sec csc cot arcsin arccos arctan sinh cosh tanh coth max min sup inf lim "
    "liminf limsup arg argmax argmin det dim ker deg gcd hom Pr mod bmod trace tr diag rank sgn softmax".split()
)
# Relations and arrows get a space on each side: "f: ℝⁿ → ℝ", "x ≤ 1".
_RELATIONS = frozenset("=<>≤≥≠≈≡∼≃≅∝∈∉∋⊂⊃⊆⊇→←↔⇒⇐⇔↦⟶⟹≪≫≺≻⪯⪰⊢⊨∣")
_SIZES = frozenset(
    "left right middle big Big bigg Bigg bigl bigr Bigl Bigr biggl biggr Biggl Biggr displaystyle textstyle "
    "scriptstyle limits nolimits nonumber notag label".split()
)
_SPACES = {",": " ", ":": " ", ";": " ", ">": " ", " ": " ", "!": "", "quad": " ", "qquad": " ", "enspace": " ",
           "thinspace": " ", "medspace": " ", "thickspace": " ", "negthinspace": "",
           "newline": " ", "linebreak": " "}  # fmt: skip
_PLAIN_FONTS = frozenset("mathrm text textrm textnormal textup mbox hbox textsf textsl mathsf mathit textmd".split())
_STYLES = frozenset("textbf textit emph textsc texttt underline uline textmd textsf textsl".split()) | _PLAIN_FONTS
_ESCAPES = {"\\": " ", "|": "‖", "-": "", "/": "", "@": "", ",": " ", ";": " ", ":": " ", ">": " ", "!": ""}


# ---------------------------------------------------------------------------------------
# Display
# ---------------------------------------------------------------------------------------

_TIE = re.compile(r"(?<![\s/])~(?=\S)")
_SPACE_RUN = re.compile(r"[ \t]{2,}")


def latex_to_unicode(text: str) -> str:
    """Readable Unicode for titles and abstracts: "2.5$\\times$" -> "2.5×"; never raises."""
    if not has_latex(text) and "~" not in text:
        return text
    pieces = []
    for span in latex_spans(text):
        pieces.append(_TIE.sub(" ", span.text) if span.kind is SpanKind.TEXT else render_span(span.kind, span.text))
    return _SPACE_RUN.sub(" ", "".join(pieces))


@lru_cache(maxsize=65536)
def render_span(kind: SpanKind, source: str) -> str:
    """One LaTeX span as Unicode, or as typed when it cannot be read (the same few recur: cached)."""
    try:
        rendered = _render(kind, source)
    except Exception as exc:  # noqa: BLE001 - a span we cannot read is shown as typed, never lost
        log.debug("LaTeX span %r shown as typed: %s: %s", source[:80], type(exc).__name__, exc)
        return source
    # A command that renders to nothing (\ourmethod{}) is shown as typed rather than dropped.
    return source if kind is SpanKind.COMMAND and not rendered else rendered


def _render(kind: SpanKind, source: str) -> str:
    if kind is SpanKind.MATH:
        return render_math(_math_body(source))
    if kind is SpanKind.COMMAND:
        return _render_command(source)
    if kind is SpanKind.ACCENT:
        letter = source[2:].strip("{}")
        return unicodedata.normalize("NFC", letter + _TEXT_ACCENTS[source[1]]) if letter else source[1]
    if kind is SpanKind.ESCAPE:
        return _ESCAPES.get(source[1], source[1])
    if kind is SpanKind.GROUP:
        return latex_to_unicode(source[1:-1])
    return source  # a lone "$" or plain text


def _math_body(source: str) -> str:
    if source.startswith("$$"):
        return source[2:-2]
    if source.startswith("$"):
        return source[1:-1]
    if source.startswith("\\begin"):
        return source  # the environment's \begin and \end are dropped by the math reader
    return source[2:-2]  # \( \) and \[ \]


_COMMAND_HEAD = re.compile(r"\\([A-Za-z]+)\*?(?:\[([^\]]*)\])?")


def _render_command(source: str) -> str:
    head = _COMMAND_HEAD.match(source)
    assert head is not None
    name, args = head.group(1), _brace_args(source[head.end() :])
    if name == "href" and len(args) == 2:
        return latex_to_unicode(args[1])
    if name == "url" and args:
        return args[0]
    if name in _STYLES:
        return " ".join(latex_to_unicode(arg) for arg in args)
    if name == "footnote":
        return f" ({' '.join(latex_to_unicode(arg) for arg in args)})" if args else ""
    if name in ("cite", "citep", "citet", "ref", "eqref"):
        return f"[{', '.join(args)}]"
    if name in _TEXT_ACCENTS and len(args) == 1 and len(args[0]) <= 1:
        return unicodedata.normalize("NFC", args[0] + _TEXT_ACCENTS[name]) if args[0] else ""
    if not args:
        # A bare symbol reads as itself; a bare \frac or \sqrt (its braces unbalanced) stays as typed.
        return _tables().symbols.get(name) or (" " if name in _SPACES else source)
    # Math written without its dollars (\sqrt{x}, \frac{a}{b}, \mathbb{R}) reads as math.
    rendered = render_math(source)
    return rendered if "\\" not in rendered else source


def _brace_args(rest: str) -> list[str]:
    args: list[str] = []
    while rest.startswith("{"):
        depth = 0
        for index, char in enumerate(rest):
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth == 0:
                args.append(rest[1:index])
                rest = rest[index + 1 :]
                break
        else:
            break
    return args


# ---------------------------------------------------------------------------------------
# Math
# ---------------------------------------------------------------------------------------

_MATH_TOKEN = re.compile(r"\\[A-Za-z]+\*?\s*|\\.|\s+|.", re.DOTALL)
_MAX_DEPTH = 40


class _Space:
    """A space between two pieces of math, dropped at either end and next to another space."""


class _WordSpace:
    """A space kept only between letters or digits: "n\\log n" -> "n log n", "\\log(x)" -> "log(x)"."""


class _Script(str):
    """A sub- or superscript: it stays attached to what precedes it."""


_SPACE, _WORD_SPACE = _Space(), _WordSpace()
Piece = str | _Space | _WordSpace


def render_math(body: str) -> str:
    """The body of a formula as readable Unicode: "x^2" -> "x²", "\\frac{1}{2}" -> "½"."""
    reader = _MathReader(_MATH_TOKEN.findall(body))
    rendered = _SPACE_RUN.sub(" ", _join(reader.sequence(0)))
    # Spaces typed just inside the dollars are kept: "costs $5 and $10" must not read "5 and10".
    lead = " " if body[:1].isspace() else ""
    trail = " " if body[-1:].isspace() else ""
    return f"{lead}{rendered}{trail}" if rendered else rendered


def _join(pieces: list[Piece]) -> str:
    out: list[str] = []
    pending: Piece | None = None
    for piece in pieces:
        if not isinstance(piece, str):
            pending = _SPACE if isinstance(piece, _Space) or isinstance(pending, _Space) else piece
            continue
        if not piece:
            continue
        if isinstance(piece, _Script):
            pending = None
        if pending is not None and out and not out[-1].endswith(" ") and not piece.startswith(" "):
            if isinstance(pending, _Space) or (_is_word_end(out[-1]) and _is_word_end(piece[0])):
                out.append(" ")
        pending = None
        out.append(piece)
    return "".join(out).strip()


def _is_word_end(text: str) -> bool:
    return bool(text) and (text[-1].isalnum() or text[-1] in ")]}′")


class _MathReader:
    """A small recursive reader of math tokens; anything it does not know is kept as typed."""

    def __init__(self, raw: list[str]) -> None:
        self.raw = raw  # as typed, for \\text{...}
        self.tokens = [token.strip() or " " for token in raw]
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str | None:
        token = self.peek()
        self.position += token is not None
        return token

    def sequence(self, depth: int, closing: bool = False) -> list[Piece]:
        if depth > _MAX_DEPTH:
            raise RecursionError("formula nested too deeply")
        pieces: list[Piece] = []
        while (token := self.peek()) is not None:
            if token == "}" and closing:
                self.take()
                return pieces
            self.take()
            if token in ("^", "_"):
                pieces.append(self.script(token, depth))
            else:
                pieces.extend(self.atom_of(token, depth))
        return pieces

    def argument(self, depth: int) -> str:
        """The next argument (a group or one token) as text; "" at the end."""
        while self.peek() == " ":
            self.take()
        token = self.take()
        if token is None:
            return ""
        return _join(self.atom_of(token, depth + 1))

    def optional(self, depth: int) -> str:
        if self.peek() != "[":
            return ""
        self.take()
        pieces: list[Piece] = []
        while (token := self.take()) not in (None, "]"):
            assert token is not None
            pieces.extend(self.atom_of(token, depth + 1))
        return _join(pieces)

    def script(self, marker: str, depth: int) -> _Script:
        body = self.argument(depth).replace(" ", "")
        table = _tables().superscripts if marker == "^" else _tables().subscripts
        if body and all(char in table for char in body):
            return _Script("".join(table[char] for char in body))
        if len(body) <= 1 or body.isalnum():
            return _Script(marker + body)
        return _Script(f"{marker}({body})")

    def atom_of(self, token: str, depth: int) -> list[Piece]:
        if token == "{":
            return [_join(self.sequence(depth + 1, closing=True))]
        if token == " ":
            return [" "]
        if token in ("&", "~"):
            return [_SPACE]
        if token == "'":
            return ["′"]
        if token in _RELATIONS:
            return [_SPACE, token, _SPACE]
        if token.startswith("\\") and len(token) > 1:
            return self.command(token, depth)
        return [token]

    def command(self, token: str, depth: int) -> list[Piece]:
        name = token[1:].rstrip().rstrip("*")
        if not name[0].isalpha():
            if name in _SPACES:
                return [_SPACES[name]]
            return [_ESCAPES.get(name, name)]
        if name in _SPACES:
            return [_SPACE if _SPACES[name] else ""]
        if name in _SIZES:
            if name in ("left", "right", "middle") and self.peek() == ".":
                self.take()
            return []
        if name in ("begin", "end"):
            self.argument(depth)  # the environment's name
            return [_SPACE]
        if name in _OPERATORS:
            return [_WORD_SPACE, name, _WORD_SPACE]
        if name == "operatorname":
            return [_WORD_SPACE, self.argument(depth), _WORD_SPACE]
        if name in ("frac", "dfrac", "tfrac", "cfrac"):
            return [_fraction(self.argument(depth), self.argument(depth))]
        if name == "binom":
            return [f"C({self.argument(depth)}, {self.argument(depth)})"]
        if name == "sqrt":
            return [_root(self.optional(depth), self.argument(depth))]
        tables = _tables()
        if name in tables.combining:
            return [_accented(self.argument(depth), tables.combining[name])]
        if name in tables.fonts:
            return [_in_font(self.argument(depth), tables.fonts[name])]
        if name in _PLAIN_FONTS or name in _STYLES:
            return [latex_to_unicode(self._raw_group())]
        if name in tables.symbols:
            symbol = tables.symbols[name]
            if name == "colon":
                return [":", _SPACE]
            return [_SPACE, symbol, _SPACE] if symbol in _RELATIONS else [symbol]
        # Unknown: as typed, with the space after it that TeX would have swallowed ("\\item one").
        return [token.rstrip(), " "] if token[-1:].isspace() else [token]

    def _raw_group(self) -> str:
        """A text argument as typed (\\text{if } keeps its spaces)."""
        if self.peek() != "{":
            return self.take() or ""
        self.take()
        depth, raw = 1, []
        while (token := self.take()) is not None:
            depth += {"{": 1, "}": -1}.get(token, 0)
            if depth == 0:
                break
            raw.append(self.raw[self.position - 1])
        return "".join(raw)


def _needs_parentheses(text: str) -> bool:
    return len(text) > 1 and not text.isalnum() and not (text[0] in "([" and text[-1] in ")]")


def _fraction(numerator: str, denominator: str) -> str:
    if (numerator, denominator) in _FRACTIONS:
        return _FRACTIONS[(numerator, denominator)]
    top = f"({numerator})" if _needs_parentheses(numerator) else numerator
    bottom = f"({denominator})" if _needs_parentheses(denominator) else denominator
    return f"{top}/{bottom}"


def _root(degree: str, body: str) -> str:
    sign = _ROOTS.get(degree) or "".join(_tables().superscripts.get(char, char) for char in degree) + "√"
    return sign + (f"({body})" if _needs_parentheses(body) else body)


def _accented(body: str, mark: str) -> str:
    return unicodedata.normalize("NFC", "".join(char + mark if not char.isspace() else char for char in body))


def _in_font(body: str, font: dict[str, str]) -> str:
    return "".join(font.get(char, char) for char in body)
