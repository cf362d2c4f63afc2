"""Fixtures for the tests of the service on real workers (tests/test_workers*.py): worker processes
started by the test on the real Redis and PostgreSQL, local arXiv and DeepL servers, an aiosmtpd sink."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.models import Delivery
from newsletter.subscribers import subscribe
from tests.conftest import WORKER_REDIS_URL, claim_test_redis
from tests.servers import ArxivServer, DeepLServer, SmtpSink, build_feed, make_paper
from tests.servers.pytest_plugin import DEEPL_TEST_KEY

DAY = dt.date(2026, 11, 24)
CATEGORIES = ["cs.AI", "cs.LG"]
REDIS_DB_URL = WORKER_REDIS_URL
BIN = Path(sys.executable).parent
REPOSITORY = Path(__file__).resolve().parents[1]
TOPICS = ["graph neural network", "diffusion model", "reinforcement learning", "large language model"]
SUBSCRIBERS = 200


@pytest.fixture(name="redis_url")
def redis_url_fixture() -> str:
    """A Redis database of the worker tests' own, emptied first (broker, results and locks)."""
    return claim_test_redis(REDIS_DB_URL)


@pytest.fixture(name="announced_day")
def announced_day_fixture(arxiv_server: ArxivServer) -> list[str]:
    """Twenty papers announced on DAY, five per topic; returns their titles."""
    papers = [
        make_paper(f"2611.{index:05d}", title=f"A {TOPICS[index % 4]} for problem {index}", categories=CATEGORIES)
        for index in range(1, 21)
    ]
    arxiv_server.add_papers(*papers)
    arxiv_server.set_feed(CATEGORIES, build_feed(DAY, papers, categories=CATEGORIES))
    return [paper.title for paper in papers]


@pytest.fixture(name="subscribers")
def subscribers_fixture(pg_engine: Engine) -> list[str]:
    """A few hundred confirmed subscribers, each following one or two topics."""
    emails = []
    with Session(pg_engine) as session:
        for index in range(SUBSCRIBERS):
            email = f"reader{index:03d}@example.org"
            keywords = [TOPICS[index % 4]] + ([TOPICS[(index + 1) % 4]] if index % 3 == 0 else [])
            subscribe(session, email, keywords, confirmed=True)
            emails.append(email)
        session.commit()
    return emails


@pytest.fixture(name="service_env")
def service_env_fixture(
    pg_database_url: str,
    redis_url: str,
    arxiv_server: ArxivServer,
    deepl_server: DeepLServer,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> dict[str, str]:
    """The environment of a deployment pointed at the test's servers."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLETTER_")}
    env.update(
        # The commands and workers run this checkout's code, not wherever the package is installed.
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")])),
        NEWSLETTER_ENVIRONMENT="test",
        NEWSLETTER_DATABASE_URL=pg_database_url,
        NEWSLETTER_REDIS_URL=redis_url,
        NEWSLETTER_ARXIV_FEED_URL=arxiv_server.feed_base_url,
        NEWSLETTER_ARXIV_API_URL=arxiv_server.api_url,
        NEWSLETTER_ARXIV_DELAY_SECONDS="0",
        NEWSLETTER_CATEGORIES=",".join(CATEGORIES),
        NEWSLETTER_DEEPL_AUTH_KEY=DEEPL_TEST_KEY,
        NEWSLETTER_DEEPL_SERVER_URL=deepl_server.server_url,
        NEWSLETTER_MAIL_BACKEND="smtp",
        NEWSLETTER_SMTP_HOST="127.0.0.1",
        NEWSLETTER_SMTP_PORT=str(smtp_sink.port),
        NEWSLETTER_SMTP_MAX_PER_SECOND="5000",
        NEWSLETTER_SECRET_KEY="test-secret-key-0123456789",
        NEWSLETTER_DELIVERY_CHUNK_SIZE="20",
        # A dead worker's claims and unacknowledged tasks come back within seconds, not minutes.
        NEWSLETTER_DELIVERY_CLAIM_LEASE_SECONDS="2",
        NEWSLETTER_CELERY_VISIBILITY_TIMEOUT_SECONDS="8",
    )
    return env


class Workers:
    """Celery worker processes started for one test, each in its own process group."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.processes: list[subprocess.Popen] = []

    def start(self, name: str, *pool: str, **env: str) -> subprocess.Popen:
        command = [str(BIN / "celery"), "-A", "workers.celery_app", "worker", "-n", f"{name}@%h", "-l", "WARNING"]
        log = (self.cwd / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [*command, *(pool or ("--pool=prefork", "--concurrency=2"))],
            env={**self.env, **env},
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen) -> None:
        """SIGKILL the worker and its pool children: no shutdown, no acknowledgement."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


@pytest.fixture(name="workers")
def workers_fixture(service_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    started = Workers(service_env, tmp_path)
    yield started
    started.stop_all()


def newsletter(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen:
    """The `newsletter` command as an operator runs it."""
    return subprocess.Popen(
        [str(BIN / "newsletter"), *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        pause.wait(0.05)


def digests_per_address(sink: SmtpSink) -> Counter[str]:
    return Counter(recipient for message in sink.messages for recipient in message.rcpt_tos)


def deliveries(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        rows = session.execute(
            select(Delivery.status, func.count()).where(Delivery.day == DAY).group_by(Delivery.status)
        ).all()
    return {status: count for status, count in rows}
