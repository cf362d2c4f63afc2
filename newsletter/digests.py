"""Compose: one subscriber's digest for a day from the stored selections and translations, with its links.

The one place that reads a digest out of the database: delivery, the web archive and the preview all come
here, and hand the Digest to the renderer, which never touches the database.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlmodel import Session, col

from newsletter.config import Settings
from newsletter.models import Paper, Selection, Subscriber, SubscriberKeyword, Translation
from newsletter.render import Digest, DigestRenderer, KeywordSection, paper_view
from newsletter.subscribers import SubscriptionError, find_subscriber, normalize_email
from newsletter.tokens import LinkSigner, SubscriberLinks, signing_key, subscriber_links


def compose_digest(
    session: Session, settings: Settings, signer: LinkSigner, subscriber: Subscriber, day: dt.date
) -> Digest:
    """The subscriber's digest for `day`: their signed links, and the papers selected with translations."""
    assert subscriber.id is not None
    links = subscriber_links(signer, settings.base_url, subscriber.public_id, day.isoformat())
    return load_digest(session, subscriber, day, links)


def load_digest(session: Session, subscriber: Subscriber, day: dt.date, links: SubscriberLinks) -> Digest:
    """The subscriber's digest for `day` from the stored selections and translations."""
    assert subscriber.id is not None
    keywords = session.scalars(
        select(col(SubscriberKeyword.expression))
        .where(col(SubscriberKeyword.subscriber_id) == subscriber.id)
        .order_by(col(SubscriberKeyword.position))
    ).all()
    sections = [KeywordSection(keyword=k) for k in keywords]
    rows = session.execute(
        select(Selection, Paper, Translation)
        .join(Paper, col(Paper.arxiv_id) == col(Selection.arxiv_id))
        .outerjoin(
            Translation,
            (col(Translation.arxiv_id) == col(Selection.arxiv_id)) & (col(Translation.language) == subscriber.language),
        )
        .where(col(Selection.day) == day, col(Selection.subscriber_id) == subscriber.id)
        .order_by(col(Selection.keyword_position), col(Paper.arxiv_id))
    )
    translation_wanted = not subscriber.language.upper().startswith("EN")
    for selection, paper, translation in rows:
        if selection.keyword_position >= len(sections):
            continue  # the subscriber removed that keyword since the match
        view = paper_view(paper, translation, selection.terms, translation_wanted)
        sections[selection.keyword_position].papers.append(view)
    return Digest(
        day=day,
        email=subscriber.email,
        language=subscriber.language,
        timezone=subscriber.timezone,
        sections=sections,
        links=links,
        translation_missing=any(p.translation_missing for s in sections for p in s.papers),
        generated_at=dt.datetime.now(dt.UTC),
    )


def latest_selection_day(session: Session, subscriber_id: int) -> dt.date | None:
    """The newest day with papers selected for the subscriber."""
    return session.scalar(select(func.max(col(Selection.day))).where(col(Selection.subscriber_id) == subscriber_id))


def render_preview(session: Session, settings: Settings, email: str, day: dt.date | None) -> str:
    """The HTML of a subscriber's digest, as it would be mailed."""
    subscriber = find_subscriber(session, normalize_email(email))
    if subscriber is None or subscriber.id is None:
        raise SubscriptionError(f"no subscriber {email}")
    day = day or latest_selection_day(session, subscriber.id)
    if day is None:
        raise SubscriptionError(f"{email} has no digest yet: no papers were selected for them")
    signer = LinkSigner(signing_key(session, settings))
    return DigestRenderer().render(compose_digest(session, settings, signer, subscriber, day)).html
