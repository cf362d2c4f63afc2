"""The match stage: every active profile against the day's papers, nothing mailed twice."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from sqlmodel import Session

from newsletter.harvest import PaperRecord, upsert_paper
from newsletter.matching import select_papers_for_day
from newsletter.models import Announcement, Selection, SentPaper, SubscriberStatus
from newsletter.subscribers import SubscriptionError, subscribe

MONDAY = dt.date(2026, 11, 23)
TUESDAY = dt.date(2026, 11, 24)


def announce(session: Session, day: dt.date, arxiv_id: str, title: str, abstract: str, version: int = 1,
             categories: tuple[str, ...] = ("cs.LG",), announce_type: str = "new") -> None:
    upsert_paper(session, PaperRecord(
        arxiv_id=arxiv_id, version=version, title=title, abstract=abstract, authors=("A. Author",),
        categories=categories, primary_category=categories[0],
    ))
    session.add(Announcement(day=day, arxiv_id=arxiv_id, announce_type=announce_type))
    session.flush()


def selected(session: Session, day: dt.date) -> dict[str, list[tuple[str, int]]]:
    rows = session.scalars(select(Selection).where(Selection.day == day).order_by(Selection.arxiv_id)).all()
    by_subscriber: dict[str, list[tuple[str, int]]] = {}
    for row in rows:
        by_subscriber.setdefault(str(row.subscriber_id), []).append((row.arxiv_id, row.keyword_position))
    return by_subscriber


def test_each_subscriber_gets_the_papers_their_keywords_match_under_the_first_keyword(session: Session) -> None:
    ada = subscribe(session, "ada@example.org", ["diffusion policy", "reinforcement learning"], confirmed=True)
    bob = subscribe(session, "bob@example.org", ["cat:cs.RO", "multi-agent"], confirmed=True)
    paused = subscribe(session, "paused@example.org", ["reinforcement learning"], confirmed=True)
    paused.status = SubscriberStatus.PAUSED
    announce(session, TUESDAY, "2611.00001", "A Diffusion Policy for Robot Reinforcement-Learning",
             "We train diffusion policies with reinforcement learning.", categories=("cs.RO", "cs.LG"))
    announce(session, TUESDAY, "2611.00002", "Multiagent coordination", "A study of multi agent systems.")
    announce(session, TUESDAY, "2611.00003", "Unrelated", "Graph coloring bounds.")

    result = select_papers_for_day(session, TUESDAY)

    assert selected(session, TUESDAY) == {
        str(ada.id): [("2611.00001", 0)],
        str(bob.id): [("2611.00001", 0), ("2611.00002", 1)],
    }
    assert result.subscribers == 2 and result.selections == 3


def test_a_paper_mailed_once_is_not_mailed_again_when_cross_listed_or_replaced(session: Session) -> None:
    ada = subscribe(session, "ada@example.org", ["reinforcement learning"], confirmed=True)
    announce(session, MONDAY, "2611.00001", "Offline reinforcement learning", "Abstract.")
    select_papers_for_day(session, MONDAY)
    session.add(SentPaper(subscriber_id=ada.id, arxiv_id="2611.00001", day=MONDAY))
    # The next day it comes back as a cross-list with a new version, beside a new paper.
    announce(session, TUESDAY, "2611.00001", "Offline reinforcement learning", "Abstract v2.", version=2,
             announce_type="cross")
    announce(session, TUESDAY, "2611.00009", "Model-based reinforcement learning", "Abstract.")

    select_papers_for_day(session, TUESDAY)

    assert selected(session, TUESDAY) == {str(ada.id): [("2611.00009", 0)]}


def test_a_keyword_that_does_not_parse_is_refused_when_subscribing(session: Session) -> None:
    with pytest.raises(SubscriptionError, match="position"):
        subscribe(session, "ada@example.org", ["reinforcement learning", "(graph AND"])
