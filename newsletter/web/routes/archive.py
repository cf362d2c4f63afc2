"""The archive link in every digest: that day's digest as it was mailed."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from newsletter.tokens import InvalidToken
from newsletter.web.actions import NoDigest, archived_digest
from newsletter.web.deps import PageLanguage, SessionDep, SettingsDep, SignerDep
from newsletter.web.pages import bad_link, message

router = APIRouter()

# The archived digest is mail HTML: inline styles and remote images, never scripts.
ARCHIVE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; frame-ancestors 'none'"


@router.get("/archive/{day}/{token}", response_class=HTMLResponse)
def archive(
    request: Request, day: str, token: str, session: SessionDep, settings: SettingsDep, signer: SignerDep,
    t: PageLanguage,
) -> HTMLResponse:
    """The digest the link's subscriber received on `day`."""
    try:
        html = archived_digest(session, settings, signer, day, token)
    except InvalidToken as exc:
        return bad_link(request, exc)
    except NoDigest:
        return message(request, 404, t("no_digest_title"), t("no_digest"))
    return HTMLResponse(html, headers={"Content-Security-Policy": ARCHIVE_CSP})
