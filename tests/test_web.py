"""The web app over HTTP: subscribe, confirm, manage, unsubscribe, delete, archive, and every refusal."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.models import (
    Announcement,
    Delivery,
    DeliveryStatus,
    Paper,
    Selection,
    SentPaper,
    Subscriber,
    SubscriberKeyword,
    SubscriberStatus,
)
from newsletter.subscribers import find_subscriber, subscribe
from newsletter.tokens import LinkSigner, Purpose, subscriber_links
from tests.conftest import REDIS_URL, make_settings, reachable_redis_or_skip
from tests.real_text import hostile_papers, reference_day
from tests.web_helpers import CSRF_INPUT, Visitor, link_in, outbox_mail, path_of, visible_text

SECRET = "test-secret-key-0123456789"


@pytest.fixture
def lite_settings(sqlite_engine: Engine, tmp_path: Path) -> Settings:
    """Settings on a SQLite file of the test's own (for tests that don't depend on the database)."""
    return make_settings(sqlite_engine.url.render_as_string(hide_password=False), tmp_path)


def stored(settings: Settings, address: str) -> Subscriber | None:
    from newsletter.db import engine_for

    with Session(engine_for(settings.database_url)) as db:
        return find_subscriber(db, address)


def keywords_of(settings: Settings, address: str) -> list[str]:
    from newsletter.db import engine_for

    with Session(engine_for(settings.database_url)) as db:
        subscriber = find_subscriber(db, address)
        assert subscriber is not None
        return list(
            db.scalars(
                select(SubscriberKeyword.expression)
                .where(SubscriberKeyword.subscriber_id == subscriber.id)
                .order_by(SubscriberKeyword.position)
            )
        )


@dataclass(frozen=True)
class Added:
    """A subscriber a test added: the row ID for rows tied to them, the public ID for their links."""

    id: int
    public_id: str


def add_subscriber(
    session: Session, address: str, keywords: list[str], confirmed: bool = True, days_ago: int = 60
) -> Added:
    """A subscriber who joined `days_ago` (before any link the test signs for them)."""
    subscriber = subscribe(session, address, keywords, confirmed=confirmed)
    subscriber.created_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    session.commit()
    assert subscriber.id is not None
    return Added(subscriber.id, subscriber.public_id)


def token(purpose: Purpose, subscriber: Added, extra: str = "") -> str:
    return LinkSigner(SECRET).make(purpose, subscriber.public_id, extra)


def token_made_ago(purpose: Purpose, subscriber: Added, age: dt.timedelta, by_row_id: bool = False) -> str:
    """A token in the production format, signed `age` ago (as if the mail had waited that long).

    `by_row_id`: the format of links mailed before subscribers had public IDs.
    """

    class SignedEarlier(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age.total_seconds())

    serializer = URLSafeTimedSerializer(SECRET, salt="arxiv-digest-links", signer=SignedEarlier)
    named = subscriber.id if by_row_id else subscriber.public_id
    return serializer.dumps({"p": purpose.value, "s": named, "x": ""})


# ---------------------------------------------------------------------------------------
# Subscribing and confirming
# ---------------------------------------------------------------------------------------


def test_the_subscribe_page_offers_languages_with_simplified_chinese_first_and_explains_the_syntax(
    lite_settings: Settings,
) -> None:
    page = Visitor(lite_settings).get("/")

    assert page.status_code == 200
    options = re.findall(r'<option value="([^"]+)"', page.text)
    assert options[0] == "ZH-HANS" and "DE" in options and "JA" in options
    assert 'name="email"' in page.text and 'name="keywords"' in page.text and 'name="timezone"' in page.text
    assert '<label for="keywords">' in page.text and '<label for="email">' in page.text
    text = visible_text(page.text)
    assert "ANDNOT" in text and "ti:transformer* AND cat:cs.RO" in text
    assert "<option selected>Asia/Shanghai</option>" in page.text


def test_subscribing_stores_a_pending_subscriber_and_mails_a_confirmation_link(
    settings: Settings,
) -> None:
    visitor = Visitor(settings)

    answer = visitor.subscribe("  Ada@Example.ORG ", "reinforcement learning\n\ndiffusion policy\n")

    assert answer.status_code == 200
    assert "Check your inbox" in answer.text
    subscriber = stored(settings, "ada@example.org")
    assert subscriber is not None and subscriber.status == SubscriberStatus.PENDING
    assert keywords_of(settings, "ada@example.org") == ["reinforcement learning", "diffusion policy"]
    mail = outbox_mail(settings, "ada@example.org")
    assert mail["To"] == "ada@example.org"
    assert "/confirm/" in link_in(mail, "confirm")


def test_the_confirmation_page_shows_a_button_and_only_the_post_confirms(settings: Settings) -> None:
    visitor = Visitor(settings)
    visitor.subscribe("ada@example.org")
    confirm_path = link_in(outbox_mail(settings, "ada@example.org"), "confirm")

    shown = visitor.get(confirm_path)

    assert shown.status_code == 200
    assert f'<form method="post" action="{confirm_path}">' in shown.text
    assert stored(settings, "ada@example.org").status == SubscriberStatus.PENDING  # type: ignore[union-attr]

    confirmed = visitor.submit(confirm_path, confirm_path, {})

    assert confirmed.status_code == 200
    assert "Subscription confirmed" in confirmed.text
    subscriber = stored(settings, "ada@example.org")
    assert subscriber is not None and subscriber.status == SubscriberStatus.ACTIVE and subscriber.confirmed_at


def test_the_answer_is_the_same_for_a_known_address_and_its_preferences_stay(
    lite_settings: Settings, sqlite_engine: Engine
) -> None:
    with Session(sqlite_engine) as db:
        add_subscriber(db, "known@example.org", ["quantum computing"])
    visitor = Visitor(lite_settings)

    unknown = visitor.subscribe("new@example.org", "graph neural network")
    known = visitor.subscribe("known@example.org", "graph neural network")

    assert known.status_code == unknown.status_code == 200
    assert visible_text(known.text).replace("known@", "X@") == visible_text(unknown.text).replace("new@", "X@")
    assert keywords_of(lite_settings, "known@example.org") == ["quantum computing"]
    # The owner of the known address is told, with their manage link, instead of a confirmation.
    notice = outbox_mail(lite_settings, "known@example.org")
    assert "already" in notice["Subject"]
    assert Visitor(lite_settings).get(link_in(notice, "manage")).status_code == 200


def test_at_most_one_confirmation_mail_goes_to_an_address_per_ten_minutes(
    settings: Settings, session: Session, smtp_sink
) -> None:  # type: ignore[no-untyped-def]
    settings = settings.model_copy(update={"mail_backend": "smtp", "smtp_port": smtp_sink.port,
                                                "smtp_host": "127.0.0.1"})
    visitor = Visitor(settings)

    for _ in range(3):
        assert visitor.subscribe("ada@example.org").status_code == 200
    assert len(smtp_sink.messages_to("ada@example.org")) == 1

    eleven_minutes_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=11)
    session.execute(update(Subscriber).values(confirmation_sent_at=eleven_minutes_ago))
    session.commit()
    visitor.subscribe("ada@example.org")

    assert len(smtp_sink.messages_to("ada@example.org")) == 2


def test_a_confirmation_mail_that_cannot_be_sent_says_so_and_may_be_retried_at_once(
    lite_settings: Settings, smtp_sink
) -> None:  # type: ignore[no-untyped-def]
    settings = lite_settings.model_copy(update={"mail_backend": "smtp", "smtp_port": smtp_sink.port,
                                                "smtp_host": "127.0.0.1"})
    visitor = Visitor(settings)
    smtp_sink.reject_address("ada@example.org")

    failed = visitor.subscribe("ada@example.org")

    assert failed.status_code == 503
    assert "could not send" in failed.text
    smtp_sink.accept_address("ada@example.org")
    assert visitor.subscribe("ada@example.org").status_code == 200
    assert len(smtp_sink.messages_to("ada@example.org")) == 1


def test_a_confirmation_link_expires_after_seven_days(lite_settings: Settings, sqlite_engine: Engine) -> None:
    with Session(sqlite_engine) as db:
        subscriber = add_subscriber(db, "ada@example.org", ["robotics"], confirmed=False)
    visitor = Visitor(lite_settings)
    fresh = token_made_ago(Purpose.CONFIRM, subscriber, dt.timedelta(days=6, hours=23))
    old = token_made_ago(Purpose.CONFIRM, subscriber, dt.timedelta(days=7, minutes=1))

    assert visitor.get(f"/confirm/{fresh}").status_code == 200
    expired = visitor.submit(f"/confirm/{fresh}", f"/confirm/{old}", {})

    assert expired.status_code == 400
    assert "expired" in expired.text
    assert stored(lite_settings, "ada@example.org").status == SubscriberStatus.PENDING  # type: ignore[union-attr]


def test_an_old_confirmation_link_does_not_undo_an_unsubscribe(lite_settings: Settings, sqlite_engine: Engine) -> None:
    with Session(sqlite_engine) as db:
        subscriber = add_subscriber(db, "ada@example.org", ["robotics"])
    visitor = Visitor(lite_settings)
    visitor.submit("/", f"/unsubscribe/{token(Purpose.UNSUBSCRIBE, subscriber)}", {})

    answer = visitor.submit("/", f"/confirm/{token(Purpose.CONFIRM, subscriber)}", {})

    assert answer.status_code == 400
    assert stored(lite_settings, "ada@example.org").status == SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]


def test_a_link_mailed_with_a_compressed_token_still_unsubscribes(
    lite_settings: Settings, sqlite_engine: Engine
) -> None:
    # Tokens were once made by itsdangerous' stock serializer, which compresses a payload zlib shortens.
    with Session(sqlite_engine) as db:
        subscriber = add_subscriber(db, "ada@example.org", ["robotics"])
    stock = URLSafeTimedSerializer(SECRET, salt="arxiv-digest-links")
    compressed = stock.dumps({"p": Purpose.UNSUBSCRIBE.value, "s": subscriber.public_id, "x": "a" * 200})
    assert compressed.startswith(".")  # the compressed form
    assert not token(Purpose.UNSUBSCRIBE, subscriber, "a" * 200).startswith(".")  # ours no longer compresses

    answer = Visitor(lite_settings).submit("/", f"/unsubscribe/{compressed}", {})

    assert answer.status_code == 200
    assert stored(lite_settings, "ada@example.org").status == SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]


@pytest.mark.parametrize("mangle", ["tamper", "truncate", "other_purpose", "garbage"])
def test_a_bad_link_gets_a_clear_400_page_and_changes_nothing(
    lite_settings: Settings, sqlite_engine: Engine, mangle: str
) -> None:
    with Session(sqlite_engine) as db:
        subscriber = add_subscriber(db, "ada@example.org", ["robotics"])
    good = token(Purpose.UNSUBSCRIBE, subscriber)
    bad = {
        "tamper": good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"),
        "truncate": good[: len(good) // 2],
        "other_purpose": token(Purpose.MANAGE, subscriber),
        "garbage": "not-a-token",
    }[mangle]
    visitor = Visitor(lite_settings)

    shown = visitor.get(f"/unsubscribe/{bad}")
    acted = visitor.submit("/", f"/unsubscribe/{bad}", {})
    one_click = visitor.client.post(f"/unsubscribe/{bad}", data={"List-Unsubscribe": "One-Click"})

    for answer in (shown, acted, one_click):
        assert answer.status_code == 400
        assert "This link is not valid" in answer.text
        assert "Nothing was changed" in answer.text
    assert stored(lite_settings, "ada@example.org").status == SubscriberStatus.ACTIVE  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------
# Managing
# ---------------------------------------------------------------------------------------


def test_the_manage_link_changes_keywords_language_time_zone_and_pauses(
    settings: Settings, session: Session
) -> None:
    subscriber = add_subscriber(session, "ada@example.org", ["robotics"])
    manage = f"/manage/{token(Purpose.MANAGE, subscriber)}"
    visitor = Visitor(settings)

    page = visitor.get(manage)
    assert page.status_code == 200 and "ada@example.org" in page.text and ">robotics</textarea>" in page.text

    saved = visitor.submit(manage, manage, {"keywords": "swarm robotics\nau:Hinton", "language": "JA",
                                            "timezone": "Europe/Berlin", "paused": "true"})

    assert saved.status_code == 200 and "Your preferences are saved." in saved.text
    subscriber = stored(settings, "ada@example.org")
    assert subscriber is not None
    assert (subscriber.language, subscriber.timezone, subscriber.status) == ("JA", "Europe/Berlin", "paused")
    assert keywords_of(settings, "ada@example.org") == ["swarm robotics", "au:Hinton"]

    visitor.submit(manage, manage, {"keywords": "swarm robotics", "language": "JA", "timezone": "Europe/Berlin"})
    assert stored(settings, "ada@example.org").status == SubscriberStatus.ACTIVE  # type: ignore[union-attr]


def test_a_keyword_that_does_not_parse_is_shown_next_to_the_field_and_nothing_is_saved(
    lite_settings: Settings, sqlite_engine: Engine
) -> None:
    with Session(sqlite_engine) as db:
        subscriber = add_subscriber(db, "ada@example.org", ["robotics"])
    manage = f"/manage/{token(Purpose.MANAGE, subscriber)}"

    answer = Visitor(lite_settings).submit(
        manage, manage, {"keywords": "robotics\n  (swarm AND", "language": "ZH-HANS", "timezone": "Nowhere/City"}
    )

    assert answer.status_code == 422
    keyword_error = re.search(r'<p class="field-error" id="keywords-error">(.*?)</p>', answer.text, re.S)
    assert keyword_error and "Line 2, character" in keyword_error.group(1)
    assert 'aria-invalid="true"' in answer.text
    assert re.search(r'id="timezone-error">Choose a time zone', answer.text)
    assert keywords_of(lite_settings, "ada@example.org") == ["robotics"]


def test_delete_my_data_removes_the_subscriber_and_keeps_only_an_anonymous_delivery_count(
    settings: Settings, session: Session
) -> None:
    subscriber = add_subscriber(session, "ada@example.org", ["robotics"])
    day = dt.date(2026, 11, 24)
    session.add(Paper(arxiv_id="2611.00001", title="Swarm robotics", abstract="Robots."))
    session.flush()
    session.add(Selection(day=day, subscriber_id=subscriber.id, arxiv_id="2611.00001", keyword_position=0))
    session.add(SentPaper(subscriber_id=subscriber.id, arxiv_id="2611.00001", day=day))
    session.add(Delivery(subscriber_id=subscriber.id, day=day, status=DeliveryStatus.SENT, paper_count=1))
    session.commit()
    manage = f"/manage/{token(Purpose.MANAGE, subscriber)}"
    visitor = Visitor(settings)

    unticked = visitor.submit(manage, f"{manage}/delete", {})
    assert unticked.status_code == 422 and stored(settings, "ada@example.org") is not None

    deleted = visitor.submit(manage, f"{manage}/delete", {"confirm_delete": "yes"})

    assert deleted.status_code == 200 and "Your data is deleted" in deleted.text
    session.expire_all()
    assert stored(settings, "ada@example.org") is None
    for table in (SubscriberKeyword, Selection, SentPaper):
        assert session.scalar(select(func.count()).select_from(table)) == 0
    delivery = session.scalars(select(Delivery)).one()
    assert delivery.subscriber_id is None and delivery.paper_count == 1
    assert visitor.get(manage).status_code == 400


def test_a_deleted_subscribers_old_link_never_opens_the_page_of_someone_given_the_same_number(
    lite_settings: Settings, sqlite_engine: Engine
) -> None:
    with Session(sqlite_engine) as db:
        old = add_subscriber(db, "ada@example.org", ["robotics"])
    old_link = f"/manage/{token_made_ago(Purpose.MANAGE, old, dt.timedelta(days=30))}"
    visitor = Visitor(lite_settings)
    visitor.submit(old_link, f"{old_link}/delete", {"confirm_delete": "yes"})
    with Session(sqlite_engine) as db:  # SQLite hands the number out again
        assert add_subscriber(db, "bob@example.org", ["biology"], days_ago=0).id == old.id

    answer = visitor.get(old_link)

    assert answer.status_code == 400 and "bob@example.org" not in answer.text
    assert "no longer exists" in answer.text


def test_a_link_mailed_to_a_deleted_subscriber_never_acts_for_the_next_one_with_the_same_number(
    lite_settings: Settings, sqlite_engine: Engine
) -> None:
    # Both rows are created in the same second as the link: only the public ID tells them apart.
    with Session(sqlite_engine) as db:
        ada = add_subscriber(db, "ada@example.org", ["robotics"], days_ago=0)
    links = subscriber_links(LinkSigner(SECRET), lite_settings.base_url, ada.public_id, "2026-11-24")
    visitor = Visitor(lite_settings)
    manage = path_of(links.manage)
    visitor.submit(manage, f"{manage}/delete", {"confirm_delete": "yes"})
    with Session(sqlite_engine) as db:
        bob = add_subscriber(db, "bob@example.org", ["biology"], days_ago=0)
    assert bob.id == ada.id and bob.public_id != ada.public_id

    one_click = visitor.client.post(path_of(links.unsubscribe), data={"List-Unsubscribe": "One-Click"})

    assert one_click.status_code == 400 and "no longer exists" in one_click.text
    assert visitor.get(manage).status_code == 400
    assert stored(lite_settings, "bob@example.org").status == SubscriberStatus.ACTIVE  # type: ignore[union-attr]


def test_a_link_mailed_before_public_ids_still_unsubscribes_its_subscriber(
    lite_settings: Settings, sqlite_engine: Engine
) -> None:
    with Session(sqlite_engine) as db:
        ada = add_subscriber(db, "ada@example.org", ["robotics"])
    legacy = f"/unsubscribe/{token_made_ago(Purpose.UNSUBSCRIBE, ada, dt.timedelta(days=30), by_row_id=True)}"

    answer = Visitor(lite_settings).client.post(legacy, data={"List-Unsubscribe": "One-Click"})

    assert answer.status_code == 200
    assert stored(lite_settings, "ada@example.org").status == SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------
# Leaving and coming back
# ---------------------------------------------------------------------------------------


def test_the_unsubscribe_page_asks_first_and_the_button_unsubscribes(settings: Settings, session: Session) -> None:
    subscriber = add_subscriber(session, "ada@example.org", ["robotics"])
    unsubscribe = f"/unsubscribe/{token(Purpose.UNSUBSCRIBE, subscriber)}"
    visitor = Visitor(settings)

    shown = visitor.get(unsubscribe)
    assert shown.status_code == 200 and "Stop sending the arXiv digest to ada@example.org?" in shown.text
    assert stored(settings, "ada@example.org").status == SubscriberStatus.ACTIVE  # type: ignore[union-attr]

    done = visitor.submit(unsubscribe, unsubscribe, {})

    assert done.status_code == 200 and "ada@example.org will receive no more digests." in done.text
    assert stored(settings, "ada@example.org").status == SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]


def test_the_one_click_post_of_rfc_8058_unsubscribes_at_once_without_cookie_or_csrf(
    settings: Settings, session: Session
) -> None:
    subscriber = add_subscriber(session, "ada@example.org", ["robotics"])
    url = f"/unsubscribe/{token(Purpose.UNSUBSCRIBE, subscriber)}"
    mail_provider = Visitor(settings).client  # no page visited: no cookie

    answer = mail_provider.post(url, content=b"List-Unsubscribe=One-Click",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert answer.status_code == 200
    assert stored(settings, "ada@example.org").status == SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]


def test_an_unsubscribed_reader_can_undo_it_or_subscribe_again_later(
    lite_settings: Settings, sqlite_engine: Engine
) -> None:
    with Session(sqlite_engine) as db:
        subscriber = add_subscriber(db, "ada@example.org", ["robotics"])
    unsubscribe = f"/unsubscribe/{token(Purpose.UNSUBSCRIBE, subscriber)}"
    visitor = Visitor(lite_settings)
    left = visitor.submit(unsubscribe, unsubscribe, {})
    undo = re.search(r'<form method="post" action="(/unsubscribe/[^"]+/undo)">', left.text)
    assert undo, "the unsubscribed page offers to undo it"

    undone = visitor.submit("/", undo.group(1), {})
    assert undone.status_code == 200 and "Welcome back" in undone.text
    assert stored(lite_settings, "ada@example.org").status == SubscriberStatus.ACTIVE  # type: ignore[union-attr]

    visitor.submit(unsubscribe, unsubscribe, {})
    visitor.subscribe("ada@example.org", "soft robotics")
    # Nothing changes until the mailbox confirms: not the status, not the keywords.
    assert stored(lite_settings, "ada@example.org").status == SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]
    assert keywords_of(lite_settings, "ada@example.org") == ["robotics"]
    confirm = link_in(outbox_mail(lite_settings, "ada@example.org"), "confirm")
    assert "<code>soft robotics</code>" in visitor.get(confirm).text
    visitor.submit(confirm, confirm, {})
    assert stored(lite_settings, "ada@example.org").status == SubscriberStatus.ACTIVE  # type: ignore[union-attr]
    assert keywords_of(lite_settings, "ada@example.org") == ["soft robotics"]


# ---------------------------------------------------------------------------------------
# Archive
# ---------------------------------------------------------------------------------------


def test_the_archive_shows_the_digest_a_subscriber_received_only_through_its_signed_link(
    lite_settings: Settings, sqlite_engine: Engine
) -> None:
    day = dt.date(2026, 11, 24)
    with Session(sqlite_engine) as db:
        subscriber = add_subscriber(db, "ada@example.org", ["swarm robotics"])
        db.add(Paper(arxiv_id="2611.00001", title="Decentralised swarm robotics at scale", abstract="Robots.",
                     authors=["A. Author"], categories=["cs.RO"], primary_category="cs.RO"))
        db.flush()
        db.add(Announcement(day=day, arxiv_id="2611.00001", announce_type="new"))
        db.add(Selection(day=day, subscriber_id=subscriber.id, arxiv_id="2611.00001", keyword_position=0))
        db.add(Delivery(subscriber_id=subscriber.id, day=day, status=DeliveryStatus.SENT, paper_count=1))
        db.commit()
    visitor = Visitor(lite_settings)
    archive = f"/archive/{day}/{token(Purpose.ARCHIVE, subscriber, day.isoformat())}"

    page = visitor.get(archive)

    assert page.status_code == 200
    assert "Decentralised swarm robotics at scale" in page.text and "2611.00001" in page.text
    assert "script-src" not in page.headers["Content-Security-Policy"]
    other_day = visitor.get(f"/archive/2026-11-23/{token(Purpose.ARCHIVE, subscriber, day.isoformat())}")
    assert other_day.status_code == 400
    not_sent = visitor.get(f"/archive/2026-11-23/{token(Purpose.ARCHIVE, subscriber, '2026-11-23')}")
    assert not_sent.status_code == 404 and "No digest" in not_sent.text
    assert visitor.get(f"/archive/{day}/{token(Purpose.MANAGE, subscriber)}").status_code == 400


# ---------------------------------------------------------------------------------------
# Keyword check and preview
# ---------------------------------------------------------------------------------------


def seed_papers(session: Session, days: int) -> list[dt.date]:
    """One robotics paper per announcement day, oldest first, plus one vision paper on the newest day."""
    announced = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(days)]
    for number, day in enumerate(announced):
        arxiv_id = f"2611.{number:05d}"
        session.add(Paper(arxiv_id=arxiv_id, title=f"Swarm robotics study {number}", abstract="We study robots.",
                          categories=["cs.RO"]))
        session.flush()
        session.add(Announcement(day=day, arxiv_id=arxiv_id, announce_type="new"))
    session.add(Paper(arxiv_id="2611.99999", title="Image segmentation", abstract="Pixels.", categories=["cs.CV"]))
    session.flush()
    session.add(Announcement(day=announced[-1], arxiv_id="2611.99999", announce_type="new"))
    session.commit()
    return announced


def test_the_keyword_check_counts_matches_over_the_last_seven_announcement_days(
    lite_settings: Settings, sqlite_engine: Engine
) -> None:
    with Session(sqlite_engine) as db:
        seed_papers(db, days=9)  # the two oldest days are outside the window

    answer = Visitor(lite_settings).get("/api/keywords", params={"keywords": "swarm robotics\ncat:cs.CV\nquantum"})

    assert answer.status_code == 200
    result = answer.json()
    assert result["valid"] is True and result["days"] == 7
    assert [(c["keyword"], c["count"]) for c in result["counts"]] == [
        ("swarm robotics", 7), ("cat:cs.CV", 1), ("quantum", 0)
    ]


def test_the_keyword_check_answers_while_real_abstracts_with_odd_latex_are_among_the_recent_papers(
    lite_settings: Settings, sqlite_engine: Engine
) -> None:
    # The reference digest's first paper ends in "\\href{this https URL}{this url}": it made this a 500.
    papers = [reference_day()[0].paper, *hostile_papers()]
    with Session(sqlite_engine) as db:
        for paper in papers:
            db.add(Paper(arxiv_id=paper.arxiv_id, title=paper.title, abstract=paper.abstract,
                         categories=paper.categories))  # fmt: skip
            db.flush()
            db.add(Announcement(day=dt.date(2026, 11, 24), arxiv_id=paper.arxiv_id, announce_type="new"))
        db.commit()

    answer = Visitor(lite_settings).get("/api/keywords", params={"keywords": "reinforcement learning"})

    assert answer.status_code == 200
    assert answer.json()["counts"][0]["count"] == len(papers)


def test_the_keyword_check_reports_where_a_keyword_is_wrong(lite_settings: Settings) -> None:
    result = Visitor(lite_settings).get("/api/keywords", params={"keywords": "robotics\nswarm AND"}).json()

    assert result["valid"] is False
    assert result["errors"] == ["Line 2, character 7: operator AND needs a term after it"]


def test_the_check_button_previews_counts_without_javascript_and_subscribes_nobody(
    lite_settings: Settings, sqlite_engine: Engine
) -> None:
    with Session(sqlite_engine) as db:
        seed_papers(db, days=3)

    answer = Visitor(lite_settings).subscribe("ada@example.org", "swarm robotics", action="preview")

    assert answer.status_code == 200
    assert "Matches over the last 3 announcement days" in answer.text
    assert "<code>swarm robotics</code>: 3 papers" in answer.text
    assert 'value="ada@example.org"' in answer.text
    assert stored(lite_settings, "ada@example.org") is None


# ---------------------------------------------------------------------------------------
# Abuse
# ---------------------------------------------------------------------------------------


def test_a_form_post_without_a_valid_csrf_token_is_refused_and_changes_nothing(lite_settings: Settings) -> None:
    visitor = Visitor(lite_settings)
    form = {"email": "ada@example.org", "keywords": "robotics", "language": "ZH-HANS", "timezone": "UTC"}
    visitor.get("/")  # has the cookie, but sends no field
    no_field = visitor.client.post("/subscribe", data=form)
    stranger = Visitor(lite_settings)  # a field from someone else's page
    other_token = re.search(r'name="csrf_token" value="([^"]+)"', stranger.get("/").text).group(1)  # type: ignore[union-attr]
    wrong_field = visitor.client.post("/subscribe", data={**form, "csrf_token": other_token})
    no_cookie = Visitor(lite_settings).client.post("/subscribe", data={**form, "csrf_token": other_token})

    for answer in (no_field, wrong_field, no_cookie):
        assert answer.status_code == 403
        assert "Nothing was changed" in answer.text
    assert stored(lite_settings, "ada@example.org") is None
    assert not (Path(lite_settings.outbox_dir) / "confirmations").exists()


def test_too_many_posts_from_one_ip_address_get_429_and_others_are_not_held_up(lite_settings: Settings) -> None:
    settings = lite_settings.model_copy(update={"web_post_rate_limit": "3/minute"})
    visitor = Visitor(settings, ip="198.51.100.7")
    app = visitor.app

    answers = [visitor.subscribe(f"reader{i}@example.org") for i in range(4)]
    neighbour = TestClient(app, client=("198.51.100.8", 50000))
    token = CSRF_INPUT.search(neighbour.get("/").text).group(1)  # type: ignore[union-attr]
    other_ip = neighbour.post("/subscribe", data={"csrf_token": token, "email": "neighbour@example.org",
                                                   "keywords": "robotics", "language": "DE", "timezone": "UTC"})

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert int(answers[-1].headers["Retry-After"]) > 0
    assert "Too many requests" in answers[-1].text
    assert stored(settings, "reader3@example.org") is None
    assert stored(settings, "reader2@example.org") is not None
    assert other_ip.status_code == 200 and stored(settings, "neighbour@example.org") is not None


@pytest.mark.redis
def test_the_rate_limit_is_shared_through_redis_by_every_web_worker(lite_settings: Settings) -> None:
    reachable_redis_or_skip(REDIS_URL)
    settings = lite_settings.model_copy(update={
        "web_post_rate_limit": "2/minute", "web_rate_limit_storage": REDIS_URL,
        "web_rate_limit_prefix": f"test-web-{uuid.uuid4().hex}",
    })
    first_worker, second_worker = Visitor(settings), Visitor(settings)

    assert first_worker.subscribe("one@example.org").status_code == 200
    assert second_worker.subscribe("two@example.org").status_code == 200
    assert first_worker.subscribe("three@example.org").status_code == 429
    first_worker.app.state.limiter.storage.reset()


@pytest.mark.parametrize(
    "address",
    [
        "victim@example.org\r\nBcc: everyone@example.org",
        "victim@example.org\nSubject: hi",
        "victim@example.org%0d%0aBcc:everyone@example.org",
        "Victim <victim@example.org>, everyone@example.org",
    ],
)
def test_header_injection_through_the_email_field_is_refused(lite_settings: Settings, address: str) -> None:
    answer = Visitor(lite_settings).subscribe(address)

    assert answer.status_code == 422
    assert re.search(r'id="email-error">This email address is not valid', answer.text)
    assert not (Path(lite_settings.outbox_dir) / "confirmations").exists()


def test_a_bad_address_is_explained_once(lite_settings: Settings) -> None:
    answer = Visitor(lite_settings).subscribe("not-an-address")

    reason = re.search(r'<p class="field-error" id="email-error">(.*?)</p>', answer.text, re.S)
    assert answer.status_code == 422 and reason
    assert " ".join(reason.group(1).split()) == "This email address is not valid: An email address must have an @-sign."


def test_the_chinese_subscribe_page_gives_its_reasons_in_chinese(lite_settings: Settings) -> None:
    visitor = Visitor(lite_settings, **{"Accept-Language": "zh-CN"})

    bad_address = visitor.subscribe("not-an-address")
    bad_keyword = visitor.subscribe("ada@example.org", "robotics\n(swarm")

    address_reason = re.search(r'id="email-error">(.*?)</p>', bad_address.text, re.S)
    assert bad_address.status_code == 422 and address_reason
    assert "邮箱地址无效" in address_reason.group(1) and "@-sign" not in address_reason.group(1)
    keyword_reason = re.search(r'id="keywords-error">(.*?)</p>', bad_keyword.text, re.S)
    assert bad_keyword.status_code == 422 and keyword_reason
    assert "第 2 行" in keyword_reason.group(1) and "括号不配对" in keyword_reason.group(1)
    assert "parenthesis" not in keyword_reason.group(1)
    check = visitor.get("/api/keywords", params={"keywords": "(swarm"}).json()
    assert check["errors"] == ["第 1 行，第 1 个字符：括号不配对"]


XSS = '<script>alert(1)</script>'


def test_script_in_keywords_is_shown_as_text_never_run(lite_settings: Settings, sqlite_engine: Engine) -> None:
    visitor = Visitor(lite_settings)

    rejected = visitor.subscribe("ada@example.org", f"{XSS}\n(broken")
    check = visitor.get("/api/keywords", params={"keywords": f'"{XSS}" AND'})
    with Session(sqlite_engine) as db:
        subscriber = add_subscriber(db, "bob@example.org", ['"<img src=x onerror=alert(1)>" AND robots'])
    manage = visitor.get(f"/manage/{token(Purpose.MANAGE, subscriber)}")

    assert rejected.status_code == 422
    for page in (rejected.text, manage.text):
        assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rejected.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in manage.text
    assert check.headers["content-type"] == "application/json"
    assert "script-src 'self'" in rejected.headers["Content-Security-Policy"]


def test_a_request_body_over_the_cap_gets_413(lite_settings: Settings) -> None:
    visitor = Visitor(lite_settings)
    huge = "a" * (lite_settings.web_max_body_bytes + 1)

    declared = visitor.submit("/", "/subscribe", {"email": "ada@example.org", "keywords": huge})
    streamed = visitor.client.post(
        "/subscribe", content=(chunk.encode() for chunk in [huge[:40000], huge[40000:]]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert stored(lite_settings, "ada@example.org") is None


# ---------------------------------------------------------------------------------------
# Languages and health
# ---------------------------------------------------------------------------------------


def test_pages_follow_accept_language_and_the_switch_is_remembered(lite_settings: Settings) -> None:
    chinese_reader = Visitor(lite_settings, **{"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
    english_reader = Visitor(lite_settings, **{"Accept-Language": "de-DE,en-GB;q=0.7"})

    chinese = chinese_reader.get("/")
    assert '<html lang="zh-Hans">' in chinese.text and "订阅 arXiv 每日速递" in chinese.text
    assert '<html lang="en">' in english_reader.get("/").text

    switched = chinese_reader.get("/?lang=en")
    assert "Subscribe to the arXiv digest" in switched.text
    assert '<html lang="en">' in chinese_reader.get("/").text  # the cookie remembers the choice
    answer = english_reader.get("/?lang=zh-Hans")
    assert "电子邮箱" in answer.text
    bad_link = english_reader.get("/manage/not-a-token")
    assert bad_link.status_code == 400 and "链接无效" in bad_link.text and "没有做任何更改" in bad_link.text


def test_the_health_endpoint_answers_when_the_database_does(lite_settings: Settings) -> None:
    answer = Visitor(lite_settings).get("/health")

    assert answer.status_code == 200 and answer.text == "ok"


def test_the_health_endpoint_says_503_when_the_database_is_gone(tmp_path: Path) -> None:
    settings = make_settings("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1", tmp_path)

    answer = Visitor(settings).get("/health")

    assert answer.status_code == 503 and "database unavailable" in answer.text


PREVIEW_KEYWORDS = [
    "reinforcement learning", "deep learning", "diffusion policy", "Transform*", "ti:robot*", "abs:language models",
    "cat:cs.RO", "cat:cs", "cat:cs.* ANDNOT learning", '"neural network" OR "graph neural networks"',
    "au:Sergey Levine", "quantum chromodynamics", "multi-agent", "LLMs AND (reasoning OR planning)",
]


def test_the_preview_counts_what_the_matching_engine_selects_from_the_sample_papers(
    lite_settings: Settings, sqlite_engine: Engine
) -> None:
    from newsletter.demo import sample_transports
    from newsletter.keywords import KeywordIndex
    from newsletter.matching import paper_text
    from newsletter.pipeline import harvest_stage

    with Session(sqlite_engine) as db:
        harvest_stage(db, sample_transports(lite_settings.outbox_dir), None)
        db.commit()
        announced = select(Announcement.arxiv_id)
        papers = [paper_text(paper) for paper in db.scalars(select(Paper).where(Paper.arxiv_id.in_(announced)))]
    engine_counts = [len(hits) for hits in KeywordIndex.build([(0, PREVIEW_KEYWORDS)]).select(papers)[0]]

    result = Visitor(lite_settings).get("/api/keywords", params={"keywords": "\n".join(PREVIEW_KEYWORDS)}).json()

    assert [c["count"] for c in result["counts"]] == engine_counts
    assert sum(1 for count in engine_counts if count) >= 5  # the sample exercises the prefilter, not only zeros


def test_an_unknown_address_gets_a_page_not_found_in_the_readers_language(lite_settings: Settings) -> None:
    answer = Visitor(lite_settings, **{"Accept-Language": "zh-Hans"}).get("/no-such-page")

    assert answer.status_code == 404
    assert "页面不存在" in answer.text and answer.headers["content-type"].startswith("text/html")
