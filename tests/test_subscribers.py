"""The subscriber service: one validator with coded problems, public IDs in links, the migration that adds them."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from newsletter.db import make_engine
from newsletter.keywords import KeywordSyntaxError, SyntaxProblem
from newsletter.schema import alembic_config, foreign_keys_off, upgrade_schema
from newsletter.subscribers import InputField, InvalidInput, ProblemCode, validate
from newsletter.web.i18n import CHINESE, KEYWORD_MESSAGES, keyword_message


def test_the_validator_names_every_problem_by_field_with_its_parameters() -> None:
    with pytest.raises(InvalidInput) as raised:
        validate("not-an-address", ["robots", "  (swarm AND"], "xx", "Nowhere/City")

    found = {(p.field, p.code): dict(p.params) for p in raised.value.problems}
    no_at_sign = found[(InputField.EMAIL, ProblemCode.EMAIL_NO_AT_SIGN)]
    assert no_at_sign == {"detail": "An email address must have an @-sign."}
    syntax = found[(InputField.KEYWORDS, ProblemCode.KEYWORD_SYNTAX)]
    assert syntax["line"] == 2 and syntax["column"] >= 3
    assert found[(InputField.LANGUAGE, ProblemCode.LANGUAGE_UNKNOWN)] == {"language": "XX"}
    assert found[(InputField.TIMEZONE, ProblemCode.TIMEZONE_UNKNOWN)] == {"timezone": "Nowhere/City"}


def test_a_bad_address_is_explained_once_in_english_for_the_command_line() -> None:
    with pytest.raises(InvalidInput) as raised:
        validate("not-an-address", ["robots"], "ZH-HANS", "Asia/Shanghai")

    assert str(raised.value) == "that email address is not valid: An email address must have an @-sign."


def test_a_valid_subscription_is_normalized() -> None:
    request = validate(" Ada@Example.ORG ", ["robots", "Robots", ""], "zh-hans", "Europe/Berlin")

    assert request.email == "ada@example.org"
    assert request.preferences.keywords == ["robots"] and request.preferences.language == "ZH-HANS"


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_migration_gives_every_existing_subscriber_its_own_public_id(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if database == "sqlite":
        engine: Engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    else:
        engine = make_engine(request.getfixturevalue("pg_database_url").replace("search_path%3D", "search_path%3Dx"))
    config = alembic_config()
    with engine.begin() as connection:
        if database == "postgresql":
            connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {_schema_of(engine)}"))
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        for number in range(3):
            connection.execute(sa.text(
                "INSERT INTO subscriber (email, language, timezone, status, created_at, consecutive_hard_failures)"
                f" VALUES ('s{number}@example.org', 'ZH-HANS', 'UTC', 'active', CURRENT_TIMESTAMP, 0)"
            ))
        command.upgrade(config, "0003_subscriber_public_id")

    with engine.connect() as connection:
        public_ids = connection.execute(sa.text("SELECT public_id FROM subscriber")).scalars().all()
        indexes = sa.inspect(connection).get_indexes("subscriber")
    if database == "postgresql":
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {_schema_of(engine)} CASCADE"))
    engine.dispose()
    assert len(set(public_ids)) == 3 and all(len(public_id) >= 16 for public_id in public_ids)
    assert any(index["column_names"] == ["public_id"] and index["unique"] for index in indexes)


def _schema_of(engine: Engine) -> str:
    return str(engine.url.query["options"]).rpartition("=")[2]


def test_every_keyword_problem_has_chinese_words_for_the_chinese_page() -> None:
    assert set(KEYWORD_MESSAGES[CHINESE]) == set(SyntaxProblem)
    error = KeywordSyntaxError(SyntaxProblem.UNKNOWN_FIELD, 0, field="foo:")
    assert keyword_message(CHINESE, error) == "未知字段 'foo:'"
    assert keyword_message("EN", error) == "unknown field 'foo:'"


def test_upgrading_an_old_sqlite_database_keeps_every_subscribers_keywords(tmp_path: Path) -> None:
    """A batch migration rebuilds `subscriber`; with foreign keys on, the drop cascaded and emptied keywords."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = alembic_config()
    with engine.connect() as connection, foreign_keys_off(connection), connection.begin():
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO subscriber (id, email, language, timezone, status, created_at, consecutive_hard_failures)"
            " VALUES (1, 'kept@example.org', 'ZH-HANS', 'UTC', 'active', CURRENT_TIMESTAMP, 0)"
        ))
        connection.execute(sa.text(
            "INSERT INTO subscriber_keyword (subscriber_id, position, expression) VALUES (1, 0, 'diffusion policy')"
        ))

    upgrade_schema(engine)

    with engine.connect() as connection:
        keywords = connection.execute(sa.text("SELECT expression FROM subscriber_keyword")).scalars().all()
        foreign_keys = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()
    engine.dispose()
    assert keywords == ["diffusion policy"]
    assert foreign_keys == 1  # the connection goes back to the pool with its keys on again
