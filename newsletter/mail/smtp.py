"""The SMTP backend: a small pool of reused sessions, paced sends, and the server's replies classified."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import Literal

from newsletter.config import Settings
from newsletter.mail.dkim import DkimSigner
from newsletter.mail.errors import (
    MailServerUnavailable,
    PermanentDeliveryError,
    SenderRefused,
    TemporaryDeliveryError,
)
from newsletter.mail.message import message_bytes
from newsletter.pacing import PacingUnavailable, RedisRequestSlots, RequestPacer, reachable_redis

# A pooled connection idle this long is checked with NOOP first: servers close idle sessions.
IDLE_CHECK_SECONDS = 5.0


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
        """Send one message; TemporaryDeliveryError, PermanentDeliveryError or SenderRefused say how it failed."""
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
            pipelined = self.settings.smtp_pipelining and connection.has_extn("pipelining")
            refused = send_envelope(connection, self.settings.from_address, recipients, raw, options, pipelined)
            broken = False
        except PermanentDeliveryError:
            broken = False
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            broken = False
            code, reply = next(iter(exc.recipients.values()))
            raise classify_reply("RCPT", code, reply) from exc
        except smtplib.SMTPResponseException as exc:
            # smtplib has sent RSET after a refusal; 421 means the server is closing the session.
            broken = exc.smtp_code == 421
            raise classify_reply(_command_of(exc), exc.smtp_code, exc.smtp_error) from exc
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise TemporaryDeliveryError(f"connection lost: {_describe(exc)}") from exc
        except smtplib.SMTPException as exc:  # a reply smtplib could not make sense of
            raise TemporaryDeliveryError(f"SMTP error: {_describe(exc)}") from exc
        finally:
            self.pool.release(connection, broken)
        if refused:
            code, reply = next(iter(refused.values()))
            raise classify_reply("RCPT", code, reply)

    def close(self) -> None:
        self.pool.close()


def send_envelope(
    connection: smtplib.SMTP, sender: str, recipients: list[str], raw: bytes, options: list[str], pipelined: bool
) -> dict[str, tuple[int, bytes]]:
    """smtplib's sendmail, raising as it does, but with MAIL, RCPT and DATA written at once and their replies
    read after when `pipelined` (RFC 2920 PIPELINING: one round trip instead of three), and the message's
    leading dots doubled by a byte replace rather than a regular expression over the whole message."""
    if connection.has_extn("size"):
        options = [*options, f"SIZE={len(raw)}"]
    encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
    commands = [" ".join([f"MAIL FROM:{smtplib.quoteaddr(sender)}", *options])]
    commands += [f"RCPT TO:{smtplib.quoteaddr(recipient)}" for recipient in recipients]
    commands.append("DATA")
    replies: list[tuple[int, bytes]] = []
    if pipelined:
        connection.send(("\r\n".join(commands) + "\r\n").encode(encoding))
        replies = [connection.getreply() for _ in commands]
    else:
        for command in commands:
            # As smtplib: after a refused MAIL FROM, or with every recipient refused, nothing more is said.
            if command == "DATA" and all(code not in (250, 251) for code, _ in replies[1:]):
                break
            connection.send(f"{command}\r\n".encode(encoding))
            replies.append(connection.getreply())
            if command.startswith("MAIL") and replies[0][0] != 250:
                break
    # Replies in command order; a command left unsaid (see above) has none.
    mail, rcpt_replies = replies[0], replies[1 : 1 + len(recipients)]
    data = replies[len(commands) - 1] if len(replies) == len(commands) else (503, b"not reached")
    refused = {r: reply for r, reply in zip(recipients, rcpt_replies, strict=False) if reply[0] not in (250, 251)}
    if data[0] == 354 and (mail[0] != 250 or len(refused) == len(recipients)):
        # A server that opened DATA with no one to deliver to: an empty message ends it, and is not kept.
        connection.send(b".\r\n")
        connection.getreply()
    if mail[0] != 250:
        _reset(connection)
        raise smtplib.SMTPSenderRefused(mail[0], mail[1], sender)
    if len(refused) == len(recipients):
        _reset(connection)
        raise smtplib.SMTPRecipientsRefused(refused)
    if data[0] != 354:
        _reset(connection)
        raise smtplib.SMTPDataError(*data)
    body = raw.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    connection.send(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
    code, reply = connection.getreply()
    if code != 250:
        _reset(connection)
        raise smtplib.SMTPDataError(code, reply)
    return refused


def _reset(connection: smtplib.SMTP) -> None:
    # As smtplib does after a refusal: a server that hung up has said all it will; its refusal is the news.
    try:
        connection.rset()
    except smtplib.SMTPServerDisconnected:
        pass


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


SmtpCommand = Literal["MAIL", "RCPT", "DATA", "SESSION"]

# The command each smtplib refusal answers; anything else came outside a transaction (EHLO, ...).
_COMMAND_OF_ERROR: dict[type[smtplib.SMTPResponseException], SmtpCommand] = {
    smtplib.SMTPSenderRefused: "MAIL",
    smtplib.SMTPDataError: "DATA",
}
_COMMAND_NAMES: dict[SmtpCommand, str] = {"MAIL": "MAIL FROM", "RCPT": "RCPT TO", "DATA": "DATA", "SESSION": "EHLO"}
# Without an enhanced status code, these replies to RCPT name the address (RFC 5321 4.2.3).
_RECIPIENT_REPLY_CODES = frozenset({550, 551, 552, 553})
_ENHANCED_CODE = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def _command_of(exc: smtplib.SMTPResponseException) -> SmtpCommand:
    return next((command for kind, command in _COMMAND_OF_ERROR.items() if isinstance(exc, kind)), "SESSION")


def enhanced_subject(reply: str) -> int | None:
    """The subject of the reply's enhanced status code (RFC 3463: 1 address, 2 mailbox, 7 policy), if it has one."""
    found = _ENHANCED_CODE.match(reply)
    return int(found.group(2)) if found else None


def classify_reply(command: SmtpCommand, code: int, reply: bytes | str) -> Exception:
    """Whose fault a refusal is: a 4xx is retried, a 5xx for the address at RCPT counts toward that
    recipient's bounce, any other 5xx (sender, message, policy, session) stops the day and blames nobody."""
    text = _text(reply)
    message = f"{code} {text} (at {_COMMAND_NAMES[command]})"
    if code < 500:
        return TemporaryDeliveryError(message)
    subject = enhanced_subject(text)
    about_recipient = subject in (1, 2) if subject is not None else code in _RECIPIENT_REPLY_CODES
    if command == "RCPT" and about_recipient:
        return PermanentDeliveryError(message)
    return SenderRefused(message)
