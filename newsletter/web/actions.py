"""The web app's plain functions beyond the subscriber service: the archive and the health check."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, text
from sqlmodel import Session, col

from newsletter.config import Settings
from newsletter.digests import compose_digest
from newsletter.models import Delivery, DeliveryStatus
from newsletter.render import DigestRenderer
from newsletter.subscribers import subscriber_by_claims
from newsletter.tokens import InvalidToken, LinkSigner, Purpose


class NoDigest(Exception):
    """No digest was delivered to this subscriber on that day."""


def check_database(session: Session) -> None:
    """Raise if the database does not answer."""
    session.execute(text("SELECT 1"))


def archived_digest(session: Session, settings: Settings, signer: LinkSigner, day: str, token: str) -> str:
    """The digest HTML a subscriber received on `day`."""
    claims = signer.read(token, Purpose.ARCHIVE)
    if claims.extra != day:
        raise InvalidToken("This link is not valid for this day.", "other_day")
    subscriber = subscriber_by_claims(session, claims)
    try:
        when = dt.date.fromisoformat(day)
    except ValueError as exc:
        raise NoDigest(day) from exc
    delivered = session.scalar(
        select(col(Delivery.id)).where(
            col(Delivery.subscriber_id) == subscriber.id,
            col(Delivery.day) == when,
            col(Delivery.status) == DeliveryStatus.SENT,
        )
    )
    if delivered is None:
        raise NoDigest(day)
    # Updates pending now were not part of that mail.
    digest = compose_digest(session, settings, signer, subscriber, when, with_updates=False)
    return DigestRenderer().render(digest, size_limit=10**9).html
