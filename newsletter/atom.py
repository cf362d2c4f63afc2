"""The private feed: a subscriber's digests as Atom, one entry per paper per keyword, at a signed URL.

The URL carries the subscriber's public ID and a signature without expiry (tokens.Purpose.FEED): it
stays valid until they unsubscribe (it is refused while they are unsubscribed) or delete their data.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import urlsplit

from feedgen.feed import FeedGenerator
from markupsafe import escape
from sqlalchemy import select
from sqlalchemy.orm import object_session
from sqlmodel import Session, col

from newsletter.config import Settings
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Paper,
    Selection,
    Subscriber,
    SubscriberKeyword,
    SubscriberStatus,
    Translation,
)
from newsletter.ranking import section_order
from newsletter.render import readable
from newsletter.subscribers import subscriber_by_claims
from newsletter.tokens import LinkSigner, Purpose, signing_key

# A feed reader polls often: the newest digests are enough (older ones stay in the archive links).
FEED_DAYS = 60
FEED_ENTRIES = 500


class FeedRefused(Exception):
    """The feed of a subscriber who unsubscribed: refused (403) until they subscribe again."""


def feed_url_for(settings: Settings, subscriber: Subscriber, signer: LinkSigner | None = None) -> str:
    """The subscriber's private Atom feed URL (the signing key comes from the subscriber's session if unset)."""
    if signer is None:
        session = object_session(subscriber)
        if settings.secret_key:
            signer = LinkSigner(settings.secret_key)
        elif isinstance(session, Session):
            signer = LinkSigner(signing_key(session, settings))
        else:
            raise ValueError("feed_url_for needs NEWSLETTER_SECRET_KEY, a signer, or a subscriber loaded in a session")
    return f"{settings.base_url}/feed/{signer.make_short(Purpose.FEED, subscriber.public_id, subscriber.generation)}"


@dataclass(frozen=True)
class FeedEntry:
    day: dt.date
    sent_at: dt.datetime
    position: int  # the keyword's place in the subscriber's list
    keyword: str
    paper: Paper
    translation: Translation | None


def feed_entries(session: Session, subscriber: Subscriber, today: dt.date | None = None) -> list[FeedEntry]:
    """Papers of the subscriber's sent digests of the last FEED_DAYS days, newest digest first, in digest order."""
    since = (today or dt.datetime.now(dt.UTC).date()) - dt.timedelta(days=FEED_DAYS)
    keywords = {
        position: expression
        for position, expression in session.execute(
            select(col(SubscriberKeyword.position), col(SubscriberKeyword.expression)).where(
                col(SubscriberKeyword.subscriber_id) == subscriber.id
            )
        )
    }
    rows = session.execute(
        select(Selection, Paper, Translation, col(Delivery.sent_at), col(Delivery.claimed_at))
        .join(Delivery, (col(Delivery.subscriber_id) == col(Selection.subscriber_id))
              & (col(Delivery.day) == col(Selection.day)))
        .join(Paper, col(Paper.arxiv_id) == col(Selection.arxiv_id))
        .outerjoin(Translation, (col(Translation.arxiv_id) == col(Selection.arxiv_id))
                   & (col(Translation.language) == subscriber.language))
        .where(col(Selection.subscriber_id) == subscriber.id, col(Delivery.status) == DeliveryStatus.SENT,
               col(Selection.day) >= since)
        .order_by(col(Selection.day).desc(), col(Selection.keyword_position), *section_order())
        .limit(FEED_ENTRIES)
    )
    return [
        FeedEntry(selection.day, sent_at or claimed_at, selection.keyword_position,
                  keywords.get(selection.keyword_position, f"#{selection.keyword_position + 1}"), paper, translation)
        for selection, paper, translation, sent_at, claimed_at in rows
    ]


def subscriber_feed(session: Session, settings: Settings, signer: LinkSigner, token: str) -> bytes:
    """The Atom document a feed URL names; InvalidToken for a bad or deleted one, FeedRefused after unsubscribing."""
    claims = signer.read_short(token, Purpose.FEED)
    subscriber = subscriber_by_claims(session, claims, any_generation=True)
    if subscriber.status == SubscriberStatus.UNSUBSCRIBED:
        raise FeedRefused(subscriber.public_id)
    # A URL from before an unsubscribe stays void after a re-subscription: the new one is on the manage page.
    subscriber_by_claims(session, claims)
    self_url = feed_url_for(settings, subscriber, signer)
    return render_feed(settings, subscriber, feed_entries(session, subscriber), self_url)


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def render_feed(settings: Settings, subscriber: Subscriber, entries: list[FeedEntry], self_url: str) -> bytes:
    """Valid Atom 1.0: stable tag: IDs, updated times, links to arXiv, text escaped by feedgen."""
    host = urlsplit(settings.base_url).hostname or "localhost"
    created = _aware(subscriber.created_at).date().isoformat()
    feed = FeedGenerator()
    feed.id(f"tag:{host},{created}:feed/{subscriber.public_id}")
    feed.title("arXiv digest")
    feed.subtitle("Papers from your arXiv digests, one entry per paper and keyword")
    feed.author({"name": "arXiv digest"})
    feed.link(href=self_url, rel="self", type="application/atom+xml")
    feed.link(href=settings.base_url, rel="alternate")
    feed.language("en")
    newest = max((_aware(entry.sent_at) for entry in entries), default=_aware(subscriber.created_at))
    feed.updated(newest)
    # feedgen writes entries in the reverse order they are added: add the oldest first.
    for entry in reversed(entries):
        _add_entry(feed, host, subscriber, entry)
    return bytes(feed.atom_str(pretty=False))


def _add_entry(feed: FeedGenerator, host: str, subscriber: Subscriber, entry: FeedEntry) -> None:
    paper = entry.paper
    item = feed.add_entry()
    day = entry.day.isoformat()
    item.id(f"tag:{host},{day}:{subscriber.public_id}/{entry.position}/{paper.arxiv_id}")
    item.title(readable(paper.title))
    # One link only: feedgen 1.0 drops rel and type of entry links, and Atom reads a bare link as alternate.
    # The PDF is linked in the content.
    item.link(href=f"https://arxiv.org/abs/{paper.arxiv_id}", rel="alternate")
    item.updated(_aware(entry.sent_at))
    item.published(_aware(entry.sent_at))
    item.category(term=entry.keyword, label=entry.keyword)
    for name in paper.authors[:20]:
        item.author({"name": readable(name) or "-"})
    item.content(_content_html(entry), type="html")


def _content_html(entry: FeedEntry) -> str:
    """The entry's body as HTML (feedgen escapes it once more into the XML)."""
    paper, translation = entry.paper, entry.translation
    heading = f"{escape(entry.keyword)}</b> · {entry.day.isoformat()} · arXiv:{escape(paper.arxiv_id)}"
    parts = [f"<p><b>{heading}</p>"]
    if translation is not None:
        parts.append(f"<p>{escape(readable(translation.title))}</p>")
    parts.append(f"<p>{escape(', '.join(readable(name) for name in paper.authors))}</p>")
    parts.append(f"<p>{escape(readable(paper.abstract))}</p>")
    if translation is not None:
        parts.append(f"<p>{escape(readable(translation.abstract))}</p>")
    pdf = escape(f"https://arxiv.org/pdf/{paper.arxiv_id}")
    parts.append(f'<p><a href="https://arxiv.org/abs/{escape(paper.arxiv_id)}">arXiv</a> · <a href="{pdf}">PDF</a></p>')
    return "".join(parts)
