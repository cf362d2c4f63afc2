"""One reader's whole journey in a real browser (Chromium via Playwright) against the app served by uvicorn.

Screenshots at phone width land in tests/artifacts/browser/ for a person to look at.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.models import Announcement, Paper, SubscriberStatus
from newsletter.subscribers import find_subscriber
from newsletter.tokens import LinkSigner, subscriber_links
from newsletter.web.app import create_app
from tests.conftest import make_settings, services_required, skip_or_fail
from tests.web_helpers import LINK

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("NEWSLETTER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "browser"
PHONE = {"width": 390, "height": 844}


def ensure_chromium() -> Path:
    """Debian's Chromium; installed with apt-get under NEWSLETTER_REQUIRE_SERVICES=1, else the test skips."""
    if not CHROMIUM.exists() and services_required() and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, capture_output=True,
                       env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    if not CHROMIUM.exists():
        skip_or_fail(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
def chromium_path() -> Path:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_or_fail("the playwright package is not installed (pip install -e '.[test]')")
    return ensure_chromium()


@pytest.fixture
def live_settings(pg_engine: Engine, tmp_path: Path, smtp_sink) -> Iterator[Settings]:  # type: ignore[no-untyped-def]
    """Settings for a server on a free port, mailing through the SMTP sink."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # connections wait in the backlog until uvicorn accepts: no start-up race
    port = listener.getsockname()[1]
    settings = make_settings(
        pg_engine.url.render_as_string(hide_password=False), tmp_path,
        base_url=f"http://127.0.0.1:{port}", mail_backend="smtp", smtp_host="127.0.0.1", smtp_port=smtp_sink.port,
    )
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    yield settings
    server.should_exit = True
    thread.join(timeout=10)
    listener.close()


def seed_recent_papers(engine: Engine) -> None:
    with Session(engine) as db:
        for number, title in enumerate(["Swarm robotics in the wild", "Diffusion policy for swarm robotics"]):
            arxiv_id = f"2611.0000{number}"
            db.add(Paper(arxiv_id=arxiv_id, title=title, abstract="Robots.", categories=["cs.RO"]))
            db.flush()
            db.add(Announcement(day=dt.date(2026, 11, 24), arxiv_id=arxiv_id, announce_type="new"))
        db.commit()


def stored_status(engine: Engine, address: str) -> tuple[str, str, str] | None:
    with Session(engine) as db:
        subscriber = find_subscriber(db, address)
        return None if subscriber is None else (subscriber.status, subscriber.language, subscriber.timezone)


def test_a_reader_subscribes_confirms_manages_and_unsubscribes_in_a_browser(
    chromium_path: Path, live_settings: Settings, pg_engine: Engine, smtp_sink
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect, sync_playwright

    seed_recent_papers(pg_engine)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = live_settings.base_url
    address = "ada@example.org"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=PHONE, device_scale_factor=2, locale="en-US",
                                      timezone_id="Europe/Berlin")
        page = context.new_page()

        def shot(name: str) -> None:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

        page.goto(f"{base}/")
        expect(page.get_by_role("heading", level=1)).to_have_text("Subscribe to the arXiv digest")
        # The script picked the browser's own time zone.
        expect(page.get_by_label("Time zone")).to_have_value("Europe/Berlin")
        shot("01-subscribe")

        page.get_by_label("Email address").fill(address)
        keywords = page.get_by_label("Keywords, one per line")
        keywords.fill("swarm robotics\n(diffusion policy")
        expect(page.locator("#keywords-status")).to_contain_text("Line 2, character 1: unbalanced parenthesis")
        shot("02-keyword-error-as-you-type")

        keywords.fill("swarm robotics\ndiffusion policy\nquantum chromodynamics")
        status = page.locator("#keywords-status")
        expect(status).to_contain_text("All keywords are valid.")
        expect(status.locator("li")).to_have_text(
            ["swarm robotics: 2 papers", "diffusion policy: 1 paper", "quantum chromodynamics: 0 papers"]
        )
        shot("03-keyword-preview")

        page.get_by_role("button", name="Subscribe").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
        shot("04-check-inbox")
        assert stored_status(pg_engine, address) == ("pending", "ZH-HANS", "Europe/Berlin")

        mail = smtp_sink.wait_for_messages(1)[0].message
        confirm_link = next(url for url in LINK.findall(mail.get_body(("plain",)).get_content()) if "/confirm/" in url)
        assert confirm_link.startswith(base)
        page.goto(confirm_link)
        expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your subscription")
        assert stored_status(pg_engine, address)[0] == "pending"  # type: ignore[index]
        shot("05-confirm")
        page.get_by_role("button", name="Confirm my subscription").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Subscription confirmed")
        assert stored_status(pg_engine, address)[0] == SubscriberStatus.ACTIVE  # type: ignore[index]

        page.get_by_role("link", name="Change your preferences").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Your digest preferences")
        page.get_by_label("Keywords, one per line").fill("swarm robotics")
        page.get_by_label("Digest language").select_option("JA")
        page.get_by_label("Pause the digest (keep my keywords)").check()
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_text("Your preferences are saved.")).to_be_visible()
        shot("06-manage-saved")
        assert stored_status(pg_engine, address) == ("paused", "JA", "Europe/Berlin")

        page.goto(f"{page.url}?lang=zh-Hans")
        expect(page.get_by_role("heading", level=1)).to_have_text("订阅设置")
        shot("07-manage-chinese")

        with Session(pg_engine) as db:
            subscriber = find_subscriber(db, address)
            assert subscriber is not None
            signer = LinkSigner(live_settings.secret_key or "")
            links = subscriber_links(signer, base, subscriber.public_id, "2026-11-24")
        page.goto(f"{links.unsubscribe}?lang=en")
        expect(page.get_by_text(f"Stop sending the arXiv digest to {address}?")).to_be_visible()
        shot("08-unsubscribe")
        page.get_by_role("button", name="Unsubscribe").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("You are unsubscribed")
        shot("09-unsubscribed")
        assert stored_status(pg_engine, address)[0] == SubscriberStatus.UNSUBSCRIBED  # type: ignore[index]

        page.emulate_media(color_scheme="dark")
        page.goto(f"{base}/?lang=zh-Hans")
        expect(page.get_by_role("heading", level=1)).to_have_text("订阅 arXiv 每日速递")
        shot("10-subscribe-chinese-dark")

        browser.close()
