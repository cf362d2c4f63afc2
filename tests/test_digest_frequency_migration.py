"""Migration 0006: deliveries so far become daily periods, papers sent so far are not "updated"."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel

from newsletter.db import make_engine
from newsletter.models import Delivery, DigestFrequency, SentPaper, Subscriber
from newsletter.schema import alembic_config, foreign_keys_off
from newsletter.updates import pending_updates
from tests.conftest import pg_schema

DAY = dt.date(2026, 11, 24)


def _migrate(engine: Engine, revision: str, down: bool = False) -> None:
    config = alembic_config()
    with engine.connect() as connection, foreign_keys_off(connection), connection.begin():
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_at_0004(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
        _migrate(engine, "0004_translation_rejections")
        yield engine
        engine.dispose()
        return
    with pg_schema("m6") as url:
        engine = make_engine(url)
        _migrate(engine, "0004_translation_rejections")
        yield engine
        engine.dispose()


def _counts(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return [connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("subscriber", "subscriber_keyword", "delivery", "sent_paper")]


def test_the_migration_keys_old_deliveries_by_their_day_and_records_what_was_sent(engine_at_0004: Engine) -> None:
    with engine_at_0004.begin() as connection:
        connection.execute(text(
            "INSERT INTO subscriber (public_id, email, language, timezone, status, created_at,"
            " consecutive_hard_failures) VALUES ('p1', 'ada@example.org', 'EN-US', 'UTC', 'active', :now, 0)"
        ), {"now": dt.datetime(2026, 11, 1)})
        connection.execute(text(
            "INSERT INTO subscriber_keyword (subscriber_id, position, expression) VALUES (1, 0, 'rl')"
        ))
        connection.execute(text(
            "INSERT INTO paper (arxiv_id, version, title, abstract, authors, categories, primary_category,"
            " journal_ref, details_source, harvested_at) VALUES ('2611.00001', 2, 'T', 'A', '[]', '[]', 'cs.LG',"
            " 'J. 1 (2026)', 'api', :now)"
        ), {"now": dt.datetime(2026, 11, 1)})
        connection.execute(text(
            "INSERT INTO delivery (subscriber_id, day, status, attempts, retryable, paper_count, claimed_at)"
            " VALUES (1, :day, 'sent', 1, false, 1, :now)"
        ), {"day": DAY, "now": dt.datetime(2026, 11, 24)})
        connection.execute(text(
            "INSERT INTO sent_paper (subscriber_id, arxiv_id, day) VALUES (1, '2611.00001', :day)"
        ), {"day": DAY})

    _migrate(engine_at_0004, "head")

    # Nothing lost on the way (on SQLite a copied `subscriber` table would take its keywords with it).
    assert _counts(engine_at_0004) == [1, 1, 1, 1]
    with engine_at_0004.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []
    with Session(engine_at_0004) as session:
        (delivery,) = session.query(Delivery).all()
        assert delivery.period == DAY
        subscriber = session.get(Subscriber, 1)
        assert subscriber is not None
        assert (subscriber.frequency, subscriber.weekday, subscriber.empty_day_note, subscriber.updates) == (
            DigestFrequency.DAILY, 0, False, True)
        (sent,) = session.query(SentPaper).all()
        assert (sent.version, sent.journal_ref) == (2, "J. 1 (2026)")
        assert pending_updates(session, 1) == []  # nothing sent before the upgrade comes back as "updated"
        session.add(Delivery(subscriber_id=1, day=DAY + dt.timedelta(days=1), period=DAY))
        with pytest.raises(IntegrityError):
            session.commit()  # one digest per subscriber and period
        session.rollback()

    _migrate(engine_at_0004, "0004_translation_rejections", down=True)
    assert _counts(engine_at_0004) == [1, 1, 1, 1]
    with engine_at_0004.connect() as connection:
        assert connection.execute(text("SELECT day FROM delivery")).scalars().all() in ([DAY], [DAY.isoformat()])
