"""Alembic environment: the URL comes from the caller's engine, else from Settings."""

from alembic import context
from sqlmodel import SQLModel

from newsletter import models  # noqa: F401  (registers the tables)
from newsletter.config import get_settings
from newsletter.db import make_engine
from newsletter.schema import foreign_keys_off

target_metadata = SQLModel.metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url") or get_settings().database_url
    engine = make_engine(url)
    with engine.connect() as conn, foreign_keys_off(conn):
        _run(conn)
    engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
