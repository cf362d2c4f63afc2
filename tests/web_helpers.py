"""What the web tests share: a visitor that fills in forms like a browser, and reading the mail sent."""

from __future__ import annotations

import email
import email.policy
import html
import re
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

from fastapi.testclient import TestClient
from httpx import Response

from newsletter.config import Settings
from newsletter.web.app import create_app

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
LINK = re.compile(r"https?://\S+")


class Visitor:
    """One browser: keeps cookies, reads each form's CSRF field before submitting it."""

    def __init__(self, settings: Settings, ip: str = "192.0.2.1", **headers: str) -> None:
        self.app = create_app(settings)
        self.client = TestClient(self.app, headers=headers, client=(ip, 50000))

    def get(self, path: str, **kwargs: object) -> Response:
        return self.client.get(path, **kwargs)  # type: ignore[arg-type]

    def submit(self, page: str, action: str, fields: dict[str, str], **kwargs: object) -> Response:
        """Open `page`, then POST its form to `action` with the page's CSRF field added."""
        opened = self.client.get(page)
        token = CSRF_INPUT.search(opened.text)
        assert token, f"no CSRF field on {page}: {opened.status_code}"
        return self.client.post(action, data={"csrf_token": token.group(1), **fields}, **kwargs)  # type: ignore[arg-type]

    def subscribe(self, address: str, keywords: str = "reinforcement learning", **fields: str) -> Response:
        form = {"email": address, "keywords": keywords, "language": "ZH-HANS", "timezone": "Asia/Shanghai"}
        return self.submit("/", "/subscribe", {**form, **fields})


def path_of(url: str) -> str:
    """The path of an absolute link from a mail (the tests' app answers at any host)."""
    return urlsplit(url).path


def outbox_mail(settings: Settings, address: str) -> EmailMessage:
    """The last confirmation-type mail the outbox holds for `address`."""
    path = Path(settings.outbox_dir) / "confirmations" / f"{address}.eml"
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[return-value]


def link_in(message: EmailMessage, kind: str) -> str:
    """The path of the first /kind/ link in a mail's text."""
    body = message.get_body(("plain",))
    assert body is not None
    for url in LINK.findall(body.get_content()):
        if f"/{kind}/" in url:
            return path_of(url)
    raise AssertionError(f"no /{kind}/ link in the mail")


def visible_text(page: str) -> str:
    """The page's text without tags, entities decoded, spaces collapsed (what a reader sees)."""
    body = page.split("<body>", 1)[-1]
    body = re.sub(r"<script.*?</script>", " ", body, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())
