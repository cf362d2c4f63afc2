"""`newsletter harvest --from/--to` as an operator runs it, against the local arXiv stand-in."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import select
from sqlmodel import Session

from newsletter.db import make_engine
from newsletter.models import Announcement
from tests.servers import ArxivServer, build_feed, make_paper
from tests.test_cli import run

UTC = dt.UTC


def noon_utc(november_day: int) -> dt.datetime:
    return dt.datetime(2026, 11, november_day, 12, tzinfo=UTC)


def test_harvest_from_to_catches_up_past_days_from_the_api_and_the_current_one_from_the_feed(
    tmp_path: Path, arxiv_server: ArxivServer
) -> None:
    thursday = dt.date(2026, 11, 19)
    tuesday_paper = make_paper("2611.00020", categories=["cs.LG"], published=noon_utc(16))
    wednesday_paper = make_paper("2611.00030", categories=["cs.AI"], published=noon_utc(17))
    thursday_paper = make_paper("2611.00040", categories=["cs.AI"], published=noon_utc(18))
    arxiv_server.add_papers(tuesday_paper, wednesday_paper, thursday_paper)
    arxiv_server.set_feed(["cs.AI", "cs.LG"], build_feed(thursday, [thursday_paper]))
    env = {
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path / 'newsletter.db'}",
        "NEWSLETTER_ARXIV_FEED_URL": arxiv_server.feed_base_url,
        "NEWSLETTER_ARXIV_API_URL": arxiv_server.api_url,
        "NEWSLETTER_ARXIV_DELAY_SECONDS": "0",
        "NEWSLETTER_CATEGORIES": "cs.AI,cs.LG",
        "NEWSLETTER_REDIS_URL": "redis://127.0.0.1:1/0",  # no Redis: the database row paces the requests
    }
    assert run(["db", "upgrade"], tmp_path, **env).returncode == 0

    first = run(["harvest", "--from", "2026-11-17", "--to", "2026-11-19"], tmp_path, **env)

    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "2026-11-17: 1 announced, 0 replaced, 0 from the feed only (from api-window)",
        "2026-11-18: 1 announced, 0 replaced, 0 from the feed only (from api-window)",
        "2026-11-19: 1 announced, 0 replaced, 0 from the feed only (from feed)",
    ]
    engine = make_engine(env["NEWSLETTER_DATABASE_URL"])
    with Session(engine) as session:
        stored = session.execute(select(Announcement.day, Announcement.arxiv_id).order_by(Announcement.day)).all()
    engine.dispose()
    assert [(day.isoformat(), arxiv_id) for day, arxiv_id in stored] == [
        ("2026-11-17", "2611.00020"),
        ("2026-11-18", "2611.00030"),
        ("2026-11-19", "2611.00040"),
    ]
    api_calls = len(arxiv_server.api_requests)

    again = run(["harvest", "--from", "2026-11-17", "--to", "2026-11-19"], tmp_path, **env)

    assert again.returncode == 0, again.stderr
    assert all("already harvested" in line for line in again.stdout.splitlines())
    assert len(arxiv_server.api_requests) == api_calls


def test_harvest_of_a_day_not_announced_yet_says_so(tmp_path: Path, arxiv_server: ArxivServer) -> None:
    paper = make_paper("2611.00040", categories=["cs.AI"])
    arxiv_server.add_papers(paper)
    arxiv_server.set_feed(["cs.AI", "cs.LG"], build_feed(dt.date(2026, 11, 19), [paper]))
    env = {
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path / 'newsletter.db'}",
        "NEWSLETTER_ARXIV_FEED_URL": arxiv_server.feed_base_url,
        "NEWSLETTER_ARXIV_API_URL": arxiv_server.api_url,
        "NEWSLETTER_CATEGORIES": "cs.AI,cs.LG",
    }
    assert run(["db", "upgrade"], tmp_path, **env).returncode == 0

    result = run(["harvest", "--from", "2026-11-20", "--to", "2026-11-20"], tmp_path, **env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["2026-11-20: not announced yet (the feed shows 2026-11-19)"]
    assert arxiv_server.api_requests == []
