"""The web app under abuse and in everyday use (issue 17): each test fails on the code before it."""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.digests import compose_digest
from newsletter.keywords import MAX_KEYWORDS
from newsletter.models import PendingKeyword, Subscriber, SubscriberStatus
from newsletter.subscribers import (
    InvalidInput,
    ProblemCode,
    find_subscriber,
    keyword_problems,
    mailbox_of,
    normalize_email,
    subscribe,
)
from newsletter.tokens import LinkSigner, Purpose
from newsletter.web.app import create_app
from tests.conftest import make_settings
from tests.test_web import SECRET, add_subscriber, keywords_of, stored, token
from tests.web_helpers import CSRF_INPUT, Visitor, link_in, outbox_mail, path_of, visible_text

ROOT = Path(__file__).resolve().parents[1]


def smtp_settings(settings: Settings, sink, **overrides: object) -> Settings:  # type: ignore[no-untyped-def]
    values = {"mail_backend": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port, **overrides}
    return settings.model_copy(update=values)


def neighbour(visitor: Visitor, ip: str) -> Visitor:
    """Another browser, from `ip`, on the same app (so the same counters) as `visitor`."""
    other = object.__new__(Visitor)
    other.app = visitor.app
    other.client = TestClient(visitor.app, client=(ip, 50000))
    return other


def subscriber_count(settings: Settings) -> int:
    from newsletter.db import engine_for

    with Session(engine_for(settings.database_url)) as db:
        return db.scalar(select(func.count()).select_from(Subscriber)) or 0


# ---------------------------------------------------------------------------------------
# Control characters and addresses our mail transport cannot reach
# ---------------------------------------------------------------------------------------


def test_a_nul_byte_in_a_keyword_is_refused_by_the_form_the_live_check_and_the_cli(
    settings: Settings, session: Session
) -> None:
    visitor = Visitor(settings)

    answer = visitor.subscribe("ada@example.org", "robotics\na\x00b")
    check = visitor.get("/api/keywords", params={"keywords": "a\x00b"}).json()

    assert answer.status_code == 422
    reason = re.search(r'id="keywords-error">(.*?)</p>', answer.text, re.S)
    assert reason and "Line 2, character 2: invisible control character U+0000 is not allowed" in reason.group(1)
    assert check["valid"] is False and check["errors"] == [
        "Line 1, character 2: invisible control character U+0000 is not allowed"
    ]
    assert stored(settings, "ada@example.org") is None
    with pytest.raises(InvalidInput) as raised:  # the CLI's `subscribe` goes through the same validator
        subscribe(session, "bob@example.org", ["graph\x1b[31m"])
    assert "position 6: invisible control character U+001B" in str(raised.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", "ada\x00@example.org"),
        ("email", "ada@exam\x00ple.org"),
        ("keywords", "reinforcement\x00learning"),
        ("keywords", "robot\x7f"),
        ("keywords", "ti:(swarm\x0b AND robots)"),
        ("language", "ZH-HANS\x00"),
        ("timezone", "Asia/Shanghai\x00"),
        ("timezone", "../../etc/passwd"),
    ],
)
def test_hostile_bytes_in_any_field_get_a_422_and_store_nothing(settings: Settings, field: str, value: str) -> None:
    answer = Visitor(settings).subscribe("ada@example.org", **{field: value})

    assert answer.status_code == 422
    assert re.search(rf'id="{field}-error">', answer.text)
    assert subscriber_count(settings) == 0


def test_a_nul_byte_through_the_manage_form_changes_nothing(settings: Settings, session: Session) -> None:
    subscriber = add_subscriber(session, "ada@example.org", ["robotics"])
    manage = f"/manage/{token(Purpose.MANAGE, subscriber)}"

    answer = Visitor(settings).submit(manage, manage, {"keywords": "swarm\x00robotics", "language": "DE",
                                                       "timezone": "Europe/Berlin"})

    assert answer.status_code == 422 and "U+0000" in answer.text
    assert keywords_of(settings, "ada@example.org") == ["robotics"]


@given(st.lists(st.text(max_size=40), max_size=30))
def test_keyword_problems_never_raise_and_always_catch_a_control_character(lines: list[str]) -> None:
    problems = keyword_problems(lines)

    has_control = any(re.search(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]", line.strip()) for line in lines)
    if has_control and len({line.strip().casefold() for line in lines} - {""}) <= MAX_KEYWORDS:
        assert problems


@given(st.text(max_size=80))
def test_an_accepted_address_is_always_ascii_without_controls_and_anything_else_is_invalid_input(raw: str) -> None:
    try:
        address = normalize_email(raw)
    except InvalidInput as exc:
        assert exc.problems
        return
    assert address.isascii() and address == address.lower()
    assert not re.search(r"[\x00-\x20\x7f]", address)


def test_a_non_ascii_local_part_is_refused_with_a_clear_reason_and_nothing_is_stored_or_sent(
    settings: Settings, smtp_sink
) -> None:  # type: ignore[no-untyped-def]
    visitor = Visitor(smtp_settings(settings, smtp_sink))

    first = visitor.subscribe("пример@example.org")
    again = visitor.subscribe("пример@example.org")

    for answer in (first, again):
        assert answer.status_code == 422
        reason = re.search(r'id="email-error">(.*?)</p>', answer.text, re.S)
        assert reason and "letters beyond ASCII before the @-sign" in reason.group(1)
    assert subscriber_count(settings) == 0
    assert smtp_sink.messages == []
    with pytest.raises(InvalidInput) as raised:
        normalize_email("пример@example.org")
    assert raised.value.problems[0].code == ProblemCode.EMAIL_NOT_ASCII


def test_an_internationalized_domain_is_stored_and_mailed_in_its_ascii_form(settings: Settings, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    visitor = Visitor(smtp_settings(settings, smtp_sink))

    assert visitor.subscribe("ada@bücher.example").status_code == 200

    assert stored(settings, "ada@xn--bcher-kva.example") is not None
    [received] = smtp_sink.messages_to("ada@xn--bcher-kva.example")
    assert b"\nTo: ada@xn--bcher-kva.example" in received.raw.replace(b"\r\n", b"\n")


def test_a_confirmation_that_cannot_be_sent_leaves_no_row_and_no_slot(settings: Settings, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    visitor = Visitor(smtp_settings(settings, smtp_sink))
    smtp_sink.reject_address("ada@example.org")

    assert visitor.subscribe("ada@example.org").status_code == 503

    assert subscriber_count(settings) == 0
    smtp_sink.accept_address("ada@example.org")
    retry = visitor.subscribe("ada@example.org")
    assert retry.status_code == 200 and "Check your inbox" in retry.text
    assert len(smtp_sink.messages_to("ada@example.org")) == 1


# ---------------------------------------------------------------------------------------
# Parallel submits, against a real server
# ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def live_server(pg_settings: Settings) -> Iterator[tuple[str, Settings]]:
    """The app under uvicorn in a thread, on PostgreSQL, mailing through the SMTP sink."""
    settings = pg_settings
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="error",
                                           proxy_headers=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", settings
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def pg_settings(pg_engine: Engine, tmp_path: Path, smtp_sink) -> Settings:  # type: ignore[no-untyped-def]
    settings = make_settings(pg_engine.url.render_as_string(hide_password=False), tmp_path)
    return smtp_settings(settings, smtp_sink, web_post_rate_limit="100/minute")


def test_parallel_submits_of_one_new_address_all_get_the_normal_answer_and_one_mail(
    live_server: tuple[str, Settings], smtp_sink
) -> None:  # type: ignore[no-untyped-def]
    base, settings = live_server
    with httpx.Client(base_url=base) as browser:
        field = CSRF_INPUT.search(browser.get("/").text)
        assert field
        cookies = dict(browser.cookies)
    form = {"csrf_token": field.group(1), "email": "ada@example.org", "keywords": "robotics",
            "language": "ZH-HANS", "timezone": "Asia/Shanghai"}
    start = threading.Barrier(8)
    answers: list[httpx.Response] = []

    def submit() -> None:
        with httpx.Client(base_url=base, cookies=cookies, timeout=30) as client:
            start.wait()
            answers.append(client.post("/subscribe", data=form))

    workers = [threading.Thread(target=submit) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert sorted(answer.status_code for answer in answers) == [200] * 8
    titles = {re.search(r"<h1>(.*?)</h1>", answer.text).group(1) for answer in answers}  # type: ignore[union-attr]
    assert titles <= {"Check your inbox", "A message was sent already"}
    assert subscriber_count(settings) == 1
    assert len(smtp_sink.messages_to("ada@example.org")) == 1


# ---------------------------------------------------------------------------------------
# Caps per mailbox, domain and client; the client behind a proxy
# ---------------------------------------------------------------------------------------


def test_plus_tags_of_one_mailbox_get_at_most_its_cap_of_confirmations(lite_settings: Settings, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    settings = smtp_settings(lite_settings, smtp_sink)
    first = Visitor(settings)
    # Twelve clients, so the per-client caps do not hide the per-mailbox one.
    answers = [neighbour(first, f"198.51.100.{n}").subscribe(f"victim+{n}@example.org") for n in range(12)]

    delivered = [m for m in smtp_sink.messages if any(r.startswith("victim") for r in m.rcpt_tos)]
    assert len(delivered) == 3
    assert [a.status_code for a in answers] == [200] * 3 + [429] * 9
    assert "No more mail for now" in answers[-1].text and "Nothing was changed" in answers[-1].text
    assert stored(settings, "victim+11@example.org") is None
    assert mailbox_of("Victim+News+2@Example.org") == "victim@example.org"


def test_one_domain_and_one_client_are_capped_as_well(lite_settings: Settings, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    settings = smtp_settings(lite_settings, smtp_sink, web_confirm_domain_rate_limit="2/hour",
                             web_confirm_client_rate_limit="3/hour")
    first = Visitor(settings)
    domain = [neighbour(first, f"198.51.100.{n}").subscribe(f"user{n}@one.example") for n in range(3)]
    client = neighbour(first, "203.0.113.9")
    from_one_client = [client.subscribe(f"reader@site{n}.example") for n in range(4)]

    assert [a.status_code for a in domain] == [200, 200, 429]
    assert [a.status_code for a in from_one_client] == [200, 200, 200, 429]
    assert len(smtp_sink.messages) == 5


RATE_LIMITS = ("web_post_rate_limit", "web_check_rate_limit", "web_confirm_mailbox_rate_limit",
               "web_confirm_domain_rate_limit", "web_confirm_client_rate_limit")


@pytest.mark.parametrize("field", RATE_LIMITS)
def test_every_default_rate_limit_parses_and_a_malformed_one_is_refused(field: str) -> None:
    # The settings skip parsing a default (so commands do not load `limits`): this is what makes that safe.
    from limits import parse_many
    from pydantic import ValidationError

    assert parse_many(Settings.model_fields[field].default)
    with pytest.raises(ValidationError, match="is not a rate limit such as 20/minute"):
        Settings(_env_file=None, **{field: "twenty a minute"})  # type: ignore[arg-type]


@pytest.fixture
def lite_settings(sqlite_engine: Engine, tmp_path: Path) -> Settings:
    return make_settings(sqlite_engine.url.render_as_string(hide_password=False), tmp_path)


def rotating_forwarded_for(settings: Settings, connection: str) -> list[int]:
    """The answers to three submits from `connection`, each claiming another client in X-Forwarded-For."""
    visitor = Visitor(settings, ip=connection)
    statuses = []
    for n in range(3):
        form = {"email": f"reader{n}@example.org", "keywords": "robotics", "language": "DE", "timezone": "UTC"}
        forwarded = {"X-Forwarded-For": f"203.0.113.{n}"}
        statuses.append(visitor.submit("/", "/subscribe", form, headers=forwarded).status_code)
    return statuses


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(lite_settings: Settings) -> None:
    limited = lite_settings.model_copy(update={"web_post_rate_limit": "2/minute"})
    # Each submit is a GET of the form and a POST: the limit counts the POSTs.
    assert rotating_forwarded_for(limited, "127.0.0.1") == [200, 200, 429]

    behind_proxy = Settings(**{**limited.model_dump(), "trusted_proxies": "127.0.0.1, 10.0.0.0/8"})
    assert behind_proxy.trusted_proxies == ["127.0.0.1", "10.0.0.0/8"]
    assert rotating_forwarded_for(behind_proxy, "10.1.2.3") == [200, 200, 200]
    assert rotating_forwarded_for(behind_proxy, "192.0.2.50") == [200, 200, 429]  # not a proxy of ours


def test_newsletter_web_believes_no_forwarded_header_by_default(sqlite_url: str, sqlite_engine: Engine,
                                                                  tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NEWSLETTER_DATABASE_URL": sqlite_url,
           "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox"), "NEWSLETTER_SECRET_KEY": SECRET,
           "NEWSLETTER_WEB_POST_RATE_LIMIT": "2/minute"}
    server = subprocess.Popen([sys.executable, "-m", "newsletter.cli", "web", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        statuses = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as browser:
            for _ in range(300):
                try:
                    page = browser.get("/")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            else:
                pytest.fail(f"newsletter web did not start: {server.stderr.read() if server.stderr else ''}")
            field = CSRF_INPUT.search(page.text).group(1)  # type: ignore[union-attr]
            for n in range(3):
                form = {"csrf_token": field, "email": f"r{n}@example.org", "keywords": "robotics",
                        "language": "DE", "timezone": "UTC"}
                statuses.append(browser.post("/subscribe", data=form,
                                             headers={"X-Forwarded-For": f"203.0.113.{n}"}).status_code)
    finally:
        server.terminate()
        server.wait(10)

    assert statuses == [200, 200, 429]


# ---------------------------------------------------------------------------------------
# The keyword check's limits, and links that stay on the site
# ---------------------------------------------------------------------------------------


def test_the_live_check_and_the_preview_refuse_what_the_form_refuses(lite_settings: Settings) -> None:
    fifty = "\n".join(f"topic number {n}" for n in range(50))
    visitor = Visitor(lite_settings)

    check = visitor.get("/api/keywords", params={"keywords": fifty}).json()
    preview = visitor.subscribe("ada@example.org", fifty, action="preview")
    subscribed = visitor.subscribe("ada@example.org", fifty)

    assert check == {"valid": False, "errors": ["Too many keywords: 50 given, at most 20 allowed."]}
    for page in (preview, subscribed):
        reason = re.search(r'id="keywords-error">(.*?)</p>', page.text, re.S)
        assert reason and reason.group(1) == "Too many keywords: 50 given, at most 20 allowed."
    assert "Matches over" not in preview.text
    twenty = "\n".join(f"topic number {n}" for n in range(MAX_KEYWORDS))
    assert visitor.get("/api/keywords", params={"keywords": twenty}).json()["valid"] is True


def test_a_keyword_over_the_length_limit_is_refused_by_the_live_check(lite_settings: Settings) -> None:
    visitor = Visitor(lite_settings)

    check = visitor.get("/api/keywords", params={"keywords": "robot " * 40}).json()
    huge = visitor.get("/api/keywords", params={"keywords": "robot\n" * 2000})

    assert check["valid"] is False and "longer than 200 characters" in check["errors"][0]
    assert huge.status_code == 422 and huge.json() == {
        "valid": False, "errors": ["The keywords are longer than this site accepts."]
    }


@pytest.mark.parametrize("path", ["//evil.example/", "/\\evil.example/", "//evil.example//x", "/%2F%2Fevil.example/"])
def test_a_not_found_page_never_links_to_another_site(lite_settings: Settings, path: str) -> None:
    answer = Visitor(lite_settings).get(f"http://testserver{path}")  # a bare "//..." would name another host

    assert answer.status_code == 404
    links = [link for link in re.findall(r'href="([^"]*)"', answer.text) if not link.startswith("#")]
    assert links and all(link.startswith("/") and not link.startswith(("//", "/\\")) for link in links)
    assert any("?lang=zh-Hans" in link for link in links)


# ---------------------------------------------------------------------------------------
# Changes through the public form, and generations
# ---------------------------------------------------------------------------------------


def test_the_form_cannot_rewrite_an_unsubscribed_address_and_only_its_mailbox_can(
    settings: Settings, session: Session
) -> None:
    ada = add_subscriber(session, "ada@example.org", ["robotics"])
    visitor = Visitor(settings)
    visitor.submit("/", f"/unsubscribe/{token(Purpose.UNSUBSCRIBE, ada)}", {})

    attacker = Visitor(settings, ip="203.0.113.66").subscribe("ada@example.org", "cheap pills", language="JA",
                                                              timezone="Europe/Berlin")

    assert attacker.status_code == 200
    subscriber = stored(settings, "ada@example.org")
    assert subscriber is not None and subscriber.status == SubscriberStatus.UNSUBSCRIBED
    assert (subscriber.language, subscriber.timezone) == ("ZH-HANS", "Asia/Shanghai")
    assert keywords_of(settings, "ada@example.org") == ["robotics"]
    confirm = link_in(outbox_mail(settings, "ada@example.org"), "confirm")
    shown = visitor.get(confirm)
    assert "<code>cheap pills</code>" in shown.text  # the mailbox sees what it would confirm
    visitor.submit(confirm, confirm, {})
    subscriber = stored(settings, "ada@example.org")
    assert subscriber is not None and subscriber.status == SubscriberStatus.ACTIVE
    assert (subscriber.language, subscriber.timezone) == ("JA", "Europe/Berlin")
    assert keywords_of(settings, "ada@example.org") == ["cheap pills"]
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(PendingKeyword)) == 0


def test_a_confirmation_link_from_before_an_unsubscribe_is_void_after_a_re_subscription(
    settings: Settings, session: Session
) -> None:
    visitor = Visitor(settings)
    visitor.subscribe("ada@example.org", "robotics")
    first_link = link_in(outbox_mail(settings, "ada@example.org"), "confirm")
    visitor.submit(first_link, first_link, {})
    subscriber = stored(settings, "ada@example.org")
    assert subscriber is not None
    signer = LinkSigner(SECRET)
    visitor.submit("/", f"/unsubscribe/{signer.make(Purpose.UNSUBSCRIBE, subscriber.public_id)}", {})
    session.execute(update(Subscriber).values(confirmation_sent_at=None))  # the 10 minutes have passed
    session.commit()
    visitor.subscribe("ada@example.org", "cheap pills")

    replayed = visitor.submit("/", first_link, {})

    assert replayed.status_code == 400 and "no longer valid" in replayed.text
    assert stored(settings, "ada@example.org").status == SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]
    newest = link_in(outbox_mail(settings, "ada@example.org"), "confirm")
    assert newest != first_link
    assert visitor.submit(newest, newest, {}).status_code == 200
    assert keywords_of(settings, "ada@example.org") == ["cheap pills"]


def test_links_from_before_an_unsubscribe_are_void_and_the_next_digest_carries_working_ones(
    settings: Settings, session: Session
) -> None:
    ada = add_subscriber(session, "ada@example.org", ["robotics"])
    old_manage = f"/manage/{token(Purpose.MANAGE, ada)}"
    old_unsubscribe = f"/unsubscribe/{token(Purpose.UNSUBSCRIBE, ada)}"
    visitor = Visitor(settings)
    left = visitor.submit(old_unsubscribe, old_unsubscribe, {})
    undo = re.search(r'action="(/unsubscribe/[^"]+/undo)"', left.text).group(1)  # type: ignore[union-attr]

    assert visitor.get(old_manage).status_code == 400
    assert visitor.submit("/", f"{old_unsubscribe}/undo", {}).status_code == 400
    assert visitor.submit("/", undo, {}).status_code == 200
    session.expire_all()
    subscriber = find_subscriber(session, "ada@example.org")
    assert subscriber is not None and subscriber.status == SubscriberStatus.ACTIVE
    digest = compose_digest(session, settings, LinkSigner(SECRET), subscriber, dt.date(2026, 11, 24))
    assert visitor.get(path_of(digest.links.manage)).status_code == 200
    # An old unsubscribe link still unsubscribes: leaving is always allowed (RFC 8058 retries, old mails).
    assert visitor.client.post(old_unsubscribe, data={"List-Unsubscribe": "One-Click"}).status_code == 200


# ---------------------------------------------------------------------------------------
# Production secrets
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        (None, "not set"),
        ("changemechangeme", "fewer than 32"),
        ("changeme-changeme-changeme-changeme", "placeholder"),
        ("abababababababababababababababababab", "distinct characters"),
        ("   ", "not set"),
    ],
)
def test_production_refuses_a_weak_secret_and_names_the_variable(secret: str | None, reason: str,
                                                                 tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLETTER_")}
    env |= {"PYTHONPATH": str(ROOT), "NEWSLETTER_ENVIRONMENT": "production",
            "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path / 'n.db'}"}
    if secret is not None:
        env["NEWSLETTER_SECRET_KEY"] = secret

    done = subprocess.run([sys.executable, "-m", "newsletter.cli", "status"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode != 0
    assert "NEWSLETTER_SECRET_KEY:" in done.stderr and reason in done.stderr
    assert "NEWSLETTER_:" not in done.stderr


def test_production_accepts_a_generated_secret(tmp_path: Path) -> None:
    import secrets

    settings = make_settings("sqlite://", tmp_path, environment="production", secret_key=secrets.token_urlsafe(32))
    assert settings.environment == "production"


# ---------------------------------------------------------------------------------------
# Everyday use
# ---------------------------------------------------------------------------------------


def test_subscribing_again_within_ten_minutes_says_when_the_mail_went_and_when_to_ask_again(
    settings: Settings, smtp_sink
) -> None:  # type: ignore[no-untyped-def]
    visitor = Visitor(smtp_settings(settings, smtp_sink))
    visitor.subscribe("ada@example.org", timezone="UTC")

    again = visitor.subscribe("ada@example.org", timezone="UTC")

    text = visible_text(again.text)
    assert again.status_code == 200 and "is on its way" not in text
    sent = re.search(r"was sent at (\d\d):(\d\d) \(UTC\)\. .* after (\d\d):(\d\d)\.", text)
    assert sent, text
    sent_at = dt.datetime.combine(dt.date.today(), dt.time(int(sent[1]), int(sent[2])))
    resend = dt.datetime.combine(dt.date.today(), dt.time(int(sent[3]), int(sent[4])))
    assert (resend - sent_at) % dt.timedelta(days=1) == dt.timedelta(minutes=10)
    assert len(smtp_sink.messages_to("ada@example.org")) == 1


def test_the_keyword_box_in_the_error_state_has_focus_and_points_at_its_error(lite_settings: Settings) -> None:
    answer = Visitor(lite_settings).subscribe("ada@example.org", "(swarm")

    box = re.search(r"<textarea [^>]*>", answer.text)
    assert box and ' autofocus aria-describedby="keywords-help keywords-status keywords-error"' in box.group()
    assert 'id="keywords-error"' in answer.text


def test_the_manage_page_unsubscribes_with_one_click(settings: Settings, session: Session) -> None:
    ada = add_subscriber(session, "ada@example.org", ["robotics"])
    manage = f"/manage/{token(Purpose.MANAGE, ada)}"
    visitor = Visitor(settings)

    page = visitor.get(manage)
    action = re.search(r'<form method="post" action="(/unsubscribe/[^"]+)">\s*<input type="hidden" name="csrf_token"'
                       r'[^>]*>\s*<button type="submit">Unsubscribe</button>', page.text)
    assert action, "an Unsubscribe button on the manage page"
    done = visitor.submit(manage, action.group(1), {})

    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert stored(settings, "ada@example.org").status == SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]


def test_the_translation_hint_is_not_shown_for_english_only(settings: Settings, session: Session) -> None:
    ada = add_subscriber(session, "ada@example.org", ["robotics"])
    visitor = Visitor(settings)
    manage = f"/manage/{token(Purpose.MANAGE, ada)}"
    visitor.submit(manage, manage, {"keywords": "robotics", "language": "EN-US", "timezone": "UTC"})

    text = visible_text(visitor.get(manage).text)

    assert "translated into this language" not in text and "English only: nothing is translated" in text
    assert "translated into this language" in visible_text(visitor.get("/").text)


def test_a_confirmation_link_opened_again_says_it_is_already_confirmed(settings: Settings) -> None:
    visitor = Visitor(settings)
    visitor.subscribe("ada@example.org")
    confirm = link_in(outbox_mail(settings, "ada@example.org"), "confirm")
    assert "Subscription confirmed" in visitor.submit(confirm, confirm, {}).text

    reopened = visitor.get(confirm)
    pressed_again = visitor.submit("/", confirm, {})

    for answer in (reopened, pressed_again):
        assert answer.status_code == 200 and "Already confirmed" in answer.text
        assert "ada@example.org is subscribed already" in visible_text(answer.text)
        assert re.search(r'href="/manage/[^"]+"', answer.text)


def test_the_favicon_is_served_from_the_package(lite_settings: Settings) -> None:
    answer = Visitor(lite_settings).get("/favicon.ico")

    assert answer.status_code == 200 and answer.headers["content-type"] == "image/x-icon"
    assert answer.content[:4] == b"\x00\x00\x01\x00"  # an ICO file's magic number


def test_the_cli_counts_a_keyword_error_position_from_one_like_the_page(sqlite_url: str, sqlite_engine: Engine,
                                                                         tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NEWSLETTER_DATABASE_URL": sqlite_url,
           "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox")}

    done = subprocess.run([sys.executable, "-m", "newsletter.cli", "subscribe", "ada@example.org", "-k", "(swarm",
                           "--confirmed"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    page = Visitor(make_settings(sqlite_url, tmp_path)).get("/api/keywords", params={"keywords": "(swarm"}).json()

    assert done.returncode != 0
    assert "position 1: unbalanced parenthesis" in done.stderr
    assert page["errors"] == ["Line 1, character 1: unbalanced parenthesis"]


def test_the_generation_migration_agrees_with_the_models_and_keeps_existing_subscribers(tmp_path: Path) -> None:
    import sqlalchemy as sa
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    from newsletter.db import make_engine
    from newsletter.schema import alembic_config

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004_translation_rejections")
        connection.execute(sa.text(
            "INSERT INTO subscriber (public_id, email, language, timezone, status, created_at, "
            "consecutive_hard_failures) VALUES ('p1', 'old@example.org', 'DE', 'UTC', 'active', CURRENT_TIMESTAMP, 0)"
        ))
        command.upgrade(config, "head")
        assert compare_metadata(MigrationContext.configure(connection), SQLModel.metadata) == []
        row = connection.execute(sa.text("SELECT generation, pending_language FROM subscriber")).one()
        assert tuple(row) == (0, None)
        command.downgrade(config, "0004_translation_rejections")
        assert "pending_keyword" not in sa.inspect(connection).get_table_names()
    engine.dispose()


def test_the_chinese_page_explains_the_new_refusals_in_chinese(lite_settings: Settings) -> None:
    visitor = Visitor(lite_settings, **{"Accept-Language": "zh-CN"})

    keyword = visitor.subscribe("ada@example.org", "robotics\na\x00b")
    address = visitor.subscribe("пример@example.org")

    keyword_reason = re.search(r'id="keywords-error">(.*?)</p>', keyword.text, re.S)
    address_reason = re.search(r'id="email-error">(.*?)</p>', address.text, re.S)
    assert keyword_reason and keyword_reason.group(1) == "第 2 行，第 2 个字符：不允许使用不可见的控制字符 U+0000"
    assert address_reason and "非 ASCII" in address_reason.group(1) and "beyond" not in address_reason.group(1)


@given(st.text(alphabet=st.sampled_from("/\\%2Fa.:?#"), max_size=12))
def test_the_language_links_path_is_always_on_this_site(path: str) -> None:
    from starlette.requests import Request

    from newsletter.web.pages import same_site_path

    scope = {"type": "http", "method": "GET", "path": "/" + path, "raw_path": ("/" + path).encode(),
             "query_string": b"", "headers": [], "scheme": "http", "server": ("testserver", 80)}
    link = same_site_path(Request(scope))

    assert link.startswith("/") and not link.startswith(("//", "/\\"))
    assert "?" not in link and "#" not in link


def test_parallel_saves_of_the_manage_form_all_succeed_and_one_of_them_wins(
    live_server: tuple[str, Settings], pg_engine: Engine
) -> None:
    base, settings = live_server
    with Session(pg_engine) as db:
        ada = add_subscriber(db, "ada@example.org", ["robotics"])
    manage = f"/manage/{token(Purpose.MANAGE, ada)}"
    with httpx.Client(base_url=base) as browser:
        field = CSRF_INPUT.search(browser.get(manage).text)
        assert field
        cookies = dict(browser.cookies)
    start = threading.Barrier(6)
    answers: list[httpx.Response] = []

    def save(number: int) -> None:
        form = {"csrf_token": field.group(1), "keywords": f"topic {number}\nshared topic", "language": "DE",
                "timezone": "UTC"}
        with httpx.Client(base_url=base, cookies=cookies, timeout=30) as client:
            start.wait()
            answers.append(client.post(manage, data=form))

    workers = [threading.Thread(target=save, args=(n,)) for n in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert sorted(answer.status_code for answer in answers) == [200] * 6
    kept = keywords_of(settings, "ada@example.org")
    assert kept[1:] == ["shared topic"] and kept[0] in {f"topic {n}" for n in range(6)}
