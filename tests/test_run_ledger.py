"""The run ledger: typed run state and run_stage rows, and the migration that carries old runs over."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from newsletter import runs
from newsletter.db import make_engine
from newsletter.models import Run, RunStatus, Stage
from newsletter.schema import alembic_config
from tests.conftest import pg_schema

DAY = dt.date(2026, 11, 24)
MISSED = dt.date(2026, 11, 23)

# A completed run as the JSON-stats code recorded it, caught-up day included.
OLD_COMPLETED_STATS = {
    "harvest": {"announced": 20, "replaced": 1, "from_feed_only": 0, "skipped_items": 0, "source": "feed",
                "caught_up": [MISSED.isoformat()]},
    "match": {"subscribers": 3, "papers": 20, "selections": 7, "subscribers_with_papers": 2, "processes": 1},
    "translate": {"translated": 5, "billed_characters": 900, "requests": 2, "rejected": 0, "missing": {},
                  "error": None},
    "fanout": {"recipients": 2, "queued": 2, "chunks": 1, "started_at": "2026-11-24T21:00:05+00:00"},
    "enqueued": {"chunks": 1},
    "deliver": {"recipients": 2, "sent": 1, "failed": 1, "claimed": 0},
    "seconds": {"harvest": 4.5, "match": 0.25, "translate": 1.5, "enqueued": 0.01, "deliver": 3.0, "total": 9.5},
}
OLD_FAILED_STATS = {
    "harvest_failures": 2,
    "last_harvest_failure": {"at": "2026-11-23T22:15:00+00:00", "reason": "arXiv answered HTTP 503"},
}


def _migrate(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _insert_old_run(engine: Engine, day: dt.date, status: str, reason: str | None, stats: dict) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO run (day, status, reason, started_at, finished_at, stats, billed_characters,"
                " harvested_at) VALUES (:day, :status, :reason, :started, :finished, :stats, 900, :harvested)"
            ),
            {
                "day": day,
                "status": status,
                "reason": reason,
                "started": dt.datetime(2026, 11, 24, 21, 0, 0),
                "finished": dt.datetime(2026, 11, 24, 21, 0, 10),
                "harvested": dt.datetime(2026, 11, 24, 21, 0, 4) if status == "completed" else None,
                "stats": json.dumps(stats),
            },
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_at_0001(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    """An empty database migrated only to 0001, the schema with run.stats."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
        _migrate(engine, "0001")
        yield engine
        engine.dispose()
        return
    with pg_schema("m") as url:
        engine = make_engine(url)
        _migrate(engine, "0001")
        yield engine
        engine.dispose()


def test_the_migration_carries_old_json_stats_into_typed_columns_and_stage_rows(engine_at_0001: Engine) -> None:
    _insert_old_run(engine_at_0001, DAY, "completed", "1 deliveries failed", OLD_COMPLETED_STATS)
    _insert_old_run(engine_at_0001, MISSED, "failed", "harvest failed: arXiv answered HTTP 503", OLD_FAILED_STATS)

    _migrate(engine_at_0001, "head")

    with Session(engine_at_0001) as session:
        run = session.scalars(select(Run).where(Run.day == DAY)).one()
        missed = session.scalars(select(Run).where(Run.day == MISSED)).one()
        stages = runs.stage_rows(session, run)
        assert list(stages) == list(Stage)
        assert stages[Stage.HARVEST].announced == 20 and stages[Stage.HARVEST].details["replaced"] == 1
        assert stages[Stage.MATCH].selections == 7 and stages[Stage.MATCH].seconds == 0.25
        assert stages[Stage.TRANSLATE].translated == 5
        deliver = stages[Stage.DELIVER]
        assert (deliver.recipients, deliver.queued, deliver.sent, deliver.failed, deliver.pending) == (2, 2, 1, 1, 0)
        assert deliver.started_at == dt.datetime(2026, 11, 24, 21, 0, 5, tzinfo=dt.UTC)
        assert deliver.enqueued_at is not None and deliver.finished_at is not None
        assert runs.stage_seconds(session, run) == {
            "harvest": 4.5, "match": 0.25, "translate": 1.5, "deliver": 3.0, "total": 10.0,
        }
        assert run.status == RunStatus.COMPLETED and run.failed_stage is None and not run.caught_up
        # The day the JSON listed under harvest.caught_up is marked so; its failures are typed.
        assert missed.caught_up and missed.failed_stage == Stage.HARVEST
        assert missed.harvest_failures == 2 and missed.last_harvest_failure == "arXiv answered HTTP 503"
        assert missed.last_harvest_failure_at == dt.datetime(2026, 11, 23, 22, 15, tzinfo=dt.UTC)
        assert runs.stage_rows(session, missed) == {}


def test_the_migration_downgrades_back_to_json_stats(engine_at_0001: Engine) -> None:
    _insert_old_run(engine_at_0001, DAY, "completed", None, OLD_COMPLETED_STATS)
    _migrate(engine_at_0001, "head")
    config = alembic_config()
    with engine_at_0001.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")

    with engine_at_0001.connect() as connection:
        raw = connection.execute(text("SELECT stats FROM run")).scalar_one()
    stats = raw if isinstance(raw, dict) else json.loads(raw)
    assert stats["match"]["selections"] == 7 and stats["deliver"]["claimed"] == 0
    assert stats["seconds"]["harvest"] == 4.5


def test_a_reopened_run_keeps_its_harvest_and_records_every_later_stage_again(session: Session) -> None:
    runs.mark_harvested(session, DAY, 12, {"source": "feed"})
    session.commit()
    runs.record_stage(session, DAY, Stage.MATCH, 0.5, {"papers": 12}, selections=3)
    runs.start_delivery(session, DAY, recipients=2, queued=2, chunks=1)
    run = runs.locked_run(session, DAY)
    assert run is not None
    runs.finish_run(session, run)
    assert runs.run_progress(session, DAY).status == RunStatus.COMPLETED

    assert runs.open_run(session, DAY, reopen_finished=True)

    run = runs.find_run(session, DAY)
    assert run is not None and run.status == RunStatus.RUNNING
    assert list(runs.stage_rows(session, run)) == [Stage.HARVEST]
    assert runs.stage_rows(session, run)[Stage.HARVEST].announced == 12
    assert runs.run_progress(session, DAY).stage == Stage.MATCH
    assert not runs.stage_finished(session, DAY, Stage.MATCH)


def test_a_failed_stage_is_recorded_with_its_reason_and_a_second_run_takes_the_day_again(session: Session) -> None:
    runs.claim_run(session, DAY)
    runs.fail_run(session, DAY, "translate failed: DeepLException: quota", Stage.TRANSLATE)

    run = runs.find_run(session, DAY)
    assert run is not None
    assert (run.status, run.failed_stage) == (RunStatus.FAILED, Stage.TRANSLATE)
    assert run.reason == "translate failed: DeepLException: quota"
    assert runs.open_run(session, DAY, reopen_finished=False)
    run = runs.find_run(session, DAY)
    assert run is not None and (run.status, run.failed_stage, run.reason) == (RunStatus.RUNNING, None, None)


def test_a_run_that_failed_in_match_beside_the_harvest_stays_failed_when_the_details_are_stored(
    session: Session,
) -> None:
    runs.claim_run(session, DAY)
    runs.fail_run(session, DAY, "match failed: OperationalError: disk full", Stage.MATCH)

    runs.mark_harvested(session, DAY, 12, {"source": "feed"}, reopen_failed=False)
    session.commit()

    run = runs.find_run(session, DAY)
    assert run is not None and run.harvested_at is not None
    assert (run.status, run.failed_stage) == (RunStatus.FAILED, Stage.MATCH)
    assert not runs.ready_for_delivery(session, DAY)


def test_a_missed_day_caught_up_after_a_failed_attempt_runs_its_stages_again(session: Session) -> None:
    # An attempt matched and translated the feed's text, then its harvest failed for good.
    runs.claim_run(session, MISSED)
    runs.record_stage(session, MISSED, Stage.MATCH, 0.5, selections=3)
    runs.record_stage(session, MISSED, Stage.TRANSLATE, 0.5, translated=2)
    runs.fail_run(session, MISSED, "harvest failed: arXiv answered HTTP 503", Stage.HARVEST)

    # A later day's harvest catches it up from the API.
    runs.mark_harvested(session, MISSED, 12, {"source": "api-window"})
    session.commit()

    run = runs.find_run(session, MISSED)
    assert run is not None and (run.status, run.failed_stage) == (RunStatus.RUNNING, None)
    # Its selections are made again from the stored papers, not kept from the failed attempt.
    assert list(runs.stage_rows(session, run)) == [Stage.HARVEST]
    assert not runs.stage_finished(session, MISSED, Stage.MATCH)


def test_the_fan_out_waits_for_both_the_details_and_the_translations(session: Session) -> None:
    runs.claim_run(session, DAY)
    runs.record_stage(session, DAY, Stage.TRANSLATE, 0.1, translated=3)
    assert not runs.ready_for_delivery(session, DAY)  # translated, details not in yet

    runs.mark_harvested(session, DAY, 12, {"source": "feed"})
    session.commit()
    assert runs.ready_for_delivery(session, DAY)

    runs.mark_enqueued(session, DAY)
    assert not runs.ready_for_delivery(session, DAY)


def test_a_run_with_no_match_completes_saying_so(session: Session) -> None:
    runs.claim_run(session, DAY)
    runs.record_stage(session, DAY, Stage.MATCH, 0.1, selections=0)
    run = runs.locked_run(session, DAY)
    assert run is not None

    finished = runs.finish_run(session, run)

    assert finished.reason == "no paper matched any subscriber's keywords"
    deliver = runs.stage_rows(session, finished)[Stage.DELIVER]
    assert (deliver.recipients, deliver.sent, deliver.failed) == (0, 0, 0)
