"""The web app: subscribe, confirm, manage, unsubscribe, archive. Routes are thin wrappers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.templating import Jinja2Templates
from sqlmodel import Session

from newsletter.config import TEMPLATES_DIR, Settings, get_settings
from newsletter.db import engine_for
from newsletter.delivery import make_backend
from newsletter.models import SubscriberStatus
from newsletter.subscribers import LANGUAGES, SubscriptionError
from newsletter.tokens import InvalidToken, LinkSigner, Purpose, signing_key
from newsletter.web import actions

templates = Jinja2Templates(directory=str(TEMPLATES_DIR / "web"))


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app for `settings` (default: the process's Settings)."""
    settings = settings or get_settings()
    engine = engine_for(settings.database_url)
    app = FastAPI(title="arXiv digest", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.mail = make_backend(settings)

    def session() -> Iterator[Session]:
        with Session(engine, expire_on_commit=False) as db:
            yield db

    SessionDep = Annotated[Session, Depends(session)]

    def signer(db: Session) -> LinkSigner:
        key = signing_key(db, settings)
        db.commit()
        return LinkSigner(key)

    def page(request: Request, name: str, status_code: int = 200, **context: object) -> HTMLResponse:
        return templates.TemplateResponse(
            request, name, {"languages": LANGUAGES, **context}, status_code=status_code
        )

    def bad_link(request: Request, error: InvalidToken) -> HTMLResponse:
        return page(request, "message.html", 400, title="Link not valid", message=error.reason)

    @app.get("/health", response_class=PlainTextResponse)
    def health(db: SessionDep) -> str:
        actions.check_database(db)
        return "ok"

    @app.get("/", response_class=HTMLResponse)
    def subscribe_form(request: Request) -> HTMLResponse:
        return page(request, "subscribe.html", form={"language": "ZH-HANS", "timezone": "Asia/Shanghai"})

    @app.post("/subscribe", response_class=HTMLResponse)
    def subscribe(
        request: Request,
        db: SessionDep,
        email: Annotated[str, Form(max_length=320)],
        keywords: Annotated[str, Form(max_length=5000)],
        language: Annotated[str, Form(max_length=16)] = "ZH-HANS",
        timezone: Annotated[str, Form(max_length=64)] = "Asia/Shanghai",
    ) -> HTMLResponse:
        form = {"email": email, "keywords": keywords, "language": language, "timezone": timezone}
        try:
            actions.request_subscription(
                db, settings, signer(db), app.state.mail, email, keywords.splitlines(), language, timezone
            )
        except SubscriptionError as exc:
            return page(request, "subscribe.html", 422, form=form, error=str(exc))
        # The same answer whether or not the address was known: no enumeration.
        return page(request, "message.html", title="Check your inbox",
                    message="If the address can receive mail, a confirmation link is on its way.")

    @app.get("/confirm/{token}", response_class=HTMLResponse)
    def confirm_page(request: Request, token: str, db: SessionDep) -> HTMLResponse:
        try:
            signer(db).read(token, Purpose.CONFIRM)
        except InvalidToken as exc:
            return bad_link(request, exc)
        return page(request, "confirm.html", token=token)

    @app.post("/confirm/{token}", response_class=HTMLResponse)
    def confirm(request: Request, token: str, db: SessionDep) -> HTMLResponse:
        try:
            subscriber = actions.confirm_subscription(db, signer(db), token)
        except InvalidToken as exc:
            return bad_link(request, exc)
        return page(request, "message.html", title="Subscription confirmed",
                    message=f"{subscriber.email} will receive the next digest.")

    @app.get("/manage/{token}", response_class=HTMLResponse)
    def manage_page(request: Request, token: str, db: SessionDep) -> HTMLResponse:
        try:
            subscriber, keywords = actions.subscriber_for(db, signer(db), token, Purpose.MANAGE)
        except InvalidToken as exc:
            return bad_link(request, exc)
        form = {"keywords": "\n".join(keywords), "language": subscriber.language, "timezone": subscriber.timezone,
                "paused": subscriber.status == SubscriberStatus.PAUSED}
        return page(request, "manage.html", token=token, email=subscriber.email, form=form)

    @app.post("/manage/{token}", response_class=HTMLResponse)
    def manage(
        request: Request,
        token: str,
        db: SessionDep,
        keywords: Annotated[str, Form(max_length=5000)],
        language: Annotated[str, Form(max_length=16)],
        timezone: Annotated[str, Form(max_length=64)],
        paused: Annotated[bool, Form()] = False,
    ) -> HTMLResponse:
        form = {"keywords": keywords, "language": language, "timezone": timezone, "paused": paused}
        try:
            subscriber = actions.update_preferences(
                db, signer(db), token, keywords.splitlines(), language, timezone, paused
            )
        except InvalidToken as exc:
            return bad_link(request, exc)
        except SubscriptionError as exc:
            return page(request, "manage.html", 422, token=token, email="", form=form, error=str(exc))
        return page(request, "manage.html", token=token, email=subscriber.email, form=form, saved=True)

    @app.get("/unsubscribe/{token}", response_class=HTMLResponse)
    def unsubscribe_page(request: Request, token: str, db: SessionDep) -> HTMLResponse:
        try:
            subscriber, _ = actions.subscriber_for(db, signer(db), token, Purpose.UNSUBSCRIBE)
        except InvalidToken as exc:
            return bad_link(request, exc)
        return page(request, "unsubscribe.html", token=token, email=subscriber.email)

    @app.post("/unsubscribe/{token}", response_class=HTMLResponse)
    def unsubscribe(request: Request, token: str, db: SessionDep) -> HTMLResponse:
        # Both the page's button and RFC 8058 one-click POSTs (List-Unsubscribe=One-Click) land here.
        try:
            subscriber = actions.unsubscribe_by_token(db, signer(db), token)
        except InvalidToken as exc:
            return bad_link(request, exc)
        return page(request, "message.html", title="Unsubscribed",
                    message=f"{subscriber.email} will receive no more digests.")

    @app.get("/archive/{day}/{token}", response_class=HTMLResponse)
    def archive(request: Request, day: str, token: str, db: SessionDep) -> Response:
        try:
            html = actions.archived_digest(db, settings, signer(db), day, token)
        except InvalidToken as exc:
            return bad_link(request, exc)
        return HTMLResponse(html)

    return app


def today() -> dt.date:
    """The current UTC date."""
    return dt.datetime.now(dt.UTC).date()
