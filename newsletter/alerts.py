"""Alerts to the operator: a late feed, an incomplete harvest, a failed run, digests owed.

Each cause is raised once per day (the admin_alert row is inserted once, keyed by day and cause)
and mailed to NEWSLETTER_ADMIN_EMAIL through the configured mail backend; an alert whose mail
failed is mailed again on the next check, a few times at most.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from newsletter.config import Settings
from newsletter.delivery import owed_digests
from newsletter.harvest.calendar import announcement_evening, announcement_expected, expected_feed_day
from newsletter.mail import MailBackend
from newsletter.mail.errors import DeliveryStopped, PermanentDeliveryError, TemporaryDeliveryError
from newsletter.models import AdminAlert, AlertCause, Run, RunStatus, table_of, utcnow
from newsletter.operator import completeness

log = logging.getLogger(__name__)

# The feed is late an hour after it usually shows the day (NEWSLETTER_BEAT_POLL_START).
FEED_GRACE = dt.timedelta(hours=1)
# Runs that ran this recently are checked; older ones were checked when they ran.
DAYS_CHECKED = 7
MAX_MAIL_ATTEMPTS = 5


@dataclass(frozen=True)
class Cause:
    """A reason to tell the operator about a day."""

    day: dt.date
    cause: AlertCause
    detail: str


def feed_late(session: Session, settings: Settings, now: dt.datetime) -> Cause | None:
    """The expected announcement day, if the feed still has not shown it an hour after the usual time."""
    day = expected_feed_day(now)
    if not announcement_expected(day, settings.arxiv_holidays):
        return None
    usual = announcement_evening(day, settings.beat_poll_start, ZoneInfo(settings.beat_timezone))
    if now < usual + FEED_GRACE:
        return None
    run = session.scalars(select(Run).where(col(Run.day) == day)).first()
    if run is not None and (run.feed_seen_at is not None or run.harvested_at is not None):
        return None
    return Cause(day, AlertCause.FEED_LATE, f"the announcement feed still does not show {day} at "
                 f"{now:%Y-%m-%d %H:%M} UTC (it usually does by {usual:%H:%M} UTC)")


def run_causes(session: Session, run: Run, lease: dt.timedelta) -> list[Cause]:
    """What is wrong with a day's run: an incomplete harvest, a failure, digests owed."""
    causes = []
    tally = completeness(session, run.day)
    if tally is not None and not tally.complete:
        causes.append(Cause(run.day, AlertCause.HARVEST_INCOMPLETE, f"{tally.summary()}; " + "; ".join(tally.gaps())))
    if run.status == RunStatus.FAILED:
        causes.append(Cause(run.day, AlertCause.RUN_FAILED, run.reason or "the run failed"))
    elif run.status == RunStatus.INCOMPLETE:
        owed = owed_digests(session, run.day, lease)
        causes.append(Cause(run.day, AlertCause.DIGESTS_OWED, owed.describe() or run.reason or "digests owed"))
    return causes


def due_causes(session: Session, settings: Settings, now: dt.datetime) -> list[Cause]:
    """Every cause to alert on now, oldest day first."""
    lease = dt.timedelta(seconds=settings.delivery_claim_lease_seconds)
    since = now - dt.timedelta(days=DAYS_CHECKED)
    causes = []
    # Runs that ran lately, whatever their day (a rerun of an old day counts).
    recent = or_(col(Run.started_at) >= since, col(Run.finished_at) >= since)
    for run in session.scalars(select(Run).where(recent).order_by(col(Run.day))):
        causes += run_causes(session, run, lease)
    late = feed_late(session, settings, now)
    if late is not None:
        causes.append(late)
    return causes


def _insert_once(session: Session, cause: Cause) -> AdminAlert | None:
    """The new alert row, or None when the day already has one for this cause (commits)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(table_of(AdminAlert)).values(
        day=cause.day, cause=str(cause.cause), detail=cause.detail[:4000], raised_at=utcnow(), mail_attempts=0
    )
    # RETURNING says whether this call inserted the row (rowcount is -1 for it on psycopg).
    inserted = session.execute(statement.on_conflict_do_nothing().returning(table_of(AdminAlert).c.day)).first()
    session.commit()
    if inserted is None:
        return None
    return session.get(AdminAlert, (cause.day, cause.cause), populate_existing=True)


def alert_mail(settings: Settings, alert: AdminAlert) -> EmailMessage:
    """The operator's mail for one alert."""
    assert settings.admin_email is not None
    message = EmailMessage()
    message["Subject"] = f"[arXiv digest] {alert.day}: {str(alert.cause).replace('_', ' ')}"
    message["From"] = Address(display_name=settings.from_name, addr_spec=settings.from_address)
    message["To"] = Address(addr_spec=settings.admin_email)
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = make_msgid(domain=settings.from_address.rpartition("@")[2] or "localhost")
    message["Auto-Submitted"] = "auto-generated"
    # The outbox backend files a message under this: one file per alert, not one per operator.
    message["X-Digest-Day"] = f"alert-{alert.day.isoformat()}-{alert.cause}"
    message.set_content(
        f"Day: {alert.day}\nCause: {alert.cause}\n\n{alert.detail}\n\n"
        f"Operator page: {settings.base_url}/admin\n",
        charset="utf-8",
    )
    return message


def _mail(session: Session, settings: Settings, backend: MailBackend, alert: AdminAlert) -> None:
    alert.mail_attempts += 1
    try:
        backend.send(alert_mail(settings, alert))
    except (TemporaryDeliveryError, PermanentDeliveryError, DeliveryStopped, OSError) as exc:
        alert.mail_error = str(exc)[:2000]
        log.error("could not mail the %s alert of %s to the operator: %s", alert.cause, alert.day, exc)
    else:
        alert.mailed_at, alert.mail_error = utcnow(), None
    session.add(alert)
    session.commit()


def raise_alerts(
    session: Session, settings: Settings, backend: MailBackend, now: dt.datetime | None = None
) -> list[AdminAlert]:
    """Record every new cause once and mail it to NEWSLETTER_ADMIN_EMAIL (and retry unsent ones); the new alerts."""
    now = now or utcnow()
    raised = [alert for cause in due_causes(session, settings, now) if (alert := _insert_once(session, cause))]
    for alert in raised:
        log.warning("alert for %s: %s: %s", alert.day, alert.cause, alert.detail)
    if settings.admin_email is None:
        return raised
    unsent = session.scalars(
        select(AdminAlert).where(
            col(AdminAlert.mailed_at).is_(None), col(AdminAlert.mail_attempts) < MAX_MAIL_ATTEMPTS
        ).order_by(col(AdminAlert.day), col(AdminAlert.cause))
    ).all()
    for alert in unsent:
        _mail(session, settings, backend, alert)
    return raised


def alert_now(session: Session, settings: Settings) -> list[AdminAlert]:
    """raise_alerts through a mail backend of its own (the end of a command, a beat tick)."""
    from newsletter.mail import make_backend

    backend = make_backend(settings)
    try:
        return raise_alerts(session, settings, backend)
    finally:
        backend.close()
