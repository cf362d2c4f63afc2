"""The web app: subscribe, confirm, manage, unsubscribe, archive. Routes are thin wrappers."""

import threading
import zoneinfo
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from newsletter.config import TEMPLATES_DIR, Settings, get_settings
from newsletter.db import engine_for, session_scope
from newsletter.delivery import MailBackend, make_backend
from newsletter.models import SubscriberStatus
from newsletter.subscribers import LANGUAGES
from newsletter.tokens import InvalidToken, LinkSigner, Purpose, signing_key
from newsletter.web import actions
from newsletter.web.actions import FieldError, FormInvalid
from newsletter.web.i18n import PAGE_LANGUAGES, Translator, page_language
from newsletter.web.preview import RecentPapers
from newsletter.web.security import CSRF_COOKIE, CSRF_FIELD, BodySizeLimit, CsrfError, CsrfGuard, RateLimiter

templates = Jinja2Templates(directory=str(TEMPLATES_DIR / "web"))

TIMEZONES = sorted(name for name in zoneinfo.available_timezones() if "/" in name or name == "UTC")
KEYWORD_EXAMPLES = [
    "reinforcement learning",
    "diffusion policy",
    '"graph neural network" ANDNOT survey',
    "ti:transformer* AND cat:cs.RO",
    "au:Hinton",
]
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# The archived digest is mail HTML: inline styles and remote images, never scripts.
ARCHIVE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; frame-ancestors 'none'"
MAX_FIELD = {"email": 320, "keywords": 8000, "language": 16, "timezone": 64}
ONE_CLICK_BODY = ("List-Unsubscribe", "One-Click")


class Rejected(Exception):
    """A POST refused before it acts: too many requests (429) or a missing CSRF token (403)."""

    def __init__(self, status_code: int, key: str, retry_after: int = 0) -> None:
        super().__init__(key)
        self.status_code = status_code
        self.key = key
        self.retry_after = retry_after


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app for `settings` (default: the process's Settings)."""
    settings = settings or get_settings()
    engine = engine_for(settings.database_url)
    app = FastAPI(title="arXiv digest", docs_url=None, redoc_url=None, openapi_url=None)
    limiter = RateLimiter(settings.web_rate_limit_storage, settings.web_rate_limit_prefix)
    recent_papers = RecentPapers()
    secure_cookies = settings.base_url.startswith("https://")
    keys: dict[str, str] = {}
    keys_lock = threading.Lock()
    app.state.settings = settings
    app.state.limiter = limiter

    def session() -> Iterator[Session]:
        with Session(engine, expire_on_commit=False) as db:
            yield db

    SessionDep = Annotated[Session, Depends(session)]

    def secret() -> str:
        # Read (or generated into the database) on first use, then kept: it never changes.
        with keys_lock:
            if "secret" not in keys:
                with session_scope(engine) as db:
                    keys["secret"] = signing_key(db, settings)
            return keys["secret"]

    def signer() -> LinkSigner:
        return LinkSigner(secret())

    def mail_backend() -> Iterator[MailBackend]:
        backend = make_backend(settings)
        try:
            yield backend
        finally:
            backend.close()

    def translator(request: Request) -> Translator:
        return Translator(request.state.lang)

    def page(request: Request, name: str, status_code: int = 200, **context: object) -> HTMLResponse:
        t = translator(request)
        csrf_field = CsrfGuard(secret()).field_for(request.state.csrf_nonce)
        response = templates.TemplateResponse(
            request,
            name,
            {
                "t": t,
                "lang": t.language,
                "page_languages": PAGE_LANGUAGES,
                "languages": LANGUAGES,
                "timezones": TIMEZONES,
                "examples": KEYWORD_EXAMPLES,
                "csrf_field": CSRF_FIELD,
                "csrf_token": csrf_field,
                "errors": {},
                **context,
            },
            status_code=status_code,
        )
        return response

    def message(request: Request, status_code: int, title: str, text: str, **context: object) -> HTMLResponse:
        return page(request, "message.html", status_code, title=title, message=text, **context)

    def bad_link(request: Request, error: InvalidToken) -> HTMLResponse:
        t = translator(request)
        return message(request, 400, t("bad_link_title"), t(f"link_{error.code}"), help=t("bad_link_help"))

    def field_errors(request: Request, errors: list[FieldError]) -> dict[str, list[str]]:
        t = translator(request)
        by_field: dict[str, list[str]] = {}
        for error in errors:
            by_field.setdefault(error.field, []).append(t(error.key, **error.values))
        return by_field

    async def guard_post(request: Request) -> None:
        """Rate limit, then CSRF, for every form POST."""
        client = request.client.host if request.client else "unknown"
        verdict = limiter.hit(settings.web_post_rate_limit, "post", client)
        if not verdict.allowed:
            raise Rejected(429, "rate", verdict.retry_after_seconds)
        form = await request.form()
        token = form.get(CSRF_FIELD)
        try:
            CsrfGuard(secret()).check(request.cookies.get(CSRF_COOKIE), token if isinstance(token, str) else None)
        except CsrfError as exc:
            raise Rejected(403, "csrf") from exc

    async def guard_unless_one_click(request: Request) -> None:
        # RFC 8058: the mail provider POSTs List-Unsubscribe=One-Click without cookies; the signed URL is the proof.
        form = await request.form()
        if form.get(ONE_CLICK_BODY[0]) == ONE_CLICK_BODY[1]:
            return
        await guard_post(request)

    Guarded = Depends(guard_post)

    @app.exception_handler(Rejected)
    async def rejected(request: Request, exc: Rejected) -> HTMLResponse:
        t = translator(request)
        response = message(request, exc.status_code, t(f"{exc.key}_title"), t(exc.key))
        if exc.retry_after:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        t = translator(request)
        if exc.status_code == 404:
            return message(request, 404, t("not_found_title"), t("not_found"))
        if exc.status_code == 413:
            return message(request, 413, t("too_large_title"), t("too_large"))
        return message(request, exc.status_code, t("error_title"), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        t = translator(request)
        return message(request, 422, t("error_title"), t("fix_errors"))

    # Inside the page middleware below: an exception it sees from a body read would arrive wrapped
    # in a task group's ExceptionGroup, and FastAPI would answer 400 instead of 413.
    app.add_middleware(BodySizeLimit, max_bytes=settings.web_max_body_bytes)

    @app.middleware("http")
    async def page_context(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.lang = page_language(
            request.query_params, request.cookies, request.headers.get("accept-language")
        )
        nonce = request.cookies.get(CSRF_COOKIE)
        new_nonce = not nonce or len(nonce) > 64
        request.state.csrf_nonce = CsrfGuard.new_nonce() if new_nonce else nonce
        response = await call_next(request)
        if new_nonce:
            response.set_cookie(CSRF_COOKIE, request.state.csrf_nonce, max_age=7 * 24 * 3600, httponly=True,
                                samesite="lax", secure=secure_cookies)
        if request.query_params.get("lang") == request.state.lang:
            response.set_cookie("lang", request.state.lang, max_age=365 * 24 * 3600, samesite="lax",
                                secure=secure_cookies)
        headers = response.headers
        headers.setdefault("Content-Security-Policy", PAGE_CSP)
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"  # tokens live in our URLs
        headers["X-Frame-Options"] = "DENY"
        if secure_cookies:
            headers["Strict-Transport-Security"] = "max-age=31536000"
        if headers.get("content-type", "").startswith(("text/html", "application/json")):
            headers["Cache-Control"] = "no-store"
        return response

    app.mount("/static", StaticFiles(directory=str(TEMPLATES_DIR / "web" / "static")), name="static")

    @app.get("/health", response_class=PlainTextResponse)
    def health(db: SessionDep) -> PlainTextResponse:
        try:
            actions.check_database(db)
        except SQLAlchemyError as exc:
            return PlainTextResponse(f"database unavailable: {type(exc).__name__}", status_code=503)
        return PlainTextResponse("ok")

    def subscribe_page(request: Request, status_code: int = 200, **context: object) -> HTMLResponse:
        form = {"email": "", "keywords": "", "language": settings.default_language,
                "timezone": settings.default_timezone, **context.pop("form", {})}  # type: ignore[dict-item]
        return page(request, "subscribe.html", status_code, form=form, **context)

    @app.get("/", response_class=HTMLResponse)
    def subscribe_form(request: Request) -> HTMLResponse:
        return subscribe_page(request)

    @app.post("/subscribe", response_class=HTMLResponse, dependencies=[Guarded])
    def subscribe(
        request: Request,
        db: SessionDep,
        mail: Annotated[MailBackend, Depends(mail_backend)],
        email: Annotated[str, Form(max_length=MAX_FIELD["email"])] = "",
        keywords: Annotated[str, Form(max_length=MAX_FIELD["keywords"])] = "",
        language: Annotated[str, Form(max_length=MAX_FIELD["language"])] = "",
        timezone: Annotated[str, Form(max_length=MAX_FIELD["timezone"])] = "",
        action: Annotated[str, Form(max_length=16)] = "subscribe",
    ) -> HTMLResponse:
        t = translator(request)
        form = {"email": email, "keywords": keywords, "language": language, "timezone": timezone}
        lines = keywords.splitlines()
        if action == "preview":
            return subscribe_page(request, form=form, **preview_context(request, db, lines))
        try:
            address = actions.request_subscription(
                db, settings, signer(), mail, email, lines, language, timezone
            )
        except FormInvalid as exc:
            return subscribe_page(request, 422, form=form, errors=field_errors(request, exc.errors))
        except actions.MailNotSent:
            return message(request, 503, t("mail_failed_title"), t("mail_failed"))
        # The same answer whether or not the address was known: no enumeration.
        return message(request, 200, t("check_inbox_title"), t("check_inbox", email=address))

    def preview_context(request: Request, db: Session, lines: list[str]) -> dict[str, object]:
        errors = actions.keyword_errors(lines)
        if errors:
            return {"errors": field_errors(request, errors)}
        keywords = actions.distinct_keywords(lines)
        preview = recent_papers.preview(db, keywords)
        return {"preview": list(zip(keywords, preview.counts, strict=True)), "preview_days": preview.days}

    @app.get("/api/keywords")
    def check_keywords(
        request: Request, db: SessionDep, keywords: Annotated[str, Query(max_length=MAX_FIELD["keywords"])] = ""
    ) -> JSONResponse:
        client = request.client.host if request.client else "unknown"
        verdict = limiter.hit(settings.web_check_rate_limit, "check", client)
        if not verdict.allowed:
            return JSONResponse({"error": "rate"}, status_code=429,
                                headers={"Retry-After": str(verdict.retry_after_seconds)})
        t = translator(request)
        lines = keywords.splitlines()
        errors = actions.keyword_errors(lines)
        if errors:
            return JSONResponse({"valid": False, "errors": [t(e.key, **e.values) for e in errors]})
        distinct = actions.distinct_keywords(lines)
        preview = recent_papers.preview(db, distinct)
        return JSONResponse({
            "valid": True,
            "errors": [],
            "days": preview.days,
            "title": t.count("preview_title", preview.days, "days") if preview.days else t("preview_none"),
            "counts": [{"keyword": k, "count": c, "label": t.count("preview_count", c)}
                       for k, c in zip(distinct, preview.counts, strict=True)],
        })

    @app.get("/confirm/{token}", response_class=HTMLResponse)
    def confirm_page(request: Request, token: str, db: SessionDep) -> HTMLResponse:
        try:
            subscriber, _ = actions.subscriber_for(db, signer(), token, Purpose.CONFIRM)
        except InvalidToken as exc:
            return bad_link(request, exc)
        t = translator(request)
        if not actions.confirmable(subscriber):
            return message(request, 400, t("bad_link_title"), t("confirm_stale"))
        return page(request, "confirm.html", token=token, email=subscriber.email)

    @app.post("/confirm/{token}", response_class=HTMLResponse, dependencies=[Guarded])
    def confirm(request: Request, token: str, db: SessionDep) -> HTMLResponse:
        t = translator(request)
        try:
            subscriber = actions.confirm_subscription(db, signer(), token)
        except InvalidToken as exc:
            return bad_link(request, exc)
        if not actions.confirmable(subscriber):
            return message(request, 400, t("bad_link_title"), t("confirm_stale"))
        manage_token = signer().make(Purpose.MANAGE, subscriber.id or 0)
        return message(request, 200, t("confirmed_title"), t("confirmed", email=subscriber.email),
                       link=f"/manage/{manage_token}", link_text=t("manage_link"))

    def manage_page(request: Request, token: str, db: Session, status_code: int = 200, **context: object) -> Response:
        try:
            subscriber, keywords = actions.subscriber_for(db, signer(), token, Purpose.MANAGE)
        except InvalidToken as exc:
            return bad_link(request, exc)
        form = {"keywords": "\n".join(keywords), "language": subscriber.language, "timezone": subscriber.timezone,
                "paused": subscriber.status == SubscriberStatus.PAUSED, **context.pop("form", {})}  # type: ignore[dict-item]
        return page(request, "manage.html", status_code, token=token, email=subscriber.email,
                    status=str(subscriber.status), form=form, **context)

    @app.get("/manage/{token}", response_class=HTMLResponse)
    def manage_form(request: Request, token: str, db: SessionDep) -> Response:
        return manage_page(request, token, db)

    @app.post("/manage/{token}", response_class=HTMLResponse, dependencies=[Guarded])
    def manage(
        request: Request,
        token: str,
        db: SessionDep,
        keywords: Annotated[str, Form(max_length=MAX_FIELD["keywords"])] = "",
        language: Annotated[str, Form(max_length=MAX_FIELD["language"])] = "",
        timezone: Annotated[str, Form(max_length=MAX_FIELD["timezone"])] = "",
        paused: Annotated[bool, Form()] = False,
        action: Annotated[str, Form(max_length=16)] = "save",
    ) -> Response:
        form = {"keywords": keywords, "language": language, "timezone": timezone, "paused": paused}
        lines = keywords.splitlines()
        if action == "preview":
            return manage_page(request, token, db, form=form, **preview_context(request, db, lines))
        try:
            actions.update_preferences(db, signer(), token, lines, language, timezone, paused)
        except InvalidToken as exc:
            return bad_link(request, exc)
        except FormInvalid as exc:
            return manage_page(request, token, db, 422, form=form, errors=field_errors(request, exc.errors))
        return manage_page(request, token, db, saved=True)

    @app.post("/manage/{token}/delete", response_class=HTMLResponse, dependencies=[Guarded])
    def delete_data(
        request: Request, token: str, db: SessionDep, confirm_delete: Annotated[str, Form(max_length=8)] = ""
    ) -> Response:
        t = translator(request)
        if confirm_delete != "yes":
            return manage_page(request, token, db, 422, errors={"delete": [t("delete_confirm")]})
        try:
            actions.delete_data_by_token(db, signer(), token)
        except InvalidToken as exc:
            return bad_link(request, exc)
        return message(request, 200, t("deleted_title"), t("deleted"))

    @app.get("/unsubscribe/{token}", response_class=HTMLResponse)
    def unsubscribe_page(request: Request, token: str, db: SessionDep) -> HTMLResponse:
        try:
            subscriber, _ = actions.subscriber_for(db, signer(), token, Purpose.UNSUBSCRIBE)
        except InvalidToken as exc:
            return bad_link(request, exc)
        return page(request, "unsubscribe.html", token=token, email=subscriber.email)

    @app.post("/unsubscribe/{token}", response_class=HTMLResponse, dependencies=[Depends(guard_unless_one_click)])
    def unsubscribe(request: Request, token: str, db: SessionDep) -> HTMLResponse:
        t = translator(request)
        try:
            subscriber = actions.unsubscribe_by_token(db, signer(), token)
        except InvalidToken as exc:
            return bad_link(request, exc)
        return page(request, "unsubscribed.html", token=token, email=subscriber.email,
                    can_undo=subscriber.confirmed_at is not None, title=t("unsubscribed_title"))

    @app.post("/unsubscribe/{token}/undo", response_class=HTMLResponse, dependencies=[Guarded])
    def resubscribe(request: Request, token: str, db: SessionDep) -> HTMLResponse:
        t = translator(request)
        try:
            subscriber = actions.resubscribe_by_token(db, signer(), token)
        except InvalidToken as exc:
            return bad_link(request, exc)
        manage_token = signer().make(Purpose.MANAGE, subscriber.id or 0)
        return message(request, 200, t("resubscribed_title"), t("resubscribed", email=subscriber.email),
                       link=f"/manage/{manage_token}", link_text=t("manage_link"))

    @app.get("/archive/{day}/{token}", response_class=HTMLResponse)
    def archive(request: Request, day: str, token: str, db: SessionDep) -> Response:
        t = translator(request)
        try:
            html = actions.archived_digest(db, settings, signer(), day, token)
        except InvalidToken as exc:
            return bad_link(request, exc)
        except actions.NoDigest:
            return message(request, 404, t("no_digest_title"), t("no_digest"))
        return HTMLResponse(html, headers={"Content-Security-Policy": ARCHIVE_CSP})

    return app
