"""GET /health: whether the app and its database answer."""

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy.exc import SQLAlchemyError

from newsletter.web.actions import check_database
from newsletter.web.deps import SessionDep

router = APIRouter()


@router.get("/health", response_class=PlainTextResponse)
def health(session: SessionDep) -> PlainTextResponse:
    """200 "ok", or 503 naming the database error."""
    try:
        check_database(session)
    except SQLAlchemyError as exc:
        return PlainTextResponse(f"database unavailable: {type(exc).__name__}", status_code=503)
    return PlainTextResponse("ok")
