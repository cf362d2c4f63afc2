"""Starting a day: once, however many beats tick at the same moment; and when beat ticks."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.models import Run, RunStatus
from tests.conftest import WORKER_REDIS_URL, claim_test_redis, make_settings
from tests.servers import ArxivServer, build_empty_feed, build_feed, make_paper
from workers.schedule import in_poll_window, poll_crontab
from workers.trigger import start_day

DAY = dt.date(2026, 11, 24)
REDIS_DB_URL = WORKER_REDIS_URL


@pytest.fixture
def trigger_settings(pg_engine: Engine, arxiv_server: ArxivServer, tmp_path: Path) -> Settings:
    claim_test_redis(REDIS_DB_URL)
    return make_settings(
        pg_engine.url.render_as_string(hide_password=False),
        tmp_path,
        redis_url=REDIS_DB_URL,
        arxiv_feed_url=arxiv_server.feed_base_url,
        categories=["cs.AI"],
    )


def test_two_beats_ticking_at_once_start_the_day_once(pg_engine: Engine, trigger_settings: Settings) -> None:
    enqueued: list[dt.date] = []
    outcomes: list[bool] = []
    together = threading.Barrier(4)

    def tick() -> None:
        with Session(pg_engine, expire_on_commit=False) as session:
            together.wait()
            started = start_day(session, trigger_settings, DAY, reopen_finished=False, enqueue=enqueued.append)
            outcomes.append(started.started)

    ticks = [threading.Thread(target=tick) for _ in range(4)]
    for thread in ticks:
        thread.start()
    for thread in ticks:
        thread.join(timeout=60)

    assert sorted(outcomes) == [False, False, False, True]
    assert enqueued == [DAY]
    with Session(pg_engine) as session:
        assert [run.status for run in session.scalars(select(Run))] == [RunStatus.RUNNING]


def test_a_failed_day_starts_again_on_the_next_tick_and_a_completed_one_only_when_asked(
    pg_engine: Engine, trigger_settings: Settings
) -> None:
    enqueued: list[dt.date] = []
    with Session(pg_engine, expire_on_commit=False) as session:
        session.add(Run(day=DAY, status=RunStatus.FAILED, reason="arXiv answered HTTP 503"))
        session.commit()
        assert start_day(session, trigger_settings, DAY, reopen_finished=False, enqueue=enqueued.append).started
        run = session.scalars(select(Run).execution_options(populate_existing=True)).one()
        assert (run.status, run.reason) == (RunStatus.RUNNING, None)

        run.status = RunStatus.COMPLETED
        session.commit()
        assert not start_day(session, trigger_settings, DAY, reopen_finished=False, enqueue=enqueued.append).started
        assert start_day(session, trigger_settings, DAY, reopen_finished=True, enqueue=enqueued.append).started
    assert enqueued == [DAY, DAY]


def test_a_tick_first_resumes_earlier_days_that_still_owe_digests_oldest_first(
    pg_engine: Engine, trigger_settings: Settings
) -> None:
    enqueued: list[dt.date] = []
    owing = "3 digests owed (3 not sent: 553 5.7.1 Sender address rejected (at MAIL FROM))"
    with Session(pg_engine, expire_on_commit=False) as session:
        session.add_all([
            Run(day=DAY - dt.timedelta(days=1), status=RunStatus.INCOMPLETE, reason=owing),
            Run(day=DAY - dt.timedelta(days=6), status=RunStatus.INCOMPLETE, reason=owing),
            Run(day=DAY - dt.timedelta(days=2), status=RunStatus.COMPLETED),
            Run(day=DAY - dt.timedelta(days=60), status=RunStatus.INCOMPLETE, reason=owing),  # past the window
        ])  # fmt: skip
        session.commit()

        started = start_day(session, trigger_settings, DAY, reopen_finished=False, enqueue=enqueued.append)

    assert started.started
    assert enqueued == [DAY - dt.timedelta(days=6), DAY - dt.timedelta(days=1), DAY]
    assert started.resumed == (DAY - dt.timedelta(days=6), DAY - dt.timedelta(days=1))


def test_a_tick_reads_the_day_from_the_feed_and_starts_nothing_without_announcement(
    pg_engine: Engine, trigger_settings: Settings, arxiv_server: ArxivServer
) -> None:
    enqueued: list[dt.date] = []
    with Session(pg_engine, expire_on_commit=False) as session:
        arxiv_server.set_feed("cs.AI", build_empty_feed(dt.date(2026, 11, 28), ["cs.AI"]))
        quiet = start_day(session, trigger_settings, None, reopen_finished=False, enqueue=enqueued.append)
        arxiv_server.set_feed("cs.AI", build_feed(DAY, [make_paper("2611.00001")], ["cs.AI"]))
        announced = start_day(session, trigger_settings, None, reopen_finished=False, enqueue=enqueued.append)

    assert (quiet.day, quiet.started) == (None, False)
    assert "no announcement" in (quiet.reason or "")
    assert (announced.day, announced.started) == (DAY, True)
    assert enqueued == [DAY]


def test_ticks_on_an_unchanged_feed_cost_one_304_each_and_the_run_records_when_the_feed_showed_the_day(
    pg_engine: Engine, trigger_settings: Settings, arxiv_server: ArxivServer
) -> None:
    enqueued: list[dt.date] = []
    arxiv_server.set_feed("cs.AI", build_feed(DAY, [make_paper("2611.00001")], ["cs.AI"]))
    with Session(pg_engine, expire_on_commit=False) as session:
        before = dt.datetime.now(dt.UTC)
        ticks = [start_day(session, trigger_settings, None, reopen_finished=False, enqueue=enqueued.append)
                 for _ in range(3)]
        run = session.scalars(select(Run).execution_options(populate_existing=True)).one()

    assert [tick.started for tick in ticks] == [True, False, False]
    assert [tick.day for tick in ticks] == [DAY, DAY, DAY]
    assert enqueued == [DAY]
    assert arxiv_server.feed_statuses == [200, 304, 304]
    assert [bool(r.headers.get("if-none-match")) for r in arxiv_server.feed_requests] == [False, True, True]
    assert run.feed_seen_at is not None and before <= run.feed_seen_at <= dt.datetime.now(dt.UTC)


def test_beat_polls_every_two_minutes_from_the_announcement_evening_to_early_morning(tmp_path: Path) -> None:
    settings = make_settings("sqlite://", tmp_path)
    schedule = poll_crontab(settings)

    assert schedule.hour == {20, 21, 22, 23, 0, 1, 2, 3, 4}
    assert schedule.minute == set(range(0, 60, 2))
    start, end = settings.beat_poll_start, settings.beat_poll_end
    assert [in_poll_window(dt.time(h, m), start, end) for h, m in [(20, 0), (20, 30), (23, 30), (4, 0), (4, 30)]] == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert not in_poll_window(dt.time(12, 0), start, end)
