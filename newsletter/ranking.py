"""Rank: the order of papers within a keyword's section, decided in the match stage and stored on Selection.

The order key, best first:

1. `feedback_band` descending: papers close to one the subscriber marked "more like this" (1), then the
   rest (0), then papers close to one they marked "not for me" (-1). Close means a TF-IDF cosine
   (title and abstract) margin of at least `closeness` (NEWSLETTER_FEEDBACK_CLOSENESS): the band is
   1 when max cos(liked) - max cos(refused) >= closeness, -1 when it is <= -closeness.
2. `title_hit`: a matched term in the title before one found only in the abstract (or authors, categories).
3. `distinct_terms` descending: more distinct matched terms (over all the subscriber's keywords) first.
4. `announce_position`: arXiv's own order of the day (new submissions by ID, then cross-lists).

Without feedback every band is 0, so the order is 2-3-4. TF-IDF vectors are computed once per paper per
match run, over the day's papers and the papers feedback names, and only when someone gave feedback.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, select
from sqlmodel import Session, col

from newsletter.models import Announcement, AnnounceType, FeedbackVerdict, Paper, PaperFeedback, Selection

if TYPE_CHECKING:
    import numpy as np

# The cosine margin of NEWSLETTER_FEEDBACK_CLOSENESS's default: abstracts on one narrow topic score
# 0.2-0.5 against each other, papers of the same field on other topics under 0.1.
DEFAULT_CLOSENESS = 0.15
# Only a subscriber's latest verdicts of each kind count: taste drifts, and it bounds the work.
VERDICTS_CONSIDERED = 50
# Above this many (day paper, feedback paper) pairs the similarities stay sparse instead of one dense array.
DENSE_LIMIT = 20_000_000


def section_order() -> list[ColumnElement[Any]]:
    """ORDER BY terms for a keyword section's papers (after Selection.keyword_position)."""
    return [
        col(Selection.feedback_band).desc(),
        col(Selection.title_hit).desc(),
        col(Selection.distinct_terms).desc(),
        # A weekly digest holds several days: each day's listing in turn.
        col(Selection.day).asc(),
        col(Selection.announce_position).asc(),
        col(Selection.arxiv_id).asc(),
    ]


def announcement_order(rows: Iterable[tuple[str, str]]) -> dict[str, int]:
    """(arxiv_id, announce_type) of a day -> its place in arXiv's listing: new by ID, then cross-lists."""
    ordered = sorted(rows, key=lambda row: (row[1] != AnnounceType.NEW, row[0]))
    return {arxiv_id: position for position, (arxiv_id, _) in enumerate(ordered)}


def add_match_signals(
    rows: Iterable[dict[str, Any]], title_labels: Mapping[str, frozenset[str]], positions: Mapping[str, int]
) -> None:
    """Fill each selection row's title_hit, distinct_terms and announce_position from its terms."""
    empty: frozenset[str] = frozenset()
    title_of, position_of = title_labels.get, positions.get  # a day has up to 10^6 rows
    for row in rows:
        arxiv_id, terms = row["arxiv_id"], row["terms"]
        row["title_hit"] = not title_of(arxiv_id, empty).isdisjoint(terms)
        row["distinct_terms"] = len(terms)
        row["announce_position"] = position_of(arxiv_id, 0)
        row["feedback_score"] = 0.0
        row["feedback_band"] = 0


@dataclass
class Taste:
    """A subscriber's recent verdicts: papers liked and papers refused."""

    liked: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def load_tastes(session: Session, subscriber_ids: Iterable[int]) -> dict[int, Taste]:
    """The latest verdicts of the given subscribers (those without feedback are left out)."""
    wanted = sorted(set(subscriber_ids))
    tastes: dict[int, Taste] = defaultdict(Taste)
    newest = (
        func.row_number()
        .over(partition_by=(col(PaperFeedback.subscriber_id), col(PaperFeedback.verdict)),
              order_by=col(PaperFeedback.created_at).desc())
        .label("newest")
    )
    for start in range(0, len(wanted), 5000):
        ranked = (
            select(col(PaperFeedback.subscriber_id), col(PaperFeedback.arxiv_id), col(PaperFeedback.verdict), newest)
            .where(col(PaperFeedback.subscriber_id).in_(wanted[start : start + 5000]))
            .subquery()
        )
        for subscriber_id, arxiv_id, verdict in session.execute(
            select(ranked.c.subscriber_id, ranked.c.arxiv_id, ranked.c.verdict).where(
                ranked.c.newest <= VERDICTS_CONSIDERED
            )
        ):
            taste = tastes[subscriber_id]
            (taste.liked if verdict == FeedbackVerdict.MORE else taste.refused).append(arxiv_id)
    return dict(tastes)


def paper_texts(session: Session, arxiv_ids: Iterable[str]) -> dict[str, str]:
    """Title and abstract of stored papers, as TF-IDF reads them."""
    wanted = list(set(arxiv_ids))
    texts: dict[str, str] = {}
    for start in range(0, len(wanted), 1000):
        rows = session.execute(
            select(col(Paper.arxiv_id), col(Paper.title), col(Paper.abstract)).where(
                col(Paper.arxiv_id).in_(wanted[start : start + 1000])
            )
        )
        texts.update({arxiv_id: tfidf_text(title, abstract) for arxiv_id, title, abstract in rows})
    return texts


def tfidf_text(title: str, abstract: str) -> str:
    """What TF-IDF reads of a paper."""
    return f"{title}\n{abstract}"


class Similarity:
    """TF-IDF cosine between the papers of a day and the papers feedback names, each vectorized once."""

    def __init__(self, texts: Mapping[str, str], day_ids: Sequence[str], feedback_ids: Sequence[str]) -> None:
        day = [arxiv_id for arxiv_id in dict.fromkeys(day_ids) if arxiv_id in texts]
        named = [arxiv_id for arxiv_id in dict.fromkeys(feedback_ids) if arxiv_id in texts]
        self._row = {arxiv_id: number for number, arxiv_id in enumerate(day)}
        self._column = {arxiv_id: number for number, arxiv_id in enumerate(named)}
        self._cosines: Any = None
        if day and named:
            self._cosines = _cosines(texts, day, named)

    def closest(self, papers: Sequence[str], liked: Sequence[str], refused: Sequence[str]) -> np.ndarray:
        """For each of `papers`, max cosine to a liked paper minus max cosine to a refused one (0 where unknown)."""
        import numpy as np

        result = np.zeros(len(papers), dtype=np.float32)
        liked_columns = [self._column[other] for other in liked if other in self._column]
        refused_columns = [self._column[other] for other in refused if other in self._column]
        known = [(number, self._row[paper]) for number, paper in enumerate(papers) if paper in self._row]
        if self._cosines is None or not (liked_columns or refused_columns) or not known:
            return result
        places, rows = zip(*known, strict=True)
        columns = liked_columns + refused_columns
        if hasattr(self._cosines, "tocsr"):  # kept sparse: too many pairs for one dense array
            block = self._cosines[list(rows)][:, columns].toarray()
        else:
            block = self._cosines[np.ix_(rows, columns)]
        # One block per subscriber: liked columns first, then refused ones.
        split = len(liked_columns)
        score = block[:, :split].max(axis=1) if split else 0
        if split < len(columns):
            score = score - block[:, split:].max(axis=1)
        result[list(places)] = score
        return result


_WORD = re.compile(r"(?u)\b\w\w+\b")


def _cosines(texts: Mapping[str, str], day: list[str], named: list[str]) -> Any:
    """Cosines, day papers x named papers: dense when small enough, else a scipy sparse matrix; None if no words."""
    # Imported here: the web app and the delivery workers load this module for section_order() only.
    import numpy as np
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

    def words(text: str) -> list[str]:
        return [word for word in _WORD.findall(text.lower()) if word not in ENGLISH_STOP_WORDS]

    ids = list(dict.fromkeys([*day, *named]))
    position = {arxiv_id: number for number, arxiv_id in enumerate(ids)}
    # English stop words out, sublinear counts: a long abstract that repeats a word is not more alike.
    # TfidfVectorizer's own words (2+ word characters, lowercased) read by one findall per paper: its
    # general analyzer (n-grams, preprocessor hooks) was half of the fit.
    vectorizer = TfidfVectorizer(analyzer=words, sublinear_tf=True, dtype=np.float32)
    try:
        matrix = vectorizer.fit_transform([texts[arxiv_id] for arxiv_id in ids]).tocsr()
    except ValueError:  # nothing but stop words anywhere: no paper is like another
        return None
    # Rows are L2-normalized, so a dot product is the cosine.
    cosines = matrix[[position[i] for i in day]] @ matrix[[position[i] for i in named]].T
    return cosines.toarray() if cosines.shape[0] * cosines.shape[1] <= DENSE_LIMIT else cosines.tocsr()


def add_feedback_signals(
    session: Session, rows: Sequence[dict[str, Any]], closeness: float, day_texts: Mapping[str, str] | None = None
) -> int:
    """Score the selection rows of subscribers who gave feedback; returns how many subscribers that was.

    `day_texts`: the day's papers' text as paper_texts gives it, when the caller has them loaded already.
    """
    by_subscriber = rows_by_subscriber(rows)
    tastes = load_tastes(session, by_subscriber)
    if not tastes:
        return 0
    named = {arxiv_id for taste in tastes.values() for arxiv_id in (*taste.liked, *taste.refused)}
    chosen = {row["arxiv_id"] for subscriber in tastes for row in by_subscriber[subscriber]}
    texts = dict(day_texts or {})
    texts.update(paper_texts(session, (chosen | named) - texts.keys()))
    return rank_by_taste(by_subscriber, tastes, texts, closeness)


def rows_by_subscriber(rows: Iterable[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Selection rows grouped by subscriber."""
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[row["subscriber_id"]].append(row)
    return grouped


def rank_by_taste(
    by_subscriber: Mapping[int, list[dict[str, Any]]], tastes: Mapping[int, Taste], texts: Mapping[str, str],
    closeness: float,
) -> int:
    """Fill feedback_score and feedback_band of the rows of subscribers with a taste (no database)."""
    tastes = {subscriber: taste for subscriber, taste in tastes.items() if by_subscriber.get(subscriber)}
    if not tastes:
        return 0
    named = sorted({arxiv_id for taste in tastes.values() for arxiv_id in (*taste.liked, *taste.refused)})
    chosen = sorted({row["arxiv_id"] for subscriber in tastes for row in by_subscriber[subscriber]})
    similarity = Similarity(texts, chosen, named)
    for subscriber, taste in tastes.items():
        mine = by_subscriber[subscriber]
        papers = [row["arxiv_id"] for row in mine]
        scores = similarity.closest(papers, taste.liked, taste.refused)
        for row, score in zip(mine, scores.tolist(), strict=True):
            row["feedback_score"] = score
            row["feedback_band"] = 1 if score >= closeness else -1 if score <= -closeness else 0
    return len(tastes)


def day_announcements(session: Session, day: dt.date) -> dict[str, int]:
    """The day's papers' places in arXiv's listing."""
    rows = session.execute(
        select(col(Announcement.arxiv_id), col(Announcement.announce_type)).where(col(Announcement.day) == day)
    )
    return announcement_order((arxiv_id, kind) for arxiv_id, kind in rows)
