"""Text as real arXiv metadata carries it: the recorded fixtures, the reference digest's day, and a
table of hostile-but-real constructs that our own sample never had."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import lru_cache

import feedparser

from tests.conftest import REFERENCE
from tests.servers.arxiv import Paper, load_entries_from_atom, make_paper

REFERENCE_DIGEST = REFERENCE / "000_88f3e38485251599.txt"
_SUBJECT_CODE = re.compile(r"\(([a-z-]+(?:\.[A-Za-z-]+)?)\)")


@dataclass(frozen=True)
class ReferencePaper:
    """One paper of the reference digest, with the translation the comparable tool mailed."""

    paper: Paper
    title_zh: str
    abstract_zh: str


@lru_cache(maxsize=1)
def reference_day() -> tuple[ReferencePaper, ...]:
    """The reference digest's 24 "reinforcement learning" papers, as its readers got them."""
    lines = REFERENCE_DIGEST.read_text(encoding="utf-8").splitlines()
    start = lines.index("Keyword: reinforcement learning") + 1
    end = lines.index("Keyword: diffusion policy")
    papers = []
    # Each paper is 11 lines: title, Chinese title, authors, "Subjects:", subjects, abs and PDF
    # links, "- Abstract", abstract, "- 中文摘要", Chinese abstract.
    for first in range(start, end, 11):
        block = lines[first : first + 11]
        arxiv_id = block[5].rsplit("/", 1)[1]
        papers.append(
            ReferencePaper(
                paper=make_paper(
                    arxiv_id,
                    title=block[0],
                    abstract=block[8],
                    authors=[name.strip() for name in block[2].removeprefix("- Authors: ").split(",")],
                    categories=_SUBJECT_CODE.findall(block[4]),
                ),
                title_zh=block[1],
                abstract_zh=block[10],
            )
        )
    return tuple(papers)


# Constructs real arXiv titles and abstracts contain; each row is (id, title, abstract).
HOSTILE: list[tuple[str, str, str]] = [
    ("2612.90001", "Data release with \\href", "Data: \\href{this https URL}{this url}. Code: \\url{https://github.com/x/y}."),
    ("2612.90002", "Roots $\\sqrt[3]{x}$ and norms", "We bound $\\|\\nabla f(\\mathbf{x})\\|$ with $f\\colon\\mathbb{R}^n\\to\\mathbb{R}$ in $O(n\\log n)$."),
    ("2612.90003", "A bare \\footnote in a title", "Results\\footnote{Preliminary.} hold; see also \\footnote."),
    ("2612.90004", "Environments", "\\begin{itemize}\\item one \\item two\\end{itemize} and \\begin{equation}a=b\\end{equation}."),
    ("2612.90005", "Unbalanced {braces", "A {group that never closes and a } stray close {{{ and \\textbf{bold."),
    ("2612.90006", "A lone $ sign", "It costs $5 per query; the other $ is a typo, and $x$ is math."),
    ("2612.90007", "Percent 50% and \\%", "We save 50% (or 50\\%) of the compute % a LaTeX comment sign."),
    ("2612.90008", "Ties~and~tildes", "See Fig.~3 and \\url{http://example.org/~user} for ~details."),
    ("2612.90009", "Accents Schr\\\"odinger, Schr\\\"{o}dinger, {\\\"o}, Erd\\H{o}s",
     "Authors from Universit\\'e de Montr\\'eal, \\c{C}ukurova, Ko\\v{s}ice, Gda\\'{n}sk, Z\\\"urich and Schrödinger's côté."),
    ("2612.90010", "Line breaks \\\\ in a title", "First line\\\\second line \\\\ and \\newline a third."),
    ("2612.90011", "Unknown \\ourmethod macros", "Our \\ourmethod{} and \\textsc{GraphSAGE} beat \\foo{bar}{baz} and \\XYZ."),
    ("2612.90012", "HTML <b>bold</b> & ampersands", "We compare <b>A</b> & <i>B</i> at R&D labs; x < y & y > z; &amp; stays as typed."),
    ("2612.90013", "Non-BMP 𝒪 and emoji 🤖", "Math letters 𝐱 𝔼 𝒪(n) and emoji 🤖🚀 survive, as does CJK 强化学习 and Hangul 강화."),
    ("2612.90014", "Zero\u200bwidth, BOM\ufeff and RTL \u202emarks\u202c",
     "Text with a zero-width space\u200b, a joiner\u200d, a BOM\ufeff, RTL \u200fmarks\u202e and Arabic تعلم معزز."),
    ("2612.90015", "A 2,000-character formula",
     "We derive $" + " + ".join(f"\\alpha_{{{i}}} x^{{{i}}}" for i in range(130)) + "$ in closed form."),
    ("2612.90016", "Deep nesting", "Nested $" + "{" * 60 + "x" + "}" * 60 + "$ and \\frac{\\frac{1}{2}}{\\sqrt[n]{k}}."),
    ("2612.90017", "Control characters \x00 and \x1b", "A NUL\x00, an escape\x1b[0m, a form feed\x0c and a bell\x07 in the text."),
    ("2612.90018", "Math mode $\\left(\\frac{a}{b}\\right)^{2}$", "With $\\mathcal{L}_{\\text{RL}} = \\mathbb{E}_{\\pi}[\\sum_t \\gamma^t r_t]$ and \\(\\epsilon\\)-greedy."),
    ("2612.90019", "Trailing backslash \\", "An abstract ending in a backslash \\"),
    ("2612.90020", "Dollars $$display$$ and $$ unclosed", "Display $$\\int_0^1 f$$ then an unclosed $$ and a \\$ escaped dollar."),
]
HOSTILE_KEYWORD = "reinforcement learning"


def hostile_papers() -> list[Paper]:
    """The hostile table as papers; each also says "reinforcement learning", so every one matches."""
    return [
        make_paper(
            arxiv_id, title=title, abstract=f"{abstract} A note on reinforcement learning.", categories=["cs.LG"]
        )
        for arxiv_id, title, abstract in HOSTILE
    ]


def fixture_texts() -> list[tuple[str, str]]:
    """(where, text) for every title and abstract in the recorded arXiv responses and feeds."""
    texts: list[tuple[str, str]] = []
    for path in sorted((REFERENCE / "arxiv" / "api").rglob("*.xml")):
        for paper in load_entries_from_atom(path):
            where = f"{path.name}:{paper.arxiv_id}"
            texts += [(f"{where}:title", paper.title), (where, paper.abstract)]
    for path in sorted((REFERENCE / "arxiv" / "feed").glob("*.xml")):
        for entry in feedparser.parse(path.read_bytes()).entries:
            texts += [(f"{path.name}:{entry.get('id')}:title", entry.get("title", "")),
                      (f"{path.name}:{entry.get('id')}", entry.get("summary", ""))]  # fmt: skip
    for reference in reference_day():
        paper = reference.paper
        texts += [(f"reference:{paper.arxiv_id}:title", paper.title), (f"reference:{paper.arxiv_id}", paper.abstract),
                  (f"reference:{paper.arxiv_id}:zh", reference.abstract_zh)]  # fmt: skip
    for arxiv_id, title, abstract in HOSTILE:
        texts += [(f"hostile:{arxiv_id}:title", title), (f"hostile:{arxiv_id}", abstract)]
    return texts


REFERENCE_DAY = dt.date(2026, 11, 24)
