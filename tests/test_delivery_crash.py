"""Exactly once through crashes and concurrency: two senders on one day, a sender killed mid-list."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.delivery import CLAIM_LEASE, DeliveryResult, claim_delivery, owed_digests
from newsletter.models import Delivery, DeliveryStatus, Subscriber
from tests.delivery_helpers import DAY, deliver, seed_day, smtp_settings_for
from tests.servers.smtp import SmtpSink

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def arrivals(sink: SmtpSink) -> Counter[str]:
    return Counter(r for message in sink.messages for r in message.rcpt_tos)


def statuses(session: Session) -> Counter[str]:
    return Counter(
        dict(session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all())  # type: ignore[arg-type]
    )


def test_two_senders_on_the_same_day_send_each_digest_once(
    pg_engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    with Session(pg_engine, expire_on_commit=False) as session:
        addresses = seed_day(session, 30)
    settings = smtp_settings_for(pg_engine, tmp_path, smtp_sink)
    start = threading.Barrier(2)
    results: list[DeliveryResult] = []

    def sender() -> None:
        with Session(pg_engine, expire_on_commit=False) as session:
            start.wait()
            results.append(deliver(session, settings))

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert arrivals(smtp_sink) == Counter(addresses)
    assert sum(r.sent for r in results) == 30
    assert sum(r.skipped for r in results) == 30


def test_a_claim_within_its_lease_is_left_to_its_sender_and_taken_over_after(
    session: Session, engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    addresses = seed_day(session, 3)
    first_id = session.scalars(select(Subscriber.id).where(Subscriber.email == addresses[0])).one()
    # A sender claimed the first digest and then died before sending it.
    assert claim_delivery(session, first_id, DAY) is not None

    rerun = deliver(session, smtp_settings_for(engine, tmp_path, smtp_sink))
    assert (rerun.sent, rerun.skipped) == (2, 1)
    assert arrivals(smtp_sink)[addresses[0]] == 0

    after_lease = deliver(session, smtp_settings_for(engine, tmp_path, smtp_sink, delivery_claim_lease_seconds=0))
    assert after_lease.sent == 1
    assert arrivals(smtp_sink) == Counter(addresses)


def wait_for_drop(sink: SmtpSink, process: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Until the sink has dropped the sender's connection (the sender then backs off for a long time)."""
    deadline = time.monotonic() + timeout
    while not any(event.reply == "DROP" for event in sink.events):
        if process.poll() is not None:
            raise AssertionError(f"the sender ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no drop after {len(sink.messages)} messages")
        time.sleep(0.02)


def start_sender(
    engine: Engine, sink: SmtpSink, tmp_path: Path, **environment: str
) -> subprocess.Popen[str]:
    """tests.delivery_helpers delivering the day in its own process, backing off 30 s after a failed send."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.delivery_helpers", engine.url.render_as_string(hide_password=False),
         str(sink.port), DAY.isoformat(), "30", str(tmp_path / "outbox")],
        cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **environment}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.kill()
    process.communicate()
    assert process.returncode == -signal.SIGKILL


def wait_for_sent_rows(engine: Engine, count: int, process: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """Until `count` deliveries are recorded as sent (outcomes are written every few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        with Session(engine) as session:
            if statuses(session)[DeliveryStatus.SENT] >= count:
                return
        if process.poll() is not None:
            raise AssertionError(f"the sender ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} deliveries recorded as sent")
        time.sleep(0.05)


def message_ids_per_address(sink: SmtpSink) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = {}
    for received in sink.messages:
        for recipient in received.rcpt_tos:
            ids.setdefault(recipient, set()).add(str(received.message["Message-ID"]))
    return ids


def test_a_sender_killed_mid_list_is_resumed_and_each_subscriber_gets_one_digest(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    with Session(engine, expire_on_commit=False) as session:
        addresses = seed_day(session, 12)
    # After 5 messages the sink cuts the line at RCPT; the sender backs off 30 s with the rest claimed.
    smtp_sink.drop_after(5, stage="RCPT")
    process = start_sender(engine, smtp_sink, tmp_path, NEWSLETTER_SMTP_POOL_SIZE="1",
                           NEWSLETTER_DELIVERY_RECORD_SECONDS="0.5")  # fmt: skip
    try:
        wait_for_drop(smtp_sink, process)
        # Waiting on its retry, the sender still records what was accepted, within the record interval.
        wait_for_sent_rows(engine, 5, process)
    finally:
        kill(process)

    with Session(engine, expire_on_commit=False) as session:
        assert len(smtp_sink.messages) == 5
        # The batch claimed all 12 at once: the 7 not sent wait for the killed sender's lease.
        assert statuses(session) == Counter({DeliveryStatus.SENT: 5, DeliveryStatus.CLAIMED: 7})

        # The operator reruns the day once the killed sender's lease is over (0 s here).
        settings = smtp_settings_for(engine, tmp_path, smtp_sink, delivery_claim_lease_seconds=0)
        rerun = deliver(session, settings)

        assert (rerun.sent, rerun.skipped, rerun.failed) == (7, 5, 0)
        assert arrivals(smtp_sink) == Counter(addresses)
        assert statuses(session) == Counter({DeliveryStatus.SENT: 12})


def test_a_sender_killed_before_recording_resends_at_most_the_stated_window_with_the_same_message_ids(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    with Session(engine, expire_on_commit=False) as session:
        addresses = seed_day(session, 30)
    # Outcomes recorded every 10 messages (and not by time): killed after 25 accepted, 5 are unrecorded.
    smtp_sink.drop_after(25, stage="RCPT")
    process = start_sender(engine, smtp_sink, tmp_path, NEWSLETTER_DELIVERY_BATCH_SIZE="10",
                           NEWSLETTER_SMTP_POOL_SIZE="2", NEWSLETTER_DELIVERY_RECORD_SECONDS="300")  # fmt: skip
    try:
        wait_for_drop(smtp_sink, process)
    finally:
        kill(process)
    with Session(engine, expire_on_commit=False) as session:
        recorded = statuses(session)[DeliveryStatus.SENT]
        settings = smtp_settings_for(engine, tmp_path, smtp_sink, delivery_claim_lease_seconds=0)
        rerun = deliver(session, settings)
        assert statuses(session) == Counter({DeliveryStatus.SENT: 30})

    copies = arrivals(smtp_sink)
    assert set(copies) == set(addresses)
    resent = [address for address, count in copies.items() if count > 1]
    assert all(count <= 2 for count in copies.values())
    # The window the README states: at most batch size + pool size accepted digests without a record.
    assert 25 - recorded == len(resent) <= 10 + 2
    assert rerun.sent == 30 - recorded
    # A resent digest is the same message to the receiving server, which may drop the repeat.
    assert all(len(ids) == 1 for ids in message_ids_per_address(smtp_sink).values())


def test_after_a_crash_the_owed_digest_is_named_with_the_end_of_its_claim_lease(
    session: Session, engine: Engine
) -> None:
    addresses = seed_day(session, 2)
    first_id = session.scalars(select(Subscriber.id).where(Subscriber.email == addresses[0])).one()
    claimed = claim_delivery(session, first_id, DAY)  # its sender died before sending
    assert claimed is not None and claimed.claimed_at is not None

    owed = owed_digests(session, DAY, CLAIM_LEASE)

    lease_end = claimed.claimed_at + CLAIM_LEASE
    assert owed.claimed == [(addresses[0], lease_end)]
    assert owed.never_tried == 1
    line = owed.describe()
    assert f"waiting for their claim lease: {addresses[0]} until {lease_end:%Y-%m-%d %H:%M} UTC" in line
    assert "another worker" not in line
