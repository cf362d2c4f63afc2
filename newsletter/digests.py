"""Compose: one subscriber's digest for a day from the stored selections and translations, with its links.

The one place that reads a digest out of the database: delivery, the web archive and the preview all come
here, and hand the Digest to the renderer, which never touches the database.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from sqlalchemy import and_, func, or_, select
from sqlmodel import Session, col

from newsletter.config import Settings
from newsletter.digest_parts import EmptyDayNote, render_empty_day_note
from newsletter.models import (
    Announcement,
    DigestFrequency,
    Paper,
    Selection,
    SentPaper,
    Subscriber,
    SubscriberKeyword,
    Translation,
    table_of,
)
from newsletter.periods import carried_since
from newsletter.ranking import section_order
from newsletter.render import Digest, DigestRenderer, KeywordSection, RenderedDigest, paper_view
from newsletter.subscribers import SubscriptionError, find_subscriber, normalize_email
from newsletter.tokens import LinkSigner, SubscriberLinks, signing_key, subscriber_links
from newsletter.updates import pending_updates_of


def compose_digest(
    session: Session,
    settings: Settings,
    signer: LinkSigner,
    subscriber: Subscriber,
    day: dt.date,
    with_updates: bool = True,
) -> Digest:
    """The subscriber's digest for `day`: their signed links, the papers selected with translations, and
    (unless `with_updates` is off, as for the archive of a digest sent before) the updates not yet shown."""
    assert subscriber.id is not None
    return compose_digests(session, settings, signer, [subscriber], day, with_updates)[subscriber.id]


def compose_digests(
    session: Session,
    settings: Settings,
    signer: LinkSigner,
    subscribers: list[Subscriber],
    day: dt.date,
    with_updates: bool = True,
) -> dict[int, Digest]:
    """compose_digest for several subscribers at once, in three queries whatever their number (a delivery batch)."""
    links = {
        subscriber.id: subscriber_links(
            signer, settings.base_url, subscriber.public_id, day.isoformat(), subscriber.generation
        )
        for subscriber in subscribers
        if subscriber.id is not None
    }
    digests = load_digests(session, subscribers, day, links)
    if with_updates:
        wanted = {subscriber.id: digests[subscriber.id].arxiv_ids for subscriber in subscribers
                  if subscriber.updates and subscriber.id is not None}  # fmt: skip
        for subscriber_id, updates in pending_updates_of(session, wanted).items():
            digests[subscriber_id].updates = updates
    return digests


def render_mail(session: Session, renderer: DigestRenderer, subscriber: Subscriber, digest: Digest) -> RenderedDigest:
    """The digest as mailed; for a subscriber who asked for it, the empty-day note when it holds no paper."""
    if digest.paper_count == 0 and subscriber.empty_day_note:
        return render_empty_day_note(empty_day_note(session, subscriber, digest))
    return renderer.render(digest)


def empty_day_note(session: Session, subscriber: Subscriber, digest: Digest) -> EmptyDayNote:
    """The note for a digest without papers: how many papers arXiv announced that day (or week)."""
    weekly = subscriber.frequency == DigestFrequency.WEEKLY
    since = digest.day - dt.timedelta(days=6 if weekly else 0)
    announced = session.scalar(
        select(func.count())
        .select_from(Announcement)
        .where(col(Announcement.day) >= since, col(Announcement.day) <= digest.day)
    )
    return EmptyDayNote(
        day=digest.day,
        email=digest.email,
        language=digest.language,
        keywords=[section.keyword for section in digest.sections],
        announced=int(announced or 0),
        links=digest.links,
        weekly=weekly,
        updates=digest.updates,
    )


class Translated(NamedTuple):
    """A paper's stored translation, as a card shows it."""

    title: str
    abstract: str


def load_digest(session: Session, subscriber: Subscriber, day: dt.date, links: SubscriberLinks) -> Digest:
    """The subscriber's digest sent on `day`, from the stored selections and translations.

    It holds the papers selected up to `day` that no other digest carried: the day's own for a daily
    subscriber, everything matched since the last digest for a weekly one (or one who switched), each once.
    """
    assert subscriber.id is not None
    return load_digests(session, [subscriber], day, {subscriber.id: links})[subscriber.id]


def load_digests(
    session: Session, subscribers: list[Subscriber], day: dt.date, links: dict[int, SubscriberLinks]
) -> dict[int, Digest]:
    """load_digest for each of `subscribers` (by id), in two queries."""
    by_id = {subscriber.id: subscriber for subscriber in subscribers if subscriber.id is not None}
    sections: dict[int, list[KeywordSection]] = {subscriber_id: [] for subscriber_id in by_id}
    for subscriber_id, expression in session.execute(
        select(col(SubscriberKeyword.subscriber_id), col(SubscriberKeyword.expression))
        .where(col(SubscriberKeyword.subscriber_id).in_(list(by_id)))
        .order_by(col(SubscriberKeyword.subscriber_id), col(SubscriberKeyword.position))
    ):
        sections[subscriber_id].append(KeywordSection(keyword=expression))
    paper, translation = table_of(Paper).c, table_of(Translation).c
    # Columns, not entities: a batch reads thousands of rows, and the cards need only these values.
    rows = session.execute(
        select(
            col(Selection.subscriber_id), col(Selection.keyword_position), col(Selection.terms), paper.arxiv_id,
            paper.version, paper.title, paper.abstract, paper.authors, paper.categories, paper.primary_category,
            paper.comment, paper.journal_ref, paper.doi, translation.title.label("translated_title"),
            translation.abstract.label("translated_abstract"),
        )
        .select_from(Selection)
        .join(Paper, col(Paper.arxiv_id) == col(Selection.arxiv_id))
        .join(Subscriber, col(Subscriber.id) == col(Selection.subscriber_id))
        .outerjoin(
            Translation,
            (col(Translation.arxiv_id) == col(Selection.arxiv_id))
            & (col(Translation.language) == col(Subscriber.language)),
        )
        .outerjoin(
            SentPaper,
            (col(SentPaper.subscriber_id) == col(Selection.subscriber_id))
            & (col(SentPaper.arxiv_id) == col(Selection.arxiv_id)),
        )
        .where(
            col(Selection.subscriber_id).in_(list(by_id)),
            and_(col(Selection.day) <= day, col(Selection.day) >= carried_since(day)),
            # Not yet mailed, or mailed with this very digest (the archive shows it as it was sent).
            or_(col(SentPaper.arxiv_id).is_(None), col(SentPaper.day) == day),
        )
        .order_by(col(Selection.subscriber_id), col(Selection.keyword_position), *section_order())
    )
    shown: dict[int, set[str]] = {subscriber_id: set() for subscriber_id in by_id}
    translation_wanted = {
        subscriber_id: not subscriber.language.upper().startswith("EN") for subscriber_id, subscriber in by_id.items()
    }
    for row in rows:
        keyword_sections, listed = sections[row.subscriber_id], shown[row.subscriber_id]
        if row.keyword_position >= len(keyword_sections) or row.arxiv_id in listed:
            continue  # the subscriber removed that keyword since the match, or the paper is listed already
        listed.add(row.arxiv_id)
        translated = None if row.translated_title is None else Translated(row.translated_title, row.translated_abstract)
        view = paper_view(row, translated, row.terms, translation_wanted[row.subscriber_id])
        keyword_sections[row.keyword_position].papers.append(view)
    generated_at = dt.datetime.now(dt.UTC)
    return {
        subscriber_id: Digest(
            day=day,
            email=subscriber.email,
            language=subscriber.language,
            timezone=subscriber.timezone,
            sections=sections[subscriber_id],
            links=links[subscriber_id],
            translation_missing=any(p.translation_missing for s in sections[subscriber_id] for p in s.papers),
            generated_at=generated_at,
        )
        for subscriber_id, subscriber in by_id.items()
    }


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
