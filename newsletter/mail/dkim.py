"""DKIM: sign the exact bytes that go out, so receivers can check the sender's domain."""

from __future__ import annotations

from pathlib import Path

import dkim
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from newsletter.mail.errors import DeliveryConfigError

# Headers the DKIM signature covers; RFC 8058 requires List-Unsubscribe(-Post) among them.
DKIM_SIGNED_HEADERS = [
    b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
    b"list-id", b"list-unsubscribe", b"list-unsubscribe-post", b"feedback-id",
]  # fmt: skip


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
        signature: bytes = dkim.sign(
            raw, self.selector, self.domain, self._key, include_headers=DKIM_SIGNED_HEADERS,
            canonicalize=(b"relaxed", b"relaxed"),
            linesep=b"\r\n",
        )
        return signature + raw
