"""Subscribers: add, confirm, change and remove them, validating every input first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, func, select
from sqlmodel import Session

from newsletter.keywords import ProfileError, validate_profile
from newsletter.models import Subscriber, SubscriberKeyword, SubscriberStatus, utcnow

# DeepL target languages, Simplified Chinese first (the default).
LANGUAGES = {
    "ZH-HANS": "简体中文 (Simplified Chinese)", "ZH-HANT": "繁體中文 (Traditional Chinese)",
    "JA": "日本語 (Japanese)", "KO": "한국어 (Korean)", "DE": "Deutsch (German)", "FR": "Français (French)",
    "ES": "Español (Spanish)", "IT": "Italiano (Italian)", "PT-BR": "Português (Brazil)",
    "PT-PT": "Português (Portugal)", "RU": "Русский (Russian)", "UK": "Українська (Ukrainian)",
    "PL": "Polski (Polish)", "NL": "Nederlands (Dutch)", "SV": "Svenska (Swedish)", "DA": "Dansk (Danish)",
    "FI": "Suomi (Finnish)", "NB": "Norsk bokmål (Norwegian)", "CS": "Čeština (Czech)",
    "SK": "Slovenčina (Slovak)", "SL": "Slovenščina (Slovenian)", "HU": "Magyar (Hungarian)",
    "RO": "Română (Romanian)", "BG": "Български (Bulgarian)", "EL": "Ελληνικά (Greek)",
    "TR": "Türkçe (Turkish)", "ID": "Bahasa Indonesia", "LT": "Lietuvių (Lithuanian)",
    "LV": "Latviešu (Latvian)", "ET": "Eesti (Estonian)", "AR": "العربية (Arabic)",
    "HE": "עברית (Hebrew)", "TH": "ไทย (Thai)", "VI": "Tiếng Việt (Vietnamese)",
    "EN-US": "English only (no translation)",
}


class SubscriptionError(ValueError):
    """An input that cannot be stored; the message says what to fix."""


@dataclass(frozen=True)
class Preferences:
    keywords: list[str]
    language: str
    timezone: str


def normalize_email(raw: str) -> str:
    """The address as we store it: validated, domain lower-cased; no DNS lookups."""
    if any(ch in raw for ch in "\r\n"):
        raise SubscriptionError("An email address cannot contain line breaks.")
    try:
        info = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise SubscriptionError(f"That email address is not valid: {exc}") from exc
    return info.normalized.lower() if info.local_part.isascii() else info.normalized


def check_preferences(keywords: Sequence[str], language: str, timezone: str) -> Preferences:
    """Validated preferences, or SubscriptionError naming each problem."""
    try:
        cleaned = validate_profile(list(keywords))
    except ProfileError as exc:
        raise SubscriptionError(str(exc)) from exc
    if not cleaned:
        raise SubscriptionError("Give at least one keyword.")
    language = language.strip().upper()
    if language not in LANGUAGES:
        raise SubscriptionError(f"{language!r} is not a supported language.")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SubscriptionError(f"{timezone!r} is not a known time zone.") from exc
    return Preferences(keywords=cleaned, language=language, timezone=timezone)


def find_subscriber(session: Session, email: str) -> Subscriber | None:
    """The subscriber with that address, if any."""
    return session.scalars(select(Subscriber).where(func.lower(Subscriber.email) == email.lower())).first()


def replace_keywords(session: Session, subscriber: Subscriber, keywords: Sequence[str]) -> None:
    """Store the subscriber's keywords in order, replacing the old ones."""
    session.execute(delete(SubscriberKeyword).where(SubscriberKeyword.subscriber_id == subscriber.id))
    session.add_all(
        SubscriberKeyword(subscriber_id=subscriber.id, position=position, expression=keyword)
        for position, keyword in enumerate(keywords)
    )


def subscribe(
    session: Session,
    email: str,
    keywords: Sequence[str],
    language: str = "ZH-HANS",
    timezone: str = "Asia/Shanghai",
    confirmed: bool = False,
) -> Subscriber:
    """Add a subscriber, or update an existing one's preferences (caller commits)."""
    address = normalize_email(email)
    preferences = check_preferences(keywords, language, timezone)
    subscriber = find_subscriber(session, address)
    if subscriber is None:
        subscriber = Subscriber(email=address)
        session.add(subscriber)
    elif subscriber.status in (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED) and not confirmed:
        # Coming back after leaving needs a fresh confirmation.
        subscriber.status = SubscriberStatus.PENDING
    subscriber.language = preferences.language
    subscriber.timezone = preferences.timezone
    if confirmed:
        confirm(subscriber)
    session.flush()
    replace_keywords(session, subscriber, preferences.keywords)
    session.flush()
    return subscriber


def confirm(subscriber: Subscriber) -> None:
    """Mark the subscription confirmed and active."""
    subscriber.status = SubscriberStatus.ACTIVE
    subscriber.confirmed_at = subscriber.confirmed_at or utcnow()
    subscriber.unsubscribed_at = None
    subscriber.consecutive_hard_failures = 0


def unsubscribe(subscriber: Subscriber) -> None:
    """Stop all mail to this subscriber (their data stays until they delete it)."""
    subscriber.status = SubscriberStatus.UNSUBSCRIBED
    subscriber.unsubscribed_at = utcnow()


def delete_subscriber(session: Session, subscriber: Subscriber) -> None:
    """Remove the subscriber with their keywords, selections and sent papers; deliveries keep an anonymous row."""
    # The foreign keys cascade (and set Delivery.subscriber_id to NULL) in the database itself.
    session.execute(delete(Subscriber).where(Subscriber.id == subscriber.id))
    session.expunge(subscriber)
