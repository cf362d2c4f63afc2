"""The feedback links on each card: GET shows a one-button page (mail scanners follow links), POST records.

Also the manage page's "clear feedback" form.
"""

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from newsletter.feedback import NotFeedbackTarget, clear_feedback, feedback_request, record_feedback
from newsletter.subscribers import subscriber_by_link
from newsletter.tokens import InvalidToken, Purpose
from newsletter.web.deps import Guarded, PageLanguage, SessionDep, SignerDep
from newsletter.web.forms import ClearFeedbackForm
from newsletter.web.pages import bad_link, message, page
from newsletter.web.routes.manage import manage_page

router = APIRouter()


@router.get("/feedback/{token}/{verdict}/{arxiv_id:path}", response_class=HTMLResponse)
def feedback_page(
    request: Request, token: str, verdict: str, arxiv_id: str, session: SessionDep, signer: SignerDep,
    t: PageLanguage,
) -> HTMLResponse:
    """The page with the one button that records the verdict."""
    try:
        asked = feedback_request(session, signer, token, verdict, arxiv_id)
    except InvalidToken as exc:
        return bad_link(request, exc)
    except NotFeedbackTarget:
        return message(request, 404, t("not_found_title"), t("feedback_unknown"))
    return page(request, "feedback.html", action=request.url.path, title=asked.title, arxiv_id=asked.arxiv_id,
                verdict=asked.verdict.value)


@router.post("/feedback/{token}/{verdict}/{arxiv_id:path}", response_class=HTMLResponse, dependencies=[Guarded])
def give_feedback(
    request: Request, token: str, verdict: str, arxiv_id: str, session: SessionDep, signer: SignerDep,
    t: PageLanguage,
) -> HTMLResponse:
    """Record the verdict; later digests rank papers like it up (more) or down (less)."""
    try:
        asked = feedback_request(session, signer, token, verdict, arxiv_id)
    except InvalidToken as exc:
        return bad_link(request, exc)
    except NotFeedbackTarget:
        return message(request, 404, t("not_found_title"), t("feedback_unknown"))
    record_feedback(session, asked)
    manage_token = signer.make(Purpose.MANAGE, asked.subscriber.public_id)
    saved = t(f"feedback_saved_{asked.verdict.value}", title=asked.title)
    return message(request, 200, t("feedback_saved_title"), saved,
                   link=f"/manage/{manage_token}#feedback", link_text=t("feedback_manage"))


@router.post("/manage/{token}/feedback", response_class=HTMLResponse, dependencies=[Guarded])
def clear(
    request: Request, token: str, session: SessionDep, signer: SignerDep, form: Annotated[ClearFeedbackForm, Form()],
) -> HTMLResponse:
    """Forget one verdict (the form names its paper) or all of them."""
    try:
        subscriber = subscriber_by_link(session, signer, token, Purpose.MANAGE)
    except InvalidToken as exc:
        return bad_link(request, exc)
    assert subscriber.id is not None
    clear_feedback(session, subscriber.id, form.arxiv_id or None)
    return manage_page(request, session, signer, token, feedback_cleared=True)
