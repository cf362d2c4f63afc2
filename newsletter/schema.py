"""Create or migrate the database schema with Alembic, and refuse a database that is not migrated."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from newsletter.resources import MIGRATIONS_DIR

if TYPE_CHECKING:
    from alembic.config import Config


def alembic_config() -> Config:
    """Alembic configuration pointing at the bundled migrations (no alembic.ini needed: a wheel has none)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade_schema(engine: Engine) -> None:
    """Bring the schema at `engine` to the newest revision."""
    from alembic import command

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


class SchemaNotCurrent(Exception):
    """The database lacks the schema this version needs; the message says what to run."""


def require_current_schema(engine: Engine) -> None:
    """Refuse a database that is not at the newest revision, before anything reads or writes it.

    A SQLite file that does not exist is refused without being created (connecting would create it).
    """
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        if not Path(url.database).exists():
            raise SchemaNotCurrent(f"no database at {url.database}: run `newsletter db upgrade` first")
    # Importing Alembic costs more than the rest of a `newsletter subscribe`: it is asked only when the
    # quick look (the version table against the migration files) does not find the database current.
    if _stored_revisions(engine) == head_revisions_in_files():
        return
    _check_with_alembic(engine)


def head_revisions_in_files() -> set[str]:
    """The newest revisions, from the `revision` and `down_revision` lines of the migration files."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        values = _assignments(path)
        revision, down = values.get("revision"), values.get("down_revision")
        if isinstance(revision, str):
            revisions.add(revision)
            # A merge revision has a tuple of parents.
            parents.update([down] if isinstance(down, str) else map(str, down) if isinstance(down, tuple) else ())
    return revisions - parents


# Where a migration's module header ends: its first top-level function, class or decorator.
_FIRST_DEFINITION = re.compile(r"^(?:def|async def|class|@)", re.MULTILINE)


def _assignments(path: Path) -> dict[str, object]:
    source = path.read_text(encoding="utf-8")
    # The identifiers sit in the header, above upgrade() and downgrade(): parsing only that is a
    # fraction of the whole file's cost, paid on every command. The whole file when the header
    # alone does not parse or does not name the revision.
    header = _FIRST_DEFINITION.search(source)
    if header is not None:
        try:
            values = _header_assignments(source[: header.start()])
        except SyntaxError:
            values = {}
        if "revision" in values:
            return values
    return _header_assignments(source)


def _header_assignments(source: str) -> dict[str, object]:
    values: dict[str, object] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in ("revision", "down_revision") and node.value:
                    try:
                        values[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        continue
    return values


def _stored_revisions(engine: Engine) -> set[str] | None:
    try:
        with engine.connect() as connection:
            return set(connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())
    except SQLAlchemyError:  # no version table: Alembic says what that means
        return None


def _check_with_alembic(engine: Engine) -> None:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    heads = set(scripts.get_heads())
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    if current == heads:
        return
    if not current:
        raise SchemaNotCurrent("the database has no schema yet: run `newsletter db upgrade` first")
    at = f"the database schema is at revision {', '.join(sorted(current))}"
    if not current <= {script.revision for script in scripts.walk_revisions()}:
        raise SchemaNotCurrent(f"{at}, which this version does not know (was it migrated by a newer one?)")
    raise SchemaNotCurrent(f"{at}, not {', '.join(sorted(heads))}: run `newsletter db upgrade`")
