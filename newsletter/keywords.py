"""Keyword profiles: the query language subscribers write, and the engine that matches them.

A keyword is a phrase by default ("graph neural network") and may use the arXiv search
syntax: quoted phrases, AND / OR / ANDNOT (uppercase, AND and ANDNOT bind tighter than OR),
parentheses, the field prefixes ti: abs: au: cat: (all: and no prefix mean title or abstract)
and a trailing * for a prefix (transform*, cat:cs.*).

Canonical form, shared by matching, highlighting and the benchmark's naive check:

1. Folding (`fold_text`): LaTeX is rendered to Unicode by `newsletter.latex`, then NFKD, case
   folding, and combining marks dropped, so Schr\\"{o}dinger, Schrödinger and schrodinger
   are one word.
2. Tokens are maximal runs of letters or of digits (so "GPT4" is "gpt" + "4"). The gap
   between two tokens is *soft* when it holds only whitespace, hyphens, apostrophes or
   underscores (or nothing), and *hard* otherwise (".", ",", "(", "/", ...). A text becomes a
   stream: its tokens concatenated, with nothing for a soft gap and "\\x00" for a hard one,
   plus where each token starts and ends. A keyword phrase becomes a pattern the same way,
   its last word singularised (networks -> network, policies -> policy): "multi-agent",
   "multi agent" and "multiagent" are all the pattern "multiagent"; "i.i.d." keeps its hard
   gaps.
3. A pattern, or one of its English plural forms (+s; +es after s, x, z, ch, sh, o;
   y -> ies after a consonant), matches where the automaton finds it in the stream starting
   at a token start and ending at a token end (anywhere, for a prefix), so "net" is not
   found in "network", nor "RL" in "URL", nor "part" in "party". It may run across a hyphen-like gap
   anywhere, but across whitespace only where the keyword itself breaks words, or inside
   a keyword word at least three letters from either end: "data set" matches "dataset",
   while the "a i" of "a i.i.d. sample" is not "AI".

Match.terms (what to highlight) are the keyword's terms as the subscriber wrote them, those
present in the paper, leaving out what follows ANDNOT.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import unicodedata
from array import array
from bisect import bisect_right
from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate, compress, repeat
from typing import Generic, NamedTuple, TypeVar

import ahocorasick_rs

from newsletter.latex import SpanKind, has_latex, latex_spans, latex_to_unicode, render_span

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
log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# Folding
# ---------------------------------------------------------------------------------------

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


def _fold_plain(text: str) -> str:
    if text.isascii():
        return text.lower().translate(_FOLD_TABLE)
    return unicodedata.normalize("NFKD", text).casefold().translate(_FOLD_TABLE)


def fold_text(text: str) -> str:
    """Return `text` with LaTeX rendered, accents stripped and case folded, for matching."""
    if has_latex(text):
        text = latex_to_unicode(text)
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
# Between a title and its abstract, scanned as one stream; folding leaves no such character.
_FIELD_BREAK = "\x01"


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
        separator = _FIELD_BREAK if _FIELD_BREAK in gap else _HARD if _HARD_GAPS[gap] else ""
        if len(self) < 100_000:
            self[gap] = separator
        return separator


_HARD_GAPS = _GapTable()
_SPACE_GAPS = _SpaceTable()
_SEPARATORS = _SeparatorTable()


@dataclass(frozen=True, slots=True)
class _Stream:
    text: str  # tokens joined, "\x00" where a hard gap was ("\x01" between title and abstract)
    tokens: dict[int, int]  # start offset of each token -> its end offset
    ends: set[int]  # end offsets of the tokens
    spaces: int  # bit i set: a whitespace gap sits before offset i


def _stream(folded: str) -> _Stream:
    # Everything here runs in C (split, map over dicts, join, accumulate): a Python loop per
    # token would cost more than the automaton pass itself. Letter and digit runs are
    # separate tokens, so "gpt4" yields an empty gap between "gpt" and "4".
    parts = (_ASCII_TOKEN_SPLIT if folded.isascii() else _TOKEN_SPLIT).split(folded)
    gaps = parts[0::2]
    parts[0::2] = map(_SEPARATORS.__getitem__, gaps)
    offsets = list(accumulate(map(len, parts)))
    gap_ends = offsets[0::2]  # = token starts, then the end of the text
    # The whitespace gaps as bits of one int, built in C: "1" digits at their offsets.
    digits = bytearray(b"0" * (offsets[-1] + 1))
    deque(map(digits.__setitem__, compress(gap_ends, map(_SPACE_GAPS.__getitem__, gaps)), repeat(49)), maxlen=0)
    digits.reverse()
    token_ends = offsets[1::2]
    return _Stream("".join(parts), dict(zip(gap_ends, token_ends, strict=False)), set(token_ends), int(digits, 2))


def _forbidden_breaks(length: int, breaks: int) -> int:
    """The offsets inside a form of `length` where a whitespace gap rules a hit out, as bits."""
    return ((1 << length) - 2) & ~breaks


def _breaks_hold(stream: _Stream, start: int, end: int, breaks: int) -> bool:
    """Whether every whitespace gap inside [start, end) sits where the pattern may break."""
    return not (stream.spaces >> start) & _forbidden_breaks(end - start, breaks)


_VOWELS = frozenset("aeiou")


def _plural_forms(pattern: str) -> tuple[str, ...]:
    """The English plurals a pattern's last word may take in a text: +s, +es, y -> ies."""
    forms = [pattern + "s"]
    if pattern.endswith(("s", "x", "z", "ch", "sh", "o")):
        forms.append(pattern + "es")
    if len(pattern) > 2 and pattern[-1] == "y" and pattern[-2].isalpha() and pattern[-2] not in _VOWELS:
        forms.append(pattern[:-1] + "ies")
    return tuple(forms)


class _Pattern(NamedTuple):
    text: str  # canonical: folded tokens concatenated, last word singularised
    breaks: int  # bit i set: a whitespace gap in the text may sit at offset i


# Plurals in -ies whose singular is not -y: the singular keeps "ie", or is the same word.
_IES_SINGULAR_IE = frozenset("cookies movies zombies calories rookies selfies pies ties lies".split())
_INVARIANT = frozenset("series species".split())


def _singular(word: str) -> str:
    # Plural keywords match the singular too ("GNNs" -> "gnn", "policies" -> "policy");
    # words that merely end in s (analysis, loss, corpus) keep it. The text side accepts
    # the plural forms of what is left (_plural_forms).
    if len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "is")) or word in _INVARIANT:
        return word
    if word.endswith("ies") and len(word) > 4 and word not in _IES_SINGULAR_IE:
        return word[:-3] + "y"
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
    breaks = 0
    for meet in ends[1::2]:  # where the keyword's own words meet
        breaks |= 1 << meet
    # Inside a word, a text may also split it with a space, far enough from its ends.
    for token, end in zip(tokens, ends[0::2], strict=True):
        if len(token) >= 2 * MIN_SPLIT_PIECE:
            first, last = end - len(token) + MIN_SPLIT_PIECE, end - MIN_SPLIT_PIECE
            breaks |= ((1 << (last - first + 1)) - 1) << first
    return _Pattern("".join(parts), breaks)


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
    breaks: int = 0  # bit i set: a whitespace gap in the text may sit at offset i of the pattern
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
    if scope == "cat":
        prefix = display.endswith("*")
        category = (display[:-1] if prefix else display).strip().lower()
        valid = _CATEGORY_PREFIX if prefix else _CATEGORY
        if not valid.fullmatch(category):
            raise KeywordSyntaxError(f"invalid category '{display}'", words[0][1])
        return Term("cat", category, prefix, text=display)
    return _phrase_term(scope, display, words[0][1])


def _phrase_term(scope: str, display: str, start: int) -> Term:
    """The term for a phrase (maybe a prefix) in a scope other than cat, as the subscriber wrote it."""
    prefix = display.endswith("*")
    pattern = _phrase_pattern(fold_text(display[:-1] if prefix else display), scope != "au" and not prefix)
    if pattern is None:
        raise KeywordSyntaxError(f"term '{display}' has no letters or digits", start)
    if prefix and len(pattern.text) < MIN_PREFIX_LENGTH:
        raise KeywordSyntaxError(
            f"prefix '{display}' is too short, use at least {MIN_PREFIX_LENGTH} letters before *",
            start,
        )
    return Term(scope, pattern.text, prefix, pattern.breaks, text=display)


def parse_keyword(keyword: str) -> Expr:
    """Parse one keyword into its expression tree, or raise KeywordSyntaxError."""
    if len(keyword) > MAX_KEYWORD_LENGTH:
        raise KeywordSyntaxError(f"keyword longer than {MAX_KEYWORD_LENGTH} characters", MAX_KEYWORD_LENGTH)
    if not keyword.strip():
        raise KeywordSyntaxError("empty keyword", 0)
    if not _SYNTAX.search(keyword):  # a plain phrase, as most keywords are
        return _phrase_term("text", " ".join(keyword.split()), len(keyword) - len(keyword.lstrip()))
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


class KeywordHits(Mapping[str, frozenset[str]]):
    """Paper key -> matched terms, for every paper one keyword selected, in the order given.

    Lists rather than a dict: a day fills tens of thousands of these, and appending to a
    list costs a fraction of a dict insert. A one-term keyword has one label for all papers.
    """

    __slots__ = ("_index", "_keys", "_label", "_labels")

    def __init__(self, keys: list[str], labels: list[frozenset[str]] | None, label: frozenset[str] = frozenset()):
        self._keys = keys
        self._labels = labels  # one per key, or None: `label` for all
        self._label = label
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __getitem__(self, key: str) -> frozenset[str]:
        if self._index is None:
            self._index = {found: number for number, found in enumerate(self._keys)}
        number = self._index[key]
        return self._label if self._labels is None else self._labels[number]

    def items(self) -> Iterator[tuple[str, frozenset[str]]]:  # type: ignore[override]
        return zip(self._keys, self._labels if self._labels is not None else repeat(self._label), strict=False)

_FIELD_SCOPES = frozenset(("ti", "abs"))  # terms looked for in only one of title and abstract

# A compiled keyword: whether the expression holds, given the ids of the terms present.
_Predicate = Callable[[set[int]], bool]


class _Scanner:
    """One automaton over the canonical forms (and plural forms) of a set of terms.

    A hit counts only where it starts a token. Then: a hit that is a whole token satisfies
    its terms at once; any other must end at a token end (unless its term is a prefix) and
    may hold a whitespace gap only where the term allows one. Title and abstract are one
    stream; ti: and abs: terms count only on their side of it.
    """

    def __init__(self, terms: list[tuple[int, Term]], plurals: bool) -> None:
        form_ids: dict[str, int] = {}
        sources: list[list[tuple[int, Term, int]]] = []  # form id -> (term id, term, forbidden breaks)
        for term_id, term in terms:
            forms = (term.pattern,) if term.prefix or not plurals else (term.pattern, *_plural_forms(term.pattern))
            for form in forms:
                form_id = form_ids.setdefault(form, len(form_ids))
                if form_id == len(sources):
                    sources.append([])
                sources[form_id].append((term_id, term, _forbidden_breaks(len(form), term.breaks)))
        # Per form id, for terms looked for anywhere: the terms a hit that is one whole
        # token satisfies; the (term, forbidden breaks) to check for another hit that ends
        # at a token end; and for the forms of prefix terms, the only ones that may end
        # inside a word, theirs.
        self.whole = [tuple(t for t, term, _ in found if term.scope not in _FIELD_SCOPES) for found in sources]
        self.at_end = [
            tuple((t, forbidden) for t, term, forbidden in found if term.scope not in _FIELD_SCOPES)
            for found in sources
        ]
        self.inside = {
            form_id: prefixes
            for form_id, found in enumerate(sources)
            if (prefixes := tuple((t, f) for t, term, f in found if term.prefix and term.scope == "text"))
        }
        # Form id -> (term, in the title, is a prefix, forbidden breaks) for ti: and abs: terms.
        self.fielded = {
            form_id: entries
            for form_id, found in enumerate(sources)
            if (entries := tuple((t, x.scope == "ti", x.prefix, f) for t, x, f in found if x.scope in _FIELD_SCOPES))
        }
        self.automaton = ahocorasick_rs.AhoCorasick(list(form_ids), matchkind=ahocorasick_rs.MatchKind.Standard)

    def scan(self, stream: _Stream, present: set[int]) -> None:
        """Add to `present` the terms found in the stream."""
        found = self.automaton.find_matches_as_indexes(stream.text, overlapping=True)
        tokens, ends, spaces, inside, at_end = stream.tokens, stream.ends, stream.spaces, self.inside, self.at_end
        # Comprehensions, not loops, for the per-hit work. Most hits are dropped at once:
        # "net" inside "network" does not begin a word; "learn" ends inside "learning".
        hits = [
            (form_id, begin, end)
            for form_id, begin, end in found
            if begin in tokens and (end in ends or form_id in inside)
        ]
        whole = self.whole
        present.update(*[whole[form_id] for form_id, begin, end in hits if tokens[begin] == end])
        present.update(
            [
                term_id
                for form_id, begin, end in hits
                if tokens[begin] != end
                for term_id, forbidden in (at_end if end in ends else inside)[form_id]
                if not (spaces >> begin) & forbidden
            ]
        )
        if self.fielded:
            self._scan_fielded(stream, found, present)

    def _scan_fielded(self, stream: _Stream, found: list[tuple[int, int, int]], present: set[int]) -> None:
        tokens, ends, fielded = stream.tokens, stream.ends, self.fielded
        title_end = stream.text.find(_FIELD_BREAK)
        for form_id, begin, end in [hit for hit in found if hit[0] in fielded]:
            if begin not in tokens:
                continue
            whole_token = tokens[begin] == end
            for term_id, in_title, prefix, forbidden in fielded[form_id]:
                if (begin < title_end) is in_title and (
                    whole_token or ((prefix or end in ends) and not (stream.spaces >> begin) & forbidden)
                ):
                    present.add(term_id)


def _needs_every_positive(expr: Expr) -> bool:
    """Whether every term outside an ANDNOT is present whenever `expr` is true (no OR among them)."""
    if isinstance(expr, Term):
        return True
    if isinstance(expr, Or):
        return len(expr.options) == 1 and _needs_every_positive(expr.options[0])
    if isinstance(expr, AndNot):
        return _needs_every_positive(expr.left)
    return _needs_every_positive(expr.left) and _needs_every_positive(expr.right)


# Below this many papers a forked process costs more than it saves.
_MIN_PAPERS_PER_PROCESS = 250


class _ForkedScan:
    """A forked child scanning a share of the papers with the index it inherited (no copy, no rebuild).

    os.fork rather than multiprocessing: a Celery worker process is a daemon, and multiprocessing
    refuses children to daemons. The child sends [count, lengths..., term ids...] down a pipe.
    """

    def __init__(self, pid: int, pipe: int, count: int) -> None:
        self.pid, self.pipe, self.count = pid, pipe, count
        self.done = False

    @classmethod
    def start(cls, index: KeywordIndex[Hashable], papers: list[PaperText]) -> _ForkedScan | None:
        read_end, write_end = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            return None
        if pid == 0:
            # The child leaves through os._exit whatever happens: none of the parent's cleanup
            # (database connections, temporary files, atexit) may run twice.
            status = 1
            try:
                os.close(read_end)
                found = [index._present_terms(paper) for paper in papers]
                payload = array("i", [len(found), *map(len, found)])
                payload.extend(term_id for present in found for term_id in present)
                with open(write_end, "wb") as pipe:
                    pipe.write(payload.tobytes())
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        return cls(pid, read_end, len(papers))

    def collect(self) -> list[set[int]] | None:
        """Each paper's present terms, or None when the child failed."""
        with open(self.pipe, "rb") as pipe:
            data = pipe.read()
        self.done = True
        _, status = os.waitpid(self.pid, 0)
        values = array("i")
        values.frombytes(data[: len(data) - len(data) % values.itemsize])
        if status != 0 or not values or values[0] != self.count:
            return None
        lengths, flat = values[1 : 1 + self.count], values[1 + self.count :]
        if sum(lengths) != len(flat):
            return None
        ends = list(accumulate(lengths))
        return [set(flat[end - length : end]) for end, length in zip(ends, lengths, strict=True)]

    def close(self) -> None:
        """Reap a child whose share was not collected (a write to the closed pipe ends it)."""
        if not self.done:
            self.done = True
            os.close(self.pipe)
            os.waitpid(self.pid, 0)


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
        self._text_scanner: _Scanner | None = None  # terms looked for in titles and abstracts
        self._author_scanner: _Scanner | None = None  # au: terms
        # Filled once all profiles are in, shaped for the per-paper loop: term id -> (its
        # single-term expression, label) or None; term id -> compound expressions; and the
        # terms that have any compound expression at all.
        self._alone_hits: list[tuple[int, frozenset[str]] | None] = []
        self._compound: list[tuple[int, ...]] = []
        self._in_compound: frozenset[int] = frozenset()
        self._labels: dict[frozenset[int], frozenset[str]] = {}
        # Expression -> its label when the same for every paper (one term; terms all required), else None.
        self._fixed_labels: list[frozenset[str] | None] = []
        self._match_cache: dict[tuple[int, frozenset[str]], tuple[Match[K], ...]] = {}
        self.invalid: list[tuple[K, int, KeywordSyntaxError]] = []
        self.unreadable: list[tuple[str, str]] = []  # (paper key, reason) of papers select() could not scan
        self.processes_used = 0  # processes that scanned papers in the last select()

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
                    except Exception as exc:  # noqa: BLE001 - one stored keyword never stops everyone's match
                        parsed[keyword] = KeywordSyntaxError(f"unreadable keyword ({type(exc).__name__}: {exc})", 0)
                compiled = parsed[keyword]
                if isinstance(compiled, KeywordSyntaxError):
                    self.invalid.append((subscriber, position, compiled))
                    expr_ids.append(None)
                    continue
                expr_ids.append(compiled)
            self._profiles[subscriber] = expr_ids
        self._compile_scanners()
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
                self._fixed_labels.append(self._single_labels[term_id])
            else:
                self._predicates.append(self._compile(expr))
                self._positives.append(frozenset(self._positive_terms(expr)))
                fixed = _needs_every_positive(expr)
                self._fixed_labels.append(self._label(self._positives[expr_id]) if fixed else None)
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
        # Closures over term ids, with the usual shapes (a term beside a term or beside a
        # sub-expression, an OR of terms) tested in one call: a day evaluates 10^5 of them.
        if isinstance(expr, Term):
            term_id = self._add_term(expr)
            return lambda present: term_id in present
        if isinstance(expr, Or):
            terms = frozenset(self._add_term(option) for option in expr.options if isinstance(option, Term))
            others = [self._compile(option) for option in expr.options if not isinstance(option, Term)]
            if not others:
                return lambda present: not terms.isdisjoint(present)
            return lambda present: not terms.isdisjoint(present) or any(other(present) for other in others)
        is_and = isinstance(expr, And)
        if isinstance(expr.right, Term):
            right_id = self._add_term(expr.right)
            if isinstance(expr.left, Term):
                left_id = self._add_term(expr.left)
                if is_and:
                    return lambda present: left_id in present and right_id in present
                return lambda present: left_id in present and right_id not in present
            left = self._compile(expr.left)
            if is_and:
                return lambda present: right_id in present and left(present)
            return lambda present: right_id not in present and left(present)
        left, right = self._compile(expr.left), self._compile(expr.right)
        if is_and:
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

    def _compile_scanners(self) -> None:
        text_terms: list[tuple[int, Term]] = []
        author_terms: list[tuple[int, Term]] = []
        for term_id, term in enumerate(self._terms):
            if term.scope == "cat":
                self._categories[(term.pattern, term.prefix)].append(term_id)
            else:
                (author_terms if term.scope == "au" else text_terms).append((term_id, term))
        # Names are matched as written (no plurals), and only in the author list.
        if text_terms:
            self._text_scanner = _Scanner(text_terms, plurals=True)
        if author_terms:
            self._author_scanner = _Scanner(author_terms, plurals=False)

    def _present_terms(self, paper: PaperText) -> set[int]:
        try:
            return self._scan_paper(paper)
        except Exception as exc:  # noqa: BLE001 - one paper we cannot read never stops the day's match
            log.warning("%s: not matched (%s: %s)", paper.key, type(exc).__name__, exc)
            self.unreadable.append((paper.key, f"{type(exc).__name__}: {exc}"))
            return set()

    def _scan_paper(self, paper: PaperText) -> set[int]:
        present: set[int] = set()
        if self._text_scanner is not None:
            text = f"{fold_text(paper.title)}{_FIELD_BREAK}{fold_text(paper.abstract)}"
            self._text_scanner.scan(_stream(text), present)
        if self._author_scanner is not None and paper.authors:
            self._author_scanner.scan(_stream(fold_text("; ".join(paper.authors))), present)
        if self._categories:
            for category in paper.categories:
                self._scan_category(category.lower(), present)
        return present

    def _present_terms_of(self, papers: list[PaperText], processes: int) -> Iterator[set[int]]:
        """Each paper's present terms, in order; forked processes take shares when there are many."""
        shares = min(processes, len(papers) // _MIN_PAPERS_PER_PROCESS)
        self.processes_used = 1
        if shares < 2 or not hasattr(os, "fork"):
            yield from map(self._present_terms, papers)
            return
        size = -(-len(papers) // shares)
        starts = range(size, len(papers), size)
        forked = [(start, _ForkedScan.start(self, papers[start : start + size])) for start in starts]
        try:
            yield from map(self._present_terms, papers[:size])
            for start, child in forked:
                found = child.collect() if child is not None else None
                if found is None:  # the fork was refused or the child failed: scan its share here
                    yield from map(self._present_terms, papers[start : start + size])
                else:
                    self.processes_used += 1
                    yield from found
        finally:
            for _, child in forked:
                if child is not None:
                    child.close()

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
        # Most keywords are one term: their hits need no evaluation. map/filter keep the
        # per-term work in C.
        satisfied = list(filter(None, map(self._alone_hits.__getitem__, present)))
        satisfied.extend(self._compounds_satisfied(present))
        return satisfied

    def _compounds_satisfied(self, present: set[int]) -> list[tuple[int, frozenset[str]]]:
        """The expressions of several terms that the present terms make true, with their labels."""
        triggered = present & self._in_compound
        if not triggered:
            return []
        candidates = set().union(*map(self._compound.__getitem__, triggered))
        predicates, positives, fixed = self._predicates, self._positives, self._fixed_labels
        return [
            (expr_id, fixed[expr_id] or self._label(positives[expr_id] & present))
            for expr_id in candidates
            if predicates[expr_id](present)  # type: ignore[misc]  # compound: never None
        ]

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

    def select(self, papers: Iterable[PaperText], processes: int = 1) -> dict[K, list[KeywordHits]]:
        """Return, per subscriber and keyword position, the papers it selected with their matched terms.

        Papers are taken to have distinct keys. With `processes` > 1, forked processes scan
        shares of a large list of papers meanwhile.
        """
        papers = list(papers)
        with _collector_paused():
            keys: list[list[str]] = [[] for _ in self._predicates]
            labels: dict[int, list[frozenset[str]]] = {}  # for keywords of several terms
            # Term id -> the paper keys of the keyword that is this term alone, for the terms that are.
            alone_terms = frozenset(term_id for term_id, expr_id in enumerate(self._term_alone) if expr_id >= 0)
            alone_keys = [keys[expr_id] if expr_id >= 0 else [] for expr_id in self._term_alone]
            for paper, present in zip(papers, self._present_terms_of(papers, processes), strict=True):
                key = paper.key
                # Append the key for every one-term keyword present, as a loop in C: the
                # Python loop was a fifth of the time.
                deque(map(list.append, map(alone_keys.__getitem__, present & alone_terms), repeat(key)), maxlen=0)
                for expr_id, terms in self._compounds_satisfied(present):
                    keys[expr_id].append(key)
                    labels.setdefault(expr_id, []).append(terms)
            # Subscribers sharing a keyword share one read-only view of its hits.
            views = [
                KeywordHits(found, None if predicate is None else labels.get(expr_id, []), label or frozenset())
                for expr_id, (found, predicate, label) in enumerate(
                    zip(keys, self._predicates, self._fixed_labels, strict=True)
                )
            ]
            empty = KeywordHits([], None)
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
    with_latex = has_latex(text)
    starts: array[int] | None = None
    ends: array[int] | None = None
    if text.isascii() and not with_latex:
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
        for span in latex_spans(text) if with_latex else ():
            if span.kind is SpanKind.TEXT:
                continue
            for offset in range(position, span.start):
                add(_fold_char(text[offset]), offset, offset + 1)
            add(_fold_plain(render_span(span.kind, span.text)), span.start, span.end)
            position = span.end
        for offset in range(position, len(text)):
            add(_fold_char(text[offset]), offset, offset + 1)
        folded_text = "".join(folded)
    stream = _stream(folded_text)
    parts = (_ASCII_TOKEN_SPLIT if folded_text.isascii() else _TOKEN_SPLIT).split(folded_text)
    folded_starts = list(accumulate(map(len, parts)))[0:-1:2]
    return _Located(stream, list(stream.tokens), folded_starts, starts, ends)


@lru_cache(maxsize=4096)
def _highlight_forms(term: str) -> tuple[tuple[str, bool, int], ...]:
    """The (form, is a prefix, breaks) to look for when highlighting a displayed term."""
    phrase = term.strip()
    prefix = _FIELD_PREFIX.match(phrase)
    if prefix and prefix.group(1).lower() in _FIELDS:
        phrase = phrase[prefix.end() :].strip()
    phrase = phrase.strip(_QUOTES)
    is_prefix = phrase.endswith("*")
    pattern = _phrase_pattern(fold_text(phrase.rstrip("*")), not is_prefix)
    if pattern is None or (is_prefix and len(pattern.text) < MIN_PREFIX_LENGTH):
        return ()
    plurals = () if is_prefix else _plural_forms(pattern.text)
    return ((pattern.text, is_prefix, pattern.breaks), *((form, False, pattern.breaks) for form in plurals))


def highlight_spans(text: str, terms: Iterable[str]) -> list[tuple[int, int]]:
    """Return sorted, non-overlapping (start, end) spans of `text` where any of `terms` occurs."""
    forms = [form for term in terms for form in _highlight_forms(term)]
    if not forms or not text:
        return []
    located = _locate(text)
    stream = located.stream
    spans: list[tuple[int, int]] = []
    for form, is_prefix, breaks in forms:
        start = stream.text.find(form)
        while start != -1:
            end = start + len(form)
            at_bounds = start in stream.tokens and (is_prefix or end in stream.ends)
            if at_bounds and _breaks_hold(stream, start, end, breaks):
                while end not in stream.ends:
                    end += 1  # a prefix marks the whole word
                spans.append(located.original_span(start, end))
            start = stream.text.find(form, start + 1)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
