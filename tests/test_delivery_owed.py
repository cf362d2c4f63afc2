"""A day is done when its digests are: a refusing or unreachable relay leaves the run incomplete; the next resumes."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from newsletter import runs
from newsletter.config import Settings
from newsletter.delivery import claim_deliveries
from newsletter.demo import sample_transports
from newsletter.mail import SmtpBackend
from newsletter.models import Delivery, RunStatus, Subscriber, SubscriberStatus, utcnow
from newsletter.pipeline import Transports, days_to_resume, finish_day, run_daily
from newsletter.status import status_lines
from newsletter.subscribers import subscribe, unsubscribe
from tests.delivery_helpers import DAY, deliver, seed_day, smtp_settings_for
from tests.servers.smtp import SENDER_REJECTED_REPLY, SmtpSink
from tests.test_pipeline import SAMPLE_DAY, load_sample_day

READERS = {
    "ada@example.org": ["reinforcement learning"],
    "grace@example.org": ["deep learning"],
    "alan@example.org": ["large language model"],
}


def smtp_transports(settings: Settings) -> Transports:
    transports = sample_transports(settings.outbox_dir)
    transports.mail = SmtpBackend(settings)
    return transports


def seed_readers(session: Session, settings: Settings) -> None:
    for address, keywords in READERS.items():
        subscribe(session, address, keywords, confirmed=True)
    session.commit()
    load_sample_day(session, settings)


def bounced(session: Session) -> list[str]:
    return list(session.scalars(select(Subscriber.email).where(Subscriber.status == SubscriberStatus.BOUNCED)))


@pytest.fixture
def smtp_settings(engine: Engine, tmp_path: Path, smtp_sink: SmtpSink) -> Settings:
    return smtp_settings_for(engine, tmp_path, smtp_sink)


def test_a_refused_sender_leaves_the_day_incomplete_and_the_fixed_relay_sends_each_digest_once(
    session: Session, smtp_settings: Settings, smtp_sink: SmtpSink
) -> None:
    seed_readers(session, smtp_settings)
    smtp_sink.refuse("MAIL", SENDER_REJECTED_REPLY)

    refused = [run_daily(session, smtp_settings, smtp_transports(smtp_settings), SAMPLE_DAY) for _ in range(3)]

    assert [summary.status for summary in refused] == [RunStatus.INCOMPLETE] * 3
    assert "3 digests owed" in (refused[-1].reason or "") and SENDER_REJECTED_REPLY in (refused[-1].reason or "")
    assert bounced(session) == [] and smtp_sink.messages == []
    status = "\n".join(status_lines(session, smtp_settings))
    assert f"{SAMPLE_DAY}: incomplete" in status and "delivery: owed: 3 digests owed" in status

    smtp_sink.accept_all()
    fixed = run_daily(session, smtp_settings, smtp_transports(smtp_settings), SAMPLE_DAY)
    again = run_daily(session, smtp_settings, smtp_transports(smtp_settings), SAMPLE_DAY)

    assert (fixed.status, again.status) == (RunStatus.COMPLETED, RunStatus.COMPLETED)
    assert Counter(r for m in smtp_sink.messages for r in m.rcpt_tos) == Counter(list(READERS))
    assert f"{SAMPLE_DAY}: completed" in "\n".join(status_lines(session, smtp_settings))
    assert "delivery: sent" in "\n".join(status_lines(session, smtp_settings))


def test_an_unreachable_relay_is_no_success(session: Session, engine: Engine, tmp_path: Path) -> None:
    with SmtpSink() as closed:
        port = closed.port
    settings = smtp_settings_for(engine, tmp_path, closed, smtp_port=port, smtp_max_attempts=1)
    seed_readers(session, settings)

    summary = run_daily(session, settings, smtp_transports(settings), SAMPLE_DAY)

    assert summary.status == RunStatus.INCOMPLETE
    assert "3 digests owed" in (summary.reason or "") and "cannot connect" in (summary.reason or "")
    assert bounced(session) == []


def test_the_next_run_first_resumes_the_days_still_owing_digests_oldest_first(
    session: Session, smtp_settings: Settings
) -> None:
    seed_readers(session, smtp_settings)
    owing = [SAMPLE_DAY - dt.timedelta(days=n) for n in (40, 6, 1, 5)]
    for day in owing:
        runs.claim_run(session, day)
        runs.end_run(session, day, RunStatus.INCOMPLETE, "2 digests owed (2 not sent: 553 5.7.1)")
    runs.claim_run(session, SAMPLE_DAY - dt.timedelta(days=2))
    runs.end_run(session, SAMPLE_DAY - dt.timedelta(days=2), RunStatus.COMPLETED, None)

    # Beyond the catch-up window (40 days back) a day is left alone; completed days are never resumed.
    expected = [SAMPLE_DAY - dt.timedelta(days=n) for n in (6, 5, 1)]
    assert days_to_resume(session, SAMPLE_DAY) == expected
    summary = run_daily(session, smtp_settings, smtp_transports(smtp_settings), SAMPLE_DAY)

    assert [earlier.day for earlier in summary.earlier] == expected
    assert all(runs.find_run(session, day).status == RunStatus.COMPLETED for day in expected)  # type: ignore[union-attr]
    assert runs.find_run(session, owing[0]).status == RunStatus.INCOMPLETE  # type: ignore[union-attr]


def test_a_stale_claim_nobody_will_take_over_ends_the_day_naming_it_rather_than_keeping_it_running(
    session: Session, engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    addresses = seed_day(session, 3)
    runs.open_run(session, DAY, reopen_finished=False)
    ids = {s.email: s.id for s in session.scalars(select(Subscriber).where(col(Subscriber.email).in_(addresses)))}
    # A sender claimed the last reader's digest and died; the reader left before anyone took it over.
    (claim,) = claim_deliveries(session, DAY, [ids[addresses[2]]], dt.timedelta(minutes=10))
    session.execute(update(Delivery).where(col(Delivery.id) == claim.delivery_id)
                    .values(claimed_at=utcnow() - dt.timedelta(hours=1)))
    left = session.get(Subscriber, ids[addresses[2]])
    assert left is not None
    unsubscribe(left)
    session.commit()
    settings = smtp_settings_for(engine, tmp_path, smtp_sink)

    result = deliver(session, settings, subscriber_ids=[ids[address] for address in addresses[:2]])
    run = finish_day(session, DAY, lease=dt.timedelta(minutes=10))

    assert result.sent == 2
    # No sender holds the claim within its lease: the last chunk's check ends the day and names it.
    assert run is not None and run.status == RunStatus.INCOMPLETE
    assert run.reason is not None and addresses[2] in run.reason
