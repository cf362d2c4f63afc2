"""Highlighting: where in a displayed title or abstract a paper's matched terms occur."""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

from newsletter.keywords.folding import (
    _ASCII_TOKEN_SPLIT,
    _TOKEN_SPLIT,
    _breaks_hold,
    _fold_plain,
    _phrase_pattern,
    _plural_forms,
    _Stream,
    _stream,
    fold_text,
)
from newsletter.keywords.syntax import _FIELD_PREFIX, _FIELDS, _QUOTES, MIN_PREFIX_LENGTH
from newsletter.latex import SpanKind, has_latex, latex_spans, render_span


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
