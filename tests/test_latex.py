"""LaTeX in titles and abstracts: kept out of translation, shown to readers as Unicode."""

from __future__ import annotations

import pytest

from newsletter.latex import (
    LatexLost,
    SpanKind,
    latex_spans,
    latex_to_unicode,
    protect_latex,
    resolve_accents,
    restore_latex,
)
from tests.servers.deepl import DOLLAR_MISTRANSLATION, DeepLServer


def latex_parts(text: str) -> list[str]:
    """The LaTeX spans of `text` as typed, without the plain text between them."""
    return [span.text for span in latex_spans(text) if span.kind is not SpanKind.TEXT]

ABSTRACT = (
    "Our method is 2.5$\\times$ faster, bounds $\\rho(E^s)$ by \\(\\alpha < 1\\) and shows\n"
    "$$\\sum_i x_i^{2}$$ with \\textbf{bold \\emph{claims}} & 50\\% fewer steps; it costs $5."
)


def fake_deepl(xml: str) -> str:
    """What the DeepL stand-in returns for one text: untranslated '$' outside ignored tags becomes 美元."""
    return DeepLServer().fake_translate(xml, "ZH-HANS", tag_handling="xml", ignore_tags=["x"])


def test_math_comes_back_from_translation_unchanged() -> None:
    xml, spans = protect_latex(ABSTRACT)

    restored = restore_latex(fake_deepl(xml), spans)

    assert DOLLAR_MISTRANSLATION not in restored
    assert "2.5$\\times$ faster" in restored
    assert latex_parts(restored) == latex_parts(ABSTRACT)
    assert "& 50\\% fewer" in restored


def test_without_protection_the_dollar_is_mistranslated() -> None:
    # The stand-in reproduces the reference digest's flaw: this is what protection prevents.
    assert "2.5美元\\times美元" in fake_deepl("2.5$\\times$")


def test_only_placeholders_are_sent_not_the_math() -> None:
    xml, spans = protect_latex("2.5$\\times$ and $\\mathcal{O}(n \\log n)$ time")

    assert xml == "2.5<x>0</x> and <x>1</x> time"
    assert spans == ["$\\times$", "$\\mathcal{O}(n \\log n)$"]


@pytest.mark.parametrize(
    ("typed", "sent"),
    [
        ('Schr\\"odinger bridges', "Schrödinger bridges"),
        ("Erd\\H{o}s, G\\\"{o}del and Pad\\'e", "Erdős, Gödel and Padé"),
        ('Schr{\\"o}dinger and \\v{C}ech', "Schrödinger and Čech"),
    ],
)
def test_accented_names_are_sent_as_whole_words_not_cut_by_placeholders(typed: str, sent: str) -> None:
    xml, spans = protect_latex(resolve_accents(typed))

    assert xml == sent and spans == []


def test_resolving_accents_leaves_math_and_commands_as_typed() -> None:
    typed = 'Schr\\"odinger $\\"o + x$ and \\textbf{bold}'

    assert resolve_accents(typed) == 'Schrödinger $\\"o + x$ and \\textbf{bold}'


def test_text_outside_math_is_xml_escaped() -> None:
    xml, _ = protect_latex("A <b> & C")

    assert xml == "A &lt;b&gt; &amp; C"
    assert restore_latex(xml, []) == "A <b> & C"


def test_placeholders_may_move_when_the_sentence_is_reordered() -> None:
    _, spans = protect_latex("$a$ then $b$")

    assert restore_latex("先 <x>1</x> 后 <x>0</x>", spans) == "先 $b$ 后 $a$"


@pytest.mark.parametrize("returned", ["only <x>0</x>", "<x>0</x> <x>0</x> <x>1</x>", "<x>0</x><x>1</x><x>2</x>"])
def test_a_translation_that_lost_or_invented_math_is_refused(returned: str) -> None:
    _, spans = protect_latex("$a$ then $b$")

    with pytest.raises(LatexLost):
        restore_latex(returned, spans)


@pytest.mark.parametrize(
    ("latex", "shown"),
    [
        ("2.5$\\times$ faster", "2.5× faster"),
        ("$\\rho(E^s)$", "ρ(Eˢ)"),
        ("\\(\\alpha\\)-stable", "α-stable"),
        ("$\\mathcal{O}(n \\log n)$", "𝒪(n log n)"),
        ("\\textbf{bold \\emph{claims}}", "bold claims"),
        ("50\\% and \\$5", "50% and $5"),
        ("it costs $5 only", "it costs $5 only"),
        ("R&D at 50% load", "R&D at 50% load"),
    ],
)
def test_simple_latex_is_shown_as_unicode(latex: str, shown: str) -> None:
    assert latex_to_unicode(latex) == shown


def test_a_stray_dollar_does_not_swallow_the_rest_of_the_abstract() -> None:
    text = "It costs $5. " + "Plain words follow here. " * 20 + "Then $x$ appears."

    assert latex_parts(text) == ["$", "$x$"]
