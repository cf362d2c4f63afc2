"""How many stored papers of the last announcement days a keyword would have matched.

The check runs as people type, over about ten thousand papers, and the matching engine needs
some 0.4 ms per paper. So each paper's text is folded and squashed once per set of days, a
substring test on it drops the papers a keyword's words cannot be in, and only the rest go
through the engine; each keyword's count is kept until the days change.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import desc, func, select
from sqlmodel import Session, col

from newsletter.keywords import (
    And,
    AndNot,
    Expr,
    KeywordIndex,
    KeywordSyntaxError,
    Or,
    PaperText,
    Term,
    fold_text,
    parse_keyword,
)
from newsletter.matching import paper_text
from newsletter.models import Announcement, Paper

PREVIEW_DAYS = 7
MAX_CACHED_COUNTS = 4096
_NOT_TOKEN = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class Preview:
    days: int
    counts: list[int]


@dataclass(frozen=True)
class _Corpus:
    key: tuple[object, ...]
    days: int
    papers: list[PaperText]
    # Folded title, abstract and authors with everything but letters and digits removed: a
    # keyword's canonical pattern can only match a paper whose squashed text contains it.
    squashed: list[str]
    categories: list[tuple[str, ...]]


def _squash(paper: PaperText) -> str:
    return _NOT_TOKEN.sub("", fold_text(f"{paper.title} {paper.abstract} {' '.join(paper.authors)}"))


def _terms(expr: Expr) -> Iterator[Term]:
    if isinstance(expr, Term):
        yield expr
    elif isinstance(expr, Or):
        for option in expr.options:
            yield from _terms(option)
    elif isinstance(expr, And | AndNot):
        yield from _terms(expr.left)
        yield from _terms(expr.right)


def _may_hold(term: Term, squashed: str, categories: tuple[str, ...]) -> bool:
    if term.scope != "cat":
        return term.pattern in squashed
    return any(
        category == term.pattern or category.startswith(term.pattern + ".")
        or (term.prefix and category.startswith(term.pattern))
        for category in categories
    )


class RecentPapers:
    """The papers of the last announcement days and the counts asked of them, kept until the days change."""

    def __init__(self, days: int = PREVIEW_DAYS) -> None:
        self.days = days
        self._corpus = _Corpus((), 0, [], [], [])
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _load(self, session: Session) -> _Corpus:
        recent = list(
            session.scalars(
                select(col(Announcement.day)).distinct().order_by(desc(col(Announcement.day))).limit(self.days)
            )
        )
        count = session.scalar(
            select(func.count()).select_from(Announcement).where(col(Announcement.day).in_(recent))
        )
        key = (tuple(recent), count)
        with self._lock:
            if key == self._corpus.key:
                return self._corpus
        ids = select(col(Announcement.arxiv_id)).where(col(Announcement.day).in_(recent))
        papers = [paper_text(paper) for paper in session.scalars(select(Paper).where(col(Paper.arxiv_id).in_(ids)))]
        corpus = _Corpus(key, len(recent), papers, [_squash(paper) for paper in papers],
                         [tuple(c.lower() for c in paper.categories) for paper in papers])
        with self._lock:
            self._corpus, self._counts = corpus, {}
        return corpus

    def _count(self, corpus: _Corpus, keyword: str) -> int:
        cached = self._counts.get(keyword)
        if cached is not None:
            return cached
        try:
            terms = list(_terms(parse_keyword(keyword)))
        except KeywordSyntaxError:
            return 0
        candidates = [
            paper
            for paper, squashed, categories in zip(corpus.papers, corpus.squashed, corpus.categories, strict=True)
            if any(_may_hold(term, squashed, categories) for term in terms)
        ]
        hits = KeywordIndex.build([(0, [keyword])]).select(candidates)[0][0]
        with self._lock:
            if corpus is self._corpus and len(self._counts) < MAX_CACHED_COUNTS:
                self._counts[keyword] = len(hits)
        return len(hits)

    def preview(self, session: Session, keywords: Sequence[str]) -> Preview:
        """Each keyword's number of matching papers over the last announcement days."""
        corpus = self._load(session)
        return Preview(days=corpus.days, counts=[self._count(corpus, keyword) for keyword in keywords])
