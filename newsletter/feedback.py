"""Feedback: a subscriber's "more like this" / "not for me" on papers they were sent, through signed links.

The verdicts are read by the match stage (newsletter.ranking) to order later digests; the manage page
lists them and clears them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, exists, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from newsletter.atom import feed_url_for
from newsletter.config import Settings
from newsletter.models import (
    FeedbackVerdict,
    Paper,
    PaperFeedback,
    Selection,
    SentPaper,
    Subscriber,
    SubscriberStatus,
    table_of,
    utcnow,
)
from newsletter.subscribers import subscriber_by_claims
from newsletter.tokens import LinkSigner, Purpose

ARXIV_ID_LENGTH = 40  # Paper.arxiv_id's column


class NotFeedbackTarget(Exception):
    """The link names a verdict we do not know, or a paper the subscriber was never sent."""


@dataclass(frozen=True)
class FeedbackRequest:
    """What a valid feedback link asks: this subscriber's verdict on this paper."""

    subscriber: Subscriber
    arxiv_id: str
    title: str
    verdict: FeedbackVerdict


@dataclass(frozen=True)
class FeedbackEntry:
    """A verdict as the manage page lists it."""

    arxiv_id: str
    title: str
    verdict: FeedbackVerdict
    created_at: dt.datetime


def feedback_request(session: Session, signer: LinkSigner, token: str, verdict: str, arxiv_id: str) -> FeedbackRequest:
    """What a feedback link asks; InvalidToken for a bad link, NotFeedbackTarget for a paper not theirs."""
    subscriber = subscriber_by_claims(session, signer.read_short(token, Purpose.FEEDBACK))
    try:
        wanted = FeedbackVerdict(verdict)
        # What could not be a stored ID (a NUL byte, which PostgreSQL refuses, say) never reaches a query.
        if not 0 < len(arxiv_id) <= ARXIV_ID_LENGTH or not arxiv_id.isprintable() or arxiv_id.strip() != arxiv_id:
            raise ValueError(arxiv_id)
    except ValueError as exc:
        raise NotFeedbackTarget(f"no verdict {verdict!r} or no arXiv ID {arxiv_id!r}") from exc
    # Only papers the subscriber was sent (or selected for, as the archive and preview show them).
    received = exists().where(col(SentPaper.subscriber_id) == subscriber.id, col(SentPaper.arxiv_id) == arxiv_id)
    selected = exists().where(col(Selection.subscriber_id) == subscriber.id, col(Selection.arxiv_id) == arxiv_id)
    title = session.scalar(select(col(Paper.title)).where(col(Paper.arxiv_id) == arxiv_id, received | selected))
    if title is None:
        raise NotFeedbackTarget(f"{arxiv_id}: not a paper this subscriber received")
    return FeedbackRequest(subscriber, arxiv_id, title, wanted)


def record_feedback(session: Session, request: FeedbackRequest) -> None:
    """Store the verdict (replacing an earlier one on the same paper) and commit."""
    values = {"subscriber_id": request.subscriber.id, "arxiv_id": request.arxiv_id,
              "verdict": request.verdict.value, "created_at": utcnow()}
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(table_of(PaperFeedback)).values(values)
    # An upsert: two clicks racing (or a second verdict) never fail on the primary key.
    session.execute(statement.on_conflict_do_update(
        index_elements=["subscriber_id", "arxiv_id"],
        set_={"verdict": statement.excluded.verdict, "created_at": statement.excluded.created_at},
    ))
    session.commit()


def feedback_of(session: Session, subscriber_id: int) -> list[FeedbackEntry]:
    """The subscriber's verdicts, newest first."""
    rows = session.execute(
        select(col(PaperFeedback.arxiv_id), col(Paper.title), col(PaperFeedback.verdict), col(PaperFeedback.created_at))
        .join(Paper, col(Paper.arxiv_id) == col(PaperFeedback.arxiv_id))
        .where(col(PaperFeedback.subscriber_id) == subscriber_id)
        .order_by(col(PaperFeedback.created_at).desc(), col(PaperFeedback.arxiv_id))
    )
    return [FeedbackEntry(arxiv_id, title, FeedbackVerdict(verdict), at) for arxiv_id, title, verdict, at in rows]


def clear_feedback(session: Session, subscriber_id: int, arxiv_id: str | None = None) -> None:
    """Forget one verdict, or all of them (`arxiv_id` None), and commit."""
    statement = delete(PaperFeedback).where(col(PaperFeedback.subscriber_id) == subscriber_id)
    if arxiv_id is not None:
        statement = statement.where(col(PaperFeedback.arxiv_id) == arxiv_id)
    session.execute(statement)
    session.commit()


@dataclass(frozen=True)
class PersonalSection:
    """The manage page's private feed URL (none while unsubscribed) and the verdicts given."""

    feed_url: str | None
    feedback: list[FeedbackEntry]


def personal_section(
    session: Session, settings: Settings, signer: LinkSigner, subscriber: Subscriber
) -> PersonalSection:
    """What the manage page shows of the feed and the feedback."""
    assert subscriber.id is not None
    left = subscriber.status == SubscriberStatus.UNSUBSCRIBED
    feed_url = None if left else feed_url_for(settings, subscriber, signer)
    return PersonalSection(feed_url, feedback_of(session, subscriber.id))
