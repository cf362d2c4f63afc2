"""What routes receive: a session per request, the settings, the link signer, a mail backend, the page language."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.delivery import MailBackend, make_backend
from newsletter.tokens import LinkSigner, signing_key
from newsletter.web.i18n import Translator
from newsletter.web.preview import RecentPapers
from newsletter.web.security import CSRF_COOKIE, CSRF_FIELD, ConfirmationCaps, CsrfError, CsrfGuard, RateLimiter

ONE_CLICK_BODY = ("List-Unsubscribe", "One-Click")


class SigningSecret:
    """The link and CSRF secret: configured, or read (generated on first run) from the database once."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._value = settings.secret_key
        self._lock = threading.Lock()

    def load(self) -> str:
        """The secret, reading it from the database the first time only: it never changes."""
        with self._lock:
            if self._value is None:
                with session_scope(self._engine) as session:
                    self._value = signing_key(session, self._settings)
            return self._value


@dataclass
class WebServices:
    """What one app holds for all its requests (app.state.services)."""

    settings: Settings
    engine: Engine
    secret: SigningSecret
    limiter: RateLimiter
    recent_papers: RecentPapers = field(default_factory=RecentPapers)

    @property
    def signer(self) -> LinkSigner:
        """The link signer for the app's secret."""
        return LinkSigner(self.secret.load())

    @property
    def csrf(self) -> CsrfGuard:
        """The CSRF guard for the app's secret."""
        return CsrfGuard(self.secret.load())


def web_services(request: Request) -> WebServices:
    """The app's shared services."""
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[WebServices, Depends(web_services)]


def db_session(services: ServicesDep) -> Iterator[Session]:
    """One session per request, closed after the response."""
    with Session(services.engine, expire_on_commit=False) as session:
        yield session


def app_settings(services: ServicesDep) -> Settings:
    """The app's Settings."""
    return services.settings


def link_signer(services: ServicesDep) -> LinkSigner:
    """Makes and reads the links in mails."""
    return services.signer


def mail_backend(settings: Annotated[Settings, Depends(app_settings)]) -> Iterator[MailBackend]:
    """A mail backend for this request, closed after it."""
    backend = make_backend(settings)
    try:
        yield backend
    finally:
        backend.close()


def page_language(request: Request) -> Translator:
    """The reader's page language (chosen by the page middleware)."""
    return Translator(request.state.lang)


SessionDep = Annotated[Session, Depends(db_session)]
SettingsDep = Annotated[Settings, Depends(app_settings)]
SignerDep = Annotated[LinkSigner, Depends(link_signer)]
MailDep = Annotated[MailBackend, Depends(mail_backend)]
PageLanguage = Annotated[Translator, Depends(page_language)]


class Rejected(Exception):
    """A POST refused before it acts: too many requests (429) or a missing CSRF token (403)."""

    def __init__(self, status_code: int, key: str, retry_after: int = 0) -> None:
        super().__init__(key)
        self.status_code = status_code
        self.key = key
        self.retry_after = retry_after


def client_address(request: Request) -> str:
    """The address requests are counted by: the connection's, or the one a trusted proxy names (create_app)."""
    return request.client.host if request.client else "unknown"


def confirmation_caps(request: Request, services: ServicesDep) -> ConfirmationCaps:
    """The caps on confirmation mails for this request's client."""
    settings = services.settings
    limits = (settings.web_confirm_mailbox_rate_limit, settings.web_confirm_domain_rate_limit,
              settings.web_confirm_client_rate_limit)
    return ConfirmationCaps(services.limiter, limits, client_address(request))


CapsDep = Annotated[ConfirmationCaps, Depends(confirmation_caps)]


async def guard_post(request: Request, services: ServicesDep) -> None:
    """Rate limit, then CSRF, for every form POST."""
    verdict = services.limiter.hit(services.settings.web_post_rate_limit, "post", client_address(request))
    if not verdict.allowed:
        raise Rejected(429, "rate", verdict.retry_after_seconds)
    token = (await request.form()).get(CSRF_FIELD)
    try:
        services.csrf.check(request.cookies.get(CSRF_COOKIE), token if isinstance(token, str) else None)
    except CsrfError as exc:
        raise Rejected(403, "csrf") from exc


async def guard_unless_one_click(request: Request, services: ServicesDep) -> None:
    """guard_post, except for the RFC 8058 one-click POST."""
    # The mail provider POSTs List-Unsubscribe=One-Click without cookies; the signed URL is the proof.
    form = await request.form()
    if form.get(ONE_CLICK_BODY[0]) == ONE_CLICK_BODY[1]:
        return
    await guard_post(request, services)


Guarded = Depends(guard_post)
