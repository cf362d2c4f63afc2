"""The outbox backend: each message as an .eml file, for development, the demo and tests."""

from __future__ import annotations

import os
import re
import tempfile
from email.message import EmailMessage
from pathlib import Path

from newsletter.mail.dkim import DkimSigner
from newsletter.mail.errors import MailServerUnavailable
from newsletter.mail.message import message_bytes


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
