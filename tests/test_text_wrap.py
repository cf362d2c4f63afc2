"""The text part's wrapping: Chinese and English broken where their line-breaking rules allow, nothing lost."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.render import NO_LINE_START, _columns, line_pieces, wrap_paragraph
from tests.real_text import fixture_texts, reference_day

WIDTH = 74
INDENT = "    "
# What Chinese abstracts are made of: ideographs, full-width and ASCII punctuation, Latin words and
# numbers, brackets of both widths, and spaces where translation left them.
ALPHABET = st.sampled_from(
    list("强化学习模型策略数据的在和是") + list("，。、：；！？）」』】（「《》…") + list("abcXYZ0123-/.,;:!?()[] ")
)


def unwrapped(wrapped: str) -> str:
    return re.sub(r"\s+", "", wrapped)


def assert_wrapped_well(text: str, wrapped: str) -> None:
    lines = wrapped.split("\n") if wrapped else []
    assert unwrapped(wrapped) == unwrapped(text)  # every character kept, in order
    assert all(line.startswith(INDENT) for line in lines)
    for line in lines[1:]:
        assert line[len(INDENT)] not in NO_LINE_START, f"line starts with punctuation: {line!r}"
    for line in lines:
        body = line[len(INDENT):]
        # Only a piece that has no break opportunity inside (a long URL or formula) may run past the width.
        assert _columns(body) <= WIDTH or len(line_pieces(body)) == 1, body


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ALPHABET, min_size=1, max_size=400))
def test_no_wrapped_line_starts_with_closing_punctuation_and_no_character_is_lost(text: str) -> None:
    wrapped = wrap_paragraph(text, WIDTH, INDENT)

    assert_wrapped_well(text, wrapped)


def test_the_reference_days_chinese_abstracts_wrap_by_the_rules() -> None:
    for reference in reference_day():
        wrapped = wrap_paragraph(reference.abstract_zh)

        assert_wrapped_well(reference.abstract_zh, wrapped)
        assert len(wrapped.splitlines()) >= 3


def test_every_recorded_title_and_abstract_wraps_without_losing_text() -> None:
    for where, text in fixture_texts():
        assert unwrapped(wrap_paragraph(text)) == unwrapped(text), where


def test_a_line_is_not_started_with_a_full_width_colon_after_a_space_nor_a_word_cut_at_its_hyphen() -> None:
    text = "我们提出的方法" * 5 + " ：结果如下。" + " reference-guided" * 4

    lines = [line.strip() for line in wrap_paragraph(text, width=40).splitlines()]

    assert not any(line.startswith("：") for line in lines)
    assert not any(line.endswith("-") for line in lines)
