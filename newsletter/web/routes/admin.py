"""The operator's pages behind NEWSLETTER_ADMIN_TOKEN: /admin (HTML), /admin/status.json, /metrics.

Off (404) without a token. A request proves itself with `Authorization: Bearer <token>`, or with
the cookie the login form sets (an HMAC of the token, never the token itself).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import func, select
from sqlmodel import Session, col

from newsletter.metrics import CONTENT_TYPE, exposition
from newsletter.models import AdminAlert
from newsletter.operator import recent_days, status_document
from newsletter.web.deps import Guarded, ServicesDep, SessionDep, WebServices
from newsletter.web.pages import page

router = APIRouter()

ADMIN_COOKIE = "admin"


def _token(services: WebServices) -> str:
    token = services.settings.admin_token
    if token is None:
        raise HTTPException(404)  # no token configured: the operator pages do not exist
    return token


def _cookie_value(services: WebServices, token: str) -> str:
    return hmac.new(services.secret.load().encode(), b"admin:" + token.encode(), hashlib.sha256).hexdigest()


def is_admin(request: Request, services: WebServices) -> bool:
    """Whether the request carries the admin token (Bearer) or the login cookie; 404 when admin is off."""
    token = _token(services)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    cookie = request.cookies.get(ADMIN_COOKIE, "")
    return hmac.compare_digest(cookie.encode(), _cookie_value(services, token).encode())


CHALLENGE = {"WWW-Authenticate": 'Bearer realm="admin"'}


def _lease(services: WebServices) -> dt.timedelta:
    return dt.timedelta(seconds=services.settings.delivery_claim_lease_seconds)


def _unmailed(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AdminAlert).where(
        col(AdminAlert.mailed_at).is_(None))) or 0)


@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request, session: SessionDep, services: ServicesDep) -> HTMLResponse:
    """The last 30 days, or the login form (401)."""
    if not is_admin(request, services):
        return page(request, "admin_login.html", 401, title="Operator login")
    reports = recent_days(session, _lease(services))
    return page(request, "admin.html", title="Operator", reports=reports,
                admin_email=services.settings.admin_email)


@router.post("/admin/login", dependencies=[Guarded])
def admin_login(
    request: Request, services: ServicesDep, token: Annotated[str, Form(max_length=500)] = ""
) -> Response:
    """Check the token once and set the cookie that stands for it."""
    expected = _token(services)
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return page(request, "admin_login.html", 401, title="Operator login", failed=True)
    response = RedirectResponse("/admin", status_code=303)
    response.set_cookie(ADMIN_COOKIE, _cookie_value(services, expected), max_age=12 * 3600, httponly=True,
                        samesite="strict", secure=services.settings.base_url.startswith("https://"), path="/")
    return response


@router.get("/admin/status.json")
def admin_status(request: Request, session: SessionDep, services: ServicesDep) -> JSONResponse:
    """The operator page's days as JSON, newest first (401 without the token)."""
    if not is_admin(request, services):
        return JSONResponse({"error": "the admin token is needed"}, status_code=401, headers=CHALLENGE)
    return JSONResponse(status_document(recent_days(session, _lease(services))))


@router.get("/metrics")
def metrics(request: Request, session: SessionDep, services: ServicesDep) -> Response:
    """The newest day's counts and latencies, Prometheus text format (401 without the token)."""
    if not is_admin(request, services):
        return Response("the admin token is needed\n", status_code=401, media_type="text/plain", headers=CHALLENGE)
    reports = recent_days(session, _lease(services))
    newest = next((report for report in reports if report.status != "no_run"), None)
    return Response(exposition(newest, _unmailed(session)), media_type=CONTENT_TYPE)
