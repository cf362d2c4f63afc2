"""Deliver: claim one delivery row per subscriber and day, build the message, send it, record it."""

from __future__ import annotations

import datetime as dt
import email.policy
import logging
import os
import re
import smtplib
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from newsletter.config import Settings
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Selection,
    SentPaper,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from newsletter.render import Digest, DigestRenderer, RenderedDigest, load_digest
from newsletter.tokens import LinkSigner, SubscriberLinks, subscriber_links

log = logging.getLogger(__name__)

HARD_FAILURES_BEFORE_BOUNCE = 3
# A claim older than this with no outcome belongs to a sender that died; it is sent again.
# The default; deliver_day uses NEWSLETTER_DELIVERY_CLAIM_LEASE_SECONDS.
CLAIM_LEASE = dt.timedelta(minutes=10)


class TemporaryDeliveryError(Exception):
    """The server said try later (4xx) or the connection dropped."""


class PermanentDeliveryError(Exception):
    """The server refused this recipient or message (5xx)."""


class MailBackend(Protocol):
    def send(self, message: EmailMessage) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Sender:
    address: str
    name: str
    list_id: str


def build_message(
    rendered: RenderedDigest, recipient: str, sender: Sender, links: SubscriberLinks
) -> EmailMessage:
    """A multipart/alternative digest with the headers mail providers require."""
    message = EmailMessage()
    message["Subject"] = rendered.subject
    message["From"] = Address(display_name=sender.name, addr_spec=sender.address)
    message["To"] = Address(addr_spec=recipient)
    message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    message["Message-ID"] = make_msgid(domain=sender.address.rpartition("@")[2] or "localhost")
    message["List-Id"] = f"arXiv digest <{sender.list_id}>"
    message["List-Unsubscribe"] = f"<{links.unsubscribe}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Feedback-ID"] = f"digest:{sender.list_id}"
    message.set_content(rendered.text, subtype="plain", charset="utf-8")
    message.add_alternative(rendered.html, subtype="html", charset="utf-8")
    return message


def outbox_name(recipient: str) -> str:
    """A file name for a recipient's message that is safe on every file system."""
    return re.sub(r"[^A-Za-z0-9@._-]", "_", recipient)


class OutboxBackend:
    """Writes each message as an .eml file (and its HTML part beside it, to open in a browser)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, message: EmailMessage) -> None:
        day = message.get("X-Digest-Day", "mail")
        folder = self.directory / str(day)
        folder.mkdir(parents=True, exist_ok=True)
        stem = outbox_name(str(message["To"].addresses[0].addr_spec))
        _atomic_write(folder / f"{stem}.eml", message.as_bytes(policy=email.policy.SMTP))
        html = message.get_body(preferencelist=("html",))
        if html is not None:
            _atomic_write(folder / f"{stem}.html", html.get_content().encode("utf-8"))

    def close(self) -> None:
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    # A reader (or a crash) never sees half a message.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


class SmtpBackend:
    """SMTP with the connection reused across messages and a cap on messages per second."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connection: smtplib.SMTP | None = None
        self._interval = 1.0 / settings.smtp_max_per_second
        self._next_send = 0.0
        self._lock = threading.Lock()

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        try:
            if s.smtp_security == "ssl":
                connection: smtplib.SMTP = smtplib.SMTP_SSL(
                    s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds, context=ssl.create_default_context()
                )
            else:
                connection = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds)
                if s.smtp_security == "starttls":
                    connection.starttls(context=ssl.create_default_context())
            if s.smtp_user:
                connection.login(s.smtp_user, s.smtp_password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentDeliveryError(f"SMTP login refused: {exc.smtp_code} {exc.smtp_error!r}") from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise TemporaryDeliveryError(f"cannot connect to {s.smtp_host}:{s.smtp_port}: {exc}") from exc
        return connection

    def _throttle(self) -> None:
        with self._lock:
            now = time.monotonic()
            wait = self._next_send - now
            self._next_send = max(now, self._next_send) + self._interval
        if wait > 0:
            time.sleep(wait)

    def send(self, message: EmailMessage) -> None:
        self._throttle()
        if self._connection is None:
            self._connection = self._connect()
        try:
            refused = self._connection.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            raise _classify(code, reply) from exc
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500:
                raise PermanentDeliveryError(f"{exc.smtp_code} {_text(exc.smtp_error)}") from exc
            self._drop()
            raise TemporaryDeliveryError(f"{exc.smtp_code} {_text(exc.smtp_error)}") from exc
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            raise TemporaryDeliveryError(f"connection lost: {exc}") from exc
        if refused:
            code, reply = next(iter(refused.values()))
            raise _classify(code, reply)

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except OSError:
                pass

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.quit()
            except (OSError, smtplib.SMTPException):
                pass
        self._drop()


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _classify(code: int, reply: bytes | str) -> Exception:
    message = f"{code} {_text(reply)}"
    return PermanentDeliveryError(message) if code >= 500 else TemporaryDeliveryError(message)


def make_backend(settings: Settings) -> MailBackend:
    """The backend NEWSLETTER_MAIL_BACKEND names."""
    if settings.mail_backend == "smtp":
        return SmtpBackend(settings)
    return OutboxBackend(settings.outbox_dir)


@dataclass
class DeliveryResult:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    bounced: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def recipients_for_day(session: Session, day: dt.date) -> list[int]:
    """Active subscribers with at least one paper selected for `day`."""
    return list(
        session.scalars(
            select(Subscriber.id)
            .join(Selection, Selection.subscriber_id == Subscriber.id)
            .where(Selection.day == day, Subscriber.status == SubscriberStatus.ACTIVE)
            .distinct()
            .order_by(Subscriber.id)
        )
    )


def claim_delivery(
    session: Session, subscriber_id: int, day: dt.date, lease: dt.timedelta = CLAIM_LEASE
) -> Delivery | None:
    """Insert the day's delivery row, or take over a stale or retryable one; None if someone has it."""
    delivery = Delivery(subscriber_id=subscriber_id, day=day)
    try:
        with session.begin_nested():
            session.add(delivery)
        session.commit()
        return delivery
    except IntegrityError:
        session.rollback()
    stale = utcnow() - lease
    taken = session.execute(
        update(Delivery)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.day == day,
            or_(
                (Delivery.status == DeliveryStatus.CLAIMED) & (Delivery.claimed_at < stale),
                (Delivery.status == DeliveryStatus.FAILED) & Delivery.retryable,
            ),
        )
        .values(status=DeliveryStatus.CLAIMED, claimed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if taken.rowcount != 1:
        return None
    return session.scalars(
        select(Delivery).where(Delivery.subscriber_id == subscriber_id, Delivery.day == day)
    ).one()


def deliver_day(
    session: Session,
    day: dt.date,
    settings: Settings,
    backend: MailBackend,
    signer: LinkSigner,
    renderer: DigestRenderer,
    subscriber_ids: Iterable[int] | None = None,
    retry_wait: Callable[[int], float] | None = None,
) -> DeliveryResult:
    """Send the day's digests (to `subscriber_ids`, default all recipients); commits per subscriber."""
    result = DeliveryResult()
    sender = Sender(settings.from_address, settings.from_name, settings.list_id)
    ids = list(subscriber_ids) if subscriber_ids is not None else recipients_for_day(session, day)
    lease = dt.timedelta(seconds=settings.delivery_claim_lease_seconds)
    for subscriber_id in ids:
        delivery = claim_delivery(session, subscriber_id, day, lease)
        if delivery is None:
            result.skipped += 1
            continue
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is None or subscriber.status != SubscriberStatus.ACTIVE:
            session.delete(delivery)
            session.commit()
            result.skipped += 1
            continue
        links = subscriber_links(signer, settings.base_url, subscriber_id, day.isoformat())
        digest = load_digest(session, subscriber, day, links)
        message = build_message(renderer.render(digest), subscriber.email, sender, links)
        message["X-Digest-Day"] = day.isoformat()
        outcome = _send_with_retries(backend, message, delivery, settings)
        _record_outcome(session, delivery, subscriber, digest, message, outcome, result)
    return result


def _send_with_retries(
    backend: MailBackend, message: EmailMessage, delivery: Delivery, settings: Settings
) -> Exception | None:
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
    except (TemporaryDeliveryError, PermanentDeliveryError) as exc:
        return exc
    return None


def _record_outcome(
    session: Session,
    delivery: Delivery,
    subscriber: Subscriber,
    digest: Digest,
    message: EmailMessage,
    outcome: Exception | None,
    result: DeliveryResult,
) -> None:
    if outcome is None:
        delivery.status = DeliveryStatus.SENT
        delivery.sent_at = utcnow()
        delivery.message_id = str(message["Message-ID"])
        delivery.paper_count = digest.paper_count
        delivery.error = None
        subscriber.consecutive_hard_failures = 0
        # One query for what is recorded already, one batched insert for the rest.
        recorded = set(
            session.scalars(
                select(SentPaper.arxiv_id).where(
                    SentPaper.subscriber_id == subscriber.id, SentPaper.arxiv_id.in_(digest.arxiv_ids)
                )
            )
        )
        session.add_all(
            SentPaper(subscriber_id=subscriber.id, arxiv_id=arxiv_id, day=digest.day)
            for arxiv_id in dict.fromkeys(digest.arxiv_ids)
            if arxiv_id not in recorded
        )
        result.sent += 1
    else:
        delivery.status = DeliveryStatus.FAILED
        delivery.error = str(outcome)[:2000]
        delivery.retryable = isinstance(outcome, TemporaryDeliveryError)
        result.failed += 1
        result.errors[subscriber.email] = delivery.error
        if not delivery.retryable:
            subscriber.consecutive_hard_failures += 1
            if subscriber.consecutive_hard_failures >= HARD_FAILURES_BEFORE_BOUNCE:
                subscriber.status = SubscriberStatus.BOUNCED
                result.bounced.append(subscriber.email)
        log.warning("delivery to %s failed: %s", subscriber.email, delivery.error)
    session.add(delivery)
    session.add(subscriber)
    session.commit()


def build_confirmation_message(settings: Settings, recipient: str, link: str) -> EmailMessage:
    """The double opt-in mail: one link that opens a page with a confirm button."""
    message = EmailMessage()
    message["Subject"] = "Confirm your arXiv digest subscription / 确认订阅 arXiv 每日速递"
    message["From"] = Address(display_name=settings.from_name, addr_spec=settings.from_address)
    message["To"] = Address(addr_spec=recipient)
    message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    message["Message-ID"] = make_msgid(domain=settings.from_address.rpartition("@")[2] or "localhost")
    message["X-Digest-Day"] = "confirmations"
    message.set_content(
        "Confirm your subscription to the arXiv digest by opening this link (valid for 7 days):\n"
        f"{link}\n\n请打开上面的链接确认订阅(7 天内有效)。\n\n"
        "If you did not ask for this, ignore this message: nothing will be sent.\n",
        charset="utf-8",
    )
    return message
