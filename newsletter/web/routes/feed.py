"""The private Atom feed of a subscriber's digests (the URL is listed on the manage page)."""

import hashlib

from fastapi import APIRouter, Request
from fastapi.responses import Response

from newsletter.atom import FeedRefused, subscriber_feed
from newsletter.tokens import InvalidToken
from newsletter.web.deps import PageLanguage, SessionDep, SettingsDep, SignerDep
from newsletter.web.pages import bad_link, message

router = APIRouter()

ATOM_TYPE = "application/atom+xml; charset=utf-8"


@router.get("/feed/{token}")
def feed(
    request: Request, token: str, session: SessionDep, settings: SettingsDep, signer: SignerDep, t: PageLanguage
) -> Response:
    """The feed; 400 for a bad link, 404 once the subscriber's data is deleted, 403 while unsubscribed."""
    try:
        document = subscriber_feed(session, settings, signer, token)
    except InvalidToken as exc:
        if exc.code == "gone":
            return message(request, 404, t("bad_link_title"), t("link_gone"))
        return bad_link(request, exc)
    except FeedRefused:
        return message(request, 403, t("feed_title"), t("feed_refused"))
    # Private to its reader; a reader polling every few minutes gets a 304 while nothing changed.
    etag = f'"{hashlib.sha256(document).hexdigest()[:32]}"'
    headers = {"Cache-Control": "private, max-age=600", "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(document, media_type=ATOM_TYPE, headers=headers)
