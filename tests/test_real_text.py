"""Every title and abstract that real arXiv data holds goes through every stage that reads text:
fold and match, protect and restore, Unicode display, the rendered digest. None raises, none is lost."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter.keywords import KeywordIndex, PaperText, fold_text, highlight_spans
from newsletter.latex import latex_spans, latex_to_unicode, protect_latex, restore_latex
from newsletter.render import Digest, DigestRenderer, KeywordSection, PaperView, readable
from newsletter.tokens import SubscriberLinks
from tests.real_text import HOSTILE, fixture_texts, hostile_papers, reference_day

LINKS = SubscriberLinks(
    manage="https://digest.example.org/manage/M",
    unsubscribe="https://digest.example.org/unsubscribe/U",
    archive="https://digest.example.org/archive/2026-11-24/A",
)
CORPUS = fixture_texts()
# Text that leans on LaTeX's special characters, so arbitrary strings hit the tokenizer's edges.
LATEX_PIECES = ["\\frac", "\\sqrt", "\\href", "\\begin{x}", "\\end{x}", "\\left", "\\text", "\\mathbb", "\\\"", "\\'",
                "$$", "\x00", "\ufeff", "𝐱"]  # fmt: skip
LATEX_ALPHABET = st.sampled_from(list("$\\{}[]()^_&%~#'\" \nabxyzRL12") + LATEX_PIECES)
LATEX_TEXT = st.lists(LATEX_ALPHABET, max_size=60).map("".join)
ANY_TEXT = st.text(max_size=300) | LATEX_TEXT


def view(arxiv_id: str, title: str, abstract: str, terms: tuple[str, ...] = ()) -> PaperView:
    return PaperView(arxiv_id=arxiv_id, version=1, raw_title=title, raw_abstract=abstract, authors=("A. Author",),
                     categories=("cs.LG",), primary_category="cs.LG", comment=None, terms=terms)  # fmt: skip


def test_the_corpus_holds_every_recorded_source() -> None:
    sources = {where.split(":", 1)[0] for where, _ in CORPUS}
    assert "reference" in sources and "hostile" in sources
    assert any(source.startswith("q_testing") for source in sources)
    assert any(source.startswith("combined_cs_lg") for source in sources)
    assert len(CORPUS) > 500


def test_every_recorded_text_survives_protection_for_translation_byte_for_byte() -> None:
    lost = [where for where, text in CORPUS if restore_latex(*protect_latex(text)) != text]
    assert lost == []


def test_every_recorded_text_is_cut_into_spans_that_join_back_to_it() -> None:
    lost = [where for where, text in CORPUS if "".join(span.text for span in latex_spans(text)) != text]
    assert lost == []


def test_every_recorded_text_reads_without_raw_link_macros_or_control_characters() -> None:
    shown = {where: readable(text) for where, text in CORPUS}
    assert not [where for where, text in shown.items() if "\\href{" in text or "\\url{" in text]
    assert not [where for where, text in shown.items() if re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", text)]


def test_every_recorded_text_folds_and_is_matched_and_highlighted() -> None:
    papers = [PaperText(key=where, title=text, abstract=text) for where, text in CORPUS]
    index = KeywordIndex.build([("reader", ["reinforcement learning", "abs:model*", "ti:data AND NOT x"])])

    selected = index.select(papers)

    assert index.unreadable == []
    found = set(selected["reader"][0])
    assert found == {where for where, text in CORPUS if "reinforcement learning" in fold_text(text)}
    for where, text in CORPUS:
        for start, end in highlight_spans(text, ["reinforcement learning"]):
            assert 0 <= start < end <= len(text), where


def test_the_reference_day_and_the_hostile_table_render_as_one_digest_with_every_paper() -> None:
    papers = [view(r.paper.arxiv_id, r.paper.title, r.paper.abstract, ("reinforcement learning",))
              for r in reference_day()] + [view(p.arxiv_id, p.title, p.abstract) for p in hostile_papers()]  # fmt: skip
    digest = Digest(
        email="ada@example.org", language="ZH-HANS", timezone="Asia/Shanghai", day=dt.date(2026, 11, 24),
        sections=[KeywordSection(keyword="reinforcement learning", papers=papers),
                  KeywordSection(keyword="diffusion policy")],
        links=LINKS,
    )  # fmt: skip

    rendered = DigestRenderer().render(digest, size_limit=10_000_000)

    assert rendered.papers_in_full == len(papers) == 44
    for paper in papers:
        assert paper.arxiv_id in rendered.html and paper.arxiv_id in rendered.text
    assert "Data: this url." in rendered.text and "‖∇f(𝐱)‖" in rendered.text
    assert "<b>A</b>" not in rendered.html and "&lt;b&gt;A&lt;/b&gt;" in rendered.html
    assert "\x00" not in rendered.html + rendered.text


# What real abstracts hold and how a reader must see it. pylatexenc, flatlatex and unicodeit were
# each compared on these rows (bench/latex_display.py prints their scores); none got them all.
DISPLAY = [
    ("$\\|\\nabla f(\\mathbf{x})\\|$", "‖∇f(𝐱)‖"),
    ("$f\\colon\\mathbb{R}^n\\to\\mathbb{R}$", "f: ℝⁿ → ℝ"),
    ("$O(n\\log n)$", "O(n log n)"),
    ("$x^2$ and $x_i$", "x² and xᵢ"),
    ("$\\frac{1}{2}$", "½"),
    ("$\\frac{a+b}{c}$", "(a+b)/c"),
    ("$\\sqrt[3]{x}$", "∛x"),
    ("$\\sqrt{x+1}$", "√(x+1)"),
    ("2.5$\\times$ faster", "2.5× faster"),
    ("Data: \\href{this https URL}{this url}.", "Data: this url."),
    ("\\url{https://github.com/a/b}", "https://github.com/a/b"),
    ("$x_{ij}^{(k)}$", "xᵢⱼ⁽ᵏ⁾"),
    ("$10^{-3}$", "10⁻³"),
    ("$\\mathcal{O}(1)$", "𝒪(1)"),
    ("$\\epsilon$-greedy", "ε-greedy"),
    ("$\\ell_1$", "ℓ₁"),
    ("$\\tilde{O}(\\sqrt{T})$", "Õ(√T)"),
    ("$\\text{if } x > 0$", "if x > 0"),
    ("$\\mathrm{softmax}(z)$", "softmax(z)"),
    ("$\\left(\\frac{a}{b}\\right)$", "(a/b)"),
    ("$\\langle x, y\\rangle$", "⟨x, y⟩"),
    ("Schr\\\"odinger and Schr\\\"{o}dinger", "Schrödinger and Schrödinger"),
    ("Erd\\H{o}s, \\c{C}ukurova, Ko\\v{s}ice", "Erdős, Çukurova, Košice"),
    ("50\\% and \\$5", "50% and $5"),
    ("It costs $5 per query; the other $ is a typo.", "It costs $5 per query; the other $ is a typo."),
    ("Fig.~3", "Fig. 3"),
    ("\\textbf{DeepVision-103K}", "DeepVision-103K"),
    ("a \\footnote{see} b and a bare \\footnote", "a (see) b and a bare \\footnote"),
    ("$\\sum_{i=1}^n x_i$", "∑ᵢ₌₁ⁿ xᵢ"),
]


@pytest.mark.parametrize(("latex", "shown"), DISPLAY)
def test_latex_reads_as_a_mathematician_would_write_it_in_plain_unicode(latex: str, shown: str) -> None:
    assert latex_to_unicode(latex) == shown


@pytest.mark.parametrize(("arxiv_id", "title", "abstract"), HOSTILE, ids=[row[0] for row in HOSTILE])
def test_a_hostile_construct_is_matched_translated_and_shown(arxiv_id: str, title: str, abstract: str) -> None:
    text = f"{abstract} On reinforcement learning."
    index = KeywordIndex.build([("reader", ["reinforcement learning"])])

    assert list(index.select([PaperText(key=arxiv_id, title=title, abstract=text)])["reader"][0]) == [arxiv_id]
    xml, spans = protect_latex(text)
    assert restore_latex(xml, spans) == text
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", xml)  # DeepL's XML parser would refuse the batch
    assert "reinforcement learning" in readable(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_TEXT)
def test_any_text_is_cut_into_spans_that_join_back_to_it(text: str) -> None:
    spans = latex_spans(text)
    assert "".join(span.text for span in spans) == text
    assert all(text[span.start : span.end] == span.text for span in spans)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_any_text_comes_back_from_protection_unchanged(text: str) -> None:
    xml, spans = protect_latex(text)
    assert restore_latex(xml, spans) == text
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", xml)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_any_text_is_shown_folded_and_highlighted_without_an_error(text: str) -> None:
    shown = readable(text)
    assert isinstance(shown, str)
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", shown)
    fold_text(text)
    spans = highlight_spans(text, ["ab", "x*"])
    assert spans == sorted(spans)
    assert all(0 <= start < end <= len(text) for start, end in spans)


@settings(max_examples=150, deadline=None)
@given(title=ANY_TEXT, abstract=ANY_TEXT)
def test_any_paper_is_matched_without_an_error(title: str, abstract: str) -> None:
    index = KeywordIndex.build([("reader", ["ab", "ti:x*", "\"r l\" OR ab AND NOT yz"])])
    index.select([PaperText(key="p", title=title, abstract=abstract)])
    assert index.unreadable == []


def test_a_card_that_cannot_be_rendered_is_shown_plainly_and_the_digest_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Stored highlight terms come from the database as JSON; a row written by hand or by an older
    # version can hold something that is not a string.
    broken = view("2612.90099", "Title with $\\alpha$ and <b>", "On RL.", terms=(42,))  # type: ignore[arg-type]
    fine = view("2612.90098", "Fine $\\alpha$ title", "Reinforcement learning here.", ("reinforcement learning",))
    digest = Digest(
        email="ada@example.org", language="EN", timezone="UTC", day=dt.date(2026, 11, 24),
        sections=[KeywordSection(keyword="RL", papers=[broken, fine])], links=LINKS,
    )  # fmt: skip

    rendered = DigestRenderer().render(digest)

    assert "2612.90099" in caplog.text and "plain text" in caplog.text
    assert "Title with $\\alpha$ and &lt;b&gt;" in rendered.html  # as typed, escaped, no highlight
    assert "Fine α title" in rendered.html and "2612.90098" in rendered.text


def test_names_comments_and_journal_references_reach_the_reader_without_controls_or_bidi_overrides() -> None:
    paper = dataclasses.replace(
        view("2612.90097", "A title", "An abstract."),
        authors=("\u202eevil\u202c Name", "Erwin Schr\\\"odinger"),
        comment="Accepted at \\textit{NeurIPS}\x9b[31m", journal_ref="J. Phys.\u2066 12",
    )  # fmt: skip
    digest = Digest(email="ada@example.org", language="EN", timezone="UTC", day=dt.date(2026, 11, 24),
                    sections=[KeywordSection(keyword="x", papers=[paper])], links=LINKS)  # fmt: skip

    rendered = DigestRenderer().render(digest)

    for part in (rendered.html, rendered.text):
        assert "evil Name" in part and "Erwin Schrödinger" in part and "Accepted at NeurIPS[31m" in part
        assert not re.search("[\x80-\x9f\u202a-\u202e\u2066-\u2069]", part)
