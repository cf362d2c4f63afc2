"""Updates to papers a subscriber was sent: a new version, a journal reference or a DOI since they saw it.

SentPaper keeps what each subscriber was last shown of a paper (version, journal reference, DOI); the
harvest keeps the paper itself current. The difference is the "Updated" section of their next digest,
recorded as shown when that digest is sent, so each change is reported once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy import and_, or_, select, update
from sqlmodel import Session, col

from newsletter.models import Paper, SentPaper

# An "Updated" section is a short list: beyond this many, the rest wait for the next digest.
MAX_UPDATES_SHOWN = 30


@dataclass(frozen=True)
class PaperUpdate:
    """A paper the subscriber received earlier, and what changed since: shown as one line, never a full card."""

    arxiv_id: str
    raw_title: str
    version_sent: int
    version: int
    journal_ref: str | None = None  # the reference gained (or changed), else None
    doi: str | None = None  # the DOI gained, else None

    @property
    def new_version(self) -> bool:
        return self.version > self.version_sent

    @property
    def abs_url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv_id}"

    @property
    def pdf_url(self) -> str:
        return f"https://arxiv.org/pdf/{self.arxiv_id}"

    @property
    def doi_url(self) -> str | None:
        # Quoted as the digest's cards quote it: a DOI may hold characters a URL cannot.
        return f"https://doi.org/{quote(self.doi, safe='/:;()._-')}" if self.doi else None


def _changed(stored: object, current: object) -> bool:
    return current is not None and current != stored


def pending_updates(
    session: Session, subscriber_id: int, exclude: Iterable[str] = (), limit: int = MAX_UPDATES_SHOWN
) -> list[PaperUpdate]:
    """What changed in papers the subscriber was sent (oldest first), minus `exclude` (this digest's cards)."""
    return pending_updates_of(session, {subscriber_id: exclude}, limit).get(subscriber_id, [])


def pending_updates_of(
    session: Session, exclude: Mapping[int, Iterable[str]], limit: int = MAX_UPDATES_SHOWN
) -> dict[int, list[PaperUpdate]]:
    """pending_updates for each subscriber id in `exclude` (with the papers to leave out), in one query;
    a subscriber without updates is left out."""
    if not exclude:
        return {}
    # A row without a version predates this record (written by hand or an old release): nothing to compare.
    changed = and_(
        col(SentPaper.version).is_not(None),
        or_(
            col(Paper.version) > col(SentPaper.version),
            and_(col(Paper.journal_ref).is_not(None), or_(col(SentPaper.journal_ref).is_(None),
                                                        col(Paper.journal_ref) != col(SentPaper.journal_ref))),
            and_(col(Paper.doi).is_not(None), or_(col(SentPaper.doi).is_(None), col(Paper.doi) != col(SentPaper.doi))),
        ),
    )
    skip = {subscriber_id: set(arxiv_ids) for subscriber_id, arxiv_ids in exclude.items()}
    rows = session.execute(
        select(SentPaper, Paper)
        .join(Paper, col(Paper.arxiv_id) == col(SentPaper.arxiv_id))
        .where(col(SentPaper.subscriber_id).in_(list(skip)), changed)
        .order_by(col(SentPaper.subscriber_id), col(SentPaper.day), col(SentPaper.arxiv_id))
    ).all()
    updates: dict[int, list[PaperUpdate]] = {}
    for sent, paper in rows:
        shown = updates.setdefault(sent.subscriber_id, [])
        if paper.arxiv_id in skip[sent.subscriber_id] or len(shown) >= limit:
            continue
        shown.append(
            PaperUpdate(
                arxiv_id=paper.arxiv_id,
                raw_title=paper.title,
                version_sent=sent.version or paper.version,
                version=paper.version,
                journal_ref=paper.journal_ref if _changed(sent.journal_ref, paper.journal_ref) else None,
                doi=paper.doi if _changed(sent.doi, paper.doi) else None,
            )
        )
    return {subscriber_id: shown for subscriber_id, shown in updates.items() if shown}


def record_updates_shown(session: Session, subscriber_id: int, updates: Sequence[PaperUpdate]) -> None:
    """The subscriber has now seen these papers as they are (caller commits with the delivery)."""
    for item in updates:
        values: dict[str, object] = {"version": item.version}
        if item.journal_ref is not None:
            values["journal_ref"] = item.journal_ref
        if item.doi is not None:
            values["doi"] = item.doi
        session.execute(
            update(SentPaper)
            .where(col(SentPaper.subscriber_id) == subscriber_id, col(SentPaper.arxiv_id) == item.arxiv_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
