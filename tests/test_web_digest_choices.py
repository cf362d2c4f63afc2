"""The manage page's digest schedule and extras, in both page languages."""

from __future__ import annotations

import re

from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.subscribers import DigestChoices, find_subscriber, subscribe
from newsletter.tokens import LinkSigner, Purpose
from tests.test_web import SECRET, lite_settings, stored  # noqa: F401  (lite_settings is a fixture)
from tests.web_helpers import Visitor, visible_text

FORM = {"keywords": "robotics", "language": "EN-US", "timezone": "UTC"}


def manage_path(session: Session, address: str, **choices: object) -> str:
    subscriber = subscribe(session, address, ["robotics"], confirmed=True, choices=DigestChoices(**choices))  # type: ignore[arg-type]
    session.commit()
    return f"/manage/{LinkSigner(SECRET).make(Purpose.MANAGE, subscriber.public_id)}"


def test_the_manage_page_offers_weekly_digests_the_empty_day_note_and_updates_in_english_and_chinese(
    lite_settings: Settings, sqlite_engine: Engine  # noqa: F811
) -> None:
    with Session(sqlite_engine) as session:
        manage = manage_path(session, "ada@example.org", frequency="weekly", weekday="wed")
    visitor = Visitor(lite_settings)

    english = visitor.get(f"{manage}?lang=en")
    chinese = visitor.get(f"{manage}?lang=zh-Hans")

    assert english.status_code == chinese.status_code == 200
    text = visible_text(english.text)
    for words in ("Once a week", "Every announcement day", "Weekly digest on", "Wednesday",
                  "Send a short note when an announcement matched none of my keywords",
                  "Tell me when a paper I was sent gets a new version"):
        assert words in text
    assert re.search(r'<option value="weekly" selected>', english.text)
    assert re.search(r'<option value="wed" selected>', english.text)
    assert re.search(r'name="updates" value="true" checked', english.text)  # on by default
    assert not re.search(r'name="empty_day_note" value="true" checked', english.text)  # opt-in
    for words in ("每周一次", "每个公告日", "星期三", "发一封简短的提示", "新版本、期刊引用或 DOI"):
        assert words in visible_text(chinese.text)


def test_saving_the_manage_page_stores_the_choices_and_a_form_without_them_keeps_them(
    lite_settings: Settings, sqlite_engine: Engine  # noqa: F811
) -> None:
    with Session(sqlite_engine) as session:
        manage = manage_path(session, "ada@example.org")
    visitor = Visitor(lite_settings)

    saved = visitor.submit(manage, manage, {**FORM, "digest_choices": "1", "frequency": "weekly", "weekday": "fri",
                                            "empty_day_note": "true"})

    assert saved.status_code == 200 and "Your preferences are saved." in saved.text
    subscriber = stored(lite_settings, "ada@example.org")
    assert subscriber is not None
    assert (subscriber.frequency, subscriber.weekday, subscriber.empty_day_note, subscriber.updates) == (
        "weekly", 4, True, False)
    # An older page (or a script) posting only keywords leaves the schedule alone.
    visitor.submit(manage, manage, FORM)
    again = stored(lite_settings, "ada@example.org")
    assert again is not None and (again.frequency, again.weekday, again.empty_day_note) == ("weekly", 4, True)


def test_a_made_up_frequency_or_weekday_is_refused_in_the_page_language_and_nothing_is_saved(
    lite_settings: Settings, sqlite_engine: Engine  # noqa: F811
) -> None:
    with Session(sqlite_engine) as session:
        manage = manage_path(session, "ada@example.org")
    visitor = Visitor(lite_settings)

    answer = visitor.submit(f"{manage}?lang=zh-Hans", manage, {**FORM, "digest_choices": "1", "frequency": "hourly",
                                                              "weekday": "someday", "keywords": "swarm"})

    assert answer.status_code == 422
    assert "请选择每天或每周。" in answer.text and "请从列表中选择星期几。" in answer.text
    with Session(sqlite_engine) as session:
        subscriber = find_subscriber(session, "ada@example.org")
        assert subscriber is not None and subscriber.frequency == "daily"
