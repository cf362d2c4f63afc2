"""A worker SIGKILLed in the middle of a day: a new worker finishes it, each digest sent once but for the
stated window (accepted, not yet recorded: resent with the same Message-ID)."""

from __future__ import annotations

import signal
from pathlib import Path

from sqlalchemy.engine import Engine

from newsletter.models import DeliveryStatus
from tests.servers import SmtpSink
from tests.workers_support import (  # noqa: F401 - the fixtures are used by name
    SUBSCRIBERS,
    Workers,
    announced_day_fixture,
    deliveries,
    digests_per_address,
    finish,
    newsletter,
    redis_url_fixture,
    service_env_fixture,
    subscribers_fixture,
    wait_until,
    workers_fixture,
)


def test_a_worker_killed_mid_delivery_leaves_no_subscriber_without_or_with_two_digests(
    workers: Workers,
    service_env: dict[str, str],
    tmp_path: Path,
    pg_engine: Engine,
    subscribers: list[str],
    announced_day: list[str],
    smtp_sink: SmtpSink,
) -> None:
    # After 80 digests the sink hangs up on the next one; the worker then waits 30 s before
    # retrying it, and that is when it is killed: holding a claim and an unacknowledged chunk.
    smtp_sink.drop_after(80, stage="MAIL")
    first = workers.start("worker-a", "--pool=solo", NEWSLETTER_SMTP_RETRY_BASE_SECONDS="30")
    run = newsletter(service_env, tmp_path, "run-daily", "--via-celery", "--date", "2026-11-24")
    wait_until(lambda: any(event.reply == "DROP" for event in smtp_sink.events), 60, "the dropped connection")

    workers.kill(first)
    assert len(smtp_sink.messages) >= 80  # the other pooled session may have gone on a little
    workers.start("worker-b")
    code, stdout, stderr = finish(run)

    assert code == 0, stderr
    assert "2026-11-24: completed" in stdout
    assert first.returncode == -signal.SIGKILL
    copies = digests_per_address(smtp_sink)
    assert set(copies) == set(subscribers) and max(copies.values()) <= 2
    # The README's window: a kill may resend what was accepted but not yet recorded, at most the
    # delivery batch plus the pool's sessions (50 + 2 by default), each as the same message.
    assert len([address for address, count in copies.items() if count == 2]) <= 50 + 2
    message_ids = {(recipient, str(m.message["Message-ID"])) for m in smtp_sink.messages for recipient in m.rcpt_tos}
    assert len(message_ids) == SUBSCRIBERS
    assert deliveries(pg_engine) == {DeliveryStatus.SENT: SUBSCRIBERS}
