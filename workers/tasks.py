"""Celery tasks: thin wrappers that take dates and IDs, open a session and call one pipeline function.

A day starts with its harvest task. Once the feed's text is stored, the harvest queues match and
translate (one chain) and goes on fetching the API's details beside them; whichever of the two
ends last queues fan_out (deliver), which enqueues one send_digests task per chunk of recipients.
Every task is idempotent (the run ledger and the delivery claims record what is done),
acknowledged late and retried with jittered backoff on errors that pass (database or Redis
unreachable, arXiv down).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from celery import Task, chain
from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session

from newsletter.alerts import alert_now
from newsletter.db import engine_for, session_scope
from newsletter.harvest import HarvestError
from newsletter.models import RunStatus, Stage
from newsletter.pipeline import (
    EarlyStart,
    claimed_elsewhere,
    deliver_chunk,
    delivery_chunks,
    details_interest,
    failure_reason,
    finish_day,
    harvest_day,
    match_day,
    production_transports,
    translate_day,
    translate_missing,
)
from newsletter.render import DigestRenderer
from newsletter.runs import (
    deliveries_enqueued,
    end_run,
    fail_run,
    mark_enqueued,
    ready_for_delivery,
    run_is_open,
    stage_finished,
)
from workers.celery_app import app, settings
from workers.schedule import POLL_TASK, in_poll_window
from workers.trigger import StartedDay, day_lock, redis_client, start_day

log = logging.getLogger(__name__)

# Errors that pass: the database or Redis unreachable, a day lock still held by a stage that runs.
TRANSIENT = (OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError, LockError)


class DayTask(Task):
    """A stage of one day: late ack, jittered backoff on transient errors, a failed run on giving up."""

    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = TRANSIENT
    retry_backoff = True
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 6
    # The stage of the day this task does; a failure is recorded against it.
    stage: Stage | None = None

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        day = args[0] if args else kwargs.get("day")
        if not day:
            return
        reason = failure_reason(self.name.removeprefix("newsletter."), exc)
        try:
            # A session of its own: the task's session was rolled back with the error.
            with session_scope(engine_for(settings.database_url)) as session:
                fail_run(session, dt.date.fromisoformat(day), reason, self.stage)
        except Exception:  # the database may be what failed; the log keeps the reason
            log.exception("could not record the failed run of %s (%s)", day, reason)


@contextmanager
def day_session(day: str) -> Iterator[tuple[Session, dt.date]]:
    """A session for the task and the parsed day."""
    with session_scope(engine_for(settings.database_url)) as session:
        yield session, dt.date.fromisoformat(day)


@contextmanager
def locked_day(day: dt.date, seconds: float, kind: str = "day") -> Iterator[None]:
    with day_lock(redis_client(settings), day, seconds, kind):
        yield


def claim_lease() -> dt.timedelta:
    """How long a delivery claim waits for its sender (NEWSLETTER_DELIVERY_CLAIM_LEASE_SECONDS)."""
    return dt.timedelta(seconds=settings.delivery_claim_lease_seconds)


@cache
def renderer() -> DigestRenderer:
    """One renderer per worker process: the template is compiled once."""
    return DigestRenderer()


@app.task(
    base=DayTask,
    name="newsletter.harvest",
    stage=Stage.HARVEST,
    autoretry_for=(*TRANSIENT, HarvestError),
    max_retries=5,
    soft_time_limit=1800,
    time_limit=1900,
)
def harvest(day: str) -> str:
    """Harvest the announcement day; match and translate start once the feed's text is stored."""
    text_queued: list[dt.date] = []

    def start_text_stages(date: dt.date) -> None:
        text_stages(date).apply_async()
        text_queued.append(date)

    with day_session(day) as (session, date), locked_day(date, 1900, kind="harvest"):
        if not run_is_open(session, date):
            return "skipped: the run ended"
        interest = details_interest(session, settings)
        # The details are written under the day lock: never while match or translate reads the papers.
        early = EarlyStart(start_text_stages, lambda: locked_day(date, 1900))
        transports = production_transports(settings)
        harvest = harvest_day(session, transports, date, settings.categories, interest, early)
        if harvest.day is None:
            end_run(session, date, RunStatus.NO_ANNOUNCEMENT, "the feed shows no announcement")
            return "no announcement"
        if not text_queued:
            start_text_stages(date)
        if harvest.retranslate:
            with locked_day(date, 1900):
                translate_missing(session, settings, transports.translator, date)
        queue_delivery_when_ready(session, date)
    # Days missed while the service was down were harvested too; each gets its own digests.
    for missed in harvest.caught_up:
        text_stages(missed).apply_async()
    return "harvested"


def stage_pending(session: Session, date: dt.date, stage: Stage) -> bool:
    """Whether the run is open and `stage` not yet done in it (a redelivered duplicate is skipped)."""
    return run_is_open(session, date) and not stage_finished(session, date, stage)


@app.task(base=DayTask, name="newsletter.match", stage=Stage.MATCH, soft_time_limit=600, time_limit=660)
def match(day: str) -> str:
    """Select every subscriber's papers for the day."""
    with day_session(day) as (session, date), locked_day(date, 660):
        if not stage_pending(session, date, Stage.MATCH):
            return "skipped"
        return f"{match_day(session, settings, date).selections} selections"


@app.task(base=DayTask, name="newsletter.translate", stage=Stage.TRANSLATE, soft_time_limit=1800, time_limit=1900)
def translate(day: str) -> str:
    """Translate the day's selected papers (DeepL, cached per paper and language)."""
    with day_session(day) as (session, date), locked_day(date, 1900):
        if stage_pending(session, date, Stage.TRANSLATE):
            done = f"{translate_day(session, settings, production_transports(settings).translator, date).translated}"
        else:
            done = "skipped"
        queue_delivery_when_ready(session, date)
        return done


def queue_delivery_when_ready(session: Session, date: dt.date) -> None:
    """Queue the fan-out once the day has both its details (harvest) and its translations."""
    if ready_for_delivery(session, date):
        fan_out.delay(date.isoformat())


@app.task(base=DayTask, name="newsletter.fan_out", stage=Stage.DELIVER, soft_time_limit=300, time_limit=360)
def fan_out(day: str) -> int:
    """Enqueue one send task per chunk of the recipients still owed the day's digest."""
    with day_session(day) as (session, date), locked_day(date, 360):
        if not run_is_open(session, date) or deliveries_enqueued(session, date):
            return 0
        chunks = delivery_chunks(session, date, settings.delivery_chunk_size)
        for chunk in chunks:
            send_digests.delay(day, chunk)
        # Recorded after the enqueueing: a fan-out that died halfway is redone, never skipped.
        mark_enqueued(session, date)
        if not chunks:
            finish_day(session, date, lease=claim_lease())
    return len(chunks)


@app.task(
    base=DayTask, bind=True, name="newsletter.send_digests", stage=Stage.DELIVER, soft_time_limit=900, time_limit=960
)
def send_digests(self: Task, day: str, subscriber_ids: list[int]) -> dict:
    """Send the day's digests to a chunk of subscribers; the last chunk to finish completes the run."""
    backend = production_transports(settings).mail
    try:
        with day_session(day) as (session, date):
            result = deliver_chunk(session, settings, backend, date, subscriber_ids, renderer())
            stalled = claimed_elsewhere(session, date, subscriber_ids)
            # A stop (the server refused our sender, or is down) ends the day now, incomplete; the next run resumes it.
            finish_day(session, date, force=result.aborted is not None, lease=claim_lease())
    except SoftTimeLimitExceeded as exc:
        # The rest of the chunk goes on later; what was sent is recorded and is skipped then.
        raise self.retry(exc=exc, countdown=settings.delivery_claim_lease_seconds) from exc
    finally:
        backend.close()
    if stalled:
        # A sender died holding these claims; once its lease runs out this chunk takes them over.
        raise self.retry(countdown=settings.delivery_claim_lease_seconds + 1)
    return {"sent": result.sent, "failed": result.failed, "skipped": result.skipped}


def text_stages(day: dt.date | str) -> Any:
    """Match then translate the day, as one chain; the translate task queues the fan-out when it may."""
    iso = day if isinstance(day, str) else day.isoformat()
    return chain(match.si(iso), translate.si(iso))


def enqueue_day(day: dt.date) -> None:
    """Queue the day's harvest; it queues the later stages."""
    harvest.delay(day.isoformat())


@app.task(
    name=POLL_TASK,
    acks_late=True,
    autoretry_for=(*TRANSIENT, HarvestError),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=3,
    soft_time_limit=240,
    time_limit=300,
)
def poll_announcement() -> str:
    """Beat's tick: start the day the feed shows, if it has no run yet (or its last one failed)."""
    now = dt.datetime.now(app.timezone).time()
    if not in_poll_window(now, settings.beat_poll_start, settings.beat_poll_end):
        return "outside the polling window"
    with session_scope(engine_for(settings.database_url)) as session:
        try:
            started: StartedDay = start_day(session, settings, None, reopen_finished=False, enqueue=enqueue_day)
        finally:
            session.rollback()  # whatever the trigger left half-done is not ours to keep
            # Every tick checks: a late feed, an incomplete harvest, a failed run, digests owed.
            alert_now(session, settings)
    resumed = "".join(f"{day}: resumed; " for day in started.resumed)
    if started.day is None:
        return resumed + (started.reason or "no announcement")
    return resumed + f"{started.day}: {'started' if started.started else started.reason}"
