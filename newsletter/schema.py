"""Create or migrate the database schema with Alembic."""

from __future__ import annotations

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
