"""Starting a day on the workers: once per announcement day, however many beats or commands ask."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import redis
from redis.lock import Lock
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.harvest.polling import poll_feed
from newsletter.models import RunStatus, utcnow
from newsletter.pipeline import NO_ANNOUNCEMENT_REASON, days_to_resume, production_feed
from newsletter.runs import end_run, note_feed_seen, open_run

TRIGGER_LOCK = "newsletter:lock:trigger"
TRIGGER_LOCK_SECONDS = 120


def redis_client(settings: Settings) -> redis.Redis:
    """A client for the configured Redis (the broker's server)."""
    return redis.Redis.from_url(settings.redis_url)


def day_lock(client: redis.Redis, day: dt.date, seconds: float, kind: str = "day") -> Lock:
    """The lock stage tasks of one day hold, so a redelivered duplicate waits instead of racing.

    The harvest holds a lock of its own `kind`: match and translate run while it fetches details.
    """
    # redis-py leaves Redis.lock unannotated; it returns a redis.lock.Lock unless given another lock_class.
    name = f"newsletter:lock:{kind}:{day.isoformat()}"
    return cast(Lock, client.lock(name, timeout=seconds, blocking_timeout=seconds))


@dataclass(frozen=True)
class StartedDay:
    """What a trigger found: the day, and whether this caller started its run."""

    day: dt.date | None
    started: bool
    reason: str | None = None
    resumed: tuple[dt.date, ...] = ()  # earlier days owing digests, enqueued first, oldest first


def start_day(
    session: Session,
    settings: Settings,
    day: dt.date | None,
    reopen_finished: bool,
    enqueue: Callable[[dt.date], None],
) -> StartedDay:
    """Open the day's run and enqueue its tasks, unless a run of that day is open or (unless reopening) done.

    The Redis lock keeps two triggers (two beats started by mistake, two commands) from racing;
    the unique run row decides even if the lock expired.
    """
    client = redis_client(settings)
    seen_at: dt.datetime | None = None
    with client.lock(TRIGGER_LOCK, timeout=TRIGGER_LOCK_SECONDS, blocking_timeout=TRIGGER_LOCK_SECONDS):
        if day is None:
            # A conditional request: an unchanged feed answers 304 and the day it showed last time stands.
            poll = poll_feed(session, production_feed(settings))
            day, seen_at = poll.day, poll.polled_at
        owing = days_to_resume(session, day or utcnow().date())
        resumed = tuple(past for past in owing if _open_and_enqueue(session, past, enqueue))
        if day is None:
            return StartedDay(None, False, NO_ANNOUNCEMENT_REASON, resumed)
        started = _open_and_enqueue(session, day, enqueue, reopen_finished)
        if seen_at is not None:
            note_feed_seen(session, day, seen_at)
            session.commit()
        if not started:
            return StartedDay(day, False, "a run of this day is in progress or done", resumed)
    return StartedDay(day, True, resumed=resumed)


def _open_and_enqueue(
    session: Session, day: dt.date, enqueue: Callable[[dt.date], None], reopen_finished: bool = False
) -> bool:
    """Open the day's run and queue its tasks; False when another run of it is open (or it is done)."""
    if not open_run(session, day, reopen_finished):
        return False
    try:
        enqueue(day)
    except Exception as exc:
        end_run(session, day, RunStatus.FAILED, f"could not enqueue the run: {exc}")
        raise
    return True
