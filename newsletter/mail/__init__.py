"""Mail transport: build a digest message, sign it, and hand it to the outbox or an SMTP server.

Nothing here touches the database; the delivery ledger (newsletter.delivery) decides who gets what.
"""

from __future__ import annotations

from email.message import EmailMessage
from typing import Protocol

from newsletter.config import Settings
from newsletter.mail.dkim import DkimSigner
from newsletter.mail.errors import (
    DeliveryConfigError,
    DeliveryStopped,
    MailServerUnavailable,
    PermanentDeliveryError,
    SenderRefused,
    TemporaryDeliveryError,
)
from newsletter.mail.message import Sender, UnusableAddress, build_message, digest_message_id
from newsletter.mail.outbox import OutboxBackend
from newsletter.mail.smtp import SmtpBackend

__all__ = [
    "DeliveryConfigError",
    "DeliveryStopped",
    "DkimSigner",
    "MailBackend",
    "MailServerUnavailable",
    "OutboxBackend",
    "PermanentDeliveryError",
    "Sender",
    "SenderRefused",
    "SmtpBackend",
    "TemporaryDeliveryError",
    "UnusableAddress",
    "build_message",
    "digest_message_id",
    "make_backend",
]


class MailBackend(Protocol):
    """Where a built message goes; `send` raises TemporaryDeliveryError, PermanentDeliveryError or SenderRefused."""

    def send(self, message: EmailMessage) -> None: ...

    def close(self) -> None: ...


def make_backend(settings: Settings) -> MailBackend:
    """The backend NEWSLETTER_MAIL_BACKEND names, signing with DKIM when it is configured."""
    signer = None
    if settings.dkim_enabled:
        assert settings.dkim_key_file and settings.dkim_selector and settings.dkim_domain
        signer = DkimSigner(settings.dkim_key_file, settings.dkim_selector, settings.dkim_domain)
    if settings.mail_backend == "smtp":
        return SmtpBackend(settings, signer)
    return OutboxBackend(settings.outbox_dir, signer)
