"""Real SMTP sink on aiosmtpd with programmable temp-fails, rejects, drops, AUTH and TLS."""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

TlsMode = Literal["none", "starttls", "implicit"]
Stage = Literal["MAIL", "RCPT", "DATA"]

TEMP_FAIL_REPLY = "451 4.3.0 Try again later"
NO_SUCH_USER_REPLY = "550 5.1.1 No such user"
SENDER_REJECTED_REPLY = "553 5.7.1 Sender address rejected"
MESSAGE_REFUSED_REPLY = "554 5.6.0 Message refused"


@dataclass(frozen=True)
class ReceivedMessage:
    """One accepted message: envelope, raw bytes and the parsed EmailMessage."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage
    connection: int
    auth_user: str | None
    timestamp: float
    mail_options: tuple[str, ...] = ()  # MAIL FROM's parameters, BODY=8BITMIME among them


@dataclass(frozen=True)
class SmtpEvent:
    """One MAIL/RCPT/DATA command and the reply the sink chose (or 'DROP')."""

    connection: int
    verb: str
    argument: str
    reply: str


@dataclass
class SelfSignedCert:
    """A throwaway self-signed certificate for CN=localhost / IP 127.0.0.1."""

    cert_path: Path
    key_path: Path
    directory: Path

    @classmethod
    def generate(cls) -> SelfSignedCert:
        """Create cert + key in a temp directory (cryptography if present, else openssl CLI)."""
        directory = Path(tempfile.mkdtemp(prefix="smtp-sink-tls-"))
        cert_path, key_path = directory / "cert.pem", directory / "key.pem"
        try:
            _generate_with_cryptography(cert_path, key_path)
        except ImportError:
            _generate_with_openssl(cert_path, key_path)
        return cls(cert_path, key_path, directory)

    def server_context(self) -> ssl.SSLContext:
        """SSL context the server presents."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """SSL context that trusts only this certificate (hostname 127.0.0.1 or localhost)."""
        return ssl.create_default_context(cafile=str(self.cert_path))

    def cleanup(self) -> None:
        """Delete the temp directory."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _generate_with_cryptography(cert_path: Path, key_path: Path) -> None:
    """Generate an EC P-256 self-signed cert with the cryptography package."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _generate_with_openssl(cert_path: Path, key_path: Path) -> None:
    """Generate an EC P-256 self-signed cert with the openssl command line tool."""
    if shutil.which("openssl") is None:
        raise RuntimeError("neither the cryptography package nor the openssl CLI is available")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key_path),
            "-out",
            str(cert_path),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


class _SinkSMTP(SMTP):
    """aiosmtpd SMTP protocol that counts real connections (not STARTTLS re-wraps)."""

    def __init__(self, handler: Any, sink: SmtpSink, **kwargs: Any) -> None:
        """Remember the sink for connection accounting."""
        super().__init__(handler, **kwargs)
        self._sink = sink
        self.connection_number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count a new TCP connection, then run the normal setup."""
        if self._original_transport is None and self.transport is None:
            self.connection_number = self._sink._new_connection()
        super().connection_made(transport)


class _SinkController(Controller):
    """Controller bound to a pre-opened 127.0.0.1:0 socket and building _SinkSMTP."""

    def __init__(self, sink: SmtpSink, sock: socket.socket, **kwargs: Any) -> None:
        """Keep the listening socket to hand to the event loop."""
        host, port = sock.getsockname()[:2]
        super().__init__(sink._handler, hostname=host, port=port, **kwargs)
        self._sink = sink
        self._sock = sock

    def factory(self) -> SMTP:
        """Build the counting SMTP protocol."""
        return _SinkSMTP(self.handler, self._sink, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        """Serve on the already-bound socket (so port 0 works)."""
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


def offering_pipelining(ehlo_responses: list[str]) -> list[str]:
    """aiosmtpd's EHLO reply lines with PIPELINING added before the last (aiosmtpd reads pipelined commands
    in order, but does not say so)."""
    return [*ehlo_responses[:-1], "250-PIPELINING", ehlo_responses[-1]]


class _Handler:
    """aiosmtpd handler hooks delegating decisions to the sink."""

    def __init__(self, sink: SmtpSink) -> None:
        """Bind to the owning sink."""
        self.sink = sink

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """Offer PIPELINING as most real servers do."""
        session.host_name = hostname
        return offering_pipelining(responses) if self.sink.pipelining else responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Accept MAIL FROM unless a drop or a refusal is due."""
        reply = self.sink._decide(server, "MAIL", address)
        if reply == "DROP":
            return _drop(server)
        if not reply.startswith("250"):
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Accept, reject or temp-fail one recipient."""
        reply = self.sink._decide(server, "RCPT", address)
        if reply == "DROP":
            return _drop(server)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message unless temp-failing or dropping."""
        reply = self.sink._decide(server, "DATA", envelope.mail_from or "")
        if reply == "DROP":
            return _drop(server)
        if reply.startswith("250"):
            self.sink._store(server, session, envelope)
        return reply


def _drop(server: SMTP) -> str:
    """Abort the TCP connection without a reply (the returned text is never delivered)."""
    if server.transport is not None:
        server.transport.abort()
    return "421 4.4.2 Connection dropped"


class SmtpSink:
    """Real SMTP server on 127.0.0.1 collecting messages, with fault programming."""

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        auth_required: bool = False,
        tls: TlsMode = "none",
        require_starttls: bool = False,
        hostname: str = "smtp-sink.test",
        pipelining: bool = True,
    ) -> None:
        """Configure (not start) the sink; auth enables AUTH PLAIN/LOGIN without TLS."""
        self.auth = auth
        self.auth_required = auth_required
        self.tls = tls
        self.require_starttls = require_starttls
        self.server_hostname = hostname
        self.pipelining = pipelining
        self.host = "127.0.0.1"
        self.messages: list[ReceivedMessage] = []
        self.events: list[SmtpEvent] = []
        self.connections = 0
        self.auth_failures = 0
        self.cert: SelfSignedCert | None = None
        self._handler = _Handler(self)
        self._cond = threading.Condition()
        self._temp_fail: dict[str, int] = {}
        self._rejected: dict[str, str] = {}
        self._refused: dict[Stage, str] = {}
        self._drop: tuple[Stage, int] | None = None
        self._controller: _SinkController | None = None
        self._port: int | None = None

    # lifecycle -----------------------------------------------------------------

    def start(self) -> Self:
        """Bind a free port and start the aiosmtpd controller thread."""
        if self._controller is not None:
            raise RuntimeError("sink already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(64)
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        kwargs: dict[str, Any] = {
            "server_hostname": self.server_hostname,
            "auth_require_tls": False,
            "auth_required": self.auth_required,
            "ready_timeout": 10.0,
        }
        if self.auth is not None:
            kwargs["authenticator"] = self._authenticate
        if self.tls != "none":
            self.cert = SelfSignedCert.generate()
            if self.tls == "implicit":
                kwargs["ssl_context"] = self.cert.server_context()
            else:
                kwargs["tls_context"] = self.cert.server_context()
                kwargs["require_starttls"] = self.require_starttls
        controller = _SinkController(self, sock, **kwargs)
        try:
            controller.start()
        except BaseException:
            sock.close()
            raise
        self._controller = controller
        with self._cond:
            self.connections = 0
        return self

    def stop(self) -> None:
        """Stop the controller thread, close the port and delete TLS material."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
        if self.cert is not None:
            self.cert.cleanup()
            self.cert = None

    def __enter__(self) -> Self:
        """Start the sink for a with-block."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the sink at the end of a with-block."""
        self.stop()

    @property
    def port(self) -> int:
        """TCP port the sink listens on."""
        if self._port is None:
            raise RuntimeError("sink not started")
        return self._port

    @property
    def url(self) -> str:
        """smtp://, smtp+starttls:// or smtps:// URL of the sink."""
        scheme = {"none": "smtp", "starttls": "smtp+starttls", "implicit": "smtps"}[self.tls]
        return f"{scheme}://{self.host}:{self.port}"

    def client_ssl_context(self) -> ssl.SSLContext:
        """SSL context for smtplib that trusts the sink's self-signed certificate."""
        if self.cert is None:
            raise RuntimeError("sink has no TLS (tls='starttls' or 'implicit', and started)")
        return self.cert.client_context()

    @property
    def ca_file(self) -> Path:
        """Path of the self-signed certificate PEM (to trust it as a CA file)."""
        if self.cert is None:
            raise RuntimeError("sink has no TLS")
        return self.cert.cert_path

    # fault programming ---------------------------------------------------------

    def temp_fail_first(self, n: int, stage: Literal["RCPT", "DATA"] = "DATA") -> None:
        """Answer '451 4.3.0 Try again later' to the next n DATA (or RCPT) commands, then 250."""
        with self._cond:
            self._temp_fail[stage] = self._temp_fail.get(stage, 0) + n

    def reject_address(self, *addresses: str, reply: str = NO_SUCH_USER_REPLY) -> None:
        """Answer `reply` ('550 5.1.1 No such user') to RCPT TO of these addresses (case-insensitive)."""
        with self._cond:
            self._rejected.update((a.strip().lower(), reply) for a in addresses)

    def accept_address(self, *addresses: str) -> None:
        """Undo reject_address for these addresses."""
        with self._cond:
            for address in addresses:
                self._rejected.pop(address.strip().lower(), None)

    def refuse(self, stage: Literal["MAIL", "DATA"], reply: str) -> None:
        """Answer `reply` to every MAIL FROM (a refused sender) or DATA (a refused message) until accept_all."""
        with self._cond:
            self._refused[stage] = reply

    def accept_all(self) -> None:
        """Undo refuse: MAIL FROM and DATA are accepted again."""
        with self._cond:
            self._refused.clear()

    def drop_after(self, n_messages: int, stage: Stage = "MAIL") -> None:
        """After n more accepted messages, abort the connection at the next `stage` (once)."""
        with self._cond:
            self._drop = (stage, n_messages)

    def reset_faults(self) -> None:
        """Clear temp-fails, rejections and pending drops."""
        with self._cond:
            self._temp_fail.clear()
            self._rejected.clear()
            self._refused.clear()
            self._drop = None

    def clear(self) -> None:
        """Forget received messages, events and the connection count."""
        with self._cond:
            self.messages.clear()
            self.events.clear()
            self.connections = 0

    # observation ---------------------------------------------------------------

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least `count` messages arrived; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"got {len(self.messages)} of {count} messages")
                self._cond.wait(remaining)
            return list(self.messages)

    def messages_to(self, address: str) -> list[ReceivedMessage]:
        """Messages whose envelope recipients include `address` (case-insensitive)."""
        wanted = address.lower()
        return [m for m in self.messages if wanted in (r.lower() for r in m.rcpt_tos)]

    # internals called from the aiosmtpd thread ---------------------------------

    def _new_connection(self) -> int:
        """Count a connection and return its 1-based number."""
        with self._cond:
            self.connections += 1
            return self.connections

    def _decide(self, server: SMTP, verb: Stage, argument: str) -> str:
        """Pick the reply for a MAIL/RCPT/DATA command and log it."""
        with self._cond:
            reply = "250 OK"
            if self._drop is not None and self._drop[0] == verb and self._drop[1] <= 0:
                self._drop = None
                reply = "DROP"
            elif verb == "RCPT" and argument.strip().lower() in self._rejected:
                reply = self._rejected[argument.strip().lower()]
            elif verb in self._refused:
                reply = self._refused[verb]
            elif self._temp_fail.get(verb, 0) > 0:
                self._temp_fail[verb] -= 1
                reply = TEMP_FAIL_REPLY
            number = getattr(server, "connection_number", 0)
            self.events.append(SmtpEvent(number, verb, argument, reply))
            return reply

    def _store(self, server: SMTP, session: Session, envelope: Envelope) -> None:
        """Parse and keep an accepted message."""
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        auth_user = session.auth_data if isinstance(session.auth_data, str) else None
        message = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            raw=raw,
            message=parsed,  # type: ignore[arg-type]
            connection=getattr(server, "connection_number", 0),
            auth_user=auth_user,
            timestamp=time.monotonic(),
            mail_options=tuple(envelope.mail_options),
        )
        with self._cond:
            self.messages.append(message)
            if self._drop is not None:
                self._drop = (self._drop[0], self._drop[1] - 1)
            self._cond.notify_all()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """Check LOGIN/PLAIN credentials against the configured pair."""
        if self.auth is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = self.auth
        login = auth_data.login.decode("utf-8", "replace")
        if login == user and auth_data.password.decode("utf-8", "replace") == password:
            return AuthResult(success=True, auth_data=login)
        with self._cond:
            self.auth_failures += 1
        return AuthResult(success=False, handled=False)


__all__ = [
    "MESSAGE_REFUSED_REPLY",
    "NO_SUCH_USER_REPLY",
    "SENDER_REJECTED_REPLY",
    "TEMP_FAIL_REPLY",
    "ReceivedMessage",
    "SelfSignedCert",
    "SmtpEvent",
    "SmtpSink",
]
