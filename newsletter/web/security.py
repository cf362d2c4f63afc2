"""Abuse protection for the web app: CSRF tokens, per-IP rate limits, a request body cap."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import HTTPException
from itsdangerous import BadSignature, URLSafeTimedSerializer
from limits import RateLimitItem, parse
from limits.storage import Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_COOKIE = "csrf"
CSRF_FIELD = "csrf_token"
# A form left open in a tab for a day still submits.
CSRF_MAX_AGE_SECONDS = 24 * 3600


class CsrfError(Exception):
    """A form POST without a valid CSRF token."""


class CsrfGuard:
    """Signed double-submit: a random nonce in a cookie, and the nonce signed in a hidden field."""

    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="arxiv-digest-csrf")

    @staticmethod
    def new_nonce() -> str:
        """A fresh random value for the cookie."""
        return secrets.token_urlsafe(24)

    def field_for(self, nonce: str) -> str:
        """The hidden field value that goes with the cookie's nonce."""
        return self._serializer.dumps(nonce)

    def check(self, cookie_nonce: str | None, field: str | None) -> None:
        """Raise CsrfError unless the field is a fresh signature of the cookie's nonce."""
        if not cookie_nonce or not field:
            raise CsrfError("missing CSRF cookie or field")
        try:
            signed_nonce = self._serializer.loads(field, max_age=CSRF_MAX_AGE_SECONDS)
        except BadSignature as exc:
            raise CsrfError("CSRF field not valid") from exc
        if not isinstance(signed_nonce, str) or not hmac.compare_digest(signed_nonce, cookie_nonce):
            raise CsrfError("CSRF field does not match the cookie")


class ConfirmationCaps:
    """Caps on confirmation mails per mailbox (its +tag removed), per domain and per client (a MailCap)."""

    def __init__(self, limiter: RateLimiter, limits: tuple[str, str, str], client: str) -> None:
        self._limiter = limiter
        self._mailbox_limit, self._domain_limit, self._client_limit = (parse(limit) for limit in limits)
        self._client = client

    def __call__(self, address: str) -> bool:
        """Whether one more confirmation may go to `address`; counts it when it may."""
        from newsletter.subscribers import mailbox_of

        counters = [
            (self._mailbox_limit, "confirm-mailbox", mailbox_of(address)),
            (self._domain_limit, "confirm-domain", address.rpartition("@")[2].lower()),
            (self._client_limit, "confirm-client", self._client),
        ]
        # Tested before any is counted, so a refusal by one cap does not use up the others.
        if not all(self._limiter.test(limit, action, key) for limit, action, key in counters):
            return False
        return all(self._limiter.hit(limit, action, key).allowed for limit, action, key in counters)


@dataclass(frozen=True)
class RateVerdict:
    allowed: bool
    retry_after_seconds: int = 0


class RateLimiter:
    """Per-client limits on named actions, counted in memory or in Redis (`limits`)."""

    def __init__(self, storage_uri: str, prefix: str) -> None:
        options = {"key_prefix": prefix} if storage_uri.startswith(("redis", "rediss")) else {}
        storage = storage_from_string(storage_uri, **options)
        # An async+... URI would give asyncio storage, which this synchronous limiter cannot drive.
        assert isinstance(storage, Storage), f"{storage_uri}: not a synchronous limits storage"
        self.storage: Storage = storage
        self._limiter = MovingWindowRateLimiter(self.storage)
        self._prefix = prefix

    def test(self, limit: str | RateLimitItem, action: str, client: str) -> bool:
        """Whether one more request by `client` for `action` would be allowed (counts nothing)."""
        item = parse(limit) if isinstance(limit, str) else limit
        return self._limiter.test(item, self._prefix, action, client)

    def hit(self, limit: str | RateLimitItem, action: str, client: str) -> RateVerdict:
        """Count one request by `client` for `action`; refused once over the limit."""
        item = parse(limit) if isinstance(limit, str) else limit
        if self._limiter.hit(item, self._prefix, action, client):
            return RateVerdict(True)
        stats = self._limiter.get_window_stats(item, self._prefix, action, client)
        return RateVerdict(False, max(1, int(stats.reset_time - time.time()) + 1))


class BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=413, detail="request body too large")


class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by Content-Length or as it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _send_413(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes HTTPExceptions raised while reading the body through as they are.
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send_413(send)


async def _send_413(send: Send) -> None:
    body = b"Request body too large."
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
