"""What the web routes do, as plain functions over a session."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select, text
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.delivery import MailBackend, build_confirmation_message
from newsletter.models import Subscriber, SubscriberKeyword, SubscriberStatus, utcnow
from newsletter.render import DigestRenderer, load_digest
from newsletter.subscribers import (
    check_preferences,
    confirm,
    find_subscriber,
    normalize_email,
    replace_keywords,
    subscribe,
    unsubscribe,
)
from newsletter.tokens import InvalidToken, LinkSigner, Purpose, subscriber_links

CONFIRMATION_INTERVAL = dt.timedelta(minutes=10)


def check_database(session: Session) -> None:
    """Raise if the database does not answer."""
    session.execute(text("SELECT 1"))


def request_subscription(
    session: Session,
    settings: Settings,
    signer: LinkSigner,
    mail: MailBackend,
    email: str,
    keywords: Sequence[str],
    language: str,
    timezone: str,
) -> None:
    """Store a pending subscription and mail its confirmation link (at most one per 10 minutes)."""
    address = normalize_email(email)
    existing = find_subscriber(session, address)
    if existing is not None and existing.status in (SubscriberStatus.ACTIVE, SubscriberStatus.PAUSED):
        check_preferences(keywords, language, timezone)
        return  # a known subscriber changes preferences through their manage link, not here
    subscriber = subscribe(session, address, keywords, language, timezone)
    now = utcnow()
    if subscriber.confirmation_sent_at and now - subscriber.confirmation_sent_at < CONFIRMATION_INTERVAL:
        session.commit()
        return
    subscriber.confirmation_sent_at = now
    session.commit()
    assert subscriber.id is not None
    link = f"{settings.base_url}/confirm/{signer.make(Purpose.CONFIRM, subscriber.id)}"
    mail.send(build_confirmation_message(settings, subscriber.email, link))


def subscriber_for(
    session: Session, signer: LinkSigner, token: str, purpose: Purpose
) -> tuple[Subscriber, list[str]]:
    """The subscriber a link names, with their keywords."""
    claims = signer.read(token, purpose)
    subscriber = session.get(Subscriber, claims.subscriber_id)
    if subscriber is None:
        raise InvalidToken("This link belongs to a subscription that no longer exists.")
    keywords = session.scalars(
        select(SubscriberKeyword.expression)
        .where(SubscriberKeyword.subscriber_id == subscriber.id)
        .order_by(SubscriberKeyword.position)
    ).all()
    return subscriber, list(keywords)


def confirm_subscription(session: Session, signer: LinkSigner, token: str) -> Subscriber:
    """Activate the subscription a confirmation link names."""
    subscriber, _ = subscriber_for(session, signer, token, Purpose.CONFIRM)
    confirm(subscriber)
    session.commit()
    return subscriber


def update_preferences(
    session: Session,
    signer: LinkSigner,
    token: str,
    keywords: Sequence[str],
    language: str,
    timezone: str,
    paused: bool,
) -> Subscriber:
    """Change keywords, language, time zone or pause, through a manage link."""
    subscriber, _ = subscriber_for(session, signer, token, Purpose.MANAGE)
    preferences = check_preferences(keywords, language, timezone)
    subscriber.language = preferences.language
    subscriber.timezone = preferences.timezone
    if subscriber.status in (SubscriberStatus.ACTIVE, SubscriberStatus.PAUSED):
        subscriber.status = SubscriberStatus.PAUSED if paused else SubscriberStatus.ACTIVE
    replace_keywords(session, subscriber, preferences.keywords)
    session.commit()
    return subscriber


def unsubscribe_by_token(session: Session, signer: LinkSigner, token: str) -> Subscriber:
    """Unsubscribe the subscriber an unsubscribe link names."""
    subscriber, _ = subscriber_for(session, signer, token, Purpose.UNSUBSCRIBE)
    unsubscribe(subscriber)
    session.commit()
    return subscriber


def archived_digest(session: Session, settings: Settings, signer: LinkSigner, day: str, token: str) -> str:
    """The digest HTML a subscriber received on `day`."""
    claims = signer.read(token, Purpose.ARCHIVE)
    if claims.extra != day:
        raise InvalidToken("This link is not valid for this day.")
    subscriber = session.get(Subscriber, claims.subscriber_id)
    if subscriber is None:
        raise InvalidToken("This link belongs to a subscription that no longer exists.")
    links = subscriber_links(signer, settings.base_url, claims.subscriber_id, day)
    digest = load_digest(session, subscriber, dt.date.fromisoformat(day), links)
    return DigestRenderer().render(digest, size_limit=10**9).html
