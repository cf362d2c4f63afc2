"""The canonical form shared by matching, highlighting and the benchmark's naive check.

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
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate, compress, repeat
from typing import NamedTuple

from newsletter.latex import has_latex, latex_to_unicode

# Letters a whitespace-split piece of a keyword word must keep on each side ("data set").
MIN_SPLIT_PIECE = 3

# ---------------------------------------------------------------------------------------
# Folding
# ---------------------------------------------------------------------------------------

def _build_ascii_fold_table() -> dict[int, str | None]:
    # "~" is LaTeX's non-breaking space; control characters would collide with the
    # stream's hard-gap marker.
    table: dict[int, str | None] = {code: " " for code in range(0x20) if chr(code) not in "\t\n\r\f\v"}
    table[ord("~")] = " "
    return table


# Most text is ASCII, and for it the table holds only these: the whole one, which takes a scan of
# the BMP, is built on the first text that is not (a `newsletter subscribe` of an ASCII keyword
# never needs it).
_ASCII_FOLD_TABLE = _build_ascii_fold_table()


@lru_cache(maxsize=1)
def _fold_table() -> dict[int, str | None]:
    # Combining marks are dropped after NFKD; the BMP holds every mark Latin, Greek and
    # Cyrillic text uses, and scanning it once takes a few milliseconds.
    table: dict[int, str | None] = {code: None for code in range(0x10000) if unicodedata.combining(chr(code))}
    # Letters NFKD leaves alone although people write them without the stroke.
    table.update({ord(stroked): plain for stroked, plain in zip("øłđðħŧı", "olddhti", strict=True)})
    table.update({ord("æ"): "ae", ord("œ"): "oe", ord("þ"): "th"})
    table.update(_ASCII_FOLD_TABLE)
    return table


def _fold_plain(text: str) -> str:
    if text.isascii():
        return text.lower().translate(_ASCII_FOLD_TABLE)
    return unicodedata.normalize("NFKD", text).casefold().translate(_fold_table())


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

