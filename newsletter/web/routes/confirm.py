"""The confirmation link: GET shows a button (mail scanners follow links), POST confirms."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from newsletter.subscribers import already_confirmed, confirm_by_link, link_for, pending_change_by_link
from newsletter.tokens import InvalidToken, Purpose
from newsletter.web.deps import Guarded, PageLanguage, SessionDep, SignerDep
from newsletter.web.pages import bad_link, message, page

router = APIRouter()


@router.get("/confirm/{token}", response_class=HTMLResponse)
def confirm_page(
    request: Request, token: str, session: SessionDep, signer: SignerDep, t: PageLanguage
) -> HTMLResponse:
    """The page with the confirm button, and the preferences it will apply."""
    try:
        subscriber, change = pending_change_by_link(session, signer, token)
    except InvalidToken as exc:
        return bad_link(request, exc)
    if already_confirmed(subscriber):
        return message(request, 200, t("already_confirmed_title"), t("already_confirmed", email=subscriber.email),
                       link=f"/manage/{link_for(signer, Purpose.MANAGE, subscriber)}", link_text=t("manage_link"))
    return page(request, "confirm.html", token=token, email=subscriber.email, change=change)


@router.post("/confirm/{token}", response_class=HTMLResponse, dependencies=[Guarded])
def confirm(request: Request, token: str, session: SessionDep, signer: SignerDep, t: PageLanguage) -> HTMLResponse:
    """Activate the subscription and offer the manage page."""
    try:
        subscriber, confirmed_now = confirm_by_link(session, signer, token)
    except InvalidToken as exc:
        return bad_link(request, exc)
    manage = {"link": f"/manage/{link_for(signer, Purpose.MANAGE, subscriber)}", "link_text": t("manage_link")}
    if not confirmed_now:
        return message(request, 200, t("already_confirmed_title"), t("already_confirmed", email=subscriber.email),
                       **manage)
    return message(request, 200, t("confirmed_title"), t("confirmed", email=subscriber.email), **manage)
