"""Shared fixtures: real SQLite and PostgreSQL databases, Settings pointed at them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from newsletter import models  # noqa: F401  (every table in SQLModel.metadata, which truncate_all empties)
from newsletter.config import Settings
from newsletter.db import make_engine
from newsletter.schema import upgrade_schema

pytest_plugins = ["tests.servers.pytest_plugin"]

# CI replays the same examples every run (a failure there is reproducible); local runs explore new ones.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

# Recorded real arXiv responses and the reference digest, kept inside the repository.
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE = FIXTURES / "reference"
PG_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Tests only add keys of their own (random names, deleted afterwards) to this one; not db 0, where a
# development instance keeps its queue.
REDIS_URL = os.environ.get("NEWSLETTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
# Celery's keys have fixed names, so the worker tests empty this one: see `claim_test_redis`.
WORKER_REDIS_URL = os.environ.get("NEWSLETTER_TEST_WORKER_REDIS_URL", "redis://127.0.0.1:6379/15")
# Marks a Redis database as the tests': only a database holding it (or nothing) is ever emptied.
REDIS_OWNER_KEY = "newsletter-tests:owned"


def services_required() -> bool:
    """CI sets NEWSLETTER_REQUIRE_SERVICES=1: a missing service fails instead of skipping."""
    return os.environ.get("NEWSLETTER_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip with the reason, or fail when services are required."""
    if services_required():
        pytest.fail(f"{reason} (NEWSLETTER_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def reachable_redis_or_skip(url: str) -> redis.Redis:
    """A client for the Redis at `url`, or a skip (a failure under NEWSLETTER_REQUIRE_SERVICES=1)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        skip_or_fail(f"Redis not reachable at {url}: {exc}")
    return client


def claim_test_redis(url: str) -> str:
    """Empty the Redis database at `url` for a test, if it is the tests' own: empty, or marked by them.

    A database holding keys the tests did not create (someone's queue, a cache) is never flushed:
    the test skips, or fails under NEWSLETTER_REQUIRE_SERVICES=1, naming the variable to change.
    """
    client = reachable_redis_or_skip(url)
    try:
        if client.dbsize() and not client.exists(REDIS_OWNER_KEY):
            skip_or_fail(
                f"Redis database {url} holds {client.dbsize()} keys the tests did not create; point "
                "NEWSLETTER_TEST_WORKER_REDIS_URL at an empty database"
            )
        client.flushdb()
        client.set(REDIS_OWNER_KEY, "emptied by the newsletter tests before each worker test")
    finally:
        client.close()
    return url


def make_settings(database_url: str, tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a test, ignoring any developer .env file."""
    values: dict[str, object] = {
        "database_url": database_url,
        "outbox_dir": tmp_path / "outbox",
        "secret_key": "test-secret-key-0123456789",
        "environment": "test",
        "smtp_retry_base_seconds": 0.01,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextmanager
def inserts_refused(engine: Engine, table: str, message: str, pg_errcode: str = "raise_exception") -> Iterator[None]:
    """The database refuses every insert into `table` with `message` (a trigger) until the block ends."""
    name = f"refuse_{table}"
    if engine.dialect.name == "postgresql":
        create = [
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{message}' USING ERRCODE = '{pg_errcode}'; END $$",
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()",
        ]
        drop = [f"DROP TRIGGER IF EXISTS {name} ON {table}", f"DROP FUNCTION IF EXISTS {name}"]
    else:
        create = [f"CREATE TRIGGER {name} BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, '{message}'); END"]
        drop = [f"DROP TRIGGER IF EXISTS {name}"]
    _execute(engine, create)
    try:
        yield
    finally:
        _execute(engine, drop)


def _execute(engine: Engine, statements: list[str]) -> None:
    with engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)


def truncate_all(engine: Engine) -> None:
    """Empty every table, so no test sees another's rows."""
    tables = [t.name for t in reversed(SQLModel.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))


@contextmanager
def pg_schema(prefix: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL schema of its own, dropped afterwards (or a skip without a server)."""
    admin = create_engine(PG_URL)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server"
        admin.dispose()
        skip_or_fail(f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}")
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for this test run (runs side by side stay apart)."""
    with pg_schema("t") as url:
        engine = make_engine(url)
        upgrade_schema(engine)
        engine.dispose()
        yield url


@pytest.fixture
def pg_engine(pg_database_url: str) -> Iterator[Engine]:
    """The run's PostgreSQL schema, emptied before each test."""
    engine = make_engine(pg_database_url)
    truncate_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'newsletter.db'}"


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    """A migrated SQLite database file of the test's own."""
    engine = make_engine(sqlite_url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each test that takes `engine` runs on SQLite and on PostgreSQL."""
    return request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")


@pytest.fixture
def settings(engine: Engine, tmp_path: Path) -> Settings:
    return make_settings(engine.url.render_as_string(hide_password=False), tmp_path)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as db:
        yield db
