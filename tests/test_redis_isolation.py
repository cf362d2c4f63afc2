"""The tests' Redis databases: never db 0, and a database holding someone else's keys is never emptied."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from _pytest.outcomes import Failed, Skipped

from tests.conftest import REDIS_OWNER_KEY, WORKER_REDIS_URL, claim_test_redis


def test_a_database_with_keys_the_tests_did_not_create_is_left_alone() -> None:
    claim_test_redis(WORKER_REDIS_URL)
    client = redis.Redis.from_url(WORKER_REDIS_URL)
    client.delete(REDIS_OWNER_KEY)
    client.set("someone-else:queue", "their work")
    try:
        with pytest.raises((Skipped, Failed)) as refused:
            claim_test_redis(WORKER_REDIS_URL)
        assert "keys the tests did not create" in str(refused.value)
        assert "NEWSLETTER_TEST_WORKER_REDIS_URL" in str(refused.value)
        assert client.get("someone-else:queue") == b"their work"
    finally:
        client.delete("someone-else:queue")
        client.close()


def test_the_tests_own_database_is_emptied_for_each_worker_test() -> None:
    claim_test_redis(WORKER_REDIS_URL)
    client = redis.Redis.from_url(WORKER_REDIS_URL)
    client.set("celery-task-meta-left-by-a-test", "1")

    claim_test_redis(WORKER_REDIS_URL)

    assert client.keys("*") == [REDIS_OWNER_KEY.encode()]
    client.close()


def test_by_default_no_test_touches_db_0_where_a_development_instance_keeps_its_queue() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_TEST_")}
    shown = subprocess.run(
        [sys.executable, "-c", "import tests.conftest as c; print(c.REDIS_URL); print(c.WORKER_REDIS_URL)"],
        cwd=Path(__file__).resolve().parents[1], env=clean, capture_output=True, text=True, check=True,
    )
    defaults = shown.stdout.split()
    assert len(defaults) == 2 and len(set(defaults)) == 2, defaults
    assert all(not url.endswith("/0") for url in defaults), defaults
