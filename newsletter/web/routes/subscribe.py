"""The home page's form: subscribe (double opt-in), or check the keywords first."""

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from newsletter.subscribers import InvalidInput, MailNotSent, request_subscription
from newsletter.web.deps import CapsDep, Guarded, MailDep, PageLanguage, SessionDep, SettingsDep, SignerDep
from newsletter.web.forms import SubscribeForm
from newsletter.web.pages import field_errors, keyword_preview, message, page, subscription_answer

router = APIRouter()


def subscribe_page(request: Request, form: dict[str, str], status_code: int = 200, **context: object) -> HTMLResponse:
    """The subscribe form, filled with `form`."""
    return page(request, "subscribe.html", status_code, form=form, **context)


@router.get("/", response_class=HTMLResponse)
def subscribe_form(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The empty form, with the default language and time zone chosen."""
    form = {"email": "", "keywords": "", "language": settings.default_language, "timezone": settings.default_timezone}
    return subscribe_page(request, form)


@router.post("/subscribe", response_class=HTMLResponse, dependencies=[Guarded])
def subscribe(
    request: Request, session: SessionDep, settings: SettingsDep, signer: SignerDep, mail: MailDep,
    caps: CapsDep, t: PageLanguage, form: Annotated[SubscribeForm, Form()],
) -> HTMLResponse:
    """Store a pending subscription and mail the link; or, for "Check keywords", show the counts."""
    if form.action == "preview":
        return subscribe_page(request, form.fields(), **keyword_preview(request, session, form.lines))
    try:
        answer = request_subscription(session, settings, signer, mail, form.fields(), caps)
    except InvalidInput as exc:
        return subscribe_page(request, form.fields(), 422, errors=field_errors(t, exc.problems))
    except MailNotSent:
        return message(request, 503, t("mail_failed_title"), t("mail_failed"))
    # The same answers whether or not the address was known: no enumeration.
    return subscription_answer(request, answer, form.timezone)
