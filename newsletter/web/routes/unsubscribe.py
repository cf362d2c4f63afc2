"""The unsubscribe link: GET asks, POST (or RFC 8058 one-click) unsubscribes, undo subscribes again."""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from newsletter.subscribers import link_for, resubscribe_by_link, subscriber_by_link, unsubscribe_by_link
from newsletter.tokens import InvalidToken, Purpose
from newsletter.web.deps import Guarded, PageLanguage, SessionDep, SignerDep, guard_unless_one_click
from newsletter.web.pages import bad_link, message, page

router = APIRouter()


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(request: Request, token: str, session: SessionDep, signer: SignerDep) -> HTMLResponse:
    """The page with the unsubscribe button."""
    try:
        subscriber = subscriber_by_link(session, signer, token, Purpose.UNSUBSCRIBE, any_generation=True)
    except InvalidToken as exc:
        return bad_link(request, exc)
    return page(request, "unsubscribe.html", token=token, email=subscriber.email)


@router.post("/unsubscribe/{token}", response_class=HTMLResponse, dependencies=[Depends(guard_unless_one_click)])
def unsubscribe(request: Request, token: str, session: SessionDep, signer: SignerDep, t: PageLanguage) -> HTMLResponse:
    """Stop the mail; offer to undo it to someone who had confirmed, through links of the new generation."""
    try:
        subscriber = unsubscribe_by_link(session, signer, token)
    except InvalidToken as exc:
        return bad_link(request, exc)
    return page(request, "unsubscribed.html", undo_token=link_for(signer, Purpose.UNSUBSCRIBE, subscriber),
                manage_token=link_for(signer, Purpose.MANAGE, subscriber), email=subscriber.email,
                can_undo=subscriber.confirmed_at is not None, title=t("unsubscribed_title"))


@router.post("/unsubscribe/{token}/undo", response_class=HTMLResponse, dependencies=[Guarded])
def resubscribe(request: Request, token: str, session: SessionDep, signer: SignerDep, t: PageLanguage) -> HTMLResponse:
    """Subscribe again from the same link."""
    try:
        subscriber = resubscribe_by_link(session, signer, token)
    except InvalidToken as exc:
        return bad_link(request, exc)
    manage_token = link_for(signer, Purpose.MANAGE, subscriber)
    return message(request, 200, t("resubscribed_title"), t("resubscribed", email=subscriber.email),
                   link=f"/manage/{manage_token}", link_text=t("manage_link"))
