"""Keyword profiles: the query language subscribers write, and the engine that matches them.

A keyword is a phrase by default ("graph neural network") and may use the arXiv search
syntax: quoted phrases, AND / OR / ANDNOT (uppercase, AND and ANDNOT bind tighter than OR),
parentheses, the field prefixes ti: abs: au: cat: (all: and no prefix mean title or abstract)
and a trailing * for a prefix (transform*, cat:cs.*).

Canonical form, shared by matching, highlighting and the benchmark's naive check:

1. Folding (`fold_text`): LaTeX is rendered to Unicode by pylatexenc, then NFKD, case
   folding, and combining marks dropped, so Schr\\"{o}dinger, Schrödinger and schrodinger
   are one word.
2. Tokens are maximal runs of letters or of digits (so "GPT4" is "gpt" + "4"). The gap
   between two tokens is *soft* when it holds only whitespace, hyphens, apostrophes or
   underscores (or nothing), and *hard* otherwise (".", ",", "(", "/", ...). A text becomes a
   stream: its tokens concatenated, with nothing for a soft gap and "\\x00" for a hard one,
   plus where each token starts and ends. A keyword phrase becomes a pattern the same way,
   its last word singularised (networks -> network): "multi-agent", "multi agent" and
   "multiagent" are all the pattern "multiagent"; "i.i.d." keeps its hard gaps.
3. A pattern matches where the automaton finds it in the stream starting at a token start
   and ending at a token end, possibly after a plural "s"/"es" (anywhere, for a prefix), so
   "net" is not found in "network", nor "RL" in "URL". It may run across a hyphen-like gap
   anywhere, but across whitespace only where the keyword itself breaks words, or inside
   a keyword word at least three letters from either end: "data set" matches "dataset",
   while the "a i" of "a i.i.d. sample" is not "AI".

Match.terms (what to highlight) are the keyword's terms as the subscriber wrote them, those
present in the paper, leaving out what follows ANDNOT.
"""

from __future__ import annotations

import gc
import re
import unicodedata
from array import array
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate, compress
from types import MappingProxyType
from typing import Generic, NamedTuple, TypeVar

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
_UNESCAPED_PERCENT = re.compile(r"(?<!\\)%")
_LATEX = LatexNodes2Text()


def _build_fold_table() -> dict[int, str | None]:
    # Combining marks are dropped after NFKD; the BMP holds every mark Latin, Greek and
    # Cyrillic text uses, and scanning it once at import takes a few milliseconds.
    table: dict[int, str | None] = {code: None for code in range(0x10000) if unicodedata.combining(chr(code))}
    # Letters NFKD leaves alone although people write them without the stroke.
    table.update({ord(stroked): plain for stroked, plain in zip("øłđðħŧı", "olddhti", strict=True)})
    table.update({ord("æ"): "ae", ord("œ"): "oe", ord("þ"): "th"})
    # "~" is LaTeX's non-breaking space; control characters would collide with the
    # stream's hard-gap marker.
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
    if "\\" in text or "$" in text or "{" in text:
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
_ASCII_TOKEN_SPLIT = re.compile(r"([a-z]+|[0-9]+)")  # twice as fast; most folded text is ASCII
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
    tokens: dict[int, int]  # start offset of each token -> its end offset
    spaces: list[int]  # sorted offsets of whitespace gaps


def _stream(folded: str) -> _Stream:
    # Everything here runs in C (split, map over dicts, join, accumulate): a Python loop per
    # token would cost more than the automaton pass itself. Letter and digit runs are
    # separate tokens, so "gpt4" yields an empty gap between "gpt" and "4".
    parts = (_ASCII_TOKEN_SPLIT if folded.isascii() else _TOKEN_SPLIT).split(folded)
    gaps = parts[0::2]
    parts[0::2] = map(_SEPARATORS.__getitem__, gaps)
    offsets = list(accumulate(map(len, parts)))
    gap_ends = offsets[0::2]  # = token starts, then the end of the text
    spaces = list(compress(gap_ends, map(_SPACE_GAPS.__getitem__, gaps)))
    return _Stream("".join(parts), dict(zip(gap_ends, offsets[1::2], strict=False)), spaces)


def _is_bound(stream: _Stream, offset: int) -> bool:
    # A token ends where another starts (soft gap), before a hard gap, or at the end.
    return offset in stream.tokens or offset >= len(stream.text) or stream.text[offset] == _HARD


# How the end of a pattern may sit in the text.
_EXACT, _PLURAL, _PREFIX = 0, 1, 2
_PLURAL_ENDINGS = ("s", "es")
# A term under an automaton pattern: (term id, fields it is looked for in, mode, splits).
_Entry = tuple[int, int, int, frozenset[int]]


def _match_end(stream: _Stream, start: int, length: int, mode: int, splits: frozenset[int]) -> int:
    """Return where a hit of a pattern at `start` ends, or -1 when the rules reject it."""
    end = start + length
    text, tokens = stream.text, stream.tokens
    if mode != _PREFIX and end not in tokens and end < len(text) and text[end] != _HARD:
        if mode != _PLURAL:
            return -1
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


class _Pattern(NamedTuple):
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


@lru_cache(maxsize=65536)
def _phrase_pattern(folded: str, singularise: bool) -> _Pattern | None:
    parts = (_ASCII_TOKEN_SPLIT if folded.isascii() else _TOKEN_SPLIT).split(folded)
    tokens = parts[1::2]
    if not tokens:
        return None
    if singularise and tokens[-1].isalpha():
        tokens[-1] = _singular(tokens[-1])
    # Punctuation inside a keyword counts ("i.i.d.", "R&D" keep their hard gaps); soft gaps
    # vanish like in the text. Gaps before the first and after the last token do not count.
    parts = parts[1:-1]
    parts[0::2] = tokens
    parts[1::2] = map(_SEPARATORS.__getitem__, parts[1::2])
    ends = list(accumulate(map(len, parts)))
    splits = set(ends[1::2])  # where the keyword's own words meet
    # Inside a word, a text may also split it with a space, far enough from its ends.
    for token, end in zip(tokens, ends[0::2], strict=True):
        if len(token) >= 2 * MIN_SPLIT_PIECE:
            splits.update(range(end - len(token) + MIN_SPLIT_PIECE, end - MIN_SPLIT_PIECE + 1))
    return _Pattern("".join(parts), frozenset(splits))


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


@dataclass(frozen=True, slots=True)
class Term:
    """One searchable unit: a phrase in some fields, or a category."""

    scope: str  # "text" (title or abstract), "ti", "abs", "au" or "cat"
    pattern: str  # canonical form (module docstring); for "cat" the lowercase category
    prefix: bool = False
    splits: frozenset[int] = frozenset()
    text: str = field(default="", compare=False)  # as the subscriber wrote it, for display


@dataclass(frozen=True, slots=True)
class And:
    """Both sides match."""

    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class AndNot:
    """The left side matches and the right side does not."""

    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Or:
    """Any option matches."""

    options: tuple[Expr, ...]


Expr = Term | And | AndNot | Or

_FIELDS = {"ti": "ti", "abs": "abs", "au": "au", "cat": "cat", "all": "text"}
_OPERATORS = ("AND", "OR", "ANDNOT")
_QUOTES = '"\u201c\u201d'
_FIELD_PREFIX = re.compile(r"([A-Za-z]+):")
# Anything that makes a keyword more than a plain phrase.
_SYNTAX = re.compile(r"[()\"\u201c\u201d:*]|(?<!\S)(?:AND|OR|ANDNOT|NOT)(?!\S)")
_CATEGORY = re.compile(r"[a-z][a-z-]*(?:\.[a-z][a-z-]*)?")
_CATEGORY_PREFIX = re.compile(r"[a-z][a-z-]*(?:\.(?:[a-z][a-z-]*)?)?")


class _Token(NamedTuple):  # a NamedTuple: tokenizing every profile makes many of them
    kind: str  # "(", ")", "op", "field", "word", "quoted"
    text: str
    position: int


# One lexeme per match: whitespace, a parenthesis, a quoted phrase (group "closed" is empty
# when the quote is never closed) or a bare word. A backslash escapes the next character, so
# Schr\"{o}dinger is one word rather than the start of a quote.
_LEXEME = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<paren>[()])
    | [\"\u201c\u201d](?P<quoted>(?:\\.|[^\"\u201c\u201d\\])*\\?)(?P<closed>[\"\u201c\u201d])?
    | (?P<word>(?:[^\s()\"\u201c\u201d\\]+|\\.|\\$)+)
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    for lexeme in _LEXEME.finditer(source):
        kind, index = lexeme.lastgroup, lexeme.start()
        if kind == "space":
            continue
        if kind == "paren":
            tokens.append(_Token(lexeme.group(), lexeme.group(), index))
        elif lexeme.group("quoted") is not None:
            if lexeme.group("closed") is None:
                raise KeywordSyntaxError("unclosed quote", index)
            tokens.append(_Token("quoted", lexeme.group("quoted"), index))
        else:
            tokens.extend(_word_tokens(lexeme.group(), index))
    return tokens


def _word_tokens(word: str, index: int) -> list[_Token]:
    prefix = _FIELD_PREFIX.match(word)
    # "testing: a survey" is a phrase; "foo:bar" and "ti: graph" name fields.
    if prefix and (prefix.group(1).lower() in _FIELDS or prefix.end() < len(word)):
        name = prefix.group(1).lower()
        if name not in _FIELDS:
            raise KeywordSyntaxError(f"unknown field '{prefix.group()}'", index)
        field_token = _Token("field", name, index)
        if prefix.end() == len(word):
            return [field_token]
        return [field_token, _Token("word", word[prefix.end() :], index + prefix.end())]
    if word in _OPERATORS:
        return [_Token("op", word, index)]
    if word == "NOT":
        raise KeywordSyntaxError("NOT is not an operator, use ANDNOT", index)
    return [_Token("word", word, index)]


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
    pattern = _phrase_pattern(fold_text(body), scope != "au" and not prefix)
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
    if not _SYNTAX.search(keyword):  # a plain phrase, as most keywords are
        return _make_term("text", [(" ".join(keyword.split()), len(keyword) - len(keyword.lstrip()))])
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


# Paper key -> matched terms, for every paper a keyword selected, in the order given.
KeywordHits = Mapping[str, frozenset[str]]

_TITLE, _ABSTRACT, _AUTHORS = 1, 2, 4
_SCOPE_FIELDS = {"text": _TITLE | _ABSTRACT, "ti": _TITLE, "abs": _ABSTRACT, "au": _AUTHORS}

# A compiled keyword: whether the expression holds, given the ids of the terms present.
_Predicate = Callable[[set[int]], bool]


def _any_present(term_ids: frozenset[int]) -> _Predicate:
    return lambda present: not term_ids.isdisjoint(present)


@contextmanager
def _collector_paused() -> Iterator[None]:
    # Building the index and a day's selections creates some 10^5 long-lived objects and no
    # reference cycles, and meanwhile CPython's cycle collector would walk the whole heap
    # several times (up to a third of the build time, measured). Pause it, and leave it as
    # it was found.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
        self._slots: list[list[tuple[K, int]]] | None = None  # expression -> (subscriber, position)
        self._profiles: dict[K, list[int | None]] = {}
        self._categories: dict[tuple[str, bool], list[int]] = defaultdict(list)
        self._automaton: ahocorasick.Automaton | None = None
        self._entries: list[tuple[_Entry, ...]] = []  # automaton pattern id -> its terms
        self._field_patterns: dict[int, frozenset[int]] = {}  # field -> patterns searched in it
        # Field -> (all terms, prefix terms, plural-accepting terms) of each pattern id.
        self._field_terms: dict[int, tuple[list[tuple[int, ...]], ...]] = {}
        self._fields = 0  # which paper fields any term looks at
        # Filled once all profiles are in, shaped for the per-paper loop: term id -> (its
        # single-term expression, label) or None; term id -> compound expressions; and the
        # terms that have any compound expression at all.
        self._alone_hits: list[tuple[int, frozenset[str]] | None] = []
        self._compound: list[tuple[int, ...]] = []
        self._in_compound: frozenset[int] = frozenset()
        self._labels: dict[frozenset[int], frozenset[str]] = {}
        self._match_cache: dict[tuple[int, frozenset[str]], tuple[Match[K], ...]] = {}
        self.invalid: list[tuple[K, int, KeywordSyntaxError]] = []

    @classmethod
    def build(cls, profiles: Iterable[tuple[K, Sequence[str]]]) -> KeywordIndex[K]:
        """Compile all profiles; keywords that do not parse are skipped and listed in `invalid`."""
        with _collector_paused():
            return cls()._add_profiles(profiles)

    def _add_profiles(self, profiles: Iterable[tuple[K, Sequence[str]]]) -> KeywordIndex[K]:
        parsed: dict[str, int | KeywordSyntaxError] = {}
        for subscriber, keywords in profiles:
            if subscriber in self._profiles:
                raise ValueError(f"subscriber {subscriber!r} appears twice")
            expr_ids: list[int | None] = []
            for position, keyword in enumerate(keywords):
                if keyword not in parsed:
                    try:
                        parsed[keyword] = self._add_expr(parse_keyword(keyword.strip()))
                    except KeywordSyntaxError as error:
                        parsed[keyword] = error
                compiled = parsed[keyword]
                if isinstance(compiled, KeywordSyntaxError):
                    self.invalid.append((subscriber, position, compiled))
                    expr_ids.append(None)
                    continue
                expr_ids.append(compiled)
            self._profiles[subscriber] = expr_ids
        self._compile_automaton()
        self._alone_hits = [
            None if expr_id < 0 else (expr_id, label)
            for expr_id, label in zip(self._term_alone, self._single_labels, strict=True)
        ]
        self._compound = [tuple(expr_ids) for expr_ids in self._term_compound]
        self._in_compound = frozenset(term_id for term_id, found in enumerate(self._compound) if found)
        return self

    def _add_expr(self, expr: Expr) -> int:
        # Identical expressions (also "Multi-Agent" vs "multi agent") share one entry.
        expr_id = self._expr_ids.get(expr)
        if expr_id is None:
            expr_id = len(self._predicates)
            self._expr_ids[expr] = expr_id
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
        by_pattern: dict[str, list[_Entry]] = defaultdict(list)
        for term_id, term in enumerate(self._terms):
            if term.scope == "cat":
                self._categories[(term.pattern, term.prefix)].append(term_id)
                continue
            fields = _SCOPE_FIELDS[term.scope]
            self._fields |= fields
            mode = _PREFIX if term.prefix else _EXACT if term.scope == "au" else _PLURAL
            by_pattern[term.pattern].append((term_id, fields, mode, term.splits))
        if not by_pattern:
            return
        automaton = ahocorasick.Automaton()
        for pattern_id, (pattern, pattern_entries) in enumerate(by_pattern.items()):
            automaton.add_word(pattern, (len(pattern), pattern_id))
            self._entries.append(tuple(pattern_entries))
        automaton.make_automaton()
        self._automaton = automaton
        # Per field, per pattern: the terms a hit can satisfy at once, when it is a whole
        # token, when it ends inside a word (prefixes) and when a plural ending follows.
        for field_bit in (_TITLE, _ABSTRACT, _AUTHORS):
            every: list[tuple[int, ...]] = []
            prefixes: list[tuple[int, ...]] = []
            plurals: list[tuple[int, ...]] = []
            for entries in self._entries:
                in_field = [entry for entry in entries if entry[1] & field_bit]
                every.append(tuple(entry[0] for entry in in_field))
                prefixes.append(tuple(entry[0] for entry in in_field if entry[2] == _PREFIX))
                plurals.append(tuple(entry[0] for entry in in_field if entry[2] == _PLURAL))
            self._field_patterns[field_bit] = frozenset(i for i, found in enumerate(every) if found)
            self._field_terms[field_bit] = (every, prefixes, plurals)

    def _present_terms(self, paper: PaperText) -> set[int]:
        present: set[int] = set()
        if self._automaton is not None:
            for field_bit, text in (
                (_TITLE, paper.title),
                (_ABSTRACT, paper.abstract),
                (_AUTHORS, "; ".join(paper.authors)),
            ):
                if field_bit & self._fields and text:
                    self._scan_field(_stream(fold_text(text)), field_bit, present)
        if self._categories:
            for category in paper.categories:
                self._scan_category(category.lower(), present)
        return present

    def _scan_field(self, stream: _Stream, field_bit: int, present: set[int]) -> None:
        assert self._automaton is not None
        tokens, text = stream.tokens, stream.text
        # Comprehensions, not loops, for the per-hit work. Keep the hits that begin a word
        # ("net" inside "network" does not) of patterns this field is searched for.
        wanted = self._field_patterns[field_bit]
        hits = [
            (start, last, pattern_id)
            for last, (length, pattern_id) in self._automaton.iter(text)
            if (start := last - length + 1) in tokens and pattern_id in wanted
        ]
        if not hits:
            return
        # A pattern found as a whole text token satisfies every term it stands for.
        all_terms, prefix_terms, plural_terms = self._field_terms[field_bit]
        whole = {pattern_id for start, last, pattern_id in hits if tokens[start] == last + 1}
        if whole:
            present.update(*map(all_terms.__getitem__, whole))
        entries = self._entries
        for start, last, pattern_id in hits:
            if pattern_id in whole:
                continue
            token_end = tokens[start]
            if token_end > last:  # the hit ends inside a word: a prefix, or a plural
                present.update(prefix_terms[pattern_id])
                if token_end - last <= 3 and text[last + 1 : token_end] in _PLURAL_ENDINGS:
                    present.update(plural_terms[pattern_id])
                continue
            # The hit runs across gaps (a phrase): the full rules.
            for term_id, fields, mode, splits in entries[pattern_id]:
                if fields & field_bit and term_id not in present:
                    if _match_end(stream, start, last - start + 1, mode, splits) >= 0:
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
        # Most keywords are one term: their hits need no evaluation. map/filter/union keep
        # the per-term work in C.
        satisfied = list(filter(None, map(self._alone_hits.__getitem__, present)))
        triggered = present & self._in_compound
        candidates = set().union(*map(self._compound.__getitem__, triggered)) if triggered else ()
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

    def _subscribers(self, expr_id: int) -> list[tuple[K, int]]:
        """The (subscriber, keyword position) pairs that use an expression."""
        if self._slots is None:  # built on first use: select() never needs them
            self._slots = [[] for _ in self._predicates]
            for subscriber, expr_ids in self._profiles.items():
                for position, used in enumerate(expr_ids):
                    if used is not None:
                        self._slots[used].append((subscriber, position))
        return self._slots[expr_id]

    def match(self, paper: PaperText) -> list[Match[K]]:
        """Return every (subscriber, keyword position, matched terms) the paper satisfies."""
        matches: list[Match[K]] = []
        cache = self._match_cache
        for expr_id, terms in self._satisfied(paper):
            found = cache.get((expr_id, terms))
            if found is None:
                # Matches are immutable, so one tuple serves every paper with these terms.
                found = tuple(Match(subscriber, position, terms) for subscriber, position in self._subscribers(expr_id))
                cache[(expr_id, terms)] = found
            matches.extend(found)
        return matches

    def select(self, papers: Iterable[PaperText]) -> dict[K, list[KeywordHits]]:
        """Return, per subscriber and keyword position, the papers it selected with their matched terms."""
        # One dict per keyword expression rather than a tuple per (paper, keyword): the
        # latter would be hundreds of thousands of objects for the garbage collector to walk.
        with _collector_paused():
            hits: list[dict[str, frozenset[str]]] = [{} for _ in self._predicates]
            for paper in papers:
                key = paper.key
                for expr_id, terms in self._satisfied(paper):
                    hits[expr_id][key] = terms
            # Subscribers sharing a keyword share one read-only view of its hits.
            views = [MappingProxyType(found) for found in hits]
            empty: KeywordHits = MappingProxyType({})
            return {
                subscriber: [empty if expr_id is None else views[expr_id] for expr_id in expr_ids]
                for subscriber, expr_ids in self._profiles.items()
            }


# ---------------------------------------------------------------------------------------
# Highlighting
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Located:
    stream: _Stream
    token_starts: list[int]  # stream offset where each token starts, ascending
    folded_starts: list[int]  # where the same token starts in the folded text
    # Folded offset -> span of the original text it came from; None when folding kept every
    # character in place (plain ASCII, no LaTeX).
    starts: array[int] | None
    ends: array[int] | None

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The original text behind stream offsets [start, end)."""
        first, last = self._folded(start), self._folded(end - 1)
        if self.starts is None or self.ends is None:
            return first, last + 1
        return self.starts[first], self.ends[last]

    def _folded(self, offset: int) -> int:
        token = bisect_right(self.token_starts, offset) - 1
        return self.folded_starts[token] + offset - self.token_starts[token]


@lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    return _fold_plain(char)


@lru_cache(maxsize=256)
def _locate(text: str) -> _Located:
    has_latex = "\\" in text or "$" in text or "{" in text
    starts: array[int] | None = None
    ends: array[int] | None = None
    if text.isascii() and not has_latex:
        folded_text = _fold_plain(text)  # lowercase only: offsets do not move
    else:
        # Fold character by character, remembering where each folded character came from;
        # a rendered LaTeX snippet maps as a whole to its source span.
        folded: list[str] = []
        starts, ends = array("l"), array("l")

        def add(chars: str, begin: int, end: int) -> None:
            folded.append(chars)
            starts.extend([begin] * len(chars))
            ends.extend([end] * len(chars))

        position = 0
        for island in _LATEX_ISLAND.finditer(text) if has_latex else ():
            for offset in range(position, island.start()):
                add(_fold_char(text[offset]), offset, offset + 1)
            add(_fold_plain(_render_island(island)), island.start(), island.end())
            position = island.end()
        for offset in range(position, len(text)):
            add(_fold_char(text[offset]), offset, offset + 1)
        folded_text = "".join(folded)
    stream = _stream(folded_text)
    parts = (_ASCII_TOKEN_SPLIT if folded_text.isascii() else _TOKEN_SPLIT).split(folded_text)
    folded_starts = list(accumulate(map(len, parts)))[0:-1:2]
    return _Located(stream, list(stream.tokens), folded_starts, starts, ends)


@lru_cache(maxsize=4096)
def _highlight_pattern(term: str) -> tuple[_Pattern, int] | None:
    phrase = term.strip()
    prefix = _FIELD_PREFIX.match(phrase)
    if prefix and prefix.group(1).lower() in _FIELDS:
        phrase = phrase[prefix.end() :].strip()
    phrase = phrase.strip(_QUOTES)
    is_prefix = phrase.endswith("*")
    pattern = _phrase_pattern(fold_text(phrase.rstrip("*")), not is_prefix)
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
            if start in stream.tokens:
                end = _match_end(stream, start, len(pattern.text), mode, pattern.splits)
                if end >= 0:
                    while mode == _PREFIX and not _is_bound(stream, end):
                        end += 1  # mark the whole word, not just the prefix
                    spans.append(located.original_span(start, end))
            start = stream.text.find(pattern.text, start + 1)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
