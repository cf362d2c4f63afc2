"""Keyword profiles: the query language subscribers write, and the engine that matches them.

A keyword is a phrase by default ("graph neural network") and may use the arXiv search
syntax: quoted phrases, AND / OR / ANDNOT (uppercase, AND and ANDNOT bind tighter than OR),
parentheses, the field prefixes ti: abs: au: cat: (all: and no prefix mean title or abstract)
and a trailing * for a prefix (transform*, cat:cs.*).

Canonical form, shared by matching, highlighting and the benchmark's naive check:

1. Folding (`fold_text`): LaTeX is rendered to Unicode by pylatexenc, then NFKD, case
   folding, and combining marks dropped, so Schr\\"{o}dinger, Schrödinger and schrodinger
   are one word.
2. Tokens are maximal runs of letters or of digits (so "GPT4" is "gpt" + "4"). The gaps
   between tokens are *soft* when they hold only whitespace, hyphens, apostrophes or
   underscores, and *hard* otherwise (".", ",", "(", "/", ...). A text becomes one stream:
   tokens concatenated with nothing between them across soft gaps and "\\x00" at hard gaps,
   plus the set of stream offsets where a token starts or ends. A keyword phrase becomes the
   concatenation of its tokens, its last word singularised (networks -> network), so
   "multi-agent", "multi agent" and "multiagent" are all the pattern "multiagent".
3. A pattern matches where the automaton finds it in the stream and it starts on a token
   start and ends on a token end, optionally after a plural "s"/"es" (or anywhere, for a
   prefix). It may cross a hyphen-like gap anywhere, but crosses a whitespace gap only
   where the keyword itself has a word break or inside a keyword word at least three letters
   from either end: "data set" matches "dataset", while "a i" (as in "a i.i.d. sample")
   does not match "AI".
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate, compress
from typing import Generic, TypeVar

import ahocorasick
from pylatexenc.latex2text import LatexNodes2Text
from pylatexenc.latexwalker import LatexWalkerError

__all__ = [
    "MAX_KEYWORDS",
    "MAX_KEYWORD_LENGTH",
    "And",
    "AndNot",
    "Expr",
    "KeywordIndex",
    "KeywordSyntaxError",
    "Match",
    "Or",
    "PaperText",
    "ProfileError",
    "Term",
    "fold_text",
    "highlight_spans",
    "parse_keyword",
    "validate_profile",
]

MAX_KEYWORDS = 20
MAX_KEYWORD_LENGTH = 200
# A shorter prefix (a*) would fire on most words of every abstract.
MIN_PREFIX_LENGTH = 3
# Letters a whitespace-split piece of a keyword word must keep on each side ("data set").
MIN_SPLIT_PIECE = 3

K = TypeVar("K", bound=Hashable)

# ---------------------------------------------------------------------------------------
# Folding
# ---------------------------------------------------------------------------------------

# Pieces of LaTeX found in titles and abstracts. Only these are handed to pylatexenc: the
# rest of the text is plain, pylatexenc takes milliseconds per abstract, and a bare "%"
# outside them would make it drop the rest of the text as a comment.
_LATEX_ISLAND = re.compile(
    r"""
      \$\$.+?\$\$                                          # display math
    | \$[^$]+\$                                            # inline math
    | \\\(.+?\\\) | \\\[.+?\\\]                            # \( \) and \[ \] math
    | \\[A-Za-z]+\*?(?:\[[^\]]*\])?(?:\{(?:[^{}]|\{[^{}]*\})*\})*   # \macro[opt]{arg}
    | \\['"`^~=.](?:\{[^{}]*\}|[A-Za-z])                   # accents: \"o, \"{o}
    | \\[^A-Za-z]                                          # escapes: \% \& \\ "\ "
    | \{(?:[^{}]|\{[^{}]*\})*\}                            # groups: {\"o}, {GAN}
    """,
    re.VERBOSE | re.DOTALL,
)
_LATEX_MARKERS = ("\\", "$", "{")
_UNESCAPED_PERCENT = re.compile(r"(?<!\\)%")
_LATEX = LatexNodes2Text()


def _build_fold_table() -> dict[int, str | None]:
    # Combining marks are dropped after NFKD; the BMP holds every mark Latin, Greek and
    # Cyrillic text uses, and scanning it once at import takes a few milliseconds.
    table: dict[int, str | None] = {
        code: None for code in range(0x10000) if unicodedata.combining(chr(code))
    }
    # Letters NFKD leaves alone although people write them without the stroke.
    table.update(
        {ord(a): b for a, b in {"ø": "o", "ł": "l", "đ": "d", "ð": "d", "ħ": "h", "ŧ": "t",
                                 "ı": "i", "æ": "ae", "œ": "oe", "þ": "th"}.items()}
    )
    # "~" is LaTeX's non-breaking space; control characters would collide with the
    # stream's own markers (\x00-\x02).
    table[ord("~")] = " "
    table.update({code: " " for code in range(0x20) if chr(code) not in "\t\n\r\f\v"})
    return table


_FOLD_TABLE = _build_fold_table()


@lru_cache(maxsize=65536)
def _render_latex(island: str) -> str:
    # The same few snippets ($\times$, \emph{...}) recur across abstracts: cache them.
    try:
        return str(_LATEX.latex_to_text(_UNESCAPED_PERCENT.sub(r"\\%", island)))
    except LatexWalkerError:
        return island


def _render_island(match: re.Match[str]) -> str:
    return _render_latex(match.group())


def _fold_plain(text: str) -> str:
    if text.isascii():
        return text.lower().translate(_FOLD_TABLE)
    return unicodedata.normalize("NFKD", text).casefold().translate(_FOLD_TABLE)


def fold_text(text: str) -> str:
    """Return `text` with LaTeX rendered, accents stripped and case folded, for matching."""
    if any(marker in text for marker in _LATEX_MARKERS):
        text = _LATEX_ISLAND.sub(_render_island, text)
    return _fold_plain(text)


# ---------------------------------------------------------------------------------------
# Streams: the canonical token form of a folded text
# ---------------------------------------------------------------------------------------

_SPACE_CHARS = " \t\n\r\f\v\x85\u2028\u2029"
# Hyphens and dashes, apostrophes, underscore, soft hyphen and zero-width space.
_JOIN_CHARS = "-_'\u2010\u2011\u2012\u2013\u2014\u2015\u2019\u02bc\u00ad\u200b"
# Capturing, so split() returns gap, token, gap, token, ..., gap.
_TOKEN_SPLIT = re.compile(r"([^\W\d_]+|\d+)")
_TOKEN = re.compile(r"[^\W\d_]+|\d+")
_TOKEN_CHAR = re.compile(r"[^\W_]")
_HARD = "\x00"


class _GapTable(dict[str, bool]):
    """Gap text -> whether it is a hard gap, computed on first sight (few distinct gaps occur)."""

    def __missing__(self, gap: str) -> bool:
        is_hard = any(not (char in _SPACE_CHARS or char in _JOIN_CHARS) for char in gap)
        if len(self) < 100_000:  # odd texts must not grow it without bound
            self[gap] = is_hard
        return is_hard


class _SpaceTable(dict[str, bool]):
    """Gap text -> whether it is a soft gap holding whitespace."""

    def __missing__(self, gap: str) -> bool:
        is_space = not _HARD_GAPS[gap] and any(char in _SPACE_CHARS for char in gap)
        if len(self) < 100_000:
            self[gap] = is_space
        return is_space


class _SeparatorTable(dict[str, str]):
    """Gap text -> what stands for it in a stream: nothing, or the hard marker."""

    def __missing__(self, gap: str) -> str:
        separator = _HARD if _HARD_GAPS[gap] else ""
        if len(self) < 100_000:
            self[gap] = separator
        return separator


_HARD_GAPS = _GapTable()
_SPACE_GAPS = _SpaceTable()
_SEPARATORS = _SeparatorTable()


@dataclass(frozen=True, slots=True)
class _Stream:
    text: str  # tokens joined, "\x00" where a hard gap was
    bounds: set[int]  # offsets where a token starts or ends
    spaces: list[int]  # sorted offsets of whitespace gaps


def _stream(folded: str) -> _Stream:
    # Everything here runs in C (split, map over dicts, join, accumulate): a Python loop per
    # token would cost more than the automaton pass itself. Letter and digit runs are
    # separate tokens, so "gpt4" yields an empty gap between "gpt" and "4".
    parts = _TOKEN_SPLIT.split(folded)
    gaps = parts[0::2]
    parts[0::2] = map(_SEPARATORS.__getitem__, gaps)
    offsets = list(accumulate(map(len, parts)))
    bounds = set(offsets)
    bounds.add(0)
    spaces = list(compress(offsets[0::2], map(_SPACE_GAPS.__getitem__, gaps)))
    return _Stream("".join(parts), bounds, spaces)


def _is_bound(stream: _Stream, offset: int) -> bool:
    return offset in stream.bounds


# How the end of a pattern may sit in the text.
_EXACT, _PLURAL, _PREFIX = 0, 1, 2


def _match_end(stream: _Stream, start: int, length: int, mode: int, splits: frozenset[int]) -> int:
    """Return where a hit of a pattern at `start` ends, or -1 when the rules reject it."""
    end = start + length
    if mode != _PREFIX and not _is_bound(stream, end):
        if mode != _PLURAL:
            return -1
        text = stream.text
        if text.startswith("s", end) and _is_bound(stream, end + 1):
            end += 1
        elif text.startswith("es", end) and _is_bound(stream, end + 2):
            end += 2
        else:
            return -1
    spaces = stream.spaces
    index = bisect_right(spaces, start)
    limit = start + length
    while index < len(spaces) and spaces[index] < limit:
        if spaces[index] - start not in splits:
            return -1
        index += 1
    return end


@dataclass(frozen=True, slots=True)
class _Pattern:
    text: str  # canonical: folded tokens concatenated, last word singularised
    splits: frozenset[int]  # offsets where a whitespace gap in the text is acceptable


def _singular(word: str) -> str:
    # Plural keywords match the singular too ("GNNs" -> "gnn"); words that merely end in
    # s (analysis, loss, corpus) keep it. The text side accepts a trailing s/es anyway.
    if len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    return word[:-1]


def _phrase_pattern(folded: str, *, singularise: bool) -> _Pattern | None:
    tokens = _TOKEN.findall(folded)
    if not tokens:
        return None
    if singularise and tokens[-1].isalpha():
        tokens[-1] = _singular(tokens[-1])
    splits: set[int] = set()
    offset = 0
    for token in tokens:
        # Inside a word, a text may split it with a space only far enough from its ends.
        splits.update(range(offset + MIN_SPLIT_PIECE, offset + len(token) - MIN_SPLIT_PIECE + 1))
        offset += len(token)
        splits.add(offset)
    return _Pattern("".join(tokens), frozenset(splits))


# ---------------------------------------------------------------------------------------
# The keyword language
# ---------------------------------------------------------------------------------------


class KeywordSyntaxError(ValueError):
    """A keyword that does not parse; `message` says what, `position` (0-based) where."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.message = message
        self.position = position


class ProfileError(ValueError):
    """A profile with bad lines; `problems` holds (line number or None, message) pairs."""

    def __init__(self, problems: list[tuple[int | None, str]]) -> None:
        super().__init__(
            "\n".join(message if line is None else f"line {line}: {message}" for line, message in problems)
        )
        self.problems = problems


@dataclass(frozen=True)
class Term:
    """One searchable unit: a phrase in some fields, or a category."""

    scope: str  # "text" (title or abstract), "ti", "abs", "au" or "cat"
    pattern: str  # canonical form (module docstring); for "cat" the lowercase category
    prefix: bool = False
    splits: frozenset[int] = frozenset()
    text: str = field(default="", compare=False)  # as the subscriber wrote it, for display


@dataclass(frozen=True)
class And:
    """Both sides match."""

    left: Expr
    right: Expr


@dataclass(frozen=True)
class AndNot:
    """The left side matches and the right side does not."""

    left: Expr
    right: Expr


@dataclass(frozen=True)
class Or:
    """Any option matches."""

    options: tuple[Expr, ...]


Expr = Term | And | AndNot | Or

_FIELDS = {"ti": "ti", "abs": "abs", "au": "au", "cat": "cat", "all": "text"}
_OPERATORS = ("AND", "OR", "ANDNOT")
_QUOTES = '"\u201c\u201d'
_FIELD_PREFIX = re.compile(r"([A-Za-z]+):")
_CATEGORY = re.compile(r"[a-z][a-z-]*(?:\.[a-z][a-z-]*)?")
_CATEGORY_PREFIX = re.compile(r"[a-z][a-z-]*(?:\.(?:[a-z][a-z-]*)?)?")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "(", ")", "op", "field", "word", "quoted"
    text: str
    position: int


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    index, length = 0, len(source)
    while index < length:
        char = source[index]
        if char.isspace():
            index += 1
        elif char in "()":
            tokens.append(_Token(char, char, index))
            index += 1
        elif char in _QUOTES:
            close = _scan(source, index + 1, stop=_QUOTES)
            if close >= length:
                raise KeywordSyntaxError("unclosed quote", index)
            tokens.append(_Token("quoted", source[index + 1 : close], index))
            index = close + 1
        else:
            end = _scan(source, index, stop="()" + _QUOTES, stop_at_space=True)
            word = source[index:end]
            prefix = _FIELD_PREFIX.match(word)
            # "testing: a survey" is a phrase; "foo:bar" and "ti: graph" name fields.
            if prefix and (prefix.group(1).lower() in _FIELDS or prefix.end() < len(word)):
                name = prefix.group(1).lower()
                if name not in _FIELDS:
                    raise KeywordSyntaxError(f"unknown field '{prefix.group()}'", index)
                tokens.append(_Token("field", name, index))
                if prefix.end() < len(word):
                    tokens.append(_Token("word", word[prefix.end() :], index + prefix.end()))
            elif word in _OPERATORS:
                tokens.append(_Token("op", word, index))
            elif word == "NOT":
                raise KeywordSyntaxError("NOT is not an operator, use ANDNOT", index)
            else:
                tokens.append(_Token("word", word, index))
            index = end
    return tokens


def _scan(source: str, index: int, *, stop: str, stop_at_space: bool = False) -> int:
    # A backslash escapes the next character, so Schr\"{o}dinger is one word, not a quote.
    length = len(source)
    while index < length:
        char = source[index]
        if char == "\\":
            index += 2
            continue
        if char in stop or (stop_at_space and char.isspace()):
            return index
        index += 1
    return length


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def parse(self) -> Expr:
        expr = self.parse_or(None)
        leftover = self.peek()
        if leftover is not None:
            # parse_or stops early only at a ")" nothing opened.
            raise KeywordSyntaxError("unbalanced parenthesis", leftover.position)
        return expr

    def parse_or(self, scope: str | None) -> Expr:
        options = [self.parse_and(scope)]
        while (token := self.peek()) is not None and token.kind == "op" and token.text == "OR":
            self.require_term_after(self.advance())
            options.append(self.parse_and(scope))
        return options[0] if len(options) == 1 else Or(tuple(options))

    def parse_and(self, scope: str | None) -> Expr:
        expr = self.parse_unary(scope)
        while (token := self.peek()) is not None and token.kind != ")":
            if token.kind != "op":
                raise KeywordSyntaxError("missing operator (AND, OR or ANDNOT) between terms", token.position)
            if token.text == "OR":
                break
            self.require_term_after(self.advance())
            right = self.parse_unary(scope)
            expr = And(expr, right) if token.text == "AND" else AndNot(expr, right)
        return expr

    def require_term_after(self, operator: _Token) -> None:
        following = self.peek()
        if following is None or following.kind not in ("word", "quoted", "field", "("):
            raise KeywordSyntaxError(f"operator {operator.text} needs a term after it", operator.position)

    def parse_unary(self, scope: str | None) -> Expr:
        token = self.peek()
        if token is None:  # only reachable through a bug elsewhere; keep the message useful
            raise KeywordSyntaxError("expected a term", len(self.tokens))
        if token.kind == "op":
            raise KeywordSyntaxError(f"operator {token.text} needs a term before it", token.position)
        if token.kind == ")":
            raise KeywordSyntaxError("unbalanced parenthesis", token.position)
        if token.kind == "field":
            self.advance()
            following = self.peek()
            if following is None or following.kind not in ("word", "quoted", "("):
                raise KeywordSyntaxError(f"field {token.text}: needs a term after it", token.position)
            return self.parse_unary(_FIELDS[token.text])
        if token.kind == "(":
            self.advance()
            following = self.peek()
            if following is None:
                raise KeywordSyntaxError("unbalanced parenthesis", token.position)
            if following.kind == ")":
                raise KeywordSyntaxError("empty parentheses", token.position)
            inner = self.parse_or(scope)
            closing = self.peek()
            if closing is None or closing.kind != ")":
                raise KeywordSyntaxError("unbalanced parenthesis", token.position)
            self.advance()
            return inner
        if token.kind == "quoted":
            self.advance()
            if not token.text.strip():
                raise KeywordSyntaxError("empty quoted phrase", token.position)
            return _make_term(scope or "text", [(token.text, token.position + 1)])
        words = [(self.advance().text, token.position)]
        if scope != "cat":  # bare adjacent words form one phrase; a category is one word
            while (following := self.peek()) is not None and following.kind == "word":
                words.append((following.text, following.position))
                self.advance()
        return _make_term(scope or "text", words)


def _make_term(scope: str, words: list[tuple[str, int]]) -> Term:
    """Build a term from its words and their positions, checking wildcards."""
    for number, (text, position) in enumerate(words):
        star = text.find("*")
        is_trailing = number == len(words) - 1 and star == len(text.rstrip()) - 1
        if star != -1 and not is_trailing:
            raise KeywordSyntaxError("wildcard * is only allowed at the end of a term", position + star)
    display = " ".join(text for text, _ in words).strip()
    prefix = display.endswith("*")
    body = display[:-1] if prefix else display
    start = words[0][1]
    if scope == "cat":
        category = body.strip().lower()
        valid = _CATEGORY_PREFIX if prefix else _CATEGORY
        if not valid.fullmatch(category):
            raise KeywordSyntaxError(f"invalid category '{display}'", start)
        return Term("cat", category, prefix, text=display)
    pattern = _phrase_pattern(fold_text(body), singularise=scope != "au" and not prefix)
    if pattern is None:
        raise KeywordSyntaxError(f"term '{display}' has no letters or digits", start)
    if prefix and len(pattern.text) < MIN_PREFIX_LENGTH:
        raise KeywordSyntaxError(
            f"prefix '{display}' is too short, use at least {MIN_PREFIX_LENGTH} letters before *",
            start,
        )
    return Term(scope, pattern.text, prefix, pattern.splits, text=display)


def parse_keyword(keyword: str) -> Expr:
    """Parse one keyword into its expression tree, or raise KeywordSyntaxError."""
    if len(keyword) > MAX_KEYWORD_LENGTH:
        raise KeywordSyntaxError(f"keyword longer than {MAX_KEYWORD_LENGTH} characters", MAX_KEYWORD_LENGTH)
    if not keyword.strip():
        raise KeywordSyntaxError("empty keyword", 0)
    return _Parser(_tokenize(keyword)).parse()


def validate_profile(keywords: list[str]) -> list[str]:
    """Return the profile's keywords stripped, blank and duplicate lines dropped, or raise ProfileError."""
    cleaned: list[str] = []
    seen_text: set[str] = set()
    seen_expr: set[Expr] = set()
    problems: list[tuple[int | None, str]] = []
    for line_number, line in enumerate(keywords, start=1):
        keyword = line.strip()
        if not keyword:
            continue
        try:
            expr = parse_keyword(keyword)
        except KeywordSyntaxError as error:
            problems.append((line_number, str(error)))
            continue
        # Two spellings of one expression ("multi-agent", "Multi agent") would give two
        # identical digest sections.
        if keyword.casefold() in seen_text or expr in seen_expr:
            continue
        seen_text.add(keyword.casefold())
        seen_expr.add(expr)
        cleaned.append(keyword)
    if len(cleaned) > MAX_KEYWORDS:
        problems.append((None, f"too many keywords: {len(cleaned)} given, at most {MAX_KEYWORDS} allowed"))
    if problems:
        raise ProfileError(problems)
    return cleaned


# ---------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaperText:
    """What matching needs of a paper."""

    key: str
    title: str
    abstract: str
    authors: Sequence[str] = ()
    categories: Sequence[str] = ()


@dataclass(frozen=True)
class Match(Generic[K]):
    """A paper satisfies keyword `position` of `subscriber`; `terms` are the words to highlight."""

    subscriber: K
    position: int
    terms: frozenset[str]


# (paper key, matched terms) for every paper a keyword selected, in the order given.
KeywordHits = tuple[tuple[str, frozenset[str]], ...]

_TITLE, _ABSTRACT, _AUTHORS = 1, 2, 4
_SCOPE_FIELDS = {"text": _TITLE | _ABSTRACT, "ti": _TITLE, "abs": _ABSTRACT, "au": _AUTHORS}

# A compiled keyword: whether the expression holds, given the ids of the terms present.
_Predicate = Callable[[set[int]], bool]


def _any_present(term_ids: frozenset[int]) -> _Predicate:
    return lambda present: not term_ids.isdisjoint(present)


class KeywordIndex(Generic[K]):
    """Every subscriber's keywords compiled once; matches a paper in one pass over its text."""

    def __init__(self) -> None:
        self._terms: list[Term] = []
        self._term_ids: dict[Term, int] = {}
        # Term id -> the expression that is this term alone (-1: none), and -> the compound
        # expressions the term can make true (it is not only under an ANDNOT).
        self._term_alone: list[int] = []
        self._term_compound: list[list[int]] = []
        self._singles: list[frozenset[int]] = []
        self._single_labels: list[frozenset[str]] = []
        self._predicates: list[_Predicate | None] = []  # None: the expression is one term
        self._positives: list[frozenset[int]] = []  # terms not under an ANDNOT, to highlight
        self._expr_ids: dict[Expr, int] = {}
        self._slots: list[list[tuple[K, int]]] = []  # expression id -> (subscriber, position)
        self._profiles: dict[K, list[int | None]] = {}
        self._categories: dict[tuple[str, bool], list[int]] = defaultdict(list)
        self._automaton: ahocorasick.Automaton | None = None
        self._fields = 0  # which paper fields any term looks at
        self._labels: dict[frozenset[int], frozenset[str]] = {}
        self._match_cache: dict[tuple[int, frozenset[str]], tuple[Match[K], ...]] = {}
        self.invalid: list[tuple[K, int, KeywordSyntaxError]] = []

    @classmethod
    def build(cls, profiles: Iterable[tuple[K, Sequence[str]]]) -> KeywordIndex[K]:
        """Compile all profiles; keywords that do not parse are skipped and listed in `invalid`."""
        index: KeywordIndex[K] = cls()
        parsed: dict[str, int | KeywordSyntaxError] = {}
        for subscriber, keywords in profiles:
            if subscriber in index._profiles:
                raise ValueError(f"subscriber {subscriber!r} appears twice")
            expr_ids: list[int | None] = []
            for position, keyword in enumerate(keywords):
                if keyword not in parsed:
                    try:
                        parsed[keyword] = index._add_expr(parse_keyword(keyword.strip()))
                    except KeywordSyntaxError as error:
                        parsed[keyword] = error
                compiled = parsed[keyword]
                if isinstance(compiled, KeywordSyntaxError):
                    index.invalid.append((subscriber, position, compiled))
                    expr_ids.append(None)
                    continue
                index._slots[compiled].append((subscriber, position))
                expr_ids.append(compiled)
            index._profiles[subscriber] = expr_ids
        index._compile_automaton()
        return index

    def _add_expr(self, expr: Expr) -> int:
        # Identical expressions (also "Multi-Agent" vs "multi agent") share one entry.
        expr_id = self._expr_ids.get(expr)
        if expr_id is None:
            expr_id = len(self._predicates)
            self._expr_ids[expr] = expr_id
            self._slots.append([])
            if isinstance(expr, Term):
                term_id = self._add_term(expr)
                self._term_alone[term_id] = expr_id
                self._predicates.append(None)
                self._positives.append(self._singles[term_id])
            else:
                self._predicates.append(self._compile(expr))
                self._positives.append(frozenset(self._positive_terms(expr)))
                for term_id in self._triggers(expr):
                    self._term_compound[term_id].append(expr_id)
        return expr_id

    def _add_term(self, term: Term) -> int:
        term_id = self._term_ids.get(term)
        if term_id is None:
            term_id = len(self._terms)
            self._term_ids[term] = term_id
            self._terms.append(term)
            self._term_alone.append(-1)
            self._term_compound.append([])
            self._singles.append(frozenset((term_id,)))
            self._single_labels.append(frozenset((term.text,)))
        return term_id

    def _compile(self, expr: Expr) -> _Predicate:
        # Closures over term ids; an OR of plain terms is one C-level set test.
        if isinstance(expr, Term):
            return _any_present(self._singles[self._add_term(expr)])
        if isinstance(expr, Or):
            terms = frozenset(self._add_term(option) for option in expr.options if isinstance(option, Term))
            others = [self._compile(option) for option in expr.options if not isinstance(option, Term)]
            if not others:
                return _any_present(terms)
            return lambda present: not terms.isdisjoint(present) or any(other(present) for other in others)
        left, right = self._compile(expr.left), self._compile(expr.right)
        if isinstance(expr, And):
            return lambda present: left(present) and right(present)
        return lambda present: left(present) and not right(present)

    def _positive_terms(self, expr: Expr) -> set[int]:
        if isinstance(expr, Term):
            return {self._term_ids[expr]}
        if isinstance(expr, Or):
            return set().union(*(self._positive_terms(option) for option in expr.options))
        left = self._positive_terms(expr.left)
        return left if isinstance(expr, AndNot) else left | self._positive_terms(expr.right)

    def _triggers(self, expr: Expr) -> set[int]:
        """Terms of which at least one is present whenever `expr` is true."""
        if isinstance(expr, Term):
            return {self._term_ids[expr]}
        if isinstance(expr, Or):
            return set().union(*(self._triggers(option) for option in expr.options))
        if isinstance(expr, AndNot):  # the excluded side can never make it true
            return self._triggers(expr.left)
        # Either side's triggers will do: take the rarer side, so that a keyword such as
        # "cat:cs.* AND swarm robotics" is evaluated only for papers that mention swarms.
        left, right = self._triggers(expr.left), self._triggers(expr.right)
        return left if self._rarity(left) >= self._rarity(right) else right

    def _rarity(self, term_ids: set[int]) -> int:
        # A guess without statistics: a set fires as often as its commonest member, long
        # phrases and names are rarer than short words, categories and prefixes are broad.
        def rarity(term: Term) -> int:
            if term.scope == "cat":
                return 0 if term.prefix or "." not in term.pattern else 1
            return len(term.pattern) + (10 if term.scope == "au" else 0) - (5 if term.prefix else 0)

        return min(rarity(self._terms[term_id]) for term_id in term_ids)

    def _compile_automaton(self) -> None:
        entries: dict[str, list[tuple[int, int, int, frozenset[int]]]] = defaultdict(list)
        for term_id, term in enumerate(self._terms):
            if term.scope == "cat":
                self._categories[(term.pattern, term.prefix)].append(term_id)
                continue
            fields = _SCOPE_FIELDS[term.scope]
            self._fields |= fields
            mode = _PREFIX if term.prefix else _EXACT if term.scope == "au" else _PLURAL
            entries[term.pattern].append((term_id, fields, mode, term.splits))
        if not entries:
            return
        automaton = ahocorasick.Automaton()
        for pattern, pattern_entries in entries.items():
            automaton.add_word(pattern, (len(pattern), tuple(pattern_entries)))
        automaton.make_automaton()
        self._automaton = automaton

    def _present_terms(self, paper: PaperText) -> set[int]:
        present: set[int] = set()
        automaton = self._automaton
        if automaton is not None:
            for field_bit, text in (
                (_TITLE, paper.title),
                (_ABSTRACT, paper.abstract),
                (_AUTHORS, "; ".join(paper.authors)),
            ):
                if field_bit & self._fields and text:
                    self._scan_field(automaton, _stream(fold_text(text)), field_bit, present)
        if self._categories:
            for category in paper.categories:
                self._scan_category(category.lower(), present)
        return present

    @staticmethod
    def _scan_field(automaton: ahocorasick.Automaton, stream: _Stream, field_bit: int, present: set[int]) -> None:
        text, bounds = stream.text, stream.bounds
        for last, (length, entries) in automaton.iter(text):
            start = last - length + 1
            # Most automaton hits sit inside longer words ("net" in "network"): drop those
            # first, with the cheapest test.
            if start not in bounds:
                continue
            for term_id, fields, mode, splits in entries:
                if fields & field_bit and term_id not in present:
                    if _match_end(stream, start, length, mode, splits) >= 0:
                        present.add(term_id)

    def _scan_category(self, category: str, present: set[int]) -> None:
        categories = self._categories
        present.update(categories.get((category, False), ()))
        archive = category.split(".", 1)[0]
        if archive != category:  # cat:cs means the whole cs archive
            present.update(categories.get((archive, False), ()))
        for end in range(1, len(category) + 1):
            present.update(categories.get((category[:end], True), ()))

    def _satisfied(self, paper: PaperText) -> list[tuple[int, frozenset[str]]]:
        """The expressions the paper satisfies, each with the words to highlight."""
        present = self._present_terms(paper)
        alone, labels = self._term_alone, self._single_labels
        # Most keywords are one term: no evaluation needed, and no candidate set.
        satisfied = [(alone[term_id], labels[term_id]) for term_id in present if alone[term_id] >= 0]
        compound = self._term_compound
        candidates = {expr_id for term_id in present for expr_id in compound[term_id]}
        predicates, positives = self._predicates, self._positives
        for expr_id in candidates:
            if predicates[expr_id](present):  # type: ignore[misc]  # compound: never None
                satisfied.append((expr_id, self._label(positives[expr_id] & present)))
        return satisfied

    def _label(self, term_ids: frozenset[int]) -> frozenset[str]:
        label = self._labels.get(term_ids)
        if label is None:
            label = self._labels[term_ids] = frozenset(self._terms[term_id].text for term_id in term_ids)
        return label

    def match(self, paper: PaperText) -> list[Match[K]]:
        """Return every (subscriber, keyword position, matched terms) the paper satisfies."""
        matches: list[Match[K]] = []
        cache = self._match_cache
        for expr_id, terms in self._satisfied(paper):
            found = cache.get((expr_id, terms))
            if found is None:
                # Matches are immutable, so one tuple serves every paper with these terms.
                found = tuple(Match(subscriber, position, terms) for subscriber, position in self._slots[expr_id])
                cache[(expr_id, terms)] = found
            matches.extend(found)
        return matches

    def select(self, papers: Iterable[PaperText]) -> dict[K, list[KeywordHits]]:
        """Return, per subscriber and keyword position, the papers it selected with their matched terms."""
        hits: dict[int, list[tuple[str, frozenset[str]]]] = defaultdict(list)
        for paper in papers:
            key = paper.key
            for expr_id, terms in self._satisfied(paper):
                hits[expr_id].append((key, terms))
        # Subscribers sharing a keyword share one (immutable) tuple of hits.
        frozen = {expr_id: tuple(found) for expr_id, found in hits.items()}
        return {
            subscriber: [() if expr_id is None else frozen.get(expr_id, ()) for expr_id in expr_ids]
            for subscriber, expr_ids in self._profiles.items()
        }


# ---------------------------------------------------------------------------------------
# Highlighting
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Located:
    stream: _Stream
    starts: list[int]  # stream offset -> first character of the original text it came from
    ends: list[int]  # stream offset -> end of the original text it came from


@lru_cache(maxsize=256)
def _fold_char(char: str) -> str:
    return _fold_plain(char)


@lru_cache(maxsize=1024)
def _locate(text: str) -> _Located:
    # Fold character by character, remembering where each folded character came from; a
    # rendered LaTeX snippet maps as a whole to its source span.
    folded: list[str] = []
    starts: list[int] = []
    ends: list[int] = []

    def add_plain(begin: int, end: int) -> None:
        for offset in range(begin, end):
            for char in _fold_char(text[offset]):
                folded.append(char)
                starts.append(offset)
                ends.append(offset + 1)

    position = 0
    if any(marker in text for marker in _LATEX_MARKERS):
        for island in _LATEX_ISLAND.finditer(text):
            add_plain(position, island.start())
            for char in _fold_plain(_render_island(island)):
                folded.append(char)
                starts.append(island.start())
                ends.append(island.end())
            position = island.end()
    add_plain(position, len(text))
    folded_text = "".join(folded)
    stream = _stream(folded_text)
    # The stream keeps the folded token characters in order, plus one marker per hard gap.
    token_offsets = iter([m.start() for m in _TOKEN_CHAR.finditer(folded_text)])
    source = [-1 if char == _HARD else next(token_offsets) for char in stream.text]
    return _Located(
        stream,
        [starts[i] if i >= 0 else -1 for i in source],
        [ends[i] if i >= 0 else -1 for i in source],
    )


@lru_cache(maxsize=4096)
def _highlight_pattern(term: str) -> tuple[_Pattern, int] | None:
    phrase = term.strip()
    prefix = _FIELD_PREFIX.match(phrase)
    if prefix and prefix.group(1).lower() in _FIELDS:
        phrase = phrase[prefix.end() :].strip()
    phrase = phrase.strip(_QUOTES)
    is_prefix = phrase.endswith("*")
    pattern = _phrase_pattern(fold_text(phrase.rstrip("*")), singularise=not is_prefix)
    if pattern is None or (is_prefix and len(pattern.text) < MIN_PREFIX_LENGTH):
        return None
    return pattern, _PREFIX if is_prefix else _PLURAL


def highlight_spans(text: str, terms: Iterable[str]) -> list[tuple[int, int]]:
    """Return sorted, non-overlapping (start, end) spans of `text` where any of `terms` occurs."""
    patterns = [found for term in terms if (found := _highlight_pattern(term)) is not None]
    if not patterns or not text:
        return []
    located = _locate(text)
    stream = located.stream
    spans: list[tuple[int, int]] = []
    for pattern, mode in patterns:
        start = stream.text.find(pattern.text)
        while start != -1:
            if _is_bound(stream, start):
                end = _match_end(stream, start, len(pattern.text), mode, pattern.splits)
                if end >= 0:
                    while mode == _PREFIX and not _is_bound(stream, end):
                        end += 1  # mark the whole word, not just the prefix
                    spans.append((located.starts[start], located.ends[end - 1]))
            start = stream.text.find(pattern.text, start + 1)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
