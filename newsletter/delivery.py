"""The delivery ledger: who is owed the day's digest, one claimed row per subscriber and day, and its outcome.

Building and sending a message is newsletter.mail's job; composing a digest is newsletter.digests'.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, cast

from sqlalchemy import CursorResult, Select, and_, delete, exists, literal, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from newsletter.config import Settings
from newsletter.digests import compose_digest, compose_digests, render_mail
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
    table_of,
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


@dataclass(frozen=True)
class Claim:
    """A delivery row this sender holds: inserted by its claim, or taken over (a stale claim, a retryable failure)."""

    delivery_id: int
    subscriber_id: int
    attempts: int
    taken_over: bool


def _upsert(session: Session) -> Any:
    """The dialect's INSERT, which has ON CONFLICT DO NOTHING (PostgreSQL and SQLite, the databases we run on)."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def claim_deliveries(
    session: Session, day: dt.date, subscriber_ids: list[int], lease: dt.timedelta = CLAIM_LEASE
) -> list[Claim]:
    """Claim the period's delivery rows of these active subscribers, in two statements; commits.

    Stale claims (older than `lease`) and retryable failures are taken over, missing rows inserted; a row
    another sender holds or has finished is left out, and so is a subscriber who left or unsubscribed.
    """
    if not subscriber_ids:
        return []
    now = utcnow()
    active = (col(Subscriber.id).in_(subscriber_ids), col(Subscriber.status) == SubscriberStatus.ACTIVE)
    # Taken over first: a row inserted below is claimed `now`, which a zero lease would count as stale.
    # One UPDATE decides: under concurrency the database re-checks the condition on each row it locks.
    taken = session.execute(
        update(Delivery)
        .where(
            tuple_(col(Delivery.subscriber_id), col(Delivery.period)).in_(
                select(col(Subscriber.id), period_column(day)).where(*active)
            ),
            or_(
                (col(Delivery.status) == DeliveryStatus.CLAIMED) & (col(Delivery.claimed_at) <= now - lease),
                (col(Delivery.status) == DeliveryStatus.FAILED) & col(Delivery.retryable),
            ),
        )
        .values(status=DeliveryStatus.CLAIMED, claimed_at=now)
        .returning(col(Delivery.id), col(Delivery.subscriber_id), col(Delivery.attempts))
        .execution_options(synchronize_session=False)
    ).all()
    table = table_of(Delivery).c
    rows = select(
        col(Subscriber.id),
        literal(day, table.day.type),
        period_column(day),
        literal(DeliveryStatus.CLAIMED.value, table.status.type),
        literal(0, table.attempts.type),
        literal(False, table.retryable.type),
        literal(0, table.paper_count.type),
        literal(now, table.claimed_at.type),
    ).where(*active)
    inserted = session.execute(
        _upsert(session)(Delivery)
        .from_select(
            ["subscriber_id", "day", "period", "status", "attempts", "retryable", "paper_count", "claimed_at"], rows
        )
        .on_conflict_do_nothing(index_elements=["subscriber_id", "period"])
        .returning(col(Delivery.id), col(Delivery.subscriber_id))
    ).all()
    session.commit()
    claims = {row.subscriber_id: Claim(row.id, row.subscriber_id, row.attempts, True) for row in taken}
    claims.update({row.subscriber_id: Claim(row.id, row.subscriber_id, 0, False) for row in inserted})
    return [claims[subscriber_id] for subscriber_id in subscriber_ids if subscriber_id in claims]


def claim_delivery(
    session: Session, subscriber_id: int, day: dt.date, lease: dt.timedelta = CLAIM_LEASE
) -> Delivery | None:
    """One subscriber's claim (claim_deliveries) as its row; None if someone has it or the subscriber left."""
    claims = claim_deliveries(session, day, [subscriber_id], lease)
    return session.get(Delivery, claims[0].delivery_id) if claims else None


@dataclass(frozen=True)
class _DayContext:
    day: dt.date
    settings: Settings
    backend: MailBackend
    signer: LinkSigner
    renderer: DigestRenderer
    sender: Sender


@dataclass
class _Outcome:
    """A claimed digest's fate: accepted (error None) or why not, after `attempts` sends."""

    claim: Claim
    subscriber: Subscriber
    error: Exception | None = None
    attempts: int = 0
    digest: Digest | None = None
    message_id: str | None = None
    accepted_at: dt.datetime | None = None


SendResult = tuple[Exception | None, int, dt.datetime]


def deliver_day(
    session: Session,
    day: dt.date,
    settings: Settings,
    backend: MailBackend,
    signer: LinkSigner,
    renderer: DigestRenderer,
    subscriber_ids: Iterable[int] | None = None,
) -> DeliveryResult:
    """Send the day's digests (to `subscriber_ids`, default all recipients).

    Claims and outcomes are written in batches of NEWSLETTER_DELIVERY_BATCH_SIZE (outcomes also every
    NEWSLETTER_DELIVERY_RECORD_SECONDS), and NEWSLETTER_SMTP_POOL_SIZE threads send while the next digests
    are composed. A crash can thus resend at most batch size + pool size digests that the server accepted
    but nobody recorded, each with its stable Message-ID, once their claim lease is over.
    """
    result = DeliveryResult()
    context = _DayContext(day, settings, backend, signer, renderer, Sender.from_settings(settings))
    ids = list(subscriber_ids) if subscriber_ids is not None else recipients_for_day(session, day)
    with ThreadPoolExecutor(settings.smtp_pool_size, thread_name_prefix="smtp-send") as senders:
        _DeliveryRun(session, context, senders, result).deliver(ids)
    return result


class _DeliveryRun:
    """One deliver_day: the session and the bookkeeping stay in the calling thread; sender threads only send."""

    def __init__(
        self, session: Session, context: _DayContext, senders: ThreadPoolExecutor, result: DeliveryResult
    ) -> None:
        self.session = session
        self.context = context
        self.settings = context.settings
        self.senders = senders
        self.result = result
        self.in_flight: dict[Future[SendResult], _Outcome] = {}
        self.unrecorded: list[_Outcome] = []
        self.untried: deque[Claim] = deque()
        self.recorded_at = time.monotonic()

    def deliver(self, subscriber_ids: list[int]) -> None:
        batch = self.settings.delivery_batch_size
        lease = dt.timedelta(seconds=self.settings.delivery_claim_lease_seconds)
        try:
            for start in range(0, len(subscriber_ids), batch):
                if self.result.aborted:
                    break
                wanted = subscriber_ids[start : start + batch]
                self.untried.extend(claim_deliveries(self.session, self.context.day, wanted, lease))
                self.result.skipped += len(wanted) - len(self.untried)
                subscribers = self._subscribers([claim.subscriber_id for claim in self.untried])
                digests = self._compose_batch(list(subscribers.values()))
                while self.untried and self._start(
                    self.untried[0], subscribers.get(self.untried[0].subscriber_id), digests
                ):
                    self.untried.popleft()
        except BaseException:
            self.session.rollback()  # a failed statement leaves the transaction unusable for the records below
            raise
        finally:
            # Whatever ended the loop (a stop, a time limit, a database error), what was sent is recorded
            # and what was claimed but never tried is handed back for a rerun at once, not after the lease.
            while self.in_flight:
                self._collect(timeout=None)
            self._record()
            self._release(list(self.untried))

    def _subscribers(self, ids: list[int]) -> dict[int, Subscriber]:
        """The claimed subscribers still active, read fresh (one may have left since the claim)."""
        rows = self.session.scalars(
            select(Subscriber)
            .where(col(Subscriber.id).in_(ids), col(Subscriber.status) == SubscriberStatus.ACTIVE)
            .execution_options(populate_existing=True)
        )
        return {subscriber.id: subscriber for subscriber in rows if subscriber.id is not None}

    def _compose_batch(self, subscribers: list[Subscriber]) -> dict[int, Digest]:
        """The batch's digests in a few queries; none if that fails (each is then composed alone, so that one
        bad digest fails by itself)."""
        try:
            return compose_digests(self.session, self.settings, self.context.signer, subscribers, self.context.day)
        except Exception:  # noqa: BLE001 - composed one by one below, where a failure names its subscriber
            log.exception("could not compose a batch of %d digests for %s together", len(subscribers),
                          self.context.day)  # fmt: skip
            self.session.rollback()
            return {}

    def _start(self, claim: Claim, subscriber: Subscriber | None, digests: dict[int, Digest]) -> bool:
        """Compose the claimed digest and hand it to a sender thread (waiting for a free one); False, and the
        claim left untried, once the day's delivery has stopped."""
        if self.result.aborted:
            return False
        if subscriber is None:  # left or unsubscribed since the claim
            self.session.execute(delete(Delivery).where(col(Delivery.id) == claim.delivery_id))
            self.result.skipped += 1
            return True
        outcome = _Outcome(claim, subscriber)
        try:
            outcome.digest, message = _compose(self.session, subscriber, self.context, digests.get(claim.subscriber_id))
        except UnusableAddress as exc:
            # The same stored address fails the same way on a rerun, but it is no bounce: no server refused it.
            outcome.error = exc
        except Exception as exc:  # noqa: BLE001 - one bad digest must not stop the list; a rerun retries it
            log.exception("could not build the digest for subscriber %s", subscriber.id)
            outcome.error = TemporaryDeliveryError(f"not built: {exc!r}")
        if outcome.error is not None:
            self._finished(outcome)
            return True
        outcome.message_id = str(message["Message-ID"])
        while len(self.in_flight) >= self.settings.smtp_pool_size:
            self._collect(timeout=self.settings.delivery_record_seconds)
        if self.result.aborted:
            return False  # a send in flight was refused meanwhile: this one would be too
        self.in_flight[self.senders.submit(_send_with_retries, self.context.backend, message, self.settings)] = outcome
        return True

    def _collect(self, timeout: float | None) -> None:
        """Take in the sends that finished (waiting up to `timeout` for one); record when the time is due."""
        done, _ = wait(list(self.in_flight), timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            outcome = self.in_flight.pop(future)
            outcome.error, outcome.attempts, outcome.accepted_at = future.result()
            self._finished(outcome)
        if self.unrecorded and time.monotonic() - self.recorded_at >= self.settings.delivery_record_seconds:
            self._record()

    def _finished(self, outcome: _Outcome) -> None:
        self.unrecorded.append(outcome)
        if isinstance(outcome.error, DeliveryStopped) and not self.result.aborted:
            # Every later recipient would fail the same way; the rest waits for a rerun.
            self.result.aborted = str(outcome.error)
            log.error("delivery for %s stopped: %s", self.context.day, outcome.error)
        if len(self.unrecorded) >= self.settings.delivery_batch_size:
            self._record()

    def _record(self) -> None:
        """The finished outcomes, in one transaction."""
        outcomes, self.unrecorded = self.unrecorded, []
        self.recorded_at = time.monotonic()
        _record_sent(self.session, [outcome for outcome in outcomes if outcome.error is None], self.result)
        for outcome in outcomes:
            if outcome.error is not None:
                _record_failure(self.session, outcome, self.result)
        self.session.commit()

    def _release(self, claims: list[Claim]) -> None:
        if not claims:
            return
        reason = f"not sent: {self.result.aborted or 'the delivery was interrupted'}"[:2000]
        # A row this run inserted goes, as if never claimed; one it took over is owed again, as it was.
        self.session.execute(
            delete(Delivery).where(
                col(Delivery.id).in_([claim.delivery_id for claim in claims if not claim.taken_over]),
                col(Delivery.status) == DeliveryStatus.CLAIMED,
            )
        )
        self.session.execute(
            update(Delivery)
            .where(
                col(Delivery.id).in_([claim.delivery_id for claim in claims if claim.taken_over]),
                col(Delivery.status) == DeliveryStatus.CLAIMED,
            )
            .values(status=DeliveryStatus.FAILED, retryable=True, error=reason)
        )
        self.session.commit()


def _compose(
    session: Session, subscriber: Subscriber, context: _DayContext, digest: Digest | None = None
) -> tuple[Digest, EmailMessage]:
    """The subscriber's message (from `digest` when the batch composed it)."""
    day = context.day
    if digest is None:
        digest = compose_digest(session, context.settings, context.signer, subscriber, day)
    message_id = digest_message_id(context.sender, subscriber.email, day)
    rendered = render_mail(session, context.renderer, subscriber, digest)
    message = build_message(rendered, subscriber.email, context.sender, digest.links, message_id)
    message["X-Digest-Day"] = day.isoformat()
    return digest, message


def _send_with_retries(backend: MailBackend, message: EmailMessage, settings: Settings) -> SendResult:
    """(why it failed or None, sends tried, when it ended); runs in a sender thread."""
    retrying = Retrying(
        retry=retry_if_exception_type(TemporaryDeliveryError),
        stop=stop_after_attempt(settings.smtp_max_attempts),
        wait=wait_exponential(multiplier=settings.smtp_retry_base_seconds, max=60),
        reraise=True,
    )
    attempts = 0
    try:
        for attempt in retrying:
            with attempt:
                attempts += 1
                backend.send(message)
    except (TemporaryDeliveryError, PermanentDeliveryError, DeliveryStopped) as exc:
        return exc, attempts, utcnow()
    except Exception as exc:  # noqa: BLE001 - a backend's own fault fails this digest, not the whole chunk
        log.exception("sending %s failed unexpectedly", message["Message-ID"])
        return TemporaryDeliveryError(f"send failed: {exc!r}"), attempts, utcnow()
    return None, attempts, utcnow()


def _record_sent(session: Session, outcomes: list[_Outcome], result: DeliveryResult) -> None:
    """The accepted digests' rows, the papers they carried and the updates they showed, as batched statements."""
    if not outcomes:
        return
    session.execute(
        update(Delivery),
        [
            {
                "id": outcome.claim.delivery_id,
                "status": DeliveryStatus.SENT,
                "sent_at": outcome.accepted_at,
                "message_id": outcome.message_id,
                "paper_count": outcome.digest.paper_count if outcome.digest else 0,
                "error": None,
                "retryable": False,
                "attempts": outcome.claim.attempts + outcome.attempts,
            }
            for outcome in outcomes
        ],
    )
    session.execute(
        update(Subscriber)
        .where(
            col(Subscriber.id).in_([outcome.claim.subscriber_id for outcome in outcomes]),
            col(Subscriber.consecutive_hard_failures) != 0,
        )
        .values(consecutive_hard_failures=0)
        .execution_options(synchronize_session=False)
    )
    # With what the subscriber saw of each paper: a later version or reference is an update (newsletter.updates).
    # A paper recorded already (the same digest sent again after a crash) keeps its row.
    papers = [
        {"subscriber_id": outcome.claim.subscriber_id, "arxiv_id": paper.arxiv_id, "day": outcome.digest.day,
         "version": paper.version, "journal_ref": paper.journal_ref, "doi": paper.doi}
        for outcome in outcomes if outcome.digest is not None
        for paper in {p.arxiv_id: p for p in outcome.digest.papers}.values()
    ]  # fmt: skip
    if papers:
        # The table, not the entity: the ORM's bulk insert would handle each of these rows in Python again.
        session.execute(_upsert(session)(table_of(SentPaper)).on_conflict_do_nothing(), papers)
    for outcome in outcomes:
        if outcome.digest is not None and outcome.digest.updates:
            record_updates_shown(session, outcome.claim.subscriber_id, outcome.digest.updates)
    result.sent += len(outcomes)


def _record_failure(session: Session, outcome: _Outcome, result: DeliveryResult) -> None:
    """The delivery as failed with its reason; a refusal of the address counts towards marking it bounced."""
    error, subscriber = outcome.error, outcome.subscriber
    assert error is not None
    reason = str(error)[:2000]
    session.execute(
        update(Delivery)
        .where(col(Delivery.id) == outcome.claim.delivery_id)
        .values(
            status=DeliveryStatus.FAILED,
            error=reason,
            # A refusal of our sender or message is nobody's bounce: the digest stays owed for the next run.
            retryable=isinstance(error, (TemporaryDeliveryError, DeliveryStopped)),
            attempts=outcome.claim.attempts + outcome.attempts,
        )
        .execution_options(synchronize_session=False)
    )
    result.failed += 1
    result.errors[subscriber.email] = reason
    # The id, and the address as repr: a stored address may hold line breaks.
    log.warning("delivery to subscriber %s (%r) failed: %s", subscriber.id, subscriber.email, reason)
    if isinstance(error, PermanentDeliveryError):
        # Counted in SQL so two days delivered at once both count.
        session.execute(
            update(Subscriber)
            .where(col(Subscriber.id) == subscriber.id)
            .values(consecutive_hard_failures=col(Subscriber.consecutive_hard_failures) + 1)
            .execution_options(synchronize_session=False)
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
                .execution_options(synchronize_session=False)
            ),
        )
        if bounced.rowcount == 1:
            result.bounced.append(subscriber.email)
            log.warning("%s bounced %d times in a row: no longer mailed", subscriber.email, HARD_FAILURES_BEFORE_BOUNCE)


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
