"""The subscriber service: one validator, and subscribe, confirm, change and leave, by address or by link.

Problems come back as codes with parameters; the CLI (English, `describe`) and the web pages
(`newsletter.web.i18n`, the reader's language) turn them into words.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, func, select
from sqlmodel import Session, col

from newsletter.config import Settings, get_settings
from newsletter.keywords import MAX_KEYWORDS, KeywordSyntaxError, parse_keyword
from newsletter.periods import parse_frequency, parse_weekday
from newsletter.subscriber_tables import (
    PendingKeyword,
    Subscriber,
    SubscriberKeyword,
    SubscriberStatus,
    table_of,
    utcnow,
)
from newsletter.tokens import InvalidToken, LinkSigner, Purpose, TokenClaims

if TYPE_CHECKING:  # the CLI's `subscribe` should not load the mail transports
    from email.message import EmailMessage

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
    FREQUENCY = "frequency"
    WEEKDAY = "weekday"


class ProblemCode(StrEnum):
    """What is wrong with an input; each code's parameters are listed beside it."""

    EMAIL_LINE_BREAK = "email_line_break"  # -
    EMAIL_NO_AT_SIGN = "email_no_at_sign"  # detail (the validator's English words, as every email code)
    EMAIL_LOCAL_PART = "email_local_part"  # detail: something before the @-sign is wrong
    EMAIL_DOMAIN = "email_domain"  # detail: something after the @-sign is wrong
    EMAIL_TRAILING_TEXT = "email_trailing_text"  # detail: more than one address, or a display name
    EMAIL_INVALID = "email_invalid"  # detail
    EMAIL_NOT_ASCII = "email_not_ascii"  # -: letters beyond ASCII before the @-sign (no SMTPUTF8 assumed)
    KEYWORD_SYNTAX = "keyword_syntax"  # line, column (1-based), message (English), syntax (the KeywordSyntaxError)
    KEYWORDS_NONE = "keywords_none"  # -
    KEYWORDS_TOO_MANY = "keywords_too_many"  # count, limit
    LANGUAGE_UNKNOWN = "language_unknown"  # language
    TIMEZONE_UNKNOWN = "timezone_unknown"  # timezone
    FREQUENCY_UNKNOWN = "frequency_unknown"  # frequency
    WEEKDAY_UNKNOWN = "weekday_unknown"  # weekday


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
    ProblemCode.EMAIL_NOT_ASCII: "addresses with letters beyond ASCII before the @-sign cannot be mailed from here "
    "(the mail server is not assumed to speak SMTPUTF8)",
    ProblemCode.KEYWORD_SYNTAX: "keyword line {line}, position {column}: {message}",
    ProblemCode.KEYWORDS_NONE: "give at least one keyword",
    ProblemCode.KEYWORDS_TOO_MANY: "too many keywords: {count} given, at most {limit} allowed",
    ProblemCode.LANGUAGE_UNKNOWN: "{language!r} is not a supported language",
    ProblemCode.TIMEZONE_UNKNOWN: "{timezone!r} is not a known time zone",
    ProblemCode.FREQUENCY_UNKNOWN: "{frequency!r} is not a frequency: use daily or weekly",
    ProblemCode.WEEKDAY_UNKNOWN: "{weekday!r} is not a weekday: use mon, tue, wed, thu, fri, sat or sun",
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
class DigestChoices:
    """The digest schedule and extras as given (CLI flags, the manage form, a CSV row); None keeps what is stored."""

    frequency: str | None = None
    weekday: str | None = None
    empty_day_note: bool | None = None
    updates: bool | None = None


def digest_choice_problems(choices: DigestChoices) -> list[Problem]:
    """What is wrong with the frequency and weekday given."""
    problems: list[Problem] = []
    if choices.frequency is not None:
        try:
            parse_frequency(choices.frequency)
        except ValueError:
            problems.append(Problem(InputField.FREQUENCY, ProblemCode.FREQUENCY_UNKNOWN,
                                    {"frequency": choices.frequency}))
    if choices.weekday is not None:
        try:
            parse_weekday(choices.weekday)
        except ValueError:
            problems.append(Problem(InputField.WEEKDAY, ProblemCode.WEEKDAY_UNKNOWN, {"weekday": choices.weekday}))
    return problems


def apply_digest_choices(subscriber: Subscriber, choices: DigestChoices) -> None:
    """Store the choices given (checked by digest_choice_problems first); the others stay as they are."""
    if choices.frequency is not None:
        subscriber.frequency = parse_frequency(choices.frequency)
    if choices.weekday is not None:
        subscriber.weekday = parse_weekday(choices.weekday)
    if choices.empty_day_note is not None:
        subscriber.empty_day_note = choices.empty_day_note
    if choices.updates is not None:
        subscriber.updates = choices.updates


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
    if info.ascii_email is None:
        # The confirmation could not be addressed: our transport sends ASCII headers only.
        return "", [Problem(InputField.EMAIL, ProblemCode.EMAIL_NOT_ASCII)]
    # An internationalized domain is stored in its ASCII (xn--) form, which mail headers can carry.
    return info.ascii_email.lower(), []


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
    """Too many keywords, or every line that does not parse, with the line and character (1-based) where."""
    # Counted before anything is parsed: a long list is refused at the cost of a set of strings.
    written = {line.strip().casefold() for line in lines} - {""}
    if len(written) > MAX_KEYWORDS:
        return [Problem(InputField.KEYWORDS, ProblemCode.KEYWORDS_TOO_MANY,
                        {"count": len(written), "limit": MAX_KEYWORDS})]
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
    keywords = [] if problems else distinct_keywords(lines)
    if not problems and not keywords:
        problems.append(Problem(InputField.KEYWORDS, ProblemCode.KEYWORDS_NONE))
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
    choices: DigestChoices | None = None,
) -> Subscriber:
    """Add a subscriber, or update an existing one's preferences (caller commits); defaults from Settings."""
    settings = get_settings()
    choices = choices or DigestChoices()
    language, timezone = language or settings.default_language, timezone or settings.default_timezone
    try:
        request = validate(email, keywords, language, timezone)
    except InvalidInput as exc:
        raise InvalidInput([*exc.problems, *digest_choice_problems(choices)]) from None
    if problems := digest_choice_problems(choices):
        raise InvalidInput(problems)
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
    apply_digest_choices(subscriber, choices)
    if confirmed:
        confirm(subscriber)
    session.flush()
    replace_keywords(session, subscriber, preferences.keywords)
    session.flush()
    return subscriber


def confirm(subscriber: Subscriber) -> None:
    """Mark the subscription confirmed and active (a pending change is applied by confirm_by_link)."""
    subscriber.status = SubscriberStatus.ACTIVE
    subscriber.confirmed_at = subscriber.confirmed_at or utcnow()
    subscriber.unsubscribed_at = None
    subscriber.consecutive_hard_failures = 0


def unsubscribe(subscriber: Subscriber) -> None:
    """Stop all mail to this subscriber (their data stays until they delete it); every earlier link is void."""
    subscriber.status = SubscriberStatus.UNSUBSCRIBED
    subscriber.unsubscribed_at = utcnow()
    subscriber.generation += 1
    subscriber.pending_language = subscriber.pending_timezone = None


def delete_subscriber(session: Session, subscriber: Subscriber) -> None:
    """Remove the subscriber with their keywords, selections and sent papers; deliveries keep an anonymous row."""
    # The foreign keys cascade (and set Delivery.subscriber_id to NULL) in the database itself.
    session.execute(delete(Subscriber).where(col(Subscriber.id) == subscriber.id))
    session.expunge(subscriber)


# ---------------------------------------------------------------------------------------
# The subscribe form: double opt-in
# ---------------------------------------------------------------------------------------


class MailNotSent(SubscriptionError):
    """The confirmation mail could not be handed to the mail server (nothing was stored)."""


class Outcome(StrEnum):
    SENT = "sent"  # a confirmation (or, to a subscriber, their manage link) was handed to the mail server
    ALREADY_SENT = "already_sent"  # one went out less than 10 minutes ago: none now
    CAPPED = "capped"  # this mailbox, its domain or this client had its share of confirmation mails


@dataclass(frozen=True)
class SubscriptionAnswer:
    """What became of a subscribe request, in words the page can say truthfully."""

    email: str
    outcome: Outcome
    sent_at: dt.datetime | None = None

    @property
    def resend_after(self) -> dt.datetime | None:
        """When another confirmation mail may be asked for (ALREADY_SENT)."""
        return self.sent_at + CONFIRMATION_INTERVAL if self.sent_at else None


# Whether one more confirmation mail may go to this address now (the web app's per-mailbox,
# per-domain and per-client caps); the CLI and tests pass `always`.
MailCap = Callable[[str], bool]


def always(address: str) -> bool:
    """No cap."""
    return True


def mailbox_of(address: str) -> str:
    """The mailbox an address reaches: its local part without a +tag (victim+1@ and victim@ are one inbox)."""
    local, _, domain = address.lower().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _insert_if_new(session: Session, request: SubscriptionRequest) -> bool:
    """Insert the address as a pending subscriber unless it exists (also when a parallel request races us)."""
    preferences = request.preferences
    values = {"email": request.email, "language": preferences.language, "timezone": preferences.timezone,
              "status": SubscriberStatus.PENDING.value, "created_at": utcnow(), "consecutive_hard_failures": 0,
              "generation": 0}
    statement = _insert_ignoring_conflict(session, values)
    inserted = session.execute(statement).first()
    if inserted is None:
        return False
    session.add_all(SubscriberKeyword(subscriber_id=inserted[0], position=position, expression=keyword)
                    for position, keyword in enumerate(preferences.keywords))
    return True


def _insert_ignoring_conflict(session: Session, values: Mapping[str, object]) -> Any:
    # INSERT .. ON CONFLICT DO NOTHING: a parallel submit of the same new address waits for ours, then skips.
    table = table_of(Subscriber)
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).values(**values).on_conflict_do_nothing().returning(table.c.id)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table).values(**values).on_conflict_do_nothing().returning(table.c.id)


def _locked_subscriber(session: Session, email: str) -> Subscriber:
    """The subscriber row, locked until the transaction ends (one confirmation decision at a time)."""
    query = (
        select(Subscriber)
        .where(func.lower(col(Subscriber.email)) == email.lower())
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return session.scalars(query).one()


def store_pending_change(session: Session, subscriber: Subscriber, preferences: Preferences) -> None:
    """Keep a change for the mailbox to confirm; its stored preferences stay as they are until then."""
    assert subscriber.id is not None
    subscriber.pending_language = preferences.language
    subscriber.pending_timezone = preferences.timezone
    session.execute(delete(PendingKeyword).where(col(PendingKeyword.subscriber_id) == subscriber.id))
    session.add_all(
        PendingKeyword(subscriber_id=subscriber.id, position=position, expression=keyword)
        for position, keyword in enumerate(preferences.keywords)
    )


def _apply_pending_change(session: Session, subscriber: Subscriber) -> None:
    if subscriber.pending_language is None or subscriber.pending_timezone is None:
        return
    pending = list(
        session.scalars(
            select(col(PendingKeyword.expression))
            .where(col(PendingKeyword.subscriber_id) == subscriber.id)
            .order_by(col(PendingKeyword.position))
        )
    )
    subscriber.language, subscriber.timezone = subscriber.pending_language, subscriber.pending_timezone
    subscriber.pending_language = subscriber.pending_timezone = None
    session.execute(delete(PendingKeyword).where(col(PendingKeyword.subscriber_id) == subscriber.id))
    session.flush()
    replace_keywords(session, subscriber, pending)


def _opt_in_mail(settings: Settings, signer: LinkSigner, subscriber: Subscriber, active: bool) -> EmailMessage:
    # Loaded with the first mail: `newsletter subscribe --confirmed` writes none.
    from newsletter.account_mail import already_subscribed_mail, confirmation_mail

    generation = subscriber.generation
    if active:
        link = f"{settings.base_url}/manage/{signer.make(Purpose.MANAGE, subscriber.public_id, generation=generation)}"
        return already_subscribed_mail(settings, subscriber.email, link)
    link = f"{settings.base_url}/confirm/{signer.make(Purpose.CONFIRM, subscriber.public_id, generation=generation)}"
    return confirmation_mail(settings, subscriber.email, link)


def request_subscription(
    session: Session,
    settings: Settings,
    signer: LinkSigner,
    mail: MailBackend,
    form: Mapping[str, str],
    may_mail: MailCap = always,
) -> SubscriptionAnswer:
    """Mail a confirmation link for the form's subscription (one mail per address per 10 minutes).

    A new address is stored pending. For a known one that is not subscribed, the form's
    preferences wait as a pending change that only the mailed link applies (each such mail
    starts a new generation, so only the newest link confirms). A subscribed address keeps its
    preferences and is mailed its manage link, so the answer never tells whether an address is
    known. Everything happens in one transaction that ends after the mail is handed over: when
    sending fails, nothing stays (no row, no 10-minute slot) and the reader may retry at once.
    """
    request = validate(form["email"], form["keywords"].splitlines(), form["language"], form["timezone"])
    session.rollback()  # a fresh transaction: the row lock below lasts until our commit
    try:
        created = _insert_if_new(session, request)
        subscriber = _locked_subscriber(session, request.email)
        last_sent = subscriber.confirmation_sent_at
        now = utcnow()
        if last_sent is not None and _aware(last_sent) > now - CONFIRMATION_INTERVAL:
            session.rollback()
            return SubscriptionAnswer(request.email, Outcome.ALREADY_SENT, _aware(last_sent))
        if not may_mail(request.email):
            session.rollback()
            return SubscriptionAnswer(request.email, Outcome.CAPPED)
        active = subscriber.status in STAYING
        if not active and not created:
            store_pending_change(session, subscriber, request.preferences)
            subscriber.generation += 1
        subscriber.confirmation_sent_at = now
        session.flush()
        message = _opt_in_mail(settings, signer, subscriber, active)
        try:
            mail.send(message)
        except Exception as exc:  # noqa: BLE001 - any transport failure: nothing stays, they may retry at once
            raise MailNotSent(str(exc)) from exc
    except BaseException:
        session.rollback()
        raise
    session.commit()
    return SubscriptionAnswer(request.email, Outcome.SENT, now)


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


def subscriber_by_claims(session: Session, claims: TokenClaims, any_generation: bool = False) -> Subscriber:
    """The subscriber a valid link names; InvalidToken("gone") when they no longer exist, "stale" when the
    link is from an earlier generation (before an unsubscribe or a newer confirmation mail)."""
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
    if not any_generation and claims.generation != subscriber.generation:
        raise InvalidToken("This link is no longer valid: the subscription changed after it was sent.", "stale")
    return subscriber


def subscriber_by_link(
    session: Session, signer: LinkSigner, token: str, purpose: Purpose, any_generation: bool = False
) -> Subscriber:
    """The subscriber a link for `purpose` names; InvalidToken otherwise."""
    return subscriber_by_claims(session, signer.read(token, purpose), any_generation)


def link_for(signer: LinkSigner, purpose: Purpose, subscriber: Subscriber) -> str:
    """A token for `purpose` in the subscriber's current generation."""
    return signer.make(purpose, subscriber.public_id, generation=subscriber.generation)


def _locked(session: Session, subscriber: Subscriber) -> Subscriber:
    """The subscriber re-read and locked until commit: two saves at once would both replace the keywords."""
    session.refresh(subscriber, with_for_update=True)
    return subscriber


def keywords_of(session: Session, subscriber: Subscriber) -> list[str]:
    """The subscriber's keywords in their order."""
    return list(
        session.scalars(
            select(col(SubscriberKeyword.expression))
            .where(col(SubscriberKeyword.subscriber_id) == subscriber.id)
            .order_by(col(SubscriberKeyword.position))
        )
    )


def pending_keywords_of(session: Session, subscriber: Subscriber) -> list[str]:
    """The keywords of the change waiting for confirmation, in their order."""
    return list(
        session.scalars(
            select(col(PendingKeyword.expression))
            .where(col(PendingKeyword.subscriber_id) == subscriber.id)
            .order_by(col(PendingKeyword.position))
        )
    )


def pending_change_by_link(session: Session, signer: LinkSigner, token: str) -> tuple[Subscriber, Preferences]:
    """The subscriber a confirmation link names, with the preferences confirming leaves in force."""
    subscriber = subscriber_by_link(session, signer, token, Purpose.CONFIRM)
    if subscriber.pending_language is not None and subscriber.pending_timezone is not None:
        change = Preferences(pending_keywords_of(session, subscriber), subscriber.pending_language,
                             subscriber.pending_timezone)
    else:
        change = Preferences(keywords_of(session, subscriber), subscriber.language, subscriber.timezone)
    return subscriber, change


def already_confirmed(subscriber: Subscriber) -> bool:
    """Whether a (current) confirmation link has nothing left to do: subscribed, no change waiting."""
    return subscriber.status in STAYING and subscriber.pending_language is None


def confirm_by_link(session: Session, signer: LinkSigner, token: str) -> tuple[Subscriber, bool]:
    """Activate the subscription a confirmation link names, applying the change it confirms; and whether
    this click did it (False: it was confirmed already, and nothing changed)."""
    subscriber = _locked(session, subscriber_by_link(session, signer, token, Purpose.CONFIRM))
    if already_confirmed(subscriber):
        return subscriber, False
    _apply_pending_change(session, subscriber)
    confirm(subscriber)
    session.commit()
    return subscriber, True


def change_by_link(
    session: Session,
    signer: LinkSigner,
    token: str,
    form: Mapping[str, str],
    paused: bool,
    choices: DigestChoices | None = None,
) -> None:
    """Change keywords, language, time zone, the digest schedule and extras, or pause, through a manage link."""
    choices = choices or DigestChoices()
    preferences, problems = _preference_problems(form["keywords"].splitlines(), form["language"], form["timezone"])
    problems += digest_choice_problems(choices)
    if problems:
        raise InvalidInput(problems)
    subscriber = _locked(session, subscriber_by_link(session, signer, token, Purpose.MANAGE))
    apply_digest_choices(subscriber, choices)
    subscriber.language = preferences.language
    subscriber.timezone = preferences.timezone
    if subscriber.status in STAYING:
        subscriber.status = SubscriberStatus.PAUSED if paused else SubscriberStatus.ACTIVE
    replace_keywords(session, subscriber, preferences.keywords)
    session.commit()


def unsubscribe_by_link(session: Session, signer: LinkSigner, token: str) -> Subscriber:
    """Unsubscribe the subscriber an unsubscribe link names, from any generation (leaving is always allowed)."""
    subscriber = subscriber_by_link(session, signer, token, Purpose.UNSUBSCRIBE, any_generation=True)
    if subscriber.status != SubscriberStatus.UNSUBSCRIBED:
        unsubscribe(subscriber)
        session.commit()
    return subscriber


def resubscribe_by_link(session: Session, signer: LinkSigner, token: str) -> Subscriber:
    """Undo an unsubscribe from the link the unsubscribed page gives, for someone who had confirmed before."""
    subscriber = subscriber_by_link(session, signer, token, Purpose.UNSUBSCRIBE)
    if subscriber.status == SubscriberStatus.UNSUBSCRIBED and subscriber.confirmed_at is not None:
        confirm(subscriber)
        session.commit()
    return subscriber


def delete_by_link(session: Session, signer: LinkSigner, token: str) -> None:
    """Remove the subscriber a manage link names and everything tied to them."""
    delete_subscriber(session, subscriber_by_link(session, signer, token, Purpose.MANAGE))
    session.commit()


def stored_preferences(session: Session, settings: Settings, subscriber: Subscriber) -> list[tuple[str, str]]:
    """The subscriber's stored preferences as (name, value), in the names `newsletter subscribe` takes,
    and their private feed's URL."""
    from newsletter.atom import feed_url_for  # the feed module imports this one
    from newsletter.periods import weekday_name

    return [
        ("email", subscriber.email),
        ("status", str(subscriber.status)),
        ("keywords", "; ".join(keywords_of(session, subscriber))),
        ("language", subscriber.language),
        ("timezone", subscriber.timezone),
        ("frequency", str(subscriber.frequency)),
        ("weekday", weekday_name(subscriber.weekday)),
        ("empty_day_note", "true" if subscriber.empty_day_note else "false"),
        ("updates", "true" if subscriber.updates else "false"),
        ("feed", feed_url_for(settings, subscriber)),
    ]


def preferences_by_link(session: Session, signer: LinkSigner, token: str) -> tuple[Subscriber, list[str]]:
    """The subscriber a manage link names, with their keywords."""
    subscriber = subscriber_by_link(session, signer, token, Purpose.MANAGE)
    return subscriber, keywords_of(session, subscriber)
