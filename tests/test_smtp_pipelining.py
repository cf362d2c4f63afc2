"""SMTP PIPELINING (RFC 2920) on the wire: a peer that offers it sees MAIL, RCPT and DATA before answering any."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from newsletter.config import Settings
from newsletter.mail.errors import PermanentDeliveryError
from newsletter.mail.message import Sender, build_message, message_bytes
from newsletter.mail.smtp import SmtpBackend
from newsletter.render import RenderedDigest
from newsletter.tokens import SubscriberLinks
from tests.conftest import make_settings

# Lines a real digest can hold that SMTP must escape: a lone dot ends DATA unless it is doubled.
TEXT = "Papers today\n.\n.hidden line\n..two dots\nend\n"


@dataclass
class TranscriptLine:
    command: str
    # How many replies the peer had sent when the command arrived: with pipelining, MAIL, RCPT and DATA
    # all arrive after the same number.
    replies_before: int


class LineReader:
    """Lines off a socket; a timeout leaves it usable (a socket file is broken after one)."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.buffer = b""

    def readline(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.connection.recv(65536)  # TimeoutError after the socket's timeout
            if not chunk:
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"


@dataclass
class HoldingPeer:
    """A minimal SMTP server on a real socket that holds its replies to MAIL and RCPT until DATA comes
    (or 1 s passes, for a client that waits for each reply), and records what arrived when."""

    pipelining: bool
    refuse_rcpt: str | None = None
    transcript: list[TranscriptLine] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.settimeout(1.0)
            reader = LineReader(connection)
            replies = 0

            def reply(*lines: str) -> None:
                nonlocal replies
                connection.sendall("".join(f"{line}\r\n" for line in lines).encode())
                replies += 1

            reply("220 peer.test ESMTP")
            held: list[str] = []
            while True:
                try:
                    line = reader.readline().decode().rstrip("\r\n")
                except TimeoutError:
                    line = None  # the client waits for a reply we hold: it does not pipeline
                if line == "":
                    return
                verb = (line or "").split(" ")[0].split(":")[0].upper()
                if line is not None:
                    self.transcript.append(TranscriptLine(verb, replies))
                if verb == "EHLO":
                    reply("250-peer.test", *(["250-PIPELINING"] if self.pipelining else []), "250 8BITMIME")
                elif verb in ("MAIL", "RCPT") or line is None:
                    if line is not None:
                        held.append(verb)
                    if line is None or not self.pipelining:
                        self._answer(held, reply)
                elif verb == "DATA":
                    refused = self._answer(held, reply)
                    if refused:
                        reply("554 5.5.1 no valid recipients")
                        continue
                    reply("354 go ahead")
                    body = b""
                    while not body.endswith(b"\r\n.\r\n"):
                        body += reader.readline()
                    self.bodies.append(body[: -len(b".\r\n")])
                    reply("250 2.0.0 queued")
                elif verb == "RSET":
                    reply("250 OK")
                elif verb == "QUIT":
                    reply("221 bye")
                    return

    def _answer(self, held: list[str], reply: object) -> bool:
        refused = False
        for verb in held:
            if verb == "RCPT" and self.refuse_rcpt:
                reply(self.refuse_rcpt)  # type: ignore[operator]
                refused = True
            else:
                reply("250 OK")  # type: ignore[operator]
        held.clear()
        return refused


def settings_for(peer: HoldingPeer, tmp_path: Path, **overrides: object) -> Settings:
    return make_settings(
        f"sqlite:///{tmp_path / 'unused.db'}", tmp_path, mail_backend="smtp", smtp_host="127.0.0.1",
        smtp_port=peer.port, smtp_max_per_second=1000, smtp_timeout_seconds=10, **overrides,
    )  # fmt: skip


def digest_message() -> object:
    rendered = RenderedDigest(subject="digest", text=TEXT, html="<p>papers</p>\n.\n", preheader="")
    links = SubscriberLinks(manage="http://x/m", unsubscribe="http://x/u", archive="http://x/a")
    return build_message(rendered, "ada@example.org", Sender("digest@example.org", "Digest", "l.example"), links)


def send(settings: Settings) -> bytes:
    message = digest_message()
    backend = SmtpBackend(settings)
    try:
        backend.send(message)  # type: ignore[arg-type]
    finally:
        backend.close()
    return message_bytes(message, None)  # type: ignore[arg-type]


def unstuffed(body: bytes) -> bytes:
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in body.split(b"\r\n"))


def test_a_server_offering_pipelining_gets_mail_rcpt_and_data_in_one_go(tmp_path: Path) -> None:
    peer = HoldingPeer(pipelining=True)

    sent = send(settings_for(peer, tmp_path))

    envelope = [line for line in peer.transcript if line.command in ("MAIL", "RCPT", "DATA")]
    assert [line.command for line in envelope] == ["MAIL", "RCPT", "DATA"]
    assert len({line.replies_before for line in envelope}) == 1  # none waited for a reply
    # The body the peer received, dots unstuffed, is the message byte for byte.
    assert unstuffed(peer.bodies[0]) == sent
    assert b"\r\n..\r\n" in peer.bodies[0] and b"\r\n..hidden line" in peer.bodies[0]


def test_with_pipelining_turned_off_each_command_waits_for_its_reply(tmp_path: Path) -> None:
    peer = HoldingPeer(pipelining=True)

    send(settings_for(peer, tmp_path, smtp_pipelining=False))

    envelope = [line for line in peer.transcript if line.command in ("MAIL", "RCPT", "DATA")]
    assert [line.replies_before for line in envelope] == sorted({line.replies_before for line in envelope})
    assert len({line.replies_before for line in envelope}) == 3


def test_a_server_without_pipelining_is_spoken_to_one_command_at_a_time(tmp_path: Path) -> None:
    peer = HoldingPeer(pipelining=False)

    sent = send(settings_for(peer, tmp_path))

    envelope = [line for line in peer.transcript if line.command in ("MAIL", "RCPT", "DATA")]
    assert len({line.replies_before for line in envelope}) == 3
    assert unstuffed(peer.bodies[0]) == sent


def test_a_pipelined_refusal_of_the_recipient_is_that_recipients_bounce_and_no_message_goes(tmp_path: Path) -> None:
    peer = HoldingPeer(pipelining=True, refuse_rcpt="550 5.1.1 no such user")

    with pytest.raises(PermanentDeliveryError, match="550 5.1.1 no such user"):
        send(settings_for(peer, tmp_path))

    assert peer.bodies == []
    assert "RSET" in [line.command for line in peer.transcript]


def test_a_server_without_pipelining_refusing_the_recipient_is_that_recipients_bounce_and_data_is_never_sent(
    tmp_path: Path,
) -> None:
    peer = HoldingPeer(pipelining=False, refuse_rcpt="550 5.1.1 no such user")

    with pytest.raises(PermanentDeliveryError, match="550 5.1.1 no such user"):
        send(settings_for(peer, tmp_path))

    commands = [line.command for line in peer.transcript]
    assert "DATA" not in commands and "RSET" in commands
    assert peer.bodies == []
