"""Signed links: each token names one subscriber (by public ID), a purpose and a generation, and expires."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

from itsdangerous import BadSignature, SignatureExpired, Signer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode
from itsdangerous.serializer import Serializer
from itsdangerous.signer import HMACAlgorithm
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.subscriber_tables import AppSecret

_SECRET_NAME = "link_signing_key"


class Purpose(StrEnum):
    CONFIRM = "confirm"
    MANAGE = "manage"
    UNSUBSCRIBE = "unsubscribe"
    ARCHIVE = "archive"
    FEEDBACK = "feedback"  # "more like this" / "not for me" on a card
    FEED = "feed"  # the private Atom feed: never expires, refused once the subscriber leaves


# Confirmation links expire after 7 days; links in digests stay valid for a year.
MAX_AGE_SECONDS = {
    Purpose.CONFIRM: 7 * 24 * 3600,
    Purpose.MANAGE: 366 * 24 * 3600,
    Purpose.UNSUBSCRIBE: 366 * 24 * 3600,
    Purpose.ARCHIVE: 366 * 24 * 3600,
}
# Joins the public ID and the generation inside a compact token (public IDs are URL-safe base64: no "~").
GENERATION_MARK = "~"


class ShortHMAC(HMACAlgorithm):
    """HMAC-SHA256 cut to 96 bits. Compact tokens sit in every card of a digest, twice, where each byte
    counts against Gmail's clip; 96 bits still leave forging a link to guessing."""

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return super().get_signature(key, value)[:12]


class InvalidToken(Exception):
    """A link that is tampered, expired or made for another purpose."""

    def __init__(self, reason: str, code: str = "tampered") -> None:
        super().__init__(reason)
        self.reason = reason
        # For pages that explain it in the reader's language: tampered, expired, wrong_page, gone, other_day.
        self.code = code


@dataclass(frozen=True)
class TokenClaims:
    """Who a valid link names: their public ID, or the row ID in links signed before public IDs existed."""

    public_id: str | None
    subscriber_id: int | None = None
    extra: str = ""
    issued_at: dt.datetime | None = None
    # The subscriber's generation when the link was made (links from before generations: 0).
    generation: int = 0

    def predates(self, created_at: dt.datetime) -> bool:
        """Whether the token was signed before a row created at `created_at` existed (so it names another one)."""
        if self.issued_at is None:
            return False
        created = created_at if created_at.tzinfo else created_at.replace(tzinfo=dt.UTC)
        # Token timestamps are whole seconds: allow one second of rounding.
        return self.issued_at < created - dt.timedelta(seconds=1)


def signing_key(session: Session, settings: Settings) -> str:
    """The configured secret, or one generated into the database on first use."""
    if settings.secret_key:
        return settings.secret_key
    stored = session.get(AppSecret, _SECRET_NAME)
    if stored is not None:
        return stored.value
    candidate = AppSecret(name=_SECRET_NAME, value=secrets.token_urlsafe(48))
    try:
        with session.begin_nested():
            session.add(candidate)
    except IntegrityError:  # another process generated it first
        stored = session.get(AppSecret, _SECRET_NAME)
        assert stored is not None
        return stored.value
    return candidate.value


class _LinkSerializer(URLSafeTimedSerializer):
    """itsdangerous' URL-safe serializer without its zlib attempt: a link's payload is a few dozen bytes,
    which zlib does not shorten, and the attempt was most of a token's cost (three per digest). Tokens
    made compressed still read: the reading side is unchanged."""

    def dump_payload(self, obj: object) -> bytes:
        return base64_encode(Serializer.dump_payload(self, obj))


class LinkSigner:
    """Makes and reads the tokens in confirmation, manage, unsubscribe and archive links."""

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._serializer = _LinkSerializer(secret, salt="arxiv-digest-links")

    def make(self, purpose: Purpose, public_id: str, extra: str = "", generation: int = 0) -> str:
        """A token for `purpose` bound to the subscriber's public ID and generation (and e.g. a day for the archive)."""
        claims: dict[str, object] = {"p": purpose.value, "s": public_id, "x": extra}
        if generation:
            claims["g"] = generation
        return self._serializer.dumps(claims)

    def read(self, token: str, purpose: Purpose, max_age: int | None = None) -> TokenClaims:
        """The claims of a valid token for `purpose`; InvalidToken otherwise."""
        try:
            data, signed_at = self._serializer.loads(
                token, max_age=max_age or MAX_AGE_SECONDS[purpose], return_timestamp=True
            )
        except SignatureExpired as exc:
            raise InvalidToken("This link has expired.", "expired") from exc
        except BadSignature as exc:
            raise InvalidToken("This link is not valid: it may have been altered or cut short.") from exc
        if not isinstance(data, dict) or data.get("p") != purpose.value or not isinstance(data.get("s"), str | int):
            raise InvalidToken("This link is not valid for this page.", "wrong_page")
        subscriber, extra, generation = data["s"], str(data.get("x", "")), data.get("g", 0)
        if not isinstance(generation, int):
            raise InvalidToken("This link is not valid for this page.", "wrong_page")
        # Links mailed before public IDs carry the row ID; they stay valid until they expire (a year).
        if isinstance(subscriber, int):
            return TokenClaims(public_id=None, subscriber_id=subscriber, extra=extra, issued_at=signed_at,
                               generation=generation)
        return TokenClaims(public_id=subscriber, extra=extra, issued_at=signed_at, generation=generation)


    # Feedback and feed links are short: the public ID and its signature, no serialized payload (two
    # feedback links on every card). The salt names the purpose, so one never passes for the other.
    def make_short(self, purpose: Purpose, public_id: str, generation: int = 0) -> str:
        """A compact token for `purpose` naming the subscriber's public ID and generation (feedback and feed
        links); generation 0 is left out, so links made before generations read the same."""
        value = public_id if generation == 0 else f"{public_id}{GENERATION_MARK}{generation}"
        return self._short_signer(purpose).sign(value).decode()

    def read_short(self, token: str, purpose: Purpose) -> TokenClaims:
        """The claims of a valid compact token for `purpose`; InvalidToken otherwise."""
        signer = self._short_signer(purpose)
        try:
            public_id, _, generation = signer.unsign(token).decode().partition(GENERATION_MARK)
            return TokenClaims(public_id=public_id, generation=int(generation or 0))
        except (BadSignature, UnicodeDecodeError, ValueError) as exc:
            raise InvalidToken("This link is not valid: it may have been altered or cut short.") from exc

    def _short_signer(self, purpose: Purpose) -> Signer:
        salt = f"arxiv-digest-{purpose.value}"
        # Feed and feedback links stay valid until the subscriber leaves (the generation): no timestamp.
        return Signer(self._secret, salt=salt, algorithm=ShortHMAC(hashlib.sha256))


@dataclass(frozen=True)
class SubscriberLinks:
    manage: str
    unsubscribe: str
    archive: str
    # Where this subscriber's feedback links start: "{feedback}/more/{arxiv_id}" (empty: no feedback links).
    feedback: str = ""


def subscriber_links(
    signer: LinkSigner, base_url: str, public_id: str, day: str, generation: int = 0
) -> SubscriberLinks:
    """The links every digest carries, for the subscriber with `public_id` in its current `generation`."""
    return SubscriberLinks(
        manage=f"{base_url}/manage/{signer.make(Purpose.MANAGE, public_id, generation=generation)}",
        unsubscribe=f"{base_url}/unsubscribe/{signer.make(Purpose.UNSUBSCRIBE, public_id, generation=generation)}",
        archive=f"{base_url}/archive/{day}/{signer.make(Purpose.ARCHIVE, public_id, day, generation)}",
        feedback=f"{base_url}/feedback/{signer.make_short(Purpose.FEEDBACK, public_id, generation)}",
    )
