"""One request every N seconds across every process: slots reserved in Redis or in a database row.

Two things are paced this way: arXiv API requests (NEWSLETTER_ARXIV_DELAY_SECONDS, Redis or the
database) and SMTP sends (1 / NEWSLETTER_SMTP_MAX_PER_SECOND per mail server, through Redis).

Each caller atomically reserves the next free slot (max(now, next_free)) and moves `next_free` on by
the delay, then sleeps until its slot. This keeps callers in order without polling and works for
sub-second delays, which a windowed limiter with whole-second granularity (the `limits` package)
cannot express; the same algorithm runs on both stores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis
from sqlalchemy import case, insert, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.sql.dml import ReturningUpdate

from newsletter.models import RateLimitSlot, table_of

log = logging.getLogger(__name__)

DEFAULT_KEY = "newsletter:arxiv-api"

# Server time, so workers on machines with skewed clocks still agree on the schedule.
_RESERVE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local next_free = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, next_free)
local delay = tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.6f', slot + delay), 'PX', math.ceil((slot + delay - now) * 1000) + 60000)
return string.format('%.6f', slot - now)
"""


class PacingUnavailable(RuntimeError):
    """The shared slot store (Redis or the database) did not answer; no request may be sent unpaced."""


class RequestSlots(Protocol):
    def reserve(self) -> float:
        """Reserve the next request slot; returns the seconds to wait before using it."""
        ...


class RedisRequestSlots:
    """Slots kept in one Redis key (shared by every worker that uses the same Redis)."""

    def __init__(self, client: redis.Redis, delay_seconds: float, key: str = DEFAULT_KEY) -> None:
        self.delay_seconds = delay_seconds
        self.key = key
        self._reserve = client.register_script(_RESERVE_SCRIPT)

    def reserve(self) -> float:
        try:
            return float(self._reserve(keys=[self.key], args=[repr(self.delay_seconds)]))
        except redis.RedisError as exc:
            raise PacingUnavailable(f"cannot reserve a slot for {self.key} in Redis: {exc}") from exc


class DatabaseRequestSlots:
    """Slots kept in a `rate_limit_slot` row; one atomic UPDATE is the lock (SQLite and PostgreSQL)."""

    def __init__(self, engine: Engine, delay_seconds: float, key: str = DEFAULT_KEY) -> None:
        self.engine = engine
        self.delay_seconds = delay_seconds
        self.key = key

    def reserve(self) -> float:
        now = time.time()
        table = table_of(RateLimitSlot)
        later = case((table.c.next_free > now, table.c.next_free), else_=now)
        statement = (
            update(table)
            .where(table.c.name == self.key)
            .values(next_free=later + self.delay_seconds)
            .returning(table.c.next_free)
        )
        try:
            return self._reserve(statement, now)
        except SQLAlchemyError as exc:
            raise PacingUnavailable(f"cannot reserve a slot for {self.key} in the database: {exc}") from exc

    def _reserve(self, statement: ReturningUpdate[Any], now: float) -> float:
        table = table_of(RateLimitSlot)
        # Its own short transaction: the harvest's transaction must not be committed by the limiter.
        with self.engine.begin() as conn:
            next_free = conn.execute(statement).scalar()
            if next_free is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(table).values(name=self.key, next_free=now + self.delay_seconds))
                    next_free = now + self.delay_seconds
                except IntegrityError:  # another process created the row first
                    next_free = conn.execute(statement).scalar()
        assert next_free is not None  # the row exists now: ours, or the one that beat our insert
        return max(0.0, float(next_free) - self.delay_seconds - now)


class RequestPacer:
    """Blocks each caller until its reserved slot; the one gate every paced request passes."""

    def __init__(self, slots: RequestSlots, sleep: Callable[[float], None] = time.sleep) -> None:
        self.slots = slots
        self._sleep = sleep

    def wait_turn(self) -> float:
        """Wait for the next slot; returns how long we waited."""
        wait = self.slots.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait


_REDIS_CLIENTS: dict[str, redis.Redis] = {}


def reachable_redis(redis_url: str) -> redis.Redis | None:
    """A client for `redis_url` if it answers (one per process once it has), else None."""
    client = _REDIS_CLIENTS.get(redis_url)
    if client is not None:
        return client
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=5)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        log.info("Redis at %s not reachable (%s)", redis_url, exc)
        return None
    return _REDIS_CLIENTS.setdefault(redis_url, client)


def shared_request_slots(
    redis_url: str | None, engine: Engine | None, delay_seconds: float, key: str = DEFAULT_KEY
) -> RequestSlots:
    """Redis slots when Redis answers, else the database row (the embedded SQLite default)."""
    client = reachable_redis(redis_url) if redis_url else None
    if client is not None:
        return RedisRequestSlots(client, delay_seconds, key)
    if engine is None:
        raise ValueError("request pacing needs Redis or a database")
    return DatabaseRequestSlots(engine, delay_seconds, key)
