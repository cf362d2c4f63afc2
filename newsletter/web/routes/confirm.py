"""The confirmation link: GET shows a button (mail scanners follow links), POST confirms."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from newsletter.subscribers import confirm_by_link, confirmable, subscriber_by_link
from newsletter.tokens import InvalidToken, Purpose
from newsletter.web.deps import Guarded, PageLanguage, SessionDep, SignerDep
from newsletter.web.pages import bad_link, message, page

router = APIRouter()


@router.get("/confirm/{token}", response_class=HTMLResponse)
def confirm_page(request: Request, token: str, session: SessionDep, signer: SignerDep, t: PageLanguage) -> HTMLResponse:
    """The page with the confirm button."""
    try:
        subscriber = subscriber_by_link(session, signer, token, Purpose.CONFIRM)
    except InvalidToken as exc:
        return bad_link(request, exc)
    if not confirmable(subscriber):
        return message(request, 400, t("bad_link_title"), t("confirm_stale"))
    return page(request, "confirm.html", token=token, email=subscriber.email)


@router.post("/confirm/{token}", response_class=HTMLResponse, dependencies=[Guarded])
def confirm(request: Request, token: str, session: SessionDep, signer: SignerDep, t: PageLanguage) -> HTMLResponse:
    """Activate the subscription and offer the manage page."""
    try:
        subscriber = confirm_by_link(session, signer, token)
    except InvalidToken as exc:
        return bad_link(request, exc)
    if not confirmable(subscriber):
        return message(request, 400, t("bad_link_title"), t("confirm_stale"))
    manage_token = signer.make(Purpose.MANAGE, subscriber.public_id)
    return message(request, 200, t("confirmed_title"), t("confirmed", email=subscriber.email),
                   link=f"/manage/{manage_token}", link_text=t("manage_link"))
