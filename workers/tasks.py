"""Celery tasks: thin wrappers that take dates and IDs, open a session and call one pipeline function.

A day runs as a chain, harvest -> match -> translate -> fan_out, and fan_out enqueues one
send_digests task per chunk of recipients. Every task is idempotent (the run row and the
delivery claims record what is done), acknowledged late and retried with jittered backoff
on errors that pass (database or Redis unreachable, arXiv down).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from celery import Task, chain
from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session

from newsletter.db import engine_for, session_scope
from newsletter.harvest import HarvestError
from newsletter.models import RunStatus
from newsletter.pipeline import (
    claimed_elsewhere,
    deliver_chunk,
    delivery_chunks,
    end_run,
    fail_run,
    failure_reason,
    finish_day,
    harvest_day,
    match_day,
    production_transports,
    record_stage,
    run_is_open,
    stage_recorded,
    translate_day,
)
from newsletter.render import DigestRenderer
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

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # type: ignore[no-untyped-def, override]
        day = args[0] if args else kwargs.get("day")
        if not day:
            return
        reason = failure_reason(self.name.removeprefix("newsletter."), exc)
        try:
            # A session of its own: the task's session was rolled back with the error.
            with session_scope(engine_for(settings.database_url)) as session:
                fail_run(session, dt.date.fromisoformat(day), reason)
        except Exception:  # the database may be what failed; the log keeps the reason
            log.exception("could not record the failed run of %s (%s)", day, reason)


@contextmanager
def day_session(day: str) -> Iterator[tuple[Session, dt.date]]:
    """A session for the task and the parsed day."""
    with session_scope(engine_for(settings.database_url)) as session:
        yield session, dt.date.fromisoformat(day)


@contextmanager
def locked_day(day: dt.date, seconds: float) -> Iterator[None]:
    with day_lock(redis_client(settings), day, seconds):
        yield


@cache
def renderer() -> DigestRenderer:
    """One renderer per worker process: the template is compiled once."""
    return DigestRenderer()


@app.task(
    base=DayTask,
    name="newsletter.harvest",
    autoretry_for=(*TRANSIENT, HarvestError),
    max_retries=5,
    soft_time_limit=1800,
    time_limit=1900,
)
def harvest(day: str) -> str:
    """Harvest the announcement day into the database."""
    with day_session(day) as (session, date), locked_day(date, 1900):
        if not run_is_open(session, date):
            return "skipped: the run ended"
        announced, stats = harvest_day(session, production_transports(settings), date, settings.categories)
        if announced is None:
            end_run(session, date, RunStatus.NO_ANNOUNCEMENT, "the feed shows no announcement")
            return "no announcement"
    # Days missed while the service was down were harvested too; each gets its own digests.
    for missed in stats.get("caught_up", []):
        chain(match.si(missed), translate.si(missed), fan_out.si(missed)).apply_async()
    return "harvested"


def stage_pending(session: Session, date: dt.date, stage: str) -> bool:
    """Whether the run is open and `stage` not yet done in it (a redelivered duplicate is skipped)."""
    return run_is_open(session, date) and not stage_recorded(session, date, stage)


@app.task(base=DayTask, name="newsletter.match", soft_time_limit=600, time_limit=660)
def match(day: str) -> str:
    """Select every subscriber's papers for the day."""
    with day_session(day) as (session, date), locked_day(date, 660):
        if not stage_pending(session, date, "match"):
            return "skipped"
        return f"{match_day(session, settings, date).selections} selections"


@app.task(base=DayTask, name="newsletter.translate", soft_time_limit=1800, time_limit=1900)
def translate(day: str) -> str:
    """Translate the day's selected papers (DeepL, cached per paper and language)."""
    with day_session(day) as (session, date), locked_day(date, 1900):
        if not stage_pending(session, date, "translate"):
            return "skipped"
        return f"{translate_day(session, settings, production_transports(settings).translator, date).translated}"


@app.task(base=DayTask, name="newsletter.fan_out", soft_time_limit=300, time_limit=360)
def fan_out(day: str) -> int:
    """Enqueue one send task per chunk of the recipients still owed the day's digest."""
    with day_session(day) as (session, date), locked_day(date, 360):
        if not stage_pending(session, date, "enqueued"):
            return 0
        started = time.perf_counter()
        chunks = delivery_chunks(session, date, settings.delivery_chunk_size)
        for chunk in chunks:
            send_digests.delay(day, chunk)
        # Recorded after the enqueueing: a fan-out that died halfway is redone, never skipped.
        record_stage(session, date, "enqueued", {"chunks": len(chunks)}, time.perf_counter() - started)
        if not chunks:
            finish_day(session, date)
    return len(chunks)


@app.task(base=DayTask, bind=True, name="newsletter.send_digests", soft_time_limit=900, time_limit=960)
def send_digests(self: Task, day: str, subscriber_ids: list[int]) -> dict:
    """Send the day's digests to a chunk of subscribers; the last chunk to finish completes the run."""
    backend = production_transports(settings).mail
    try:
        with day_session(day) as (session, date):
            result = deliver_chunk(session, settings, backend, date, subscriber_ids, renderer())
            stalled = claimed_elsewhere(session, date, subscriber_ids)
            finish_day(session, date)
    except SoftTimeLimitExceeded as exc:
        # The rest of the chunk goes on later; what was sent is recorded and is skipped then.
        raise self.retry(exc=exc, countdown=settings.delivery_claim_lease_seconds) from exc
    finally:
        backend.close()
    if stalled:
        # A sender died holding these claims; once its lease runs out this chunk takes them over.
        raise self.retry(countdown=settings.delivery_claim_lease_seconds + 1)
    return {"sent": result.sent, "failed": result.failed, "skipped": result.skipped}


def enqueue_day(day: dt.date) -> None:
    """Queue the day's chain of stage tasks."""
    iso = day.isoformat()
    chain(harvest.si(iso), match.si(iso), translate.si(iso), fan_out.si(iso)).apply_async()


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
        started: StartedDay = start_day(session, settings, None, reopen_finished=False, enqueue=enqueue_day)
    if started.day is None:
        return started.reason or "no announcement"
    return f"{started.day}: {'started' if started.started else started.reason}"
