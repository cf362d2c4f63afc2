"""Rendering the pages: the shared context, message pages, field errors, the keyword preview."""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from typing import TypedDict
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlmodel import Session

from newsletter.config import TEMPLATES_DIR
from newsletter.subscribers import LANGUAGES, Outcome, Problem, SubscriptionAnswer, distinct_keywords, keyword_problems
from newsletter.tokens import InvalidToken
from newsletter.web.deps import web_services
from newsletter.web.i18n import PAGE_LANGUAGES, Translator
from newsletter.web.security import CSRF_FIELD

templates = Jinja2Templates(directory=str(TEMPLATES_DIR / "web"))

TIMEZONES = sorted(name for name in zoneinfo.available_timezones() if "/" in name or name == "UTC")
KEYWORD_EXAMPLES = [
    "reinforcement learning",
    "diffusion policy",
    '"graph neural network" ANDNOT survey',
    "ti:transformer* AND cat:cs.RO",
    "au:Hinton",
]


def same_site_path(request: Request) -> str:
    """The request's path as a link that can only stay on this site."""
    # "//evil.example/" names another host, and so does a slash then a backslash (browsers read it as "//").
    return quote("/" + request.url.path.lstrip("/\\"), safe="/%")


def page(request: Request, name: str, status_code: int = 200, **context: object) -> HTMLResponse:
    """The template `name` in the reader's language, with a CSRF field for its forms."""
    t = Translator(request.state.lang)
    csrf_token = web_services(request).csrf.field_for(request.state.csrf_nonce)
    shared = {
        "t": t, "lang": t.language, "page_languages": PAGE_LANGUAGES, "languages": LANGUAGES,
        "timezones": TIMEZONES, "examples": KEYWORD_EXAMPLES, "csrf_field": CSRF_FIELD,
        "csrf_token": csrf_token, "errors": {}, "here": same_site_path(request),
    }
    return templates.TemplateResponse(request, name, {**shared, **context}, status_code=status_code)


def message(request: Request, status_code: int, title: str, text: str, **context: object) -> HTMLResponse:
    """A page that says one thing (and maybe offers one link)."""
    return page(request, "message.html", status_code, title=title, message=text, **context)


def bad_link(request: Request, error: InvalidToken) -> HTMLResponse:
    """400: the link is tampered, expired, for another page or for someone who left."""
    t = Translator(request.state.lang)
    return message(request, 400, t("bad_link_title"), t(f"link_{error.code}"), help=t("bad_link_help"))


def subscription_answer(request: Request, answer: SubscriptionAnswer, timezone: str) -> HTMLResponse:
    """What the subscribe form says: a mail went out, one went out at HH:MM already, or the caps hold mail back."""
    t = Translator(request.state.lang)
    if answer.outcome == Outcome.SENT:
        return message(request, 200, t("check_inbox_title"), t("check_inbox", email=answer.email))
    if answer.outcome == Outcome.CAPPED:
        return message(request, 429, t("capped_title"), t("capped"))
    assert answer.sent_at is not None and answer.resend_after is not None
    zone = zoneinfo.ZoneInfo(timezone)  # validated with the form
    sent, resend = answer.sent_at.astimezone(zone), answer.resend_after.astimezone(zone)
    text = t("already_sent", email=answer.email, time=f"{sent:%H:%M}", zone=timezone, resend=f"{resend:%H:%M}")
    return message(request, 200, t("already_sent_title"), text)


def field_errors(t: Translator, problems: Sequence[Problem]) -> dict[str, list[str]]:
    """The problems in the reader's language, by form field."""
    by_field: dict[str, list[str]] = {}
    for problem in problems:
        by_field.setdefault(problem.field.value, []).append(t.problem(problem))
    return by_field


class KeywordPreview(TypedDict, total=False):
    """The page context "Check keywords" adds: what is wrong, or each keyword's recent matches."""

    errors: dict[str, list[str]]
    preview: list[tuple[str, int]]
    preview_days: int


def keyword_preview(request: Request, session: Session, lines: list[str]) -> KeywordPreview:
    """The page context for "Check keywords": each keyword's recent matches, or what is wrong."""
    problems = keyword_problems(lines)
    if problems:
        return {"errors": field_errors(Translator(request.state.lang), problems)}
    keywords = distinct_keywords(lines)
    preview = web_services(request).recent_papers.preview(session, keywords)
    return {"preview": list(zip(keywords, preview.counts, strict=True)), "preview_days": preview.days}
