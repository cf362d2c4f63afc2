"""Match: every active subscriber's keyword profile against the day's papers, in one pass."""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, text
from sqlmodel import Session, col

from newsletter.keywords import KeywordIndex, PaperText
from newsletter.models import (
    Announcement,
    Delivery,
    Paper,
    Selection,
    SentPaper,
    Subscriber,
    SubscriberKeyword,
    SubscriberStatus,
)
from newsletter.ranking import (
    DEFAULT_CLOSENESS,
    add_feedback_signals,
    add_match_signals,
    day_announcements,
    tfidf_text,
)

log = logging.getLogger(__name__)


@dataclass
class MatchResult:
    """What the match stage decided for a day."""

    subscribers: int
    papers: int
    selections: int
    subscribers_with_papers: int
    processes: int = 1  # that scanned the papers
    subscribers_with_feedback: int = 0  # whose sections were ranked by their feedback too
    # Papers no keyword could be matched against, and stored keywords that no longer parse: each
    # is logged with its arXiv ID or subscriber; the rest of the day is matched as usual.
    unreadable_papers: int = 0
    invalid_keywords: int = 0


def load_profiles(session: Session) -> dict[int, list[str]]:
    """Active subscribers' keywords, in each subscriber's order."""
    rows = session.execute(
        select(col(SubscriberKeyword.subscriber_id), col(SubscriberKeyword.expression))
        .join(Subscriber, col(Subscriber.id) == col(SubscriberKeyword.subscriber_id))
        .where(col(Subscriber.status) == SubscriberStatus.ACTIVE)
        .order_by(col(SubscriberKeyword.subscriber_id), col(SubscriberKeyword.position))
    )
    profiles: dict[int, list[str]] = defaultdict(list)
    for subscriber_id, expression in rows:
        profiles[subscriber_id].append(expression)
    return dict(profiles)


def keys_anyone_matches(session: Session, papers: Iterable[PaperText]) -> set[str]:
    """The keys of the papers some active subscriber's keywords match (the harvest then fetches only those)."""
    selected = KeywordIndex.build(load_profiles(session).items()).select(papers)
    return {key for per_keyword in selected.values() for hits in per_keyword for key in hits}


def paper_text(paper: Paper) -> PaperText:
    """The fields keywords are matched against."""
    return PaperText(
        key=paper.arxiv_id,
        title=paper.title,
        abstract=paper.abstract,
        authors=tuple(paper.authors),
        categories=tuple(paper.categories),
    )


def select_papers_for_day(
    session: Session, day: dt.date, processes: int = 1, closeness: float = DEFAULT_CLOSENESS
) -> MatchResult:
    """Replace the day's selections with what every profile matches, ranked (caller commits).

    `processes` > 1 lets the engine scan shares of the papers in forked processes. `closeness` is the
    TF-IDF cosine margin that puts a paper in a feedback band (newsletter.ranking).
    """
    profiles = load_profiles(session)
    index = KeywordIndex.build(profiles.items())
    for subscriber_id, position, error in index.invalid:
        log.warning("subscriber %s: keyword %d skipped, it no longer parses: %s", subscriber_id, position + 1, error)
    papers = session.scalars(
        select(Paper)
        .join(Announcement, col(Announcement.arxiv_id) == col(Paper.arxiv_id))
        .where(col(Announcement.day) == day)
    ).all()
    selected = index.select(map(paper_text, papers), processes)
    chosen = _new_selections(selected, day, _sent_before(session, day), _claimed(session, day))
    rows = list(chosen.values())
    with_feedback = _rank(session, day, index, papers, rows, closeness)
    _replace_selections(session, day, rows)
    # Counted over the whole day, so a rerun that kept claimed digests' selections reports them too.
    totals = session.execute(
        select(func.count(), func.count(func.distinct(col(Selection.subscriber_id)))).where(col(Selection.day) == day)
    ).one()
    return MatchResult(
        subscribers=len(profiles),
        papers=len(papers),
        selections=int(totals[0]),
        subscribers_with_papers=int(totals[1]),
        processes=index.processes_used or 1,
        subscribers_with_feedback=with_feedback,
        unreadable_papers=len(index.unreadable),
        invalid_keywords=len(index.invalid),
    )


def _rank(
    session: Session, day: dt.date, index: KeywordIndex[int], papers: Sequence[Paper], rows: list[dict[str, Any]],
    closeness: float,
) -> int:
    """Fill the rows' rank signals (newsletter.ranking); returns how many subscribers' feedback ranked them."""
    chosen_ids = {row["arxiv_id"] for row in rows}
    titles = index.title_labels(paper_text(paper) for paper in papers if paper.arxiv_id in chosen_ids)
    add_match_signals(rows, titles, day_announcements(session, day))
    day_texts = {paper.arxiv_id: tfidf_text(paper.title, paper.abstract) for paper in papers}
    return add_feedback_signals(session, rows, closeness, day_texts)


def _sent_before(session: Session, day: dt.date) -> set[tuple[int, str]]:
    """(subscriber, paper) pairs of the day's papers already mailed on another day."""
    day_ids = select(col(Announcement.arxiv_id)).where(col(Announcement.day) == day)
    rows = session.execute(
        select(col(SentPaper.subscriber_id), col(SentPaper.arxiv_id)).where(
            col(SentPaper.day) != day, col(SentPaper.arxiv_id).in_(day_ids)
        )
    )
    return {(subscriber, arxiv_id) for subscriber, arxiv_id in rows}


def _claimed(session: Session, day: dt.date) -> set[int]:
    """Subscribers whose digest for the day is claimed: it keeps the selection it was built from."""
    return {s for s in session.scalars(select(col(Delivery.subscriber_id)).where(col(Delivery.day) == day)) if s}


def _new_selections(
    selected: Mapping[int, Sequence[Mapping[str, frozenset[str]]]],
    day: dt.date,
    already_sent: set[tuple[int, str]],
    claimed: set[int],
) -> dict[tuple[int, str], dict[str, Any]]:
    """The selection rows to write: a paper goes under the first keyword that found it, with every keyword's words."""
    chosen: dict[tuple[int, str], dict[str, Any]] = {}
    for subscriber, sections in selected.items():
        if subscriber in claimed:
            continue
        for position, hits in enumerate(sections):
            for arxiv_id, terms in hits.items():
                key = (subscriber, arxiv_id)
                if key in already_sent:
                    continue
                existing = chosen.get(key)
                if existing is None:
                    chosen[key] = {"day": day, "subscriber_id": subscriber, "arxiv_id": arxiv_id,
                                   "keyword_position": position, "terms": sorted(terms)}  # fmt: skip
                else:
                    existing["terms"] = sorted(set(existing["terms"]) | terms)
    return chosen


def _replace_selections(session: Session, day: dt.date, rows: list[dict[str, Any]]) -> None:
    """Delete the day's unclaimed selections and insert `rows`."""
    session.execute(
        delete(Selection).where(
            col(Selection.day) == day,
            col(Selection.subscriber_id).not_in(
                select(col(Delivery.subscriber_id)).where(
                    col(Delivery.day) == day, col(Delivery.subscriber_id).is_not(None)
                )
            ),
        )
    )
    # One executemany instead of an ORM object per row: a large list has 100,000s of selections.
    for start in range(0, len(rows), 5000):
        session.execute(insert(Selection), rows[start : start + 5000])
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        # The next stages join these rows at once; with the statistics of the table before the
        # insert, PostgreSQL planned a nested loop that took 30 s instead of 0.3 s on a large day.
        session.execute(text("ANALYZE selection, subscriber"))
