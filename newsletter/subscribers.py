"""The subscriber service: one validator, and subscribe, confirm, change and leave, by address or by link.

Problems come back as codes with parameters; the CLI (English, `describe`) and the web pages
(`newsletter.web.i18n`, the reader's language) turn them into words.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import CursorResult, delete, func, or_, select, update
from sqlmodel import Session, col

from newsletter.account_mail import already_subscribed_mail, confirmation_mail
from newsletter.config import Settings, get_settings
from newsletter.keywords import MAX_KEYWORDS, KeywordSyntaxError, parse_keyword
from newsletter.models import Subscriber, SubscriberKeyword, SubscriberStatus, utcnow
from newsletter.tokens import InvalidToken, LinkSigner, Purpose, TokenClaims

if TYPE_CHECKING:  # the CLI's `subscribe` should not load the mail transports
    from newsletter.delivery import MailBackend

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
CONFIRMATION_INTERVAL = dt.timedelta(minutes=10)
STAYING = (SubscriberStatus.ACTIVE, SubscriberStatus.PAUSED)
LEFT = (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED)


# ---------------------------------------------------------------------------------------
# Checking what people type
# ---------------------------------------------------------------------------------------


class InputField(StrEnum):
    EMAIL = "email"
    KEYWORDS = "keywords"
    LANGUAGE = "language"
    TIMEZONE = "timezone"


class ProblemCode(StrEnum):
    """What is wrong with an input; each code's parameters are listed beside it."""

    EMAIL_LINE_BREAK = "email_line_break"  # -
    EMAIL_NO_AT_SIGN = "email_no_at_sign"  # detail (the validator's English words, as every email code)
    EMAIL_LOCAL_PART = "email_local_part"  # detail: something before the @-sign is wrong
    EMAIL_DOMAIN = "email_domain"  # detail: something after the @-sign is wrong
    EMAIL_TRAILING_TEXT = "email_trailing_text"  # detail: more than one address, or a display name
    EMAIL_INVALID = "email_invalid"  # detail
    KEYWORD_SYNTAX = "keyword_syntax"  # line, column (1-based), message (English), syntax (the KeywordSyntaxError)
    KEYWORDS_NONE = "keywords_none"  # -
    KEYWORDS_TOO_MANY = "keywords_too_many"  # count, limit
    LANGUAGE_UNKNOWN = "language_unknown"  # language
    TIMEZONE_UNKNOWN = "timezone_unknown"  # timezone


@dataclass(frozen=True)
class Problem:
    """One thing to fix in one input field."""

    field: InputField
    code: ProblemCode
    # dataclasses.field spelled out: the `field` attribute above shadows the bare name.
    params: Mapping[str, object] = dataclasses.field(default_factory=dict)


# The CLI's words (English) for each code.
DESCRIPTIONS = {
    ProblemCode.EMAIL_LINE_BREAK: "an email address cannot contain line breaks",
    ProblemCode.EMAIL_NO_AT_SIGN: "that email address is not valid: {detail}",
    ProblemCode.EMAIL_LOCAL_PART: "that email address is not valid: {detail}",
    ProblemCode.EMAIL_DOMAIN: "that email address is not valid: {detail}",
    ProblemCode.EMAIL_TRAILING_TEXT: "that email address is not valid: {detail}",
    ProblemCode.EMAIL_INVALID: "that email address is not valid: {detail}",
    ProblemCode.KEYWORD_SYNTAX: "keyword line {line}, position {column}: {message}",
    ProblemCode.KEYWORDS_NONE: "give at least one keyword",
    ProblemCode.KEYWORDS_TOO_MANY: "too many keywords: {count} given, at most {limit} allowed",
    ProblemCode.LANGUAGE_UNKNOWN: "{language!r} is not a supported language",
    ProblemCode.TIMEZONE_UNKNOWN: "{timezone!r} is not a known time zone",
}


def describe(problem: Problem) -> str:
    """The problem in English, for the command line and logs."""
    return DESCRIPTIONS[problem.code].format(**problem.params)


class SubscriptionError(ValueError):
    """A subscriber operation that cannot be done; the message says why."""


class InvalidInput(SubscriptionError):
    """Inputs that cannot be stored; `problems` say what to fix, field by field."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(describe(problem) for problem in problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Preferences:
    keywords: list[str]
    language: str
    timezone: str


@dataclass(frozen=True)
class SubscriptionRequest:
    email: str
    preferences: Preferences


# email_validator says what is wrong only in English words: these sort its messages into codes.
_EMAIL_MESSAGES = [
    (re.compile(r"must have an @-sign"), ProblemCode.EMAIL_NO_AT_SIGN),
    (re.compile(r"anything after the email address"), ProblemCode.EMAIL_TRAILING_TEXT),
    (re.compile(r"before the @-sign"), ProblemCode.EMAIL_LOCAL_PART),
    (re.compile(r"after the @-sign"), ProblemCode.EMAIL_DOMAIN),
]


def _email_problem(raw: str) -> tuple[str, list[Problem]]:
    if any(ch in raw for ch in "\r\n"):
        return "", [Problem(InputField.EMAIL, ProblemCode.EMAIL_LINE_BREAK)]
    try:
        info = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        detail = str(exc)
        code = next((code for pattern, code in _EMAIL_MESSAGES if pattern.search(detail)), ProblemCode.EMAIL_INVALID)
        return "", [Problem(InputField.EMAIL, code, {"detail": detail})]
    return (info.normalized.lower() if info.local_part.isascii() else info.normalized), []


def normalize_email(raw: str) -> str:
    """The address as we store it: validated, domain lower-cased; no DNS lookups. InvalidInput otherwise."""
    address, problems = _email_problem(raw)
    if problems:
        raise InvalidInput(problems)
    return address


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
        # Two spellings of one expression ("multi-agent", "Multi agent") would give two identical sections.
        if identity not in seen and keyword.casefold() not in seen:
            seen.update((identity, keyword.casefold()))
            kept.append(keyword)
    return kept


def keyword_problems(lines: Sequence[str]) -> list[Problem]:
    """Every line that does not parse, with the line and character (1-based) where the problem is."""
    problems: list[Problem] = []
    for number, line in enumerate(lines, start=1):
        keyword = line.strip()
        if not keyword:
            continue
        try:
            parse_keyword(keyword)
        except KeywordSyntaxError as error:
            column = len(line) - len(line.lstrip()) + min(error.position, len(keyword)) + 1
            params = {"line": number, "column": column, "message": error.message, "syntax": error}
            problems.append(Problem(InputField.KEYWORDS, ProblemCode.KEYWORD_SYNTAX, params))
    return problems


def _preference_problems(lines: Sequence[str], language: str, timezone: str) -> tuple[Preferences, list[Problem]]:
    problems = keyword_problems(lines)
    keywords = distinct_keywords(lines)
    if not problems and not keywords:
        problems.append(Problem(InputField.KEYWORDS, ProblemCode.KEYWORDS_NONE))
    if len(keywords) > MAX_KEYWORDS:
        params = {"count": len(keywords), "limit": MAX_KEYWORDS}
        problems.append(Problem(InputField.KEYWORDS, ProblemCode.KEYWORDS_TOO_MANY, params))
    language = language.strip().upper()
    if language not in LANGUAGES:
        problems.append(Problem(InputField.LANGUAGE, ProblemCode.LANGUAGE_UNKNOWN, {"language": language}))
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(Problem(InputField.TIMEZONE, ProblemCode.TIMEZONE_UNKNOWN, {"timezone": timezone}))
    return Preferences(keywords=keywords, language=language, timezone=timezone), problems


def validate_preferences(keywords: Sequence[str], language: str, timezone: str) -> Preferences:
    """Keywords, language and time zone checked together; InvalidInput names every problem."""
    preferences, problems = _preference_problems(keywords, language, timezone)
    if problems:
        raise InvalidInput(problems)
    return preferences


def validate(email: str, keywords: Sequence[str], language: str, timezone: str) -> SubscriptionRequest:
    """The one validator: address, keywords, language and time zone; InvalidInput names every problem."""
    address, problems = _email_problem(email)
    preferences, preference_problems = _preference_problems(keywords, language, timezone)
    problems += preference_problems
    if problems:
        raise InvalidInput(problems)
    return SubscriptionRequest(address, preferences)


# ---------------------------------------------------------------------------------------
# Subscribers by address (the CLI, the demo, the subscribe form)
# ---------------------------------------------------------------------------------------


def find_subscriber(session: Session, email: str) -> Subscriber | None:
    """The subscriber with that address, if any."""
    return session.scalars(select(Subscriber).where(func.lower(col(Subscriber.email)) == email.lower())).first()


def replace_keywords(session: Session, subscriber: Subscriber, keywords: Sequence[str]) -> None:
    """Store the subscriber's keywords in order, replacing the old ones."""
    assert subscriber.id is not None, "flush the subscriber first"
    session.execute(delete(SubscriberKeyword).where(col(SubscriberKeyword.subscriber_id) == subscriber.id))
    session.add_all(
        SubscriberKeyword(subscriber_id=subscriber.id, position=position, expression=keyword)
        for position, keyword in enumerate(keywords)
    )


def subscribe(
    session: Session,
    email: str,
    keywords: Sequence[str],
    language: str | None = None,
    timezone: str | None = None,
    confirmed: bool = False,
) -> Subscriber:
    """Add a subscriber, or update an existing one's preferences (caller commits); defaults from Settings."""
    settings = get_settings()
    request = validate(email, keywords, language or settings.default_language, timezone or settings.default_timezone)
    preferences = request.preferences
    subscriber = find_subscriber(session, request.email)
    if subscriber is None:
        subscriber = Subscriber(email=request.email, language=preferences.language, timezone=preferences.timezone)
        session.add(subscriber)
    elif subscriber.status in LEFT and not confirmed:
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
    session.execute(delete(Subscriber).where(col(Subscriber.id) == subscriber.id))
    session.expunge(subscriber)


# ---------------------------------------------------------------------------------------
# The subscribe form: double opt-in
# ---------------------------------------------------------------------------------------


class MailNotSent(SubscriptionError):
    """The confirmation mail could not be handed to the mail server."""


def _claim_confirmation_slot(session: Session, subscriber_id: int) -> bool:
    """Atomically take the right to mail this address now; False when one went out in the last 10 minutes."""
    now = utcnow()
    last_sent = col(Subscriber.confirmation_sent_at)
    # SQLModel's Session.execute says Result; an UPDATE gives SQLAlchemy's CursorResult, which has rowcount.
    claimed = cast(
        "CursorResult[Any]",
        session.execute(
            update(Subscriber)
            .where(
                col(Subscriber.id) == subscriber_id, or_(last_sent.is_(None), last_sent < now - CONFIRMATION_INTERVAL)
            )
            .values(confirmation_sent_at=now)
            .execution_options(synchronize_session=False)
        ),
    )
    session.commit()
    return claimed.rowcount == 1


def _opt_in_mail(settings: Settings, signer: LinkSigner, subscriber: Subscriber, active: bool) -> EmailMessage:
    if active:
        link = f"{settings.base_url}/manage/{signer.make(Purpose.MANAGE, subscriber.public_id)}"
        return already_subscribed_mail(settings, subscriber.email, link)
    link = f"{settings.base_url}/confirm/{signer.make(Purpose.CONFIRM, subscriber.public_id)}"
    return confirmation_mail(settings, subscriber.email, link)


def request_subscription(
    session: Session, settings: Settings, signer: LinkSigner, mail: MailBackend, form: Mapping[str, str]
) -> str:
    """Store a pending subscription from the form and mail its confirmation link (one mail per 10 minutes).

    An address that is already subscribed keeps its preferences and is mailed its manage link
    instead, so the page's answer never tells whether an address is known.
    """
    request = validate(form["email"], form["keywords"].splitlines(), form["language"], form["timezone"])
    subscriber = find_subscriber(session, request.email)
    active = subscriber is not None and subscriber.status in STAYING
    if subscriber is None or not active:
        preferences = request.preferences
        subscriber = subscribe(session, request.email, preferences.keywords, preferences.language,
                               preferences.timezone)
        session.commit()
    assert subscriber.id is not None
    if not _claim_confirmation_slot(session, subscriber.id):
        return request.email
    try:
        mail.send(_opt_in_mail(settings, signer, subscriber, active))
    except Exception as exc:  # noqa: BLE001 - any transport failure: let them try again at once
        session.execute(update(Subscriber).where(col(Subscriber.id) == subscriber.id).values(confirmation_sent_at=None))
        session.commit()
        raise MailNotSent(str(exc)) from exc
    return request.email


def mail_confirmation(session: Session, settings: Settings, signer: LinkSigner, mail: MailBackend,
                      subscriber: Subscriber) -> None:
    """Mail a pending subscriber their confirmation link now (the operator's `newsletter subscribe`); commits."""
    subscriber.confirmation_sent_at = utcnow()
    session.commit()
    try:
        mail.send(_opt_in_mail(settings, signer, subscriber, active=False))
    except Exception as exc:  # noqa: BLE001 - any transport failure: the operator may run it again at once
        subscriber.confirmation_sent_at = None
        session.commit()
        raise MailNotSent(f"the confirmation mail to {subscriber.email} was not sent: {exc}") from exc


# ---------------------------------------------------------------------------------------
# Subscribers by signed link (the confirm, manage and unsubscribe pages)
# ---------------------------------------------------------------------------------------


def subscriber_by_claims(session: Session, claims: TokenClaims) -> Subscriber:
    """The subscriber a valid link names; InvalidToken("gone") when they no longer exist."""
    if claims.public_id is not None:
        subscriber = session.scalars(select(Subscriber).where(col(Subscriber.public_id) == claims.public_id)).first()
    else:
        # Links signed before public IDs named the row number, which SQLite hands out again after a
        # delete: such a link is only honoured for a row that existed when it was signed.
        subscriber = session.get(Subscriber, claims.subscriber_id)
        if subscriber is not None and claims.predates(subscriber.created_at):
            subscriber = None
    if subscriber is None:
        raise InvalidToken("This link belongs to a subscription that no longer exists.", "gone")
    return subscriber


def subscriber_by_link(session: Session, signer: LinkSigner, token: str, purpose: Purpose) -> Subscriber:
    """The subscriber a link for `purpose` names; InvalidToken otherwise."""
    return subscriber_by_claims(session, signer.read(token, purpose))


def keywords_of(session: Session, subscriber: Subscriber) -> list[str]:
    """The subscriber's keywords in their order."""
    return list(
        session.scalars(
            select(col(SubscriberKeyword.expression))
            .where(col(SubscriberKeyword.subscriber_id) == subscriber.id)
            .order_by(col(SubscriberKeyword.position))
        )
    )


def confirmable(subscriber: Subscriber) -> bool:
    """Whether a confirmation link may still act: not after the subscriber left."""
    return subscriber.status not in LEFT


def confirm_by_link(session: Session, signer: LinkSigner, token: str) -> Subscriber:
    """Activate the subscription a confirmation link names (a second click changes nothing)."""
    subscriber = subscriber_by_link(session, signer, token, Purpose.CONFIRM)
    if subscriber.status == SubscriberStatus.PENDING:
        confirm(subscriber)
        session.commit()
    return subscriber


def change_by_link(session: Session, signer: LinkSigner, token: str, form: Mapping[str, str], paused: bool) -> None:
    """Change keywords, language, time zone or pause, through a manage link."""
    subscriber = subscriber_by_link(session, signer, token, Purpose.MANAGE)
    preferences = validate_preferences(form["keywords"].splitlines(), form["language"], form["timezone"])
    subscriber.language = preferences.language
    subscriber.timezone = preferences.timezone
    if subscriber.status in STAYING:
        subscriber.status = SubscriberStatus.PAUSED if paused else SubscriberStatus.ACTIVE
    replace_keywords(session, subscriber, preferences.keywords)
    session.commit()


def unsubscribe_by_link(session: Session, signer: LinkSigner, token: str) -> Subscriber:
    """Unsubscribe the subscriber an unsubscribe link names."""
    subscriber = subscriber_by_link(session, signer, token, Purpose.UNSUBSCRIBE)
    if subscriber.status != SubscriberStatus.UNSUBSCRIBED:
        unsubscribe(subscriber)
        session.commit()
    return subscriber


def resubscribe_by_link(session: Session, signer: LinkSigner, token: str) -> Subscriber:
    """Undo an unsubscribe from the same link, for someone who had confirmed before."""
    subscriber = subscriber_by_link(session, signer, token, Purpose.UNSUBSCRIBE)
    if subscriber.status == SubscriberStatus.UNSUBSCRIBED and subscriber.confirmed_at is not None:
        confirm(subscriber)
        session.commit()
    return subscriber


def delete_by_link(session: Session, signer: LinkSigner, token: str) -> None:
    """Remove the subscriber a manage link names and everything tied to them."""
    delete_subscriber(session, subscriber_by_link(session, signer, token, Purpose.MANAGE))
    session.commit()


def preferences_by_link(session: Session, signer: LinkSigner, token: str) -> tuple[Subscriber, list[str]]:
    """The subscriber a manage link names, with their keywords."""
    subscriber = subscriber_by_link(session, signer, token, Purpose.MANAGE)
    return subscriber, keywords_of(session, subscriber)
