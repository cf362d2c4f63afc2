"""The manage link: change keywords, language, time zone, pause; delete all data."""

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from newsletter.feedback import personal_section
from newsletter.models import SubscriberStatus
from newsletter.periods import WEEKDAY_NAMES, weekday_name
from newsletter.subscribers import InvalidInput, change_by_link, delete_by_link, link_for, preferences_by_link
from newsletter.tokens import InvalidToken, LinkSigner, Purpose
from newsletter.web.deps import Guarded, PageLanguage, SessionDep, SignerDep, web_services
from newsletter.web.forms import DeleteForm, ManageForm
from newsletter.web.pages import bad_link, field_errors, keyword_preview, message, page

router = APIRouter()


def manage_page(
    request: Request, session: Session, signer: LinkSigner, token: str, status_code: int = 200, **context: object
) -> HTMLResponse:
    """The preferences page; `form` in the context shows what was typed instead of what is stored."""
    try:
        subscriber, keywords = preferences_by_link(session, signer, token)
    except InvalidToken as exc:
        return bad_link(request, exc)
    stored = {"keywords": "\n".join(keywords), "language": subscriber.language, "timezone": subscriber.timezone,
              "paused": subscriber.status == SubscriberStatus.PAUSED, "frequency": str(subscriber.frequency),
              "weekday": weekday_name(subscriber.weekday), "empty_day_note": subscriber.empty_day_note,
              "updates": subscriber.updates}
    form = {**stored, **context.pop("form", {})}  # type: ignore[dict-item]
    personal = personal_section(session, web_services(request).settings, signer, subscriber)
    return page(request, "manage.html", status_code, token=token, email=subscriber.email,
                status=str(subscriber.status), form=form, weekday_names=WEEKDAY_NAMES, personal=personal,
                unsubscribe_token=link_for(signer, Purpose.UNSUBSCRIBE, subscriber), **context)


@router.get("/manage/{token}", response_class=HTMLResponse)
def manage_form(request: Request, token: str, session: SessionDep, signer: SignerDep) -> HTMLResponse:
    """The subscriber's preferences."""
    return manage_page(request, session, signer, token)


@router.post("/manage/{token}", response_class=HTMLResponse, dependencies=[Guarded])
def manage(
    request: Request, token: str, session: SessionDep, signer: SignerDep, t: PageLanguage,
    form: Annotated[ManageForm, Form()],
) -> HTMLResponse:
    """Save the preferences; or, for "Check keywords", show the counts."""
    typed = {**form.fields(), "paused": form.paused, **form.choice_fields()}
    if form.action == "preview":
        return manage_page(request, session, signer, token, form=typed, **keyword_preview(request, session, form.lines))
    try:
        change_by_link(session, signer, token, form.fields(), form.paused, form.choices())
    except InvalidToken as exc:
        return bad_link(request, exc)
    except InvalidInput as exc:
        return manage_page(request, session, signer, token, 422, form=typed, errors=field_errors(t, exc.problems))
    return manage_page(request, session, signer, token, saved=True)


@router.post("/manage/{token}/delete", response_class=HTMLResponse, dependencies=[Guarded])
def delete_data(
    request: Request, token: str, session: SessionDep, signer: SignerDep, t: PageLanguage,
    form: Annotated[DeleteForm, Form()],
) -> HTMLResponse:
    """Delete the subscriber and their data, once the box is ticked."""
    if form.confirm_delete != "yes":
        return manage_page(request, session, signer, token, 422, errors={"delete": [t("delete_confirm")]})
    try:
        delete_by_link(session, signer, token)
    except InvalidToken as exc:
        return bad_link(request, exc)
    return message(request, 200, t("deleted_title"), t("deleted"))
