"""Deliver: claim one delivery row per subscriber and day, build the message, send it, record it."""

from __future__ import annotations

import datetime as dt
import email.errors
import functools
import logging
import os
import re
import smtplib
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, Protocol

import dkim
from dkim.crypto import UnparsableKeyError, parse_pem_private_key
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
from newsletter.pacing import PacingUnavailable, RedisRequestSlots, RequestPacer, reachable_redis
from newsletter.render import Digest, DigestRenderer, RenderedDigest, load_digest
from newsletter.tokens import LinkSigner, SubscriberLinks, subscriber_links

log = logging.getLogger(__name__)

HARD_FAILURES_BEFORE_BOUNCE = 3
# Default lease; NEWSLETTER_DELIVERY_CLAIM_LEASE_SECONDS overrides it.
CLAIM_LEASE = dt.timedelta(minutes=10)
# A pooled connection idle this long is checked with NOOP first: servers close idle sessions.
IDLE_CHECK_SECONDS = 5.0
# Headers the DKIM signature covers; RFC 8058 requires List-Unsubscribe(-Post) among them.
DKIM_SIGNED_HEADERS = [
    b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
    b"list-id", b"list-unsubscribe", b"list-unsubscribe-post", b"feedback-id",
]  # fmt: skip
MAX_LINE_OCTETS = 998
_MESSAGE_ID_NAMESPACE = uuid.UUID("5b0e3c1e-6f1d-4d7e-9a43-0d1c2f6a7b80")


class _HeaderClasses(HeaderRegistry):
    """The standard registry, but each header class is made once (the stock one builds a class per header)."""

    @functools.cache  # noqa: B019 - one module-level instance lives as long as the process anyway
    def __getitem__(self, name: str) -> type[BaseHeader]:
        return super().__getitem__(name)


# Headers whose values are ASCII by construction (URLs, ids, tokens). The email package would write a
# long one as RFC 2047 encoded words, which RFC 2369/8058 readers do not decode: a provider then finds
# no unsubscribe URL. These are written as is instead.
LITERAL_HEADERS = frozenset(
    {"message-id", "list-id", "list-unsubscribe", "list-unsubscribe-post", "feedback-id", "x-digest-day"}
)


class InvalidHeaderValue(ValueError):
    """A value that cannot be written literally in a header (not printable ASCII, or too long to fold)."""


def literal_header_value(name: str, value: str) -> str:
    """`value` as one line of printable ASCII for header `name`; InvalidHeaderValue says why it cannot be."""
    text = header_text(value)
    unwritable = next((char for char in text if not " " <= char <= "~"), None)
    if unwritable is not None:
        raise InvalidHeaderValue(
            f"{name} must be printable ASCII, but {text!r} holds {unwritable!r} "
            "(a URL needs its host in punycode and its path percent-encoded)"
        )
    if "=?" in text:
        raise InvalidHeaderValue(f"{name} value {text!r} holds '=?', which mail readers take for an encoded word")
    return text


def fold_literal(name: str, value: str, linesep: str = "\r\n", max_line_length: int = 78) -> str:
    """`name: value` folded only at spaces (RFC 5322 folding white space); a long token keeps its line."""
    first, *words = literal_header_value(name, value).split(" ")
    lines = [f"{name}: {first}"]
    for word in words:
        if len(lines[-1]) + 1 + len(word) <= max_line_length:
            lines[-1] += f" {word}"
        else:
            lines.append(f" {word}")
    longest = max(lines, key=len)
    if len(longest) > MAX_LINE_OCTETS:  # ASCII: characters are octets
        raise InvalidHeaderValue(f"{name} holds a {len(longest)}-octet line, over SMTP's {MAX_LINE_OCTETS}")
    return linesep.join(lines) + linesep


class LiteralHeaderPolicy(EmailPolicy):
    """email.policy.default, except that LITERAL_HEADERS are checked when set and written literally."""

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if name.lower() in LITERAL_HEADERS and isinstance(value, str):
            # Refused here, while the message is built, rather than when it is written out mid-send.
            fold_literal(name, value, self.linesep, self.max_line_length or MAX_LINE_OCTETS)
            value = literal_header_value(name, value)
        return super().header_store_parse(name, value)

    def fold(self, name: str, value: Any) -> str:
        if name.lower() in LITERAL_HEADERS:
            return fold_literal(name, str(value), self.linesep, self.max_line_length or MAX_LINE_OCTETS)
        return super().fold(name, value)

    def fold_binary(self, name: str, value: Any) -> bytes:
        if name.lower() in LITERAL_HEADERS:
            return self.fold(name, value).encode("ascii")
        return super().fold_binary(name, value)


# email.policy.default with the cached registry (a third less time per message) and literal headers.
MESSAGE_POLICY = LiteralHeaderPolicy(header_factory=_HeaderClasses())
# What goes on the wire and into the outbox: the same policy with SMTP's CRLF line endings.
WIRE_POLICY = MESSAGE_POLICY.clone(linesep="\r\n")


class TemporaryDeliveryError(Exception):
    """The server said try later (4xx) or the connection dropped."""


class PermanentDeliveryError(Exception):
    """The server refused this recipient or message (5xx)."""


class MailServerUnavailable(TemporaryDeliveryError):
    """No session with the mail server at all (connect, TLS or login failed): no recipient's fault."""


class UnusableAddress(ValueError):
    """A stored address the message cannot be addressed to: our refusal, before any mail server saw it."""


class DeliveryConfigError(ValueError):
    """A delivery setting that cannot work (unreadable DKIM key, ...)."""


class MailBackend(Protocol):
    def send(self, message: EmailMessage) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Sender:
    address: str
    name: str
    list_id: str


def header_text(value: str) -> str:
    """One line of header text: any line break or run of whitespace becomes one space."""
    # The email API refuses inner CR/LF but keeps a trailing one, which would end the header block.
    return " ".join(value.split())


def digest_message_id(sender: Sender, recipient: str, day: dt.date) -> str:
    """The same Message-ID every time a subscriber's digest for a day is sent (providers drop repeats)."""
    key = uuid.uuid5(_MESSAGE_ID_NAMESPACE, f"{sender.list_id}/{recipient.lower()}/{day.isoformat()}")
    return f"<digest.{day:%Y%m%d}.{key.hex}@{_domain(sender.address)}>"


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or "localhost"


def recipient_address(recipient: str) -> Address:
    """The To address, its domain in IDNA; UnusableAddress when no ASCII header can carry it."""
    # Digests go out without SMTPUTF8, so the header must be ASCII: a non-ASCII domain has an ASCII
    # form, a non-ASCII local part has none (and the email package would write a broken encoded word).
    local, at, domain = recipient.rpartition("@")
    try:
        if not at or not local:
            raise ValueError("it has no local part before an @")
        return Address(addr_spec=f"{local}@{domain.encode('idna').decode('ascii')}")
    except (ValueError, UnicodeError, email.errors.MessageError) as exc:
        raise UnusableAddress(f"the address {recipient!r} cannot be written in a To header: {exc}") from exc


def build_message(
    rendered: RenderedDigest,
    recipient: str,
    sender: Sender,
    links: SubscriberLinks,
    message_id: str | None = None,
) -> EmailMessage:
    """A multipart/alternative digest with the headers mail providers require."""
    message = EmailMessage(policy=MESSAGE_POLICY)
    message["Subject"] = header_text(rendered.subject)
    message["From"] = Address(display_name=header_text(sender.name), addr_spec=sender.address)
    message["To"] = recipient_address(recipient)
    message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    message["Message-ID"] = message_id or make_msgid(domain=_domain(sender.address))
    list_id = header_text(sender.list_id)
    message["List-Id"] = f"arXiv digest <{list_id}>"
    message["List-Unsubscribe"] = f"<{header_text(links.unsubscribe)}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Feedback-ID"] = f"digest:{list_id}"
    message.set_content(rendered.text, subtype="plain", charset="utf-8", cte=transfer_encoding(rendered.text))
    message.add_alternative(rendered.html, subtype="html", charset="utf-8", cte=transfer_encoding(rendered.html))
    return message


def transfer_encoding(text: str) -> str:
    """8bit (or 7bit) when every line fits SMTP's 998 octets, base64 otherwise."""
    # The email package's own choice wraps at 78 and so quoted-printables nearly every digest: 3x the
    # bytes for Chinese and most of the time spent building a message.
    # Bytes' line breaks, not str's: str.splitlines also breaks at U+2028 and the like, which stay inside a line.
    if max((len(line) for line in text.encode("utf-8").splitlines()), default=0) > MAX_LINE_OCTETS:
        return "base64"
    return "7bit" if text.isascii() else "8bit"


class DkimSigner:
    """Signs the exact bytes that go out (after every header is set) with an RSA key (dkimpy)."""

    def __init__(self, key_file: Path, selector: str, domain: str) -> None:
        try:
            key = key_file.read_bytes()
        except OSError as exc:
            raise DeliveryConfigError(f"NEWSLETTER_DKIM_KEY_FILE {key_file}: {exc.strerror or exc}") from exc
        try:
            parse_pem_private_key(key)
        except UnparsableKeyError as exc:
            raise DeliveryConfigError(
                f"NEWSLETTER_DKIM_KEY_FILE {key_file}: not a PEM RSA private key ({exc}); "
                "`openssl genrsa 2048` writes one"
            ) from exc
        self._key = key
        self.selector = selector.encode("ascii")
        self.domain = domain.encode("ascii")

    def sign(self, raw: bytes) -> bytes:
        """The message with its DKIM-Signature header prepended."""
        signature = dkim.sign(
            raw, self.selector, self.domain, self._key, include_headers=DKIM_SIGNED_HEADERS,
            canonicalize=(b"relaxed", b"relaxed"),
            linesep=b"\r\n",
        )
        return signature + raw


def message_bytes(message: EmailMessage, signer: DkimSigner | None) -> bytes:
    """The message as sent on the wire (CRLF), signed when DKIM is configured."""
    raw = message.as_bytes(policy=WIRE_POLICY)
    return signer.sign(raw) if signer is not None else raw


def outbox_name(recipient: str) -> str:
    """A file name for a recipient's message that is safe on every file system."""
    return re.sub(r"[^A-Za-z0-9@._-]", "_", recipient)


class OutboxBackend:
    """Writes each message as an .eml file (and its HTML part beside it, to open in a browser)."""

    def __init__(self, directory: Path, signer: DkimSigner | None = None) -> None:
        self.directory = directory
        self.signer = signer

    def send(self, message: EmailMessage) -> None:
        day = message.get("X-Digest-Day", "mail")
        folder = self.directory / outbox_name(str(day))
        stem = outbox_name(str(message["To"].addresses[0].addr_spec))
        html = message.get_body(preferencelist=("html",))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(folder / f"{stem}.eml", message_bytes(message, self.signer))
            if html is not None:
                _atomic_write(folder / f"{stem}.html", html.get_content().encode("utf-8"))
        except OSError as exc:
            raise MailServerUnavailable(f"cannot write to the outbox {self.directory}: {exc}") from exc

    def close(self) -> None:
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    # A reader (or a crash) never sees half a message.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


class Throttle:
    """Spaces calls evenly at `per_second`, across the threads sharing it."""

    def __init__(
        self,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = 1.0 / per_second
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until this caller's slot comes."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            self._sleep(slot - now)


class SmtpPool:
    """At most `size` SMTP sessions, each used by one thread at a time; a broken one is replaced."""

    def __init__(self, connect: Callable[[], smtplib.SMTP], size: int) -> None:
        self._connect = connect
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[tuple[smtplib.SMTP, float]] = []
        self.opened = 0

    def acquire(self) -> smtplib.SMTP:
        """An idle session (checked if it idled long) or a new one; waits while all are in use."""
        self._slots.acquire()
        try:
            while True:
                with self._lock:
                    idle = self._idle.pop() if self._idle else None
                if idle is None:
                    connection = self._connect()
                    with self._lock:
                        self.opened += 1
                    return connection
                connection, since = idle
                if time.monotonic() - since < IDLE_CHECK_SECONDS or _alive(connection):
                    return connection
                _close(connection)
        except BaseException:
            self._slots.release()
            raise

    def release(self, connection: smtplib.SMTP, broken: bool) -> None:
        """Give a session back; a broken one is closed and the slot freed for a new one."""
        try:
            if broken or connection.sock is None:
                _close(connection)
            else:
                with self._lock:
                    self._idle.append((connection, time.monotonic()))
        finally:
            self._slots.release()

    def close(self) -> None:
        """QUIT every idle session."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection, _ in idle:
            try:
                connection.quit()
            except (OSError, smtplib.SMTPException):
                pass
            _close(connection)


def _alive(connection: smtplib.SMTP) -> bool:
    try:
        return connection.noop()[0] == 250
    except (OSError, smtplib.SMTPException):
        return False


def _close(connection: smtplib.SMTP) -> None:
    try:
        connection.close()
    except OSError:
        pass


def send_pace(
    settings: Settings, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
) -> Callable[[], object]:
    """What each SMTP send waits for: NEWSLETTER_SMTP_MAX_PER_SECOND to one mail server, shared by
    every process that uses the same Redis (all the workers), or kept by this process without Redis."""
    client = reachable_redis(settings.redis_url)
    if client is None:
        return Throttle(settings.smtp_max_per_second, clock=clock, sleep=sleep).wait
    # Redis keeps the clock here (its server time), so every worker agrees on the schedule.
    key = f"newsletter:smtp-send:{settings.smtp_host}:{settings.smtp_port}"
    return RequestPacer(RedisRequestSlots(client, 1.0 / settings.smtp_max_per_second, key), sleep=sleep).wait_turn


class SmtpBackend:
    """SMTP through a small pool of reused sessions, paced to NEWSLETTER_SMTP_MAX_PER_SECOND (send_pace)."""

    def __init__(
        self,
        settings: Settings,
        signer: DkimSigner | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.signer = signer
        self.pool = SmtpPool(self._connect, settings.smtp_pool_size)
        self.pace = send_pace(settings, clock, sleep)

    def _tls_context(self) -> ssl.SSLContext:
        ca_file = self.settings.smtp_ca_file
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        connection: smtplib.SMTP | None = None
        try:
            if s.smtp_security == "ssl":
                connection = smtplib.SMTP_SSL(
                    s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds, context=self._tls_context()
                )
            else:
                connection = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds)
                if s.smtp_security == "starttls":
                    connection.starttls(context=self._tls_context())
            # A reused session is out of TCP quick-ACK mode: without NODELAY the last TLS record of
            # each message waits for the server's delayed ACK (~40 ms), slower than a new connection.
            if connection.sock is not None:
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.ehlo()
            if s.smtp_user:
                connection.login(s.smtp_user, s.smtp_password or "")
        except (OSError, smtplib.SMTPException) as exc:
            if connection is not None:
                _close(connection)
            what = "login refused" if isinstance(exc, smtplib.SMTPAuthenticationError) else "cannot connect"
            raise MailServerUnavailable(f"SMTP {what} at {s.smtp_host}:{s.smtp_port}: {_describe(exc)}") from exc
        return connection

    def send(self, message: EmailMessage) -> None:
        """Send one message; TemporaryDeliveryError or PermanentDeliveryError say how it failed."""
        raw = message_bytes(message, self.signer)
        recipients = [address.addr_spec for address in message["To"].addresses]
        try:
            self.pace()
        except PacingUnavailable as exc:  # sending unpaced could exceed what the server allows
            raise MailServerUnavailable(f"cannot pace sending: {exc}") from exc
        connection = self.pool.acquire()
        broken = True
        try:
            options = _mail_options(connection, raw, [self.settings.from_address, *recipients])
            refused = connection.sendmail(self.settings.from_address, recipients, raw, mail_options=options)
            broken = False
        except PermanentDeliveryError:
            broken = False
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            broken = False
            code, reply = next(iter(exc.recipients.values()))
            raise _classify(code, reply) from exc
        except smtplib.SMTPResponseException as exc:
            # smtplib has sent RSET after a refusal; 421 means the server is closing the session.
            broken = exc.smtp_code == 421
            raise _classify(exc.smtp_code, exc.smtp_error) from exc
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise TemporaryDeliveryError(f"connection lost: {_describe(exc)}") from exc
        except smtplib.SMTPException as exc:  # a reply smtplib could not make sense of
            raise TemporaryDeliveryError(f"SMTP error: {_describe(exc)}") from exc
        finally:
            self.pool.release(connection, broken)
        if refused:
            code, reply = next(iter(refused.values()))
            raise _classify(code, reply)

    def close(self) -> None:
        self.pool.close()


def _mail_options(connection: smtplib.SMTP, raw: bytes, addresses: list[str]) -> list[str]:
    options = []
    if not raw.isascii() and connection.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")
    if not all(address.isascii() for address in addresses):
        if not connection.has_extn("smtputf8"):
            raise PermanentDeliveryError("the mail server does not accept non-ASCII addresses (no SMTPUTF8)")
        options.append("SMTPUTF8")
    return options


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    return str(exc) or type(exc).__name__


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _classify(code: int, reply: bytes | str) -> Exception:
    message = f"{code} {_text(reply)}"
    return PermanentDeliveryError(message) if code >= 500 else TemporaryDeliveryError(message)


def make_backend(settings: Settings) -> MailBackend:
    """The backend NEWSLETTER_MAIL_BACKEND names, signing with DKIM when it is configured."""
    signer = None
    if settings.dkim_enabled:
        assert settings.dkim_key_file and settings.dkim_selector and settings.dkim_domain
        signer = DkimSigner(settings.dkim_key_file, settings.dkim_selector, settings.dkim_domain)
    if settings.mail_backend == "smtp":
        return SmtpBackend(settings, signer)
    return OutboxBackend(settings.outbox_dir, signer)


@dataclass
class DeliveryResult:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    bounced: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    # Why the rest of the list was left for a rerun (the mail server could not be reached).
    aborted: str | None = None


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
    now = utcnow()
    # One UPDATE decides: under concurrency the database re-checks the condition on the row it locks.
    taken = session.execute(
        update(Delivery)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.day == day,
            or_(
                (Delivery.status == DeliveryStatus.CLAIMED) & (Delivery.claimed_at <= now - lease),
                (Delivery.status == DeliveryStatus.FAILED) & Delivery.retryable,
            ),
        )
        .values(status=DeliveryStatus.CLAIMED, claimed_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if taken.rowcount != 1:
        return None
    return session.scalars(
        select(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.day == day)
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
    context = _DayContext(
        day, settings, backend, signer, renderer, Sender(settings.from_address, settings.from_name, settings.list_id)
    )
    lease = dt.timedelta(seconds=settings.delivery_claim_lease_seconds)
    ids = list(subscriber_ids) if subscriber_ids is not None else recipients_for_day(session, day)
    for subscriber_id in ids:
        delivery = claim_delivery(session, subscriber_id, day, lease)
        if delivery is None:
            result.skipped += 1
            continue
        try:
            _deliver_claimed(session, delivery, context, result)
        except MailServerUnavailable as exc:
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
        if isinstance(outcome, MailServerUnavailable):
            raise outcome


def _compose(session: Session, subscriber: Subscriber, context: _DayContext) -> tuple[Digest, EmailMessage]:
    assert subscriber.id is not None
    day = context.day
    links = subscriber_links(context.signer, context.settings.base_url, subscriber.public_id, day.isoformat())
    digest = load_digest(session, subscriber, day, links)
    message_id = digest_message_id(context.sender, subscriber.email, day)
    message = build_message(context.renderer.render(digest), subscriber.email, context.sender, links, message_id)
    message["X-Digest-Day"] = day.isoformat()
    return digest, message


def _send_with_retries(
    backend: MailBackend, message: EmailMessage, delivery: Delivery, settings: Settings
) -> TemporaryDeliveryError | PermanentDeliveryError | None:
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
    session.add_all([delivery, subscriber])
    session.commit()
    result.sent += 1


def _record_failure(
    session: Session, delivery: Delivery, subscriber: Subscriber, outcome: Exception, result: DeliveryResult
) -> None:
    """The delivery as failed with its reason; a server's refusal counts towards marking the address bounced."""
    delivery.status = DeliveryStatus.FAILED
    delivery.error = str(outcome)[:2000]
    delivery.retryable = isinstance(outcome, TemporaryDeliveryError)
    session.add(delivery)
    result.failed += 1
    result.errors[subscriber.email] = delivery.error
    # The id, and the address as repr: a stored address may hold line breaks.
    log.warning("delivery to subscriber %s (%r) failed: %s", subscriber.id, subscriber.email, delivery.error)
    if isinstance(outcome, PermanentDeliveryError):
        # Counted in SQL so two days delivered at once both count.
        session.execute(
            update(Subscriber)
            .where(Subscriber.id == subscriber.id)
            .values(consecutive_hard_failures=Subscriber.consecutive_hard_failures + 1)
        )
        bounced = session.execute(
            update(Subscriber)
            .where(
                Subscriber.id == subscriber.id,
                Subscriber.status == SubscriberStatus.ACTIVE,
                Subscriber.consecutive_hard_failures >= HARD_FAILURES_BEFORE_BOUNCE,
            )
            .values(status=SubscriberStatus.BOUNCED)
        )
        if bounced.rowcount == 1:
            result.bounced.append(subscriber.email)
            log.warning("%s bounced %d times in a row: no longer mailed", subscriber.email, HARD_FAILURES_BEFORE_BOUNCE)
    session.commit()


def bounced_subscribers(session: Session, limit: int = 10) -> list[tuple[str, str | None]]:
    """Bounced addresses (up to `limit`) with the server's last refusal."""
    rows = session.execute(
        select(Subscriber.id, Subscriber.email)
        .where(Subscriber.status == SubscriberStatus.BOUNCED)
        .order_by(Subscriber.email)
        .limit(limit)
    ).all()
    return [
        (
            address,
            session.scalar(
                select(Delivery.error)
                .where(Delivery.subscriber_id == subscriber_id, Delivery.status == DeliveryStatus.FAILED)
                .order_by(Delivery.day.desc())
                .limit(1)
            ),
        )
        for subscriber_id, address in rows
    ]
