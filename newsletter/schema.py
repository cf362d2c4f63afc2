"""Create or migrate the database schema with Alembic."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine

from newsletter.resources import MIGRATIONS_DIR


def alembic_config() -> Config:
    """Alembic configuration pointing at the bundled migrations (no alembic.ini needed: a wheel has none)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade_schema(engine: Engine) -> None:
    """Bring the schema at `engine` to the newest revision."""
    config = alembic_config()
    with engine.connect() as connection, foreign_keys_off(connection), connection.begin():
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextmanager
def foreign_keys_off(connection: Connection) -> Iterator[None]:
    """On SQLite, foreign keys off while migrating: a batch migration copies a table and drops the old
    one, and with keys on that drop cascades and deletes every row that points at it (keywords, say).
    The pragma only takes effect outside a transaction, so it is set before the migration's begins."""
    if connection.dialect.name != "sqlite":
        yield
        return
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    connection.commit()
    try:
        yield
    finally:
        connection.rollback()
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        connection.commit()
