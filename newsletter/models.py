"""SQLModel tables: subscribers and their keywords, papers, translations, runs, deliveries.

Every table is here, and here is where to import them from; the subscriber tables and the base of
every table are defined apart, in `newsletter.subscriber_tables` (see why there).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.types import TypeEngine
from sqlmodel import Field

# Defined apart (see newsletter.subscriber_tables) and imported from here, with every other table.
from newsletter.subscriber_tables import AppSecret as AppSecret
from newsletter.subscriber_tables import DigestFrequency as DigestFrequency
from newsletter.subscriber_tables import PendingKeyword as PendingKeyword
from newsletter.subscriber_tables import Subscriber as Subscriber
from newsletter.subscriber_tables import SubscriberKeyword as SubscriberKeyword
from newsletter.subscriber_tables import SubscriberStatus as SubscriberStatus
from newsletter.subscriber_tables import TableModel as TableModel
from newsletter.subscriber_tables import new_public_id as new_public_id
from newsletter.subscriber_tables import table_of as table_of
from newsletter.subscriber_tables import utcnow as utcnow


class _JSONB(TypeDecorator[object]):
    """PostgreSQL's JSONB, its dialect loaded only when a PostgreSQL engine uses the type.

    Importing the PostgreSQL dialect costs a SQLite command (`newsletter subscribe`) a tenth of its
    start; the DDL, binds and results are those of JSONB itself (psycopg's variant of it).
    """

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[object]:
        from sqlalchemy.dialects.postgresql import JSONB

        return dialect.type_descriptor(JSONB())

    # The compiler asks the dialect-level type, which for a variant is this decorator rather than
    # what it wraps, whether to cast binds: answered by JSONB, so they stay `%(authors)s::JSONB`.
    @property
    def render_bind_cast(self) -> bool:  # type: ignore[override]
        return self.impl_instance.render_bind_cast

    @property
    def render_literal_cast(self) -> bool:  # type: ignore[override]
        return self.impl_instance.render_literal_cast


# JSONB on PostgreSQL: comparable (DISTINCT works) and compact.
JSON_VALUE = JSON().with_variant(_JSONB(), "postgresql")



class Paper(TableModel, table=True):
    arxiv_id: str = Field(primary_key=True, max_length=40)
    version: int = 1
    title: str = Field(sa_column=Column(Text, nullable=False))
    abstract: str = Field(sa_column=Column(Text, nullable=False))
    authors: list[str] = Field(default_factory=list, sa_column=Column(JSON_VALUE, nullable=False))
    categories: list[str] = Field(default_factory=list, sa_column=Column(JSON_VALUE, nullable=False))
    primary_category: str = Field(default="", max_length=32)
    comment: str | None = Field(default=None, sa_column=Column(Text))
    journal_ref: str | None = Field(default=None, sa_column=Column(Text))
    doi: str | None = Field(default=None, max_length=200)
    published: dt.datetime | None = None
    updated: dt.datetime | None = None
    details_source: str = Field(default="api", max_length=8)
    harvested_at: dt.datetime = Field(default_factory=utcnow)


class AnnounceType(StrEnum):
    NEW = "new"
    CROSS = "cross"
    REPLACE = "replace"


class Announcement(TableModel, table=True):
    """A paper named by the announcement feed on an announcement day."""

    day: dt.date = Field(primary_key=True)
    arxiv_id: str = Field(
        sa_column=Column(String(40), ForeignKey("paper.arxiv_id", ondelete="CASCADE"), primary_key=True)
    )
    announce_type: str = Field(max_length=16)


class Translation(TableModel, table=True):
    arxiv_id: str = Field(
        sa_column=Column(String(40), ForeignKey("paper.arxiv_id", ondelete="CASCADE"), primary_key=True)
    )
    language: str = Field(primary_key=True, max_length=16)
    title: str = Field(sa_column=Column(Text, nullable=False))
    abstract: str = Field(sa_column=Column(Text, nullable=False))
    source: str = Field(default="deepl", max_length=16)
    billed_characters: int = 0
    created_at: dt.datetime = Field(default_factory=utcnow)


class TranslationRejection(TableModel, table=True):
    """A paper's translation DeepL returned unusable (LaTeX placeholders lost or changed): never bought again."""

    __tablename__ = "translation_rejection"

    arxiv_id: str = Field(
        sa_column=Column(String(40), ForeignKey("paper.arxiv_id", ondelete="CASCADE"), primary_key=True)
    )
    language: str = Field(primary_key=True, max_length=16)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    # What became of the one different request tried after the rejection.
    fallback: str = Field(sa_column=Column(Text, nullable=False))
    billed_characters: int = 0
    rejected_at: dt.datetime = Field(default_factory=utcnow)


class RunStatus(StrEnum):
    RUNNING = "running"
    NO_ANNOUNCEMENT = "no_announcement"
    COMPLETED = "completed"
    # Every stage ran but digests are still owed (the mail server refused or was down); the next run resumes it.
    INCOMPLETE = "incomplete"
    FAILED = "failed"


class Stage(StrEnum):
    """The daily run's stages in the order they run: the one place that order is written."""

    HARVEST = "harvest"
    MATCH = "match"
    TRANSLATE = "translate"
    DELIVER = "deliver"


class Run(TableModel, table=True):
    """One daily run per announcement day; its stages are rows of run_stage. Written by newsletter.runs."""

    id: int | None = Field(default=None, primary_key=True)
    day: dt.date = Field(sa_column_kwargs={"unique": True}, index=True)
    status: RunStatus = Field(default=RunStatus.RUNNING, sa_column=Column(String(24), nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(Text))
    # The stage a failed run stopped in (NULL when it failed before any stage, or did not fail).
    failed_stage: Stage | None = Field(default=None, sa_column=Column(String(16)))
    started_at: dt.datetime = Field(default_factory=utcnow)
    finished_at: dt.datetime | None = None
    billed_characters: int = 0
    # Set in the transaction that stored the day's papers: a rerun never fetches the day again.
    harvested_at: dt.datetime | None = None
    # Stored as a missed day by a later day's harvest (from the API), not from its own feed.
    caught_up: bool = False
    harvest_failures: int = 0
    # A harvest attempt that failed after the day itself was stored (a missed day's, say).
    last_harvest_failure_at: dt.datetime | None = None
    last_harvest_failure: str | None = Field(default=None, sa_column=Column(Text))
    # When a poll or a harvest first found the day in the announcement feed (set once).
    feed_seen_at: dt.datetime | None = None
    # When the mail server accepted the day's last digest (set when the run ends).
    last_accepted_at: dt.datetime | None = None


class RunStage(TableModel, table=True):
    """One stage of a day's run: when it ran and what it counted (NULL: not this stage's figure)."""

    __tablename__ = "run_stage"
    __table_args__ = (UniqueConstraint("run_id", "stage"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(
        sa_column=Column(Integer, ForeignKey("run.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    stage: Stage = Field(sa_column=Column(String(16), nullable=False))
    started_at: dt.datetime = Field(default_factory=utcnow)
    finished_at: dt.datetime | None = None
    seconds: float | None = None
    announced: int | None = None  # harvest: papers the feed named for the day
    selections: int | None = None  # match: (subscriber, paper) pairs chosen
    translated: int | None = None  # translate: papers newly translated
    recipients: int | None = None  # deliver: subscribers with papers for the day
    queued: int | None = None  # deliver: recipients still owed a digest at the fan-out
    # deliver: when every chunk of `queued` was handed to the workers (a redelivered fan-out then skips).
    enqueued_at: dt.datetime | None = None
    sent: int | None = None
    failed: int | None = None
    pending: int | None = None  # deliver: digests still claimed by a sender when the run ended
    # Figures shown but never read to decide anything (replaced papers, DeepL requests, ...).
    details: dict = Field(default_factory=dict, sa_column=Column(JSON_VALUE, nullable=False))


class Selection(TableModel, table=True):
    """A paper chosen for a subscriber on a day, under the first keyword that matched it."""

    # Composing digests reads a batch of subscribers' selections (migration 0009).
    __table_args__ = (Index("ix_selection_subscriber_day", "subscriber_id", "day"),)

    day: dt.date = Field(primary_key=True)
    subscriber_id: int = Field(
        sa_column=Column(Integer, ForeignKey("subscriber.id", ondelete="CASCADE"), primary_key=True)
    )
    arxiv_id: str = Field(
        sa_column=Column(String(40), ForeignKey("paper.arxiv_id", ondelete="CASCADE"), primary_key=True)
    )
    keyword_position: int
    terms: list[str] = Field(default_factory=list, sa_column=Column(JSON_VALUE, nullable=False))
    # The order within a keyword's section (newsletter.ranking), decided in the match stage:
    # feedback_band descending, title_hit first, distinct_terms descending, announce_position.
    title_hit: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    distinct_terms: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    announce_position: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    # Max TF-IDF cosine to a paper the subscriber liked minus the max to one they refused (0: no feedback).
    feedback_score: float = Field(default=0.0, sa_column=Column(Float, nullable=False, server_default="0"))
    # 1: close to a liked paper, -1: close to a refused one (and not to a liked one), 0: neither.
    feedback_band: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))


class DeliveryStatus(StrEnum):
    CLAIMED = "claimed"
    SENT = "sent"
    FAILED = "failed"


def _period_of_row(context: DefaultExecutionContext) -> dt.date:
    # A row written without a period (a daily digest) is its day's period.
    day: dt.date = context.get_current_parameters()["day"]
    return day


class Delivery(TableModel, table=True):
    """One digest per subscriber per period (a day, or a weekly subscriber's week); claimed before sending."""

    __table_args__ = (UniqueConstraint("subscriber_id", "period", name="uq_delivery_subscriber_period"),)

    id: int | None = Field(default=None, primary_key=True)
    # Kept (as NULL) when a subscriber deletes their data, so counts stay anonymous.
    subscriber_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("subscriber.id", ondelete="SET NULL"), nullable=True),
    )
    # The run's announcement day that sent it.
    day: dt.date = Field(index=True)
    # What "once" means (newsletter.periods): the day for daily digests, the week's chosen weekday for weekly ones.
    period: dt.date = Field(
        default=None, sa_column=Column(Date, nullable=False, index=True, default=_period_of_row)
    )
    status: DeliveryStatus = Field(
        default=DeliveryStatus.CLAIMED, sa_column=Column(String(16), nullable=False)
    )
    attempts: int = 0
    # A failure the next run should try again (the server said "later", the connection dropped).
    retryable: bool = False
    error: str | None = Field(default=None, sa_column=Column(Text))
    message_id: str | None = Field(default=None, max_length=255)
    paper_count: int = 0
    claimed_at: dt.datetime = Field(default_factory=utcnow)
    sent_at: dt.datetime | None = None


class SentPaper(TableModel, table=True):
    """A paper a subscriber has been mailed, so no later version or cross-list repeats it."""

    __tablename__ = "sent_paper"

    subscriber_id: int = Field(
        sa_column=Column(Integer, ForeignKey("subscriber.id", ondelete="CASCADE"), primary_key=True)
    )
    arxiv_id: str = Field(primary_key=True, max_length=40)
    # Indexed: choosing recipients reads only the last weeks of the ledger.
    day: dt.date = Field(index=True)
    # What the subscriber was last shown of the paper: a later version, journal reference or DOI is an update.
    version: int | None = None
    journal_ref: str | None = Field(default=None, sa_column=Column(Text))
    doi: str | None = Field(default=None, max_length=200)


class FeedbackVerdict(StrEnum):
    MORE = "more"  # "more like this"
    LESS = "less"  # "not for me"


class PaperFeedback(TableModel, table=True):
    """A subscriber's verdict on a paper they were sent; a later verdict on the same paper replaces it."""

    __tablename__ = "paper_feedback"

    subscriber_id: int = Field(
        sa_column=Column(Integer, ForeignKey("subscriber.id", ondelete="CASCADE"), primary_key=True)
    )
    arxiv_id: str = Field(
        sa_column=Column(String(40), ForeignKey("paper.arxiv_id", ondelete="CASCADE"), primary_key=True)
    )
    verdict: FeedbackVerdict = Field(sa_column=Column(String(8), nullable=False))
    created_at: dt.datetime = Field(default_factory=utcnow)


class DeepLUsage(TableModel, table=True):
    """DeepL characters per UTC calendar day; a request reserves before it is sent, so no run overspends."""

    __tablename__ = "deepl_usage"

    day: dt.date = Field(primary_key=True)
    # Billed plus reserved by requests in flight (a crashed request keeps its reservation).
    committed: int = 0
    billed: int = 0


class DeepLGlossary(TableModel, table=True):
    """The glossary uploaded to DeepL for a target language, re-created when its entries change."""

    __tablename__ = "deepl_glossary"

    target_language: str = Field(primary_key=True, max_length=16)
    glossary_id: str = Field(max_length=128)
    entries_sha256: str = Field(max_length=64)
    entry_count: int = 0
    created_at: dt.datetime = Field(default_factory=utcnow)


class RateLimitSlot(TableModel, table=True):
    """The next free request slot of a rate-limited remote API (used when Redis is not there)."""

    __tablename__ = "rate_limit_slot"

    name: str = Field(primary_key=True, max_length=64)
    next_free: float = 0.0


class HarvestTally(TableModel, table=True):
    """What the announcement feed listed for a day and how much of it the harvest stored (one row per day).

    announced_* count distinct IDs by their announce type; `stored` those now held with the API's
    details; the rest is named in harvest_gap (not returned, unparsed) or `replace_not_held`.
    """

    __tablename__ = "harvest_tally"

    day: dt.date = Field(primary_key=True)
    source: str = Field(default="feed", max_length=16)  # "feed", or "api-window" for a caught-up day
    announced_new: int = 0
    announced_cross: int = 0
    announced_replace: int = 0
    stored: int = 0
    # Replacements of papers never harvested here: nobody here was sent them, so they are not fetched.
    replace_not_held: int = 0
    # Papers no subscriber's keywords matched, kept with the feed's own fields to save API requests
    # (NEWSLETTER_ARXIV_DETAILS=selected).
    details_skipped: int = 0
    recorded_at: dt.datetime = Field(default_factory=utcnow)


class FeedCategoryCount(TableModel, table=True):
    """Items the day's announcement feed listed per category and announce type."""

    __tablename__ = "feed_category_count"

    day: dt.date = Field(primary_key=True)
    category: str = Field(primary_key=True, max_length=32)
    announce_type: str = Field(primary_key=True, max_length=16)
    count: int = 0


class GapKind(StrEnum):
    """Why part of a day's announcement is not stored with its details."""

    NOT_RETURNED = "not_returned"  # the API did not return the ID (the feed's own fields stand in)
    UNPARSED = "unparsed"  # a feed item that could not be read (subject: the reason)
    EMPTY_CATEGORY = "empty_category"  # a configured category with no item on an announcement day


class HarvestGap(TableModel, table=True):
    """One named difference between what the feed announced and what the harvest stored."""

    __tablename__ = "harvest_gap"

    day: dt.date = Field(primary_key=True)
    kind: GapKind = Field(sa_column=Column(String(16), primary_key=True))
    subject: str = Field(primary_key=True, max_length=200)


class FeedValidator(TableModel, table=True):
    """The announcement feed's cache validators, so an unchanged feed costs one 304."""

    __tablename__ = "feed_validator"

    url: str = Field(primary_key=True, max_length=1000)
    etag: str | None = Field(default=None, max_length=500)
    last_modified: str | None = Field(default=None, max_length=64)
    # The announcement day the feed showed at its last full answer (None: no announcement).
    day: dt.date | None = None
    fetched_at: dt.datetime = Field(default_factory=utcnow)
    changed_at: dt.datetime = Field(default_factory=utcnow)


class AlertCause(StrEnum):
    FEED_LATE = "feed_late"
    HARVEST_INCOMPLETE = "harvest_incomplete"
    RUN_FAILED = "run_failed"
    DIGESTS_OWED = "digests_owed"


class AdminAlert(TableModel, table=True):
    """An alert to the operator, inserted once per day and cause; mailed to NEWSLETTER_ADMIN_EMAIL."""

    __tablename__ = "admin_alert"

    day: dt.date = Field(primary_key=True)
    cause: AlertCause = Field(sa_column=Column(String(24), primary_key=True))
    detail: str = Field(sa_column=Column(Text, nullable=False))
    raised_at: dt.datetime = Field(default_factory=utcnow)
    mailed_at: dt.datetime | None = None
    mail_attempts: int = 0
    mail_error: str | None = Field(default=None, sa_column=Column(Text))
