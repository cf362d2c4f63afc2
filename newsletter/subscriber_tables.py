"""The tables a subscriber command uses: subscribers, their keywords and the app's secrets, with the base
of every table.

`newsletter.models` holds these with all the others, and is what to import: only the commands that
must start quickly (`newsletter subscribe`, `subscribers import`) import this module instead, so as
not to build some twenty tables they never touch (a tenth of a subscribe's start).
"""

from __future__ import annotations

import datetime as dt
import secrets
from enum import StrEnum

from sqlalchemy import Boolean, Column, ForeignKey, Integer, String, Table, UniqueConstraint, false, inspect, true
from sqlmodel import Field, SQLModel
from sqlmodel._compat import SQLModelConfig  # the type of model_config, not exported


class TableModel(SQLModel):
    """The base of every table. Rows are built by SQLAlchemy and SQLModel's table constructor, never
    validated by pydantic: each table's validator and serializer are built on their first use
    (defer_build), not for every table at each command's start."""

    model_config = SQLModelConfig(defer_build=True)


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a table model, for statements that go around the ORM (bulk upserts, raw slots)."""
    # SQLModel sets `__table__` without declaring it; the mapper's table is the same object, typed.
    table = inspect(model).local_table
    assert isinstance(table, Table)
    return table


def utcnow() -> dt.datetime:
    """Aware UTC now (SQLModel's datetime columns refuse naive values)."""
    return dt.datetime.now(dt.UTC)


class SubscriberStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    PAUSED = "paused"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"


class DigestFrequency(StrEnum):
    """How often a subscriber is mailed: every announcement day, or once a week on a weekday they pick."""

    DAILY = "daily"
    WEEKLY = "weekly"


def new_public_id() -> str:
    """A random, unguessable subscriber ID for links (row IDs can be handed out again)."""
    return secrets.token_urlsafe(16)


class Subscriber(TableModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    # Links name this, never the row ID: a deleted subscriber's link cannot reach whoever gets the number next.
    public_id: str = Field(
        default_factory=new_public_id,
        sa_column=Column(String(32), nullable=False, unique=True, index=True, default=new_public_id),
    )
    email: str = Field(max_length=320, sa_column_kwargs={"unique": True}, index=True)
    # No defaults here: subscribers.subscribe fills them from Settings.
    language: str = Field(max_length=16)
    timezone: str = Field(max_length=64)
    status: SubscriberStatus = Field(
        default=SubscriberStatus.PENDING, sa_column=Column(String(16), nullable=False)
    )
    created_at: dt.datetime = Field(default_factory=utcnow)
    confirmed_at: dt.datetime | None = None
    unsubscribed_at: dt.datetime | None = None
    confirmation_sent_at: dt.datetime | None = None
    consecutive_hard_failures: int = 0
    # Raised when the subscriber leaves and when a confirmation is mailed to someone not subscribed:
    # links carry the generation they were made in, so one from before is void after.
    generation: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    # A change asked for through the public form, applied only when the mailbox confirms it
    # (its keywords are the subscriber's PendingKeyword rows).
    pending_language: str | None = Field(default=None, max_length=16)
    pending_timezone: str | None = Field(default=None, max_length=64)
    # The digest schedule (newsletter.periods reads these): daily, or weekly on `weekday` (0 Monday .. 6 Sunday).
    frequency: DigestFrequency = Field(
        default=DigestFrequency.DAILY,
        sa_column=Column(String(8), nullable=False, default=DigestFrequency.DAILY, server_default="daily"),
    )
    weekday: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0, server_default="0"))
    # A short mail on an announcement day that matched none of the keywords (opt-in).
    empty_day_note: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, default=False, server_default=false())
    )
    # An "Updated" section for papers sent before that got a new version, a journal reference or a DOI.
    updates: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, default=True, server_default=true()))


class SubscriberKeyword(TableModel, table=True):
    __tablename__ = "subscriber_keyword"
    __table_args__ = (UniqueConstraint("subscriber_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(
        sa_column=Column(Integer, ForeignKey("subscriber.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    position: int
    expression: str = Field(max_length=200)


class PendingKeyword(TableModel, table=True):
    """A keyword of a change that waits for the mailbox's confirmation."""

    __tablename__ = "pending_keyword"
    __table_args__ = (UniqueConstraint("subscriber_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(
        sa_column=Column(Integer, ForeignKey("subscriber.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    position: int
    expression: str = Field(max_length=200)


class AppSecret(TableModel, table=True):
    """Secrets generated on first run (the link-signing key when none is configured)."""

    __tablename__ = "app_secret"

    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=256)
