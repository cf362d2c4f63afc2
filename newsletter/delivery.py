"""The delivery ledger: who is owed the day's digest, one claimed row per subscriber and day, and its outcome.

Building and sending a message is newsletter.mail's job; composing a digest is newsletter.digests'.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, cast

from sqlalchemy import CursorResult, Select, and_, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from newsletter.config import Settings
from newsletter.digests import compose_digest, render_mail
from newsletter.mail import MailBackend as MailBackend
from newsletter.mail import make_backend as make_backend
from newsletter.mail.errors import DeliveryStopped, PermanentDeliveryError, TemporaryDeliveryError
from newsletter.mail.message import Sender, UnusableAddress, build_message, digest_message_id
from newsletter.mail.outbox import OutboxBackend as OutboxBackend
from newsletter.mail.outbox import outbox_name as outbox_name
from newsletter.mail.smtp import SmtpBackend as SmtpBackend
from newsletter.models import (
    Announcement,
    Delivery,
    DeliveryStatus,
    Selection,
    SentPaper,
    Subscriber,
    SubscriberKeyword,
    SubscriberStatus,
    utcnow,
)
from newsletter.periods import carried_since, due_clause, period_column
from newsletter.render import Digest, DigestRenderer
from newsletter.tokens import LinkSigner
from newsletter.updates import record_updates_shown

log = logging.getLogger(__name__)

HARD_FAILURES_BEFORE_BOUNCE = 3
# Default lease; NEWSLETTER_DELIVERY_CLAIM_LEASE_SECONDS overrides it.
CLAIM_LEASE = dt.timedelta(minutes=10)


@dataclass
class DeliveryResult:
    """What one deliver_day call did: counts, the addresses it marked bounced, and each failure's reason."""

    sent: int = 0
    failed: int = 0
    skipped: int = 0
    bounced: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    # Why the rest of the list was left for a rerun: the server's reply that blamed no recipient.
    aborted: str | None = None


def recipients_query(day: dt.date) -> Select[tuple[int, dt.date]]:
    """(id, period) of the active subscribers whose digest the run of `day` sends, as a query to run or nest.

    Their digest is due that day (newsletter.periods) and holds a paper, or they asked for the empty-day note
    and arXiv announced papers that day.
    """
    # Who has a paper under a keyword they still have, selected up to `day`, that no other day's digest
    # carried. Uncorrelated, so the database builds the set once (a hashed subplan), not once per subscriber.
    holding_paper = (
        select(col(Selection.subscriber_id))
        .join(
            SubscriberKeyword,
            (col(SubscriberKeyword.subscriber_id) == col(Selection.subscriber_id))
            & (col(SubscriberKeyword.position) == col(Selection.keyword_position)),
        )
        .outerjoin(
            SentPaper,
            (col(SentPaper.subscriber_id) == col(Selection.subscriber_id))
            & (col(SentPaper.arxiv_id) == col(Selection.arxiv_id))
            & (col(SentPaper.day) != day)
            # A paper is sent on or after the day it was selected: only that window of the ledger is read.
            & (col(SentPaper.day) >= carried_since(day)),
        )
        .where(col(Selection.day) <= day, col(Selection.day) >= carried_since(day), col(SentPaper.arxiv_id).is_(None))
    )
    wants_note = and_(col(Subscriber.empty_day_note), exists(select(col(Announcement.arxiv_id)).where(
        col(Announcement.day) == day)))
    # SQLModel types the id `int | None` (unset before the insert); a stored row's primary key is never NULL.
    return cast(
        "Select[tuple[int, dt.date]]",
        select(col(Subscriber.id), period_column(day).label("period")).where(
            col(Subscriber.status) == SubscriberStatus.ACTIVE,
            due_clause(day),
            or_(col(Subscriber.id).in_(holding_paper), wants_note),
        ),
    )


def recipients_for_day(session: Session, day: dt.date) -> list[int]:
    """The subscribers the run of `day` mails (recipients_query), in id order."""
    return list(session.scalars(recipients_query(day).order_by(col(Subscriber.id))))


def _delivery_row_exists(session: Session, subscriber_id: int, period: dt.date) -> bool:
    found = session.scalar(
        select(col(Delivery.id)).where(col(Delivery.subscriber_id) == subscriber_id, col(Delivery.period) == period)
    )
    return found is not None


def subscriber_periods(session: Session, subscriber_ids: list[int], day: dt.date) -> dict[int, dt.date]:
    """Each subscriber's period for a digest sent on `day` (newsletter.periods)."""
    periods: dict[int, dt.date] = {}
    for start in range(0, len(subscriber_ids), 1000):
        rows = session.execute(
            select(col(Subscriber.id), period_column(day)).where(
                col(Subscriber.id).in_(subscriber_ids[start : start + 1000])
            )
        )
        periods.update({subscriber_id: period for subscriber_id, period in rows})
    return periods


def claim_delivery(
    session: Session,
    subscriber_id: int,
    day: dt.date,
    lease: dt.timedelta = CLAIM_LEASE,
    period: dt.date | None = None,
) -> Delivery | None:
    """Insert the period's delivery row (default period: the day), or take over a stale or retryable one;
    None if someone has it."""
    period = period or day
    delivery = Delivery(subscriber_id=subscriber_id, day=day, period=period)
    try:
        with session.begin_nested():
            session.add(delivery)
        session.commit()
        return delivery
    except IntegrityError:
        session.rollback()
        if not _delivery_row_exists(session, subscriber_id, period):
            if session.get(Subscriber, subscriber_id) is None:
                return None  # the subscriber left while the day was being sent
            raise  # no row holds the claim: the database refused the insert itself (a trigger, a full disk)
    now = utcnow()
    # One UPDATE decides: under concurrency the database re-checks the condition on the row it locks.
    # SQLModel's Session.execute says Result; an UPDATE gives SQLAlchemy's CursorResult, which has rowcount.
    taken = cast(
        "CursorResult[Any]",
        session.execute(
            update(Delivery)
            .where(
                col(Delivery.subscriber_id) == subscriber_id,
                col(Delivery.period) == period,
                or_(
                    (col(Delivery.status) == DeliveryStatus.CLAIMED) & (col(Delivery.claimed_at) <= now - lease),
                    (col(Delivery.status) == DeliveryStatus.FAILED) & col(Delivery.retryable),
                ),
            )
            .values(status=DeliveryStatus.CLAIMED, claimed_at=now)
            .execution_options(synchronize_session=False)
        ),
    )
    session.commit()
    if taken.rowcount != 1:
        return None
    return session.scalars(
        select(Delivery)
        .where(col(Delivery.subscriber_id) == subscriber_id, col(Delivery.period) == period)
        .execution_options(populate_existing=True)
    ).one()


@dataclass(frozen=True)
class _DayContext:
    day: dt.date
    settings: Settings
    backend: MailBackend
    signer: LinkSigner
    renderer: DigestRenderer
    sender: Sender


def deliver_day(
    session: Session,
    day: dt.date,
    settings: Settings,
    backend: MailBackend,
    signer: LinkSigner,
    renderer: DigestRenderer,
    subscriber_ids: Iterable[int] | None = None,
) -> DeliveryResult:
    """Send the day's digests (to `subscriber_ids`, default all recipients); commits per subscriber."""
    result = DeliveryResult()
    context = _DayContext(day, settings, backend, signer, renderer, Sender.from_settings(settings))
    lease = dt.timedelta(seconds=settings.delivery_claim_lease_seconds)
    ids = list(subscriber_ids) if subscriber_ids is not None else recipients_for_day(session, day)
    periods = subscriber_periods(session, ids, day)
    for subscriber_id in ids:
        delivery = claim_delivery(session, subscriber_id, day, lease, periods.get(subscriber_id))
        if delivery is None:
            result.skipped += 1
            continue
        try:
            _deliver_claimed(session, delivery, context, result)
        except DeliveryStopped as exc:
            # Every later recipient would fail the same way; the unclaimed rest waits for a rerun.
            result.aborted = str(exc)
            log.error("delivery for %s stopped: %s", day, exc)
            break
    return result


def _deliver_claimed(session: Session, delivery: Delivery, context: _DayContext, result: DeliveryResult) -> None:
    subscriber = session.get(Subscriber, delivery.subscriber_id, populate_existing=True)
    if subscriber is None or subscriber.status != SubscriberStatus.ACTIVE:
        session.delete(delivery)
        session.commit()
        result.skipped += 1
        return
    try:
        digest, message = _compose(session, subscriber, context)
    except UnusableAddress as exc:
        # The same stored address fails the same way on a rerun, but it is no bounce: no server refused it.
        _record_failure(session, delivery, subscriber, exc, result)
        return
    except Exception as exc:  # noqa: BLE001 - one bad digest must not stop the list; a rerun retries it
        log.exception("could not build the digest for subscriber %s", subscriber.id)
        _record_failure(session, delivery, subscriber, TemporaryDeliveryError(f"not built: {exc!r}"), result)
        return
    outcome = _send_with_retries(context.backend, message, delivery, context.settings)
    if outcome is None:
        _record_sent(session, delivery, subscriber, digest, message, result)
    else:
        _record_failure(session, delivery, subscriber, outcome, result)
        if isinstance(outcome, DeliveryStopped):
            raise outcome


def _compose(session: Session, subscriber: Subscriber, context: _DayContext) -> tuple[Digest, EmailMessage]:
    day = context.day
    digest = compose_digest(session, context.settings, context.signer, subscriber, day)
    message_id = digest_message_id(context.sender, subscriber.email, day)
    rendered = render_mail(session, context.renderer, subscriber, digest)
    message = build_message(rendered, subscriber.email, context.sender, digest.links, message_id)
    message["X-Digest-Day"] = day.isoformat()
    return digest, message


def _send_with_retries(
    backend: MailBackend, message: EmailMessage, delivery: Delivery, settings: Settings
) -> TemporaryDeliveryError | PermanentDeliveryError | DeliveryStopped | None:
    retrying = Retrying(
        retry=retry_if_exception_type(TemporaryDeliveryError),
        stop=stop_after_attempt(settings.smtp_max_attempts),
        wait=wait_exponential(multiplier=settings.smtp_retry_base_seconds, max=60),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                delivery.attempts += 1
                backend.send(message)
    except (TemporaryDeliveryError, PermanentDeliveryError, DeliveryStopped) as exc:
        return exc
    return None


def _record_sent(
    session: Session,
    delivery: Delivery,
    subscriber: Subscriber,
    digest: Digest,
    message: EmailMessage,
    result: DeliveryResult,
) -> None:
    delivery.status = DeliveryStatus.SENT
    delivery.sent_at = utcnow()
    delivery.message_id = str(message["Message-ID"])
    delivery.paper_count = digest.paper_count
    delivery.error = None
    delivery.retryable = False
    subscriber.consecutive_hard_failures = 0
    assert subscriber.id is not None  # loaded from its row
    # One query for what is recorded already, one batched insert for the rest.
    recorded = set(
        session.scalars(
            select(col(SentPaper.arxiv_id)).where(
                col(SentPaper.subscriber_id) == subscriber.id, col(SentPaper.arxiv_id).in_(digest.arxiv_ids)
            )
        )
    )
    # With what the subscriber saw of each paper: a later version or reference is an update (newsletter.updates).
    session.add_all(
        SentPaper(subscriber_id=subscriber.id, arxiv_id=paper.arxiv_id, day=digest.day, version=paper.version,
                  journal_ref=paper.journal_ref, doi=paper.doi)
        for paper in {p.arxiv_id: p for p in digest.papers}.values()
        if paper.arxiv_id not in recorded
    )
    record_updates_shown(session, subscriber.id, digest.updates)
    session.add_all([delivery, subscriber])
    session.commit()
    result.sent += 1


def _record_failure(
    session: Session, delivery: Delivery, subscriber: Subscriber, outcome: Exception, result: DeliveryResult
) -> None:
    """The delivery as failed with its reason; a refusal of the address counts towards marking it bounced."""
    delivery.status = DeliveryStatus.FAILED
    delivery.error = str(outcome)[:2000]
    # A refusal of our sender or message is nobody's bounce: the digest stays owed for the next run.
    delivery.retryable = isinstance(outcome, (TemporaryDeliveryError, DeliveryStopped))
    session.add(delivery)
    result.failed += 1
    result.errors[subscriber.email] = delivery.error
    # The id, and the address as repr: a stored address may hold line breaks.
    log.warning("delivery to subscriber %s (%r) failed: %s", subscriber.id, subscriber.email, delivery.error)
    if isinstance(outcome, PermanentDeliveryError):
        # Counted in SQL so two days delivered at once both count.
        session.execute(
            update(Subscriber)
            .where(col(Subscriber.id) == subscriber.id)
            .values(consecutive_hard_failures=col(Subscriber.consecutive_hard_failures) + 1)
        )
        # SQLModel's Session.execute says Result; an UPDATE gives SQLAlchemy's CursorResult, which has rowcount.
        bounced = cast(
            "CursorResult[Any]",
            session.execute(
                update(Subscriber)
                .where(
                    col(Subscriber.id) == subscriber.id,
                    col(Subscriber.status) == SubscriberStatus.ACTIVE,
                    col(Subscriber.consecutive_hard_failures) >= HARD_FAILURES_BEFORE_BOUNCE,
                )
                .values(status=SubscriberStatus.BOUNCED)
            ),
        )
        if bounced.rowcount == 1:
            result.bounced.append(subscriber.email)
            log.warning("%s bounced %d times in a row: no longer mailed", subscriber.email, HARD_FAILURES_BEFORE_BOUNCE)
    session.commit()


def bounced_subscribers(session: Session, limit: int = 10) -> list[tuple[str, str | None]]:
    """Bounced addresses (up to `limit`) with the server's last refusal."""
    rows = session.execute(
        select(col(Subscriber.id), col(Subscriber.email))
        .where(col(Subscriber.status) == SubscriberStatus.BOUNCED)
        .order_by(col(Subscriber.email))
        .limit(limit)
    ).all()
    return [
        (
            address,
            session.scalar(
                select(col(Delivery.error))
                .where(col(Delivery.subscriber_id) == subscriber_id, col(Delivery.status) == DeliveryStatus.FAILED)
                .order_by(col(Delivery.day).desc())
                .limit(1)
            ),
        )
        for subscriber_id, address in rows
    ]


@dataclass(frozen=True)
class OwedDigests:
    """The day's digests not delivered yet: never tried, failed but retryable, claimed and unfinished."""

    never_tried: int = 0
    retryable: int = 0
    # (address, when its claim lease ends): a sender claimed it and has not recorded the outcome.
    claimed: list[tuple[str, dt.datetime]] = field(default_factory=list)
    last_reply: str | None = None

    @property
    def total(self) -> int:
        """How many digests the day still owes."""
        return self.never_tried + self.retryable + len(self.claimed)

    def describe(self) -> str | None:
        """One line saying how many digests are owed and why; None when none is."""
        if not self.total:
            return None
        line = f"{self.total} digests owed"
        if self.last_reply:
            line += f" ({self.never_tried + self.retryable} not sent: {self.last_reply})"
        if self.claimed:
            waiting = ", ".join(f"{address} until {ends:%Y-%m-%d %H:%M} UTC" for address, ends in self.claimed)
            line += f"; waiting for their claim lease: {waiting}"
        return line


def owed_digests(session: Session, day: dt.date, lease: dt.timedelta = CLAIM_LEASE) -> OwedDigests:
    """What the day still owes its recipients, and the server's last reply for a retryable failure."""
    recipients = set(recipients_for_day(session, day))
    rows = session.execute(
        select(
            col(Delivery.subscriber_id), col(Delivery.status), col(Delivery.retryable), col(Delivery.error),
            col(Delivery.claimed_at),
        )
        .where(col(Delivery.day) == day, col(Delivery.status) != DeliveryStatus.SENT)
        .order_by(col(Delivery.claimed_at))
    ).all()
    tried = set(session.scalars(select(col(Delivery.subscriber_id)).where(col(Delivery.day) == day)))
    retryable = [row for row in rows if row.status == DeliveryStatus.FAILED and row.retryable]
    claimed_ids = {row.subscriber_id: row.claimed_at for row in rows if row.status == DeliveryStatus.CLAIMED}
    addresses = {
        subscriber_id: email
        for subscriber_id, email in session.execute(
            select(col(Subscriber.id), col(Subscriber.email)).where(col(Subscriber.id).in_(list(claimed_ids)))
        )
    }
    return OwedDigests(
        never_tried=len(recipients - tried),
        retryable=sum(1 for row in retryable if row.subscriber_id in recipients),
        claimed=[
            (addresses.get(subscriber_id, "a deleted subscriber"), claimed_at + lease)
            for subscriber_id, claimed_at in claimed_ids.items()
        ],
        last_reply=retryable[-1].error if retryable else None,
    )
