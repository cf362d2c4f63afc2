"""Faults on a real SMTP server: 451 then 250, 550 for one address, dropped connections, bounces, whose fault."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.delivery import owed_digests
from newsletter.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus
from newsletter.status import status_lines
from tests.delivery_helpers import DAY, deliver, seed_day, smtp_settings_for
from tests.servers.smtp import (
    MESSAGE_REFUSED_REPLY,
    NO_SUCH_USER_REPLY,
    SENDER_REJECTED_REPLY,
    TEMP_FAIL_REPLY,
    SmtpSink,
)


@pytest.fixture
def smtp_settings(engine: Engine, tmp_path: Path, smtp_sink: SmtpSink) -> Settings:
    return smtp_settings_for(engine, tmp_path, smtp_sink)


def arrivals(sink: SmtpSink) -> Counter[str]:
    return Counter(r for message in sink.messages for r in message.rcpt_tos)


def delivery_of(session: Session, address: str, day: dt.date = DAY) -> Delivery:
    return session.scalars(
        select(Delivery)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Subscriber.email == address, Delivery.day == day)
        .execution_options(populate_existing=True)
    ).one()


def subscriber_of(session: Session, address: str) -> Subscriber:
    return session.scalars(
        select(Subscriber).where(Subscriber.email == address).execution_options(populate_existing=True)
    ).one()


@pytest.mark.parametrize("stage", ["RCPT", "DATA"])
def test_a_451_is_retried_and_the_digest_arrives_once(
    session: Session, smtp_settings: Settings, smtp_sink: SmtpSink, stage: str
) -> None:
    addresses = seed_day(session, 4)
    smtp_sink.temp_fail_first(1, stage=stage)  # type: ignore[arg-type]

    # One session, so the first digest is the one that meets the "later".
    result = deliver(session, smtp_settings.model_copy(update={"smtp_pool_size": 1}))

    assert result.sent == 4 and result.failed == 0
    assert arrivals(smtp_sink) == Counter(addresses)
    replies = [event.reply for event in smtp_sink.events if event.verb == stage]
    assert replies[:2] == [TEMP_FAIL_REPLY, "250 OK"]
    assert delivery_of(session, addresses[0]).attempts == 2


def test_a_550_for_one_address_fails_it_and_the_rest_go_on(
    session: Session, smtp_settings: Settings, smtp_sink: SmtpSink
) -> None:
    addresses = seed_day(session, 5)
    smtp_sink.reject_address(addresses[2])

    result = deliver(session, smtp_settings)

    assert result.sent == 4 and result.failed == 1
    assert arrivals(smtp_sink) == Counter(addresses[:2] + addresses[3:])
    refused = delivery_of(session, addresses[2])
    assert refused.status == DeliveryStatus.FAILED and not refused.retryable
    assert refused.error == f"{NO_SUCH_USER_REPLY} (at RCPT TO)"
    assert refused.attempts == 1  # a permanent refusal is not retried
    assert subscriber_of(session, addresses[2]).consecutive_hard_failures == 1
    # A rerun does not try a refused address again the same day.
    deliver(session, smtp_settings)
    assert arrivals(smtp_sink)[addresses[2]] == 0


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA"])
def test_a_dropped_connection_is_retried_on_a_new_one_without_duplicates(
    session: Session, smtp_settings: Settings, smtp_sink: SmtpSink, stage: str
) -> None:
    addresses = seed_day(session, 6)
    smtp_sink.drop_after(2, stage=stage)  # type: ignore[arg-type]

    # One session at a time, so the count of connections is the first one and its replacement.
    result = deliver(session, smtp_settings.model_copy(update={"smtp_pool_size": 1}))

    assert result.sent == 6
    assert arrivals(smtp_sink) == Counter(addresses)
    assert [event.reply for event in smtp_sink.events].count("DROP") == 1
    assert smtp_sink.connections == 2


def test_a_server_that_keeps_saying_later_leaves_the_digest_for_the_next_run(
    session: Session, engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    addresses = seed_day(session, 3)
    # One session, so both "later" replies answer the first digest's two attempts.
    settings = smtp_settings_for(engine, tmp_path, smtp_sink, smtp_max_attempts=2, smtp_pool_size=1)
    smtp_sink.temp_fail_first(2)

    first = deliver(session, settings)

    assert first.sent == 2 and first.failed == 1
    waiting = delivery_of(session, addresses[0])
    assert (waiting.status, waiting.retryable, waiting.attempts) == (DeliveryStatus.FAILED, True, 2)
    assert subscriber_of(session, addresses[0]).consecutive_hard_failures == 0

    second = deliver(session, settings)

    assert (second.sent, second.skipped) == (1, 2)
    assert arrivals(smtp_sink) == Counter(addresses)


def test_three_hard_failures_in_a_row_bounce_the_subscriber(
    session: Session, smtp_settings: Settings, smtp_sink: SmtpSink
) -> None:
    days = [DAY + dt.timedelta(days=n) for n in range(4)]
    addresses = []
    for day in days:
        addresses = seed_day(session, 2, day)
    gone = addresses[0]
    smtp_sink.reject_address(gone)

    results = [deliver(session, smtp_settings, day) for day in days]

    assert [r.bounced for r in results] == [[], [], [gone], []]
    assert subscriber_of(session, gone).status == SubscriberStatus.BOUNCED
    # After the bounce the address is not even offered to the server.
    assert sum(1 for e in smtp_sink.events if e.verb == "RCPT" and e.argument == gone) == 3
    assert arrivals(smtp_sink) == Counter({addresses[1]: 4})
    status = "\n".join(status_lines(session, smtp_settings))
    assert "1 bounced" in status
    assert f"bounced: {gone} ({NO_SUCH_USER_REPLY} (at RCPT TO))" in status


def test_a_digest_that_arrives_resets_the_count_of_hard_failures(
    session: Session, smtp_settings: Settings, smtp_sink: SmtpSink
) -> None:
    days = [DAY + dt.timedelta(days=n) for n in range(4)]
    for day in days:
        (address,) = seed_day(session, 1, day)
    smtp_sink.reject_address(address)
    deliver(session, smtp_settings, days[0])
    deliver(session, smtp_settings, days[1])
    smtp_sink.accept_address(address)
    deliver(session, smtp_settings, days[2])
    smtp_sink.reject_address(address)
    deliver(session, smtp_settings, days[3])

    subscriber = subscriber_of(session, address)
    assert subscriber.status == SubscriberStatus.ACTIVE
    assert subscriber.consecutive_hard_failures == 1
    assert arrivals(smtp_sink) == Counter({address: 1})


def bounced_addresses(session: Session) -> list[str]:
    return list(
        session.scalars(
            select(Subscriber.email)
            .where(Subscriber.status == SubscriberStatus.BOUNCED)
            .execution_options(populate_existing=True)
        )
    )


@pytest.mark.parametrize(("stage", "reply"), [("MAIL", SENDER_REJECTED_REPLY), ("DATA", MESSAGE_REFUSED_REPLY)])
def test_a_relay_refusing_our_sender_or_message_stops_the_day_and_blames_nobody(
    session: Session, smtp_settings: Settings, smtp_sink: SmtpSink, stage: str, reply: str
) -> None:
    days = [DAY + dt.timedelta(days=n) for n in range(3)]
    for day in days:
        addresses = seed_day(session, 3, day)
    smtp_sink.refuse(stage, reply)  # type: ignore[arg-type]

    results = [deliver(session, smtp_settings, day) for day in days]

    # The first refusal stops each day: only the sends already in flight (one per pooled session) fail with it.
    assert all(r.sent == 0 and 1 <= r.failed <= smtp_settings.smtp_pool_size for r in results)
    assert all(reply in (r.aborted or "") for r in results)
    assert bounced_addresses(session) == []
    assert all(subscriber_of(session, a).consecutive_hard_failures == 0 for a in addresses)
    refused = delivery_of(session, addresses[0])
    assert refused.retryable and refused.error == f"{reply} (at {'MAIL FROM' if stage == 'MAIL' else 'DATA'})"
    assert refused.attempts == 1  # a refusal is not retried within the day

    smtp_sink.accept_all()
    for day in days:
        deliver(session, smtp_settings, day)
        deliver(session, smtp_settings, day)  # a second rerun finds nothing owed

    per_day = Counter((r, m.message["X-Digest-Day"]) for m in smtp_sink.messages for r in m.rcpt_tos)
    assert per_day == Counter({(a, day.isoformat()): 1 for a in addresses for day in days})


def test_a_policy_refusal_at_rcpt_is_no_bounce_but_no_such_user_is(
    session: Session, smtp_settings: Settings, smtp_sink: SmtpSink
) -> None:
    addresses = seed_day(session, 4)
    smtp_sink.reject_address(addresses[1])
    smtp_sink.reject_address(addresses[3], reply="550 5.7.1 Relaying denied")

    result = deliver(session, smtp_settings)

    # No such user fails that address only; a relay's policy refusal stops the day at once.
    assert (result.sent, result.failed) == (2, 2)
    assert subscriber_of(session, addresses[1]).consecutive_hard_failures == 1
    assert subscriber_of(session, addresses[3]).consecutive_hard_failures == 0
    assert "5.7.1 Relaying denied" in (result.aborted or "")
    assert delivery_of(session, addresses[3]).retryable


def test_an_unreachable_server_stops_the_day_and_leaves_every_digest_owed(
    session: Session, engine: Engine, tmp_path: Path
) -> None:
    with SmtpSink() as closed:
        port = closed.port
    settings = smtp_settings_for(engine, tmp_path, closed, smtp_port=port, smtp_max_attempts=2)
    addresses = seed_day(session, 3)

    result = deliver(session, settings)

    assert result.sent == 0 and "cannot connect" in (result.aborted or "")
    assert bounced_addresses(session) == []
    assert delivery_of(session, addresses[0]).retryable
    # Only the sends in flight when the server was found down were tried; the rest of the claims were handed
    # back at once, as never tried, rather than held until their lease ran out.
    tried = session.scalars(select(Delivery).where(Delivery.day == DAY)).all()
    assert 1 <= len(tried) <= settings.smtp_pool_size
    assert all(row.status == DeliveryStatus.FAILED and row.retryable for row in tried)
    assert owed_digests(session, DAY).total == 3
