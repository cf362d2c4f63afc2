"""Create or migrate the database schema with Alembic."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from newsletter.resources import MIGRATIONS_DIR


def alembic_config() -> Config:
    """Alembic configuration pointing at the bundled migrations (no alembic.ini needed: a wheel has none)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade_schema(engine: Engine) -> None:
    """Bring the schema at `engine` to the newest revision."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class SchemaNotCurrent(Exception):
    """The database lacks the schema this version needs; the message says what to run."""


def require_current_schema(engine: Engine) -> None:
    """Refuse a database that is not at the newest revision, before anything reads or writes it.

    A SQLite file that does not exist is refused without being created (connecting would create it).
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        if not Path(url.database).exists():
            raise SchemaNotCurrent(f"no database at {url.database}: run `newsletter db upgrade` first")
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    if current == heads:
        return
    if not current:
        raise SchemaNotCurrent("the database has no schema yet: run `newsletter db upgrade` first")
    known = {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if not current <= known:
        raise SchemaNotCurrent(
            f"the database schema is at revision {', '.join(sorted(current))}, which this version does not know "
            "(was it migrated by a newer one?)"
        )
    raise SchemaNotCurrent(
        f"the database schema is at revision {', '.join(sorted(current))}, not {', '.join(sorted(heads))}: "
        "run `newsletter db upgrade`"
    )
