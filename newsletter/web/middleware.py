"""Every page's language, CSRF cookie and security headers; error pages in the reader's language."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from newsletter.web.deps import Rejected
from newsletter.web.i18n import Translator, page_language
from newsletter.web.pages import message
from newsletter.web.security import CSRF_COOKIE, CsrfGuard

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
CallNext = Callable[[Request], Awaitable[Response]]


def _remember_choices(request: Request, response: Response, new_nonce: bool, secure: bool) -> None:
    if new_nonce:
        response.set_cookie(CSRF_COOKIE, request.state.csrf_nonce, max_age=7 * 24 * 3600, httponly=True,
                            samesite="lax", secure=secure)
    if request.query_params.get("lang") == request.state.lang:
        response.set_cookie("lang", request.state.lang, max_age=365 * 24 * 3600, samesite="lax", secure=secure)


def _security_headers(response: Response, secure: bool) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", PAGE_CSP)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"  # tokens live in our URLs
    headers["X-Frame-Options"] = "DENY"
    if secure:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    if headers.get("content-type", "").startswith(("text/html", "application/json")):
        headers["Cache-Control"] = "no-store"


def add_page_context(app: FastAPI, secure_cookies: bool) -> None:
    """Pick each request's page language and CSRF nonce; set cookies and security headers on the way out."""

    @app.middleware("http")
    async def page_context(request: Request, call_next: CallNext) -> Response:
        accept_language = request.headers.get("accept-language")
        request.state.lang = page_language(request.query_params, request.cookies, accept_language)
        nonce = request.cookies.get(CSRF_COOKIE)
        new_nonce = not nonce or len(nonce) > 64
        request.state.csrf_nonce = CsrfGuard.new_nonce() if new_nonce else nonce
        response = await call_next(request)
        _remember_choices(request, response, new_nonce, secure_cookies)
        _security_headers(response, secure_cookies)
        return response


async def rejected(request: Request, exc: Exception) -> Response:
    """429 or 403 for a refused POST, with Retry-After when waiting helps."""
    assert isinstance(exc, Rejected)
    t = Translator(request.state.lang)
    response = message(request, exc.status_code, t(f"{exc.key}_title"), t(exc.key))
    if exc.retry_after:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


async def http_error(request: Request, exc: Exception) -> HTMLResponse:
    """404, 413 and other HTTP errors as pages."""
    assert isinstance(exc, StarletteHTTPException)
    t = Translator(request.state.lang)
    if exc.status_code in (404, 413):
        key = "not_found" if exc.status_code == 404 else "too_large"
        return message(request, exc.status_code, t(f"{key}_title"), t(key))
    return message(request, exc.status_code, t("error_title"), str(exc.detail))


async def invalid_request(request: Request, exc: Exception) -> Response:
    """422 for a request FastAPI could not read (e.g. a field over its length); JSON for the live check."""
    t = Translator(request.state.lang)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"valid": False, "errors": [t("keywords_text_too_long")]}, status_code=422)
    return message(request, 422, t("error_title"), t("fix_errors"))


def add_error_pages(app: FastAPI) -> None:
    """Answer refusals and errors with pages in the reader's language."""
    app.add_exception_handler(Rejected, rejected)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
