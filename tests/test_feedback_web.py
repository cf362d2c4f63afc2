"""Feedback links and the private feed over HTTP: the one-button page, recording on POST only, the
manage page's list and clearing, and the Atom feed as a feed reader parses it."""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import quote

import feedparser
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlmodel import Session

from newsletter.atom import feed_url_for
from newsletter.config import Settings
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    FeedbackVerdict,
    Paper,
    PaperFeedback,
    Selection,
    SentPaper,
    Subscriber,
    SubscriberStatus,
)
from newsletter.subscribers import subscribe
from newsletter.tokens import InvalidToken, LinkSigner, Purpose, subscriber_links
from tests.web_helpers import Visitor, path_of, visible_text

SECRET = "test-secret-key-0123456789"
DAY = dt.date(2026, 11, 24)
PAPERS = {
    "2611.00001": ("Swarm robotics with <b>graph</b> policies & \"friends\"", "Robots that flock."),
    "2611.00002": ("Reward hacking in chat assistants", "Language models exploit reward models."),
    "hep-th/9901001": ("An old-style identifier", "Strings."),
}


def seed(session: Session, address: str = "ada@example.org") -> Subscriber:
    """A subscriber with two keywords, sent a digest on DAY holding PAPERS."""
    subscriber = subscribe(session, address, ["robotics", "reward models"], confirmed=True)
    subscriber.created_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    for arxiv_id, (title, abstract) in PAPERS.items():
        if session.get(Paper, arxiv_id) is None:
            session.add(Paper(arxiv_id=arxiv_id, title=title, abstract=abstract, authors=["Ada Lovelace"]))
    session.flush()
    assert subscriber.id is not None
    for position, arxiv_id in enumerate(PAPERS):
        session.add(Selection(day=DAY, subscriber_id=subscriber.id, arxiv_id=arxiv_id,
                              keyword_position=min(position, 1), terms=["robotics"]))
        session.add(SentPaper(subscriber_id=subscriber.id, arxiv_id=arxiv_id, day=DAY))
    session.add(Delivery(subscriber_id=subscriber.id, day=DAY, status=DeliveryStatus.SENT, paper_count=3,
                         sent_at=dt.datetime(2026, 11, 24, 1, 5, tzinfo=dt.UTC)))
    session.commit()
    return subscriber


def feedback_path(settings: Settings, subscriber: Subscriber, verdict: str, arxiv_id: str) -> str:
    links = subscriber_links(LinkSigner(SECRET), settings.base_url, subscriber.public_id, DAY.isoformat())
    return path_of(f"{links.feedback}/{verdict}/{quote(arxiv_id, safe='/')}")


def verdicts(session: Session) -> dict[str, FeedbackVerdict]:
    session.expire_all()
    return {row.arxiv_id: row.verdict for row in session.scalars(select(PaperFeedback))}


def test_a_feedback_link_shows_a_one_button_page_and_only_the_post_records(
    settings: Settings, session: Session
) -> None:
    subscriber = seed(session)
    visitor = Visitor(settings)
    more = feedback_path(settings, subscriber, "more", "2611.00001")

    page = visitor.get(more)

    assert page.status_code == 200
    assert "Yes, more like this" in page.text and "Swarm robotics with <b>graph</b>" in visible_text(page.text)
    assert "<b>graph</b>" not in page.text  # the title is escaped
    assert verdicts(session) == {}  # a mail scanner that follows the link records nothing

    answer = visitor.submit(more, more, {})

    assert answer.status_code == 200 and "Noted: more papers like" in answer.text
    assert verdicts(session) == {"2611.00001": FeedbackVerdict.MORE}
    # A second verdict on the same paper replaces the first; an old-style ID works through its slash.
    less = feedback_path(settings, subscriber, "less", "2611.00001")
    assert visitor.submit(less, less, {}).status_code == 200
    old_style = feedback_path(settings, subscriber, "less", "hep-th/9901001")
    assert visitor.submit(old_style, old_style, {}).status_code == 200
    assert verdicts(session) == {"2611.00001": FeedbackVerdict.LESS, "hep-th/9901001": FeedbackVerdict.LESS}


def test_the_feedback_page_speaks_chinese_to_a_chinese_reader(settings: Settings, session: Session) -> None:
    subscriber = seed(session)
    path = feedback_path(settings, subscriber, "less", "2611.00002")
    page = Visitor(settings, **{"Accept-Language": "zh-CN"}).get(path)
    assert page.status_code == 200 and "是的，我不感兴趣" in page.text


def test_a_forged_or_foreign_feedback_link_is_refused_and_records_nothing(
    settings: Settings, session: Session
) -> None:
    ada, bob = seed(session), seed(session, "bob@example.org")
    visitor = Visitor(settings)
    good = feedback_path(settings, ada, "more", "2611.00001")
    token = good.split("/")[2]
    forged = good.replace(token, f"{bob.public_id}.{token.split('.', 1)[1]}")  # Bob's ID, Ada's signature
    other_key = LinkSigner("another-secret-key-0123").make_short(Purpose.FEEDBACK, ada.public_id)
    wrong_key = f"/feedback/{other_key}/more/2611.00001"
    manage_token = LinkSigner(SECRET).make(Purpose.MANAGE, ada.public_id)

    for path in (forged, wrong_key, f"/feedback/{manage_token}/more/2611.00001", good[:-20]):
        assert visitor.get(path).status_code in (400, 404), path
        assert visitor.submit(good, path, {}).status_code in (400, 404), path
    assert visitor.submit(good, forged, {}).status_code == 400
    unsent = feedback_path(settings, ada, "more", "2611.99999")
    unknown_verdict = feedback_path(settings, ada, "maybe", "2611.00001")
    assert visitor.get(unsent).status_code == 404 and visitor.get(unknown_verdict).status_code == 404
    # Without the CSRF field the POST is refused too.
    assert visitor.client.post(good).status_code == 403
    assert verdicts(session) == {}


def test_the_manage_page_lists_feedback_and_clears_one_or_all(settings: Settings, session: Session) -> None:
    subscriber = seed(session)
    visitor = Visitor(settings)
    for verdict, arxiv_id in (("more", "2611.00001"), ("less", "2611.00002")):
        path = feedback_path(settings, subscriber, verdict, arxiv_id)
        assert visitor.submit(path, path, {}).status_code == 200
    manage = f"/manage/{LinkSigner(SECRET).make(Purpose.MANAGE, subscriber.public_id)}"

    shown = visible_text(visitor.get(manage).text)

    assert "Your feedback" in shown
    assert "More like this : Swarm robotics" in shown and "Not for me : Reward hacking" in shown
    one = visitor.submit(manage, f"{manage}/feedback", {"arxiv_id": "2611.00002"})
    assert one.status_code == 200 and "Reward hacking" not in visible_text(one.text)
    assert verdicts(session) == {"2611.00001": FeedbackVerdict.MORE}
    zh = Visitor(settings, **{"Accept-Language": "zh-CN"}).get(manage).text
    assert "您的反馈" in zh and "清除全部反馈" in zh and "您的私人订阅源" in zh

    cleared = visitor.submit(manage, f"{manage}/feedback", {})

    assert "Your feedback is cleared." in cleared.text and verdicts(session) == {}


def feed_path(settings: Settings, subscriber: Subscriber) -> str:
    return path_of(feed_url_for(settings, subscriber))


def test_the_private_feed_is_valid_atom_with_one_entry_per_paper_and_keyword(
    settings: Settings, session: Session
) -> None:
    subscriber = seed(session)
    visitor = Visitor(settings)
    manage = f"/manage/{LinkSigner(SECRET).make(Purpose.MANAGE, subscriber.public_id)}"
    url = feed_url_for(settings, subscriber)
    assert url in visitor.get(manage).text  # listed on the manage page

    answer = visitor.get(path_of(url))

    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/atom+xml")
    parsed = feedparser.parse(answer.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    assert parsed.feed.id.startswith("tag:localhost,") and parsed.feed.updated_parsed
    assert [link.href for link in parsed.feed.links if link.rel == "self"] == [url]
    entries = {entry.link: entry for entry in parsed.entries}
    assert set(entries) == {f"https://arxiv.org/abs/{arxiv_id}" for arxiv_id in PAPERS}
    swarm = entries["https://arxiv.org/abs/2611.00001"]
    assert swarm.title == PAPERS["2611.00001"][0]  # markup in a title stays text, escaped once
    assert swarm.tags[0].term == "robotics"
    assert entries["https://arxiv.org/abs/2611.00002"].tags[0].term == "reward models"
    assert "Robots that flock." in swarm.content[0].value and swarm.updated_parsed[:3] == (2026, 11, 24)
    assert 'href="https://arxiv.org/pdf/2611.00001"' in swarm.content[0].value
    assert len({entry.id for entry in parsed.entries}) == len(PAPERS)
    # A reader asking again with the ETag it got is told nothing changed.
    again = visitor.get(path_of(url), headers={"If-None-Match": answer.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_the_feed_is_refused_after_unsubscribing_and_gone_after_deleting(settings: Settings, session: Session) -> None:
    subscriber = seed(session)
    visitor = Visitor(settings)
    path = feed_path(settings, subscriber)
    unsubscribe = f"/unsubscribe/{LinkSigner(SECRET).make(Purpose.UNSUBSCRIBE, subscriber.public_id)}"
    assert visitor.get(path).status_code == 200

    assert visitor.submit(unsubscribe, unsubscribe, {}).status_code == 200

    assert visitor.get(path).status_code == 403
    session.refresh(subscriber)  # leaving raised the generation: the manage link of the unsubscribed page
    token = LinkSigner(SECRET).make(Purpose.MANAGE, subscriber.public_id, generation=subscriber.generation)
    manage = f"/manage/{token}"
    assert feed_url_for(settings, subscriber) not in visitor.get(manage).text
    assert visitor.submit(manage, f"{manage}/delete", {"confirm_delete": "yes"}).status_code == 200
    assert visitor.get(path).status_code == 404
    assert visitor.get(path[:-3]).status_code == 400


def test_feed_url_for_signs_with_the_key_stored_in_the_database_when_none_is_configured(
    settings: Settings, session: Session
) -> None:
    subscriber = seed(session)
    unset = settings.model_copy(update={"secret_key": None})
    url = feed_url_for(unset, subscriber)  # the subscriber's own session reads the generated key
    assert url.startswith(f"{settings.base_url}/feed/") and subscriber.public_id in url
    session.expunge(subscriber)
    with pytest.raises(ValueError):
        feed_url_for(unset, subscriber)


@given(st.text(max_size=120))
def test_any_text_as_a_short_token_is_an_invalid_link_never_a_crash(text: str) -> None:
    signer = LinkSigner(SECRET)
    for purpose in (Purpose.FEEDBACK, Purpose.FEED):
        try:
            claims = signer.read_short(text, purpose)
        except InvalidToken:
            continue
        assert re.fullmatch(r"[\w-]+", claims.public_id or "")  # only a real signature gets here


HOSTILE_IDS = [
    "2611.00001v2", " 2611.00001", "2611.00001\x00", "%00", "..%2F..%2Fetc%2Fpasswd", "2611." + "9" * 60,
    "2611.00001'; DROP TABLE paper_feedback; --", "２６１１.００００１", "\u202e10000.1162", "hep-th/9901001/more",
]


@pytest.mark.parametrize("arxiv_id", HOSTILE_IDS)
def test_a_feedback_link_naming_no_paper_of_theirs_is_a_404_and_records_nothing(
    settings: Settings, session: Session, arxiv_id: str
) -> None:
    subscriber = seed(session)
    visitor = Visitor(settings)
    path = feedback_path(settings, subscriber, "more", arxiv_id)
    good = feedback_path(settings, subscriber, "more", "2611.00001")

    assert visitor.get(path).status_code == 404
    assert visitor.submit(good, path, {}).status_code == 404
    assert verdicts(session) == {}


def test_a_feed_url_from_before_an_unsubscribe_stays_void_after_a_resubscription(
    settings: Settings, session: Session
) -> None:
    subscriber = seed(session)
    visitor = Visitor(settings)
    old_path = feed_path(settings, subscriber)
    unsubscribe = f"/unsubscribe/{LinkSigner(SECRET).make(Purpose.UNSUBSCRIBE, subscriber.public_id)}"
    assert visitor.submit(unsubscribe, unsubscribe, {}).status_code == 200
    session.refresh(subscriber)
    assert subscriber.generation > 0  # leaving raised it

    # Back again, as a confirmed re-subscription leaves them (the generation it raised stays).
    subscriber.status = SubscriberStatus.ACTIVE
    session.add(subscriber)
    session.commit()

    assert visitor.get(old_path).status_code == 400
    new_path = feed_path(settings, subscriber)
    assert new_path != old_path
    assert visitor.get(new_path).status_code == 200
