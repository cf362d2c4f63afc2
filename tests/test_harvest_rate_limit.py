"""One arXiv API request every NEWSLETTER_ARXIV_DELAY_SECONDS across processes, through Redis or the database."""

from __future__ import annotations

import multiprocessing
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import Engine

from newsletter.harvest import ArxivApiSource
from newsletter.models import RateLimitSlot
from newsletter.pacing import DatabaseRequestSlots, RedisRequestSlots, RequestPacer, shared_request_slots
from tests.conftest import REDIS_URL, reachable_redis_or_skip
from tests.servers import ArxivServer, make_paper

DELAY = 10.0  # reservations only: nobody sleeps this long


@pytest.fixture
def redis_client() -> redis.Redis:
    return reachable_redis_or_skip(REDIS_URL)


def test_two_redis_clients_get_slots_one_delay_apart(redis_client: redis.Redis) -> None:
    key = f"test:arxiv:{uuid.uuid4().hex}"
    first = RedisRequestSlots(redis.Redis.from_url(REDIS_URL), DELAY, key)
    second = RedisRequestSlots(redis.Redis.from_url(REDIS_URL), DELAY, key)
    try:
        waits = [first.reserve(), second.reserve(), first.reserve(), second.reserve()]
    finally:
        redis_client.delete(key)

    # Each later caller is told to wait one more delay (less the moments spent reserving).
    for position, wait in enumerate(waits):
        assert position * DELAY - 1 < wait <= position * DELAY


def test_two_database_clients_get_slots_one_delay_apart(engine: Engine) -> None:
    first = DatabaseRequestSlots(engine, DELAY, "arxiv-test")
    second = DatabaseRequestSlots(engine, DELAY, "arxiv-test")

    waits = [first.reserve(), second.reserve(), first.reserve()]

    for position, wait in enumerate(waits):
        assert position * DELAY - 1 < wait <= position * DELAY
    with engine.connect() as conn:
        assert conn.execute(RateLimitSlot.__table__.select()).one().name == "arxiv-test"


def test_without_redis_the_database_row_paces_requests(sqlite_engine: Engine) -> None:
    slots = shared_request_slots("redis://127.0.0.1:1/0", sqlite_engine, DELAY)

    assert isinstance(slots, DatabaseRequestSlots)
    assert slots.reserve() == 0 and slots.reserve() > DELAY - 1


def _fetch_in_another_process(api_url: str, redis_url: str | None, database_url: str, key: str, ids: list[str]) -> int:
    from newsletter.db import make_engine

    slots = shared_request_slots(redis_url, make_engine(database_url), 0.4, key)
    source = ArxivApiSource(api_url, 0.4, timeout=10, retries=0, pacer=RequestPacer(slots))
    return sum(len(source.fetch_details([arxiv_id])) for arxiv_id in ids)


@pytest.mark.parametrize("store", ["redis", "database"])
def test_processes_sharing_the_limit_never_send_two_api_requests_within_the_delay(
    store: str, tmp_path: Path, sqlite_engine: Engine, arxiv_server: ArxivServer, redis_client: redis.Redis
) -> None:
    ids = [f"2611.{i:05d}" for i in range(1, 7)]
    arxiv_server.add_papers(*(make_paper(i) for i in ids))
    redis_url = REDIS_URL if store == "redis" else None
    key = f"test:arxiv:{uuid.uuid4().hex}"
    database_url = sqlite_engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        jobs = [
            pool.apply_async(_fetch_in_another_process, (arxiv_server.api_url, redis_url, database_url, key, part))
            for part in (ids[:3], ids[3:])
        ]
        fetched = [job.get(timeout=60) for job in jobs]
    redis_client.delete(key)

    assert fetched == [3, 3]
    arrivals = sorted(request.timestamp for request in arxiv_server.api_requests)
    assert len(arrivals) == 6
    # A lower bound only: a slow machine spreads requests further, never closer.
    assert min(b - a for a, b in zip(arrivals, arrivals[1:], strict=False)) >= 0.3


def test_when_the_slot_store_goes_away_no_request_is_sent_and_the_harvest_says_why(arxiv_server: ArxivServer) -> None:
    from newsletter.harvest import HarvestError

    gone = RedisRequestSlots(redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1), DELAY)
    source = ArxivApiSource(arxiv_server.api_url, DELAY, timeout=5, retries=0, pacer=RequestPacer(gone))

    with pytest.raises(HarvestError, match="cannot reserve a slot for newsletter:arxiv-api in Redis"):
        source.fetch_details(["2611.00001"])
    assert arxiv_server.api_requests == []
