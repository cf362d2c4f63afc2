"""GET /api/keywords: the live keyword check behind the form (JSON)."""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from newsletter.subscribers import distinct_keywords, keyword_problems
from newsletter.web.deps import PageLanguage, ServicesDep, SessionDep, client_address
from newsletter.web.forms import MAX_KEYWORDS_TEXT

router = APIRouter()


@router.get("/api/keywords")
def check_keywords(
    request: Request, session: SessionDep, services: ServicesDep, t: PageLanguage,
    keywords: Annotated[str, Query(max_length=MAX_KEYWORDS_TEXT)] = "",
) -> JSONResponse:
    """What is wrong with the keywords, or how many recent papers each one matches."""
    verdict = services.limiter.hit(services.settings.web_check_rate_limit, "check", client_address(request))
    if not verdict.allowed:
        retry_after = {"Retry-After": str(verdict.retry_after_seconds)}
        return JSONResponse({"error": "rate"}, status_code=429, headers=retry_after)
    lines = keywords.splitlines()
    problems = keyword_problems(lines)
    if problems:
        return JSONResponse({"valid": False, "errors": [t.problem(problem) for problem in problems]})
    distinct = distinct_keywords(lines)
    preview = services.recent_papers.preview(session, distinct)
    return JSONResponse({
        "valid": True,
        "errors": [],
        "days": preview.days,
        "title": t.count("preview_title", preview.days, "days") if preview.days else t("preview_none"),
        "counts": [{"keyword": k, "count": c, "label": t.count("preview_count", c)}
                   for k, c in zip(distinct, preview.counts, strict=True)],
    })
