"""What the web routes do, as plain functions over a session."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import or_, select, text, update
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.delivery import MailBackend
from newsletter.keywords import MAX_KEYWORDS, KeywordSyntaxError, parse_keyword
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Subscriber,
    SubscriberKeyword,
    SubscriberStatus,
    utcnow,
)
from newsletter.render import DigestRenderer, load_digest
from newsletter.subscribers import (
    LANGUAGES,
    Preferences,
    SubscriptionError,
    confirm,
    delete_subscriber,
    find_subscriber,
    normalize_email,
    replace_keywords,
    subscribe,
    unsubscribe,
)
from newsletter.tokens import InvalidToken, LinkSigner, Purpose, subscriber_links
from newsletter.web.mails import already_subscribed_mail, confirmation_mail

CONFIRMATION_INTERVAL = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class FieldError:
    """A problem with one form field: a message key of the page strings and its values."""

    field: str
    key: str
    values: dict[str, object] = field(default_factory=dict)


class FormInvalid(Exception):
    """The form cannot be stored; `errors` say what to fix, field by field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.key}" for e in errors))
        self.errors = errors


class MailNotSent(Exception):
    """The confirmation mail could not be handed to the mail server."""


class NoDigest(Exception):
    """No digest was delivered to this subscriber on that day."""


def check_database(session: Session) -> None:
    """Raise if the database does not answer."""
    session.execute(text("SELECT 1"))


# ---------------------------------------------------------------------------------------
# Checking what people type
# ---------------------------------------------------------------------------------------


def keyword_errors(lines: Sequence[str]) -> list[FieldError]:
    """Every line that does not parse, with the line and character where the problem is."""
    errors: list[FieldError] = []
    for number, line in enumerate(lines, start=1):
        keyword = line.strip()
        if not keyword:
            continue
        try:
            parse_keyword(keyword)
        except KeywordSyntaxError as error:
            column = len(line) - len(line.lstrip()) + min(error.position, len(keyword)) + 1
            errors.append(FieldError("keywords", "line_error", {"line": number, "column": column,
                                                                 "message": error.message}))
    return errors


def distinct_keywords(lines: Sequence[str]) -> list[str]:
    """The keywords as stored: stripped, blank lines and repeats (in any spelling) dropped."""
    kept: list[str] = []
    seen: set[object] = set()
    for line in lines:
        keyword = line.strip()
        if not keyword:
            continue
        try:
            identity: object = parse_keyword(keyword)
        except KeywordSyntaxError:
            identity = keyword
        if identity not in seen and keyword.casefold() not in seen:
            seen.update((identity, keyword.casefold()))
            kept.append(keyword)
    return kept


def check_preferences_form(lines: Sequence[str], language: str, timezone: str) -> Preferences:
    """Validated preferences, or FormInvalid naming every problem."""
    errors = keyword_errors(lines)
    keywords = distinct_keywords(lines)
    if not errors and not keywords:
        errors.append(FieldError("keywords", "keywords_none"))
    if len(keywords) > MAX_KEYWORDS:
        errors.append(FieldError("keywords", "keywords_too_many", {"count": len(keywords), "limit": MAX_KEYWORDS}))
    if language not in LANGUAGES:
        errors.append(FieldError("language", "language_unknown"))
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        errors.append(FieldError("timezone", "timezone_unknown"))
    if errors:
        raise FormInvalid(errors)
    return Preferences(keywords=keywords, language=language, timezone=timezone)


def check_email_form(raw: str) -> str:
    """The normalized address, or FormInvalid."""
    try:
        return normalize_email(raw)
    except SubscriptionError as exc:
        raise FormInvalid([FieldError("email", "email_invalid", {"reason": str(exc)})]) from exc


# ---------------------------------------------------------------------------------------
# Subscribing and confirming
# ---------------------------------------------------------------------------------------


def _claim_confirmation_slot(session: Session, subscriber_id: int) -> dt.datetime | None:
    """Atomically take the right to mail this address now; None when one went out in the last 10 minutes."""
    now = utcnow()
    last_sent = Subscriber.confirmation_sent_at
    claimed = session.execute(
        update(Subscriber)
        .where(
            Subscriber.id == subscriber_id,
            or_(last_sent.is_(None), last_sent < now - CONFIRMATION_INTERVAL),
        )
        .values(confirmation_sent_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return now if claimed.rowcount == 1 else None


def request_subscription(
    session: Session,
    settings: Settings,
    signer: LinkSigner,
    mail: MailBackend,
    email: str,
    keywords: Sequence[str],
    language: str,
    timezone: str,
) -> str:
    """Store a pending subscription and mail its confirmation link (at most one mail per 10 minutes).

    An address that is already subscribed keeps its preferences and is mailed its manage link
    instead, so the page's answer never tells whether an address is known.
    """
    address = check_email_form(email)
    preferences = check_preferences_form(keywords, language, timezone)
    existing = find_subscriber(session, address)
    active = existing is not None and existing.status in (SubscriberStatus.ACTIVE, SubscriberStatus.PAUSED)
    if active:
        subscriber = existing
    else:
        subscriber = subscribe(session, address, preferences.keywords, preferences.language, preferences.timezone)
        session.commit()
    assert subscriber is not None and subscriber.id is not None
    if _claim_confirmation_slot(session, subscriber.id) is None:
        return address
    if active:
        message = already_subscribed_mail(
            settings, subscriber.email, f"{settings.base_url}/manage/{signer.make(Purpose.MANAGE, subscriber.id)}"
        )
    else:
        link = f"{settings.base_url}/confirm/{signer.make(Purpose.CONFIRM, subscriber.id)}"
        message = confirmation_mail(settings, subscriber.email, link)
    try:
        mail.send(message)
    except Exception as exc:  # noqa: BLE001 - any transport failure: let them try again at once
        session.execute(
            update(Subscriber).where(Subscriber.id == subscriber.id).values(confirmation_sent_at=None)
        )
        session.commit()
        raise MailNotSent(str(exc)) from exc
    return address


def subscriber_for(
    session: Session, signer: LinkSigner, token: str, purpose: Purpose
) -> tuple[Subscriber, list[str]]:
    """The subscriber a link names, with their keywords."""
    claims = signer.read(token, purpose)
    subscriber = session.get(Subscriber, claims.subscriber_id)
    # A deleted subscriber's number can be given to someone new (SQLite reuses the highest
    # rowid): a link signed before this row was created is not theirs.
    if subscriber is None or claims.predates(subscriber.created_at):
        raise InvalidToken("This link belongs to a subscription that no longer exists.", "gone")
    keywords = session.scalars(
        select(SubscriberKeyword.expression)
        .where(SubscriberKeyword.subscriber_id == subscriber.id)
        .order_by(SubscriberKeyword.position)
    ).all()
    return subscriber, list(keywords)


def confirmable(subscriber: Subscriber) -> bool:
    """Whether a confirmation link may still act: not after the subscriber left."""
    return subscriber.status not in (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED)


def confirm_subscription(session: Session, signer: LinkSigner, token: str) -> Subscriber:
    """Activate the subscription a confirmation link names (a second click changes nothing)."""
    subscriber, _ = subscriber_for(session, signer, token, Purpose.CONFIRM)
    if subscriber.status == SubscriberStatus.PENDING:
        confirm(subscriber)
        session.commit()
    return subscriber


# ---------------------------------------------------------------------------------------
# Managing, leaving, deleting
# ---------------------------------------------------------------------------------------


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
    preferences = check_preferences_form(keywords, language, timezone)
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
    if subscriber.status != SubscriberStatus.UNSUBSCRIBED:
        unsubscribe(subscriber)
        session.commit()
    return subscriber


def resubscribe_by_token(session: Session, signer: LinkSigner, token: str) -> Subscriber:
    """Undo an unsubscribe from the same link, for someone who had confirmed before."""
    subscriber, _ = subscriber_for(session, signer, token, Purpose.UNSUBSCRIBE)
    if subscriber.status == SubscriberStatus.UNSUBSCRIBED and subscriber.confirmed_at is not None:
        confirm(subscriber)
        session.commit()
    return subscriber


def delete_data_by_token(session: Session, signer: LinkSigner, token: str) -> None:
    """Remove the subscriber a manage link names and everything tied to them."""
    subscriber, _ = subscriber_for(session, signer, token, Purpose.MANAGE)
    delete_subscriber(session, subscriber)
    session.commit()


def archived_digest(session: Session, settings: Settings, signer: LinkSigner, day: str, token: str) -> str:
    """The digest HTML a subscriber received on `day`."""
    claims = signer.read(token, Purpose.ARCHIVE)
    if claims.extra != day:
        raise InvalidToken("This link is not valid for this day.", "other_day")
    subscriber = session.get(Subscriber, claims.subscriber_id)
    if subscriber is None or claims.predates(subscriber.created_at):
        raise InvalidToken("This link belongs to a subscription that no longer exists.", "gone")
    try:
        when = dt.date.fromisoformat(day)
    except ValueError as exc:
        raise NoDigest(day) from exc
    delivered = session.scalar(
        select(Delivery.id).where(
            Delivery.subscriber_id == subscriber.id, Delivery.day == when, Delivery.status == DeliveryStatus.SENT
        )
    )
    if delivered is None:
        raise NoDigest(day)
    links = subscriber_links(signer, settings.base_url, claims.subscriber_id, day)
    digest = load_digest(session, subscriber, when, links)
    return DigestRenderer().render(digest, size_limit=10**9).html

