"""One day: network first (collect_*), then writing (store_day); harvest_range over several days."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Table, and_, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from newsletter.harvest.api import API_BATCH, DetailsSource, SubmissionSearch
from newsletter.harvest.calendar import announcement_day_for, feed_days_between, submission_window
from newsletter.harvest.feed import AnnouncementFeed, FeedItem, FeedSource, read_feed
from newsletter.harvest.records import HarvestError, PaperRecord
from newsletter.models import (
    Announcement,
    AnnounceType,
    FeedCategoryCount,
    GapKind,
    HarvestGap,
    HarvestTally,
    Paper,
    Run,
    Translation,
    TranslationRejection,
    table_of,
    utcnow,
)
from newsletter.runs import mark_harvested

log = logging.getLogger(__name__)

@dataclass
class DayHarvest:
    """What one announcement day adds: its announcements and the paper records to store."""

    day: dt.date
    announcements: dict[str, AnnounceType] = field(default_factory=dict)
    records: list[PaperRecord] = field(default_factory=list)
    replaced: int = 0
    from_feed_only: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    source: str = "feed"
    # Completeness: distinct IDs the feed listed by type, items per (category, type), what got stored.
    announced_types: Counter[AnnounceType] = field(default_factory=Counter)
    listed: Counter[tuple[str, AnnounceType]] = field(default_factory=Counter)
    stored: int = 0
    replace_not_held: int = 0
    details_skipped: list[str] = field(default_factory=list)
    empty_categories: list[str] = field(default_factory=list)

    def stats(self) -> dict:
        return {
            "announced": len(self.announcements),
            "replaced": self.replaced,
            "from_feed_only": len(self.from_feed_only),
            "skipped_items": len(self.skipped),
            "source": self.source,
        }


def _stored_versions(session: Session, ids: Iterable[str]) -> dict[str, tuple[int, str]]:
    wanted = list(ids)
    found: dict[str, tuple[int, str]] = {}
    for start in range(0, len(wanted), 1000):
        rows = session.execute(
            select(col(Paper.arxiv_id), col(Paper.version), col(Paper.details_source)).where(
                col(Paper.arxiv_id).in_(wanted[start:start + 1000])
            )
        )
        found.update({arxiv_id: (version, source) for arxiv_id, version, source in rows})
    return found


def _gaining_references(session: Session, items: Sequence[FeedItem]) -> set[str]:
    """Replaced papers whose feed item names a journal reference or DOI the stored paper lacks (fetched again)."""
    named = {item.record.arxiv_id: item.record for item in items if item.record.journal_ref or item.record.doi}
    gained: set[str] = set()
    ids = list(named)
    for start in range(0, len(ids), 1000):
        rows = session.execute(
            select(col(Paper.arxiv_id), col(Paper.journal_ref), col(Paper.doi)).where(
                col(Paper.arxiv_id).in_(ids[start:start + 1000])
            )
        )
        for arxiv_id, journal_ref, doi in rows:
            record = named[arxiv_id]
            if (record.journal_ref and not journal_ref) or (record.doi and not doi):
                gained.add(arxiv_id)
    return gained


def _tally_feed(harvest: DayHarvest, feed: AnnouncementFeed, categories: Sequence[str]) -> dict[str, FeedItem]:
    """The feed's distinct items (first listing wins) and its counts by type and by category."""
    latest: dict[str, FeedItem] = {}
    for item in feed.items:
        if item.announce_type is not AnnounceType.REPLACE:
            harvest.announcements.setdefault(item.record.arxiv_id, item.announce_type)
        if item.record.arxiv_id not in latest:
            latest[item.record.arxiv_id] = item
            for category in dict.fromkeys(item.record.categories):
                harvest.listed[(category, item.announce_type)] += 1
    harvest.announced_types.update(
        harvest.announcements.get(arxiv_id, AnnounceType.REPLACE) for arxiv_id in latest
    )
    listed = {category for category, _ in harvest.listed}
    harvest.empty_categories = [category for category in categories if category not in listed]
    return latest


# Which of these feed records someone wants: their IDs (the harvest then fetches details for those only).
Interest = Callable[[Sequence[PaperRecord]], set[str]]


def _batches(count: int) -> int:
    return -(-count // API_BATCH)


def _worth_fetching(
    wanted: list[str], latest: dict[str, FeedItem], announced: dict[str, AnnounceType], interest: Interest
) -> tuple[list[str], list[str]]:
    """(to fetch, to keep from the feed): only the papers someone wants, and replacements, when that saves requests."""
    keep = interest([latest[arxiv_id].record for arxiv_id in wanted if arxiv_id in announced])
    chosen = [arxiv_id for arxiv_id in wanted if arxiv_id not in announced or arxiv_id in keep]
    if _batches(len(chosen)) >= _batches(len(wanted)):
        return wanted, []
    return chosen, [arxiv_id for arxiv_id in wanted if arxiv_id not in set(chosen)]


def _plan_feed_day(
    session: Session, feed: AnnouncementFeed, categories: Sequence[str]
) -> tuple[DayHarvest, list[str], dict[str, FeedItem]]:
    """The day's tally, the IDs whose details are wanted (not held at this version from the API), and the items."""
    assert feed.day is not None
    harvest = DayHarvest(day=feed.day, skipped=list(feed.skipped))
    latest = _tally_feed(harvest, feed, categories)
    stored = _stored_versions(session, latest)
    replaced = [item for item in latest.values() if item.announce_type is AnnounceType.REPLACE]
    gained = _gaining_references(session, replaced)
    wanted: list[str] = []
    for arxiv_id, item in latest.items():
        version, source = stored.get(arxiv_id, (0, ""))
        if item.announce_type is AnnounceType.REPLACE and arxiv_id not in harvest.announcements:
            if not version:
                harvest.replace_not_held += 1
                continue  # a replacement of a paper we never stored: nobody here has seen it
            harvest.replaced += 1
        if version < item.record.version or source != "api" or arxiv_id in gained:
            wanted.append(arxiv_id)
        else:
            harvest.stored += 1  # held already, at this version, with the API's details
    return harvest, wanted, latest


def collect_feed_day(
    session: Session,
    feed: AnnouncementFeed,
    details_source: DetailsSource,
    categories: Sequence[str] = (),
    interest: Interest | None = None,
) -> DayHarvest:
    """The day's announcements and fresh details for what is not stored yet (reads the DB, writes nothing).

    `categories` are the configured ones: one the feed lists nothing in is named as a gap. With
    `interest`, details are fetched only for the papers it names, when that takes fewer requests.
    """
    harvest, wanted, latest = _plan_feed_day(session, feed, categories)
    if interest is not None and wanted:
        wanted, harvest.details_skipped = _worth_fetching(wanted, latest, harvest.announcements, interest)
        harvest.records += [latest[arxiv_id].record for arxiv_id in harvest.details_skipped]
        harvest.stored += len(harvest.details_skipped)
    details = {record.arxiv_id: record for record in details_source.fetch_details(wanted)} if wanted else {}
    for arxiv_id in wanted:
        record = details.get(arxiv_id)
        if record is None:
            harvest.from_feed_only.append(arxiv_id)
            record = latest[arxiv_id].record
        else:
            harvest.stored += 1
        harvest.records.append(record)
    if harvest.from_feed_only:
        log.warning("arXiv API did not return %s; storing the feed's own fields", harvest.from_feed_only)
    return harvest


def store_feed_text(session: Session, feed: AnnouncementFeed, categories: Sequence[str] = ()) -> None:
    """Store the day's announcements, with the feed's own text for papers not held yet (caller commits).

    The feed carries title, abstract, authors and categories, so matching and translating can start
    on them while the API's details are fetched; only store_day marks the day harvested.
    """
    harvest, wanted, latest = _plan_feed_day(session, feed, categories)
    upsert_papers(session, [latest[arxiv_id].record for arxiv_id in wanted])
    _insert_announcements(session, harvest)


def collect_missed_days(
    session: Session,
    search: SubmissionSearch,
    categories: Sequence[str],
    days: Sequence[dt.date],
    exclude: Iterable[str] = (),
) -> list[DayHarvest]:
    """Missed feed days rebuilt from the API's submission windows, minus papers already announced."""
    if not days:
        return []
    start, _ = submission_window(days[0])
    _, end = submission_window(days[-1])
    records = search.search_submitted(categories, start, end)
    skip = set(exclude)
    ids = [r.arxiv_id for r in records if r.arxiv_id not in skip]
    already: set[str] = set()
    for first in range(0, len(ids), 1000):
        already.update(
            session.scalars(
                select(col(Announcement.arxiv_id)).where(col(Announcement.arxiv_id).in_(ids[first:first + 1000]))
            )
        )
    by_day = {day: DayHarvest(day=day, source="api-window") for day in days}
    ours = set(categories)
    for record in records:
        if record.arxiv_id in skip or record.arxiv_id in already or record.published is None:
            continue
        harvest = by_day.get(announcement_day_for(record.published))
        if harvest is None or record.arxiv_id in harvest.announcements:
            continue
        new = record.primary_category in ours
        kind = AnnounceType.NEW if new else AnnounceType.CROSS
        harvest.announcements[record.arxiv_id] = kind
        harvest.announced_types[kind] += 1
        for category in dict.fromkeys(c for c in record.categories if c in ours):
            harvest.listed[(category, kind)] += 1
        harvest.records.append(record)
        harvest.stored += 1
    return [by_day[day] for day in days]


def _insert_for(session: Session) -> Callable[[Table], postgresql.Insert | sqlite.Insert]:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _paper_row(record: PaperRecord, now: dt.datetime) -> dict:
    return {
        "arxiv_id": record.arxiv_id,
        "version": record.version,
        "title": record.title,
        "abstract": record.abstract,
        "authors": list(record.authors),
        "categories": list(record.categories),
        "primary_category": record.primary_category,
        "comment": record.comment,
        "journal_ref": record.journal_ref,
        "doi": record.doi,
        "published": record.published,
        "updated": record.updated,
        "details_source": record.details_source,
        "harvested_at": now,
    }


def _rank(record: PaperRecord) -> tuple[int, bool]:
    return record.version, record.details_source == "api"


def upsert_papers(session: Session, records: Iterable[PaperRecord]) -> None:
    """Insert or update papers by versionless ID in bulk; an older version or feed-only data never wins."""
    best: dict[str, PaperRecord] = {}
    for record in records:
        held = best.get(record.arxiv_id)
        if held is None or _rank(record) > _rank(held):
            best[record.arxiv_id] = record
    if not best:
        return
    table = table_of(Paper)
    statement = _insert_for(session)(table)
    new = statement.excluded
    wins = or_(
        table.c.version < new.version,
        and_(table.c.version == new.version, or_(table.c.details_source != "api", new.details_source == "api")),
    )
    columns = [c for c in _paper_row(next(iter(best.values())), utcnow()) if c != "arxiv_id"]
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.arxiv_id], set_={c: new[c] for c in columns}, where=wins
    )
    now = utcnow()
    rows = [_paper_row(record, now) for record in best.values()]
    for start in range(0, len(rows), 1000):
        session.execute(statement, rows[start:start + 1000])


def upsert_paper(session: Session, record: PaperRecord) -> Paper:
    """Insert or update one paper (see upsert_papers)."""
    upsert_papers(session, [record])
    paper = session.get(Paper, record.arxiv_id, populate_existing=True)
    assert paper is not None
    return paper


def store_day(session: Session, harvest: DayHarvest, reopen_failed: bool = True) -> list[str]:
    """Write a collected day: papers, announcements and the day's run row marked harvested (caller commits).

    Returns the papers whose translations were dropped (drop_translations_of_changed_text); see
    mark_harvested for `reopen_failed`.
    """
    dropped = drop_translations_of_changed_text(session, harvest.records)
    upsert_papers(session, harvest.records)
    _insert_announcements(session, harvest)
    details = {key: value for key, value in harvest.stats().items() if key != "announced"}
    mark_harvested(session, harvest.day, len(harvest.announcements), details, reopen_failed)
    record_completeness(session, harvest)
    return dropped


def _insert_announcements(session: Session, harvest: DayHarvest) -> None:
    if not harvest.announcements:
        return
    rows = [
        {"day": harvest.day, "arxiv_id": arxiv_id, "announce_type": str(kind)}
        for arxiv_id, kind in harvest.announcements.items()
    ]
    session.execute(_insert_for(session)(table_of(Announcement)).on_conflict_do_nothing(), rows)


def drop_translations_of_changed_text(session: Session, records: Sequence[PaperRecord]) -> list[str]:
    """Delete the translations of papers held with the feed's text whose API title or abstract differs.

    Such a translation was made from the feed's words while the details were fetched; the digest
    shows the API's, so the paper is translated again rather than mismatched. A refusal of the feed's
    words (TranslationRejection) goes too: the API's may translate.
    """
    incoming = {record.arxiv_id: record for record in records if record.details_source == "api"}
    ids = list(incoming)
    changed: list[str] = []
    for start in range(0, len(ids), 1000):
        rows = session.execute(
            select(col(Paper.arxiv_id), col(Paper.version), col(Paper.title), col(Paper.abstract)).where(
                col(Paper.arxiv_id).in_(ids[start:start + 1000]), col(Paper.details_source) != "api"
            )
        )
        for arxiv_id, version, title, abstract in rows:
            record = incoming[arxiv_id]
            if record.version >= version and (record.title, record.abstract) != (title, abstract):
                changed.append(arxiv_id)
    for start in range(0, len(changed), 1000):
        for model in (Translation, TranslationRejection):
            session.execute(delete(model).where(col(model.arxiv_id).in_(changed[start:start + 1000])))
    if changed:
        log.info("the API's text differs from the feed's for %s; their translations are made again", changed)
    return changed


def _gap_subjects(harvest: DayHarvest) -> dict[GapKind, list[str]]:
    return {
        GapKind.NOT_RETURNED: harvest.from_feed_only,
        GapKind.UNPARSED: harvest.skipped,
        GapKind.EMPTY_CATEGORY: harvest.empty_categories,
    }


def record_completeness(session: Session, harvest: DayHarvest) -> None:
    """Write the day's tally, per-category counts and named gaps, replacing any earlier ones (caller commits)."""
    for model in (HarvestTally, FeedCategoryCount, HarvestGap):
        session.execute(delete(model).where(col(model.day) == harvest.day))
    types = harvest.announced_types
    session.add(
        HarvestTally(
            day=harvest.day,
            source=harvest.source,
            announced_new=types[AnnounceType.NEW],
            announced_cross=types[AnnounceType.CROSS],
            announced_replace=types[AnnounceType.REPLACE],
            stored=harvest.stored,
            replace_not_held=harvest.replace_not_held,
            details_skipped=len(harvest.details_skipped),
        )
    )
    # A category is outside text: cut to its column, and counted again after the cut so no key repeats.
    per_category: Counter[tuple[str, str]] = Counter()
    for (category, kind), count in harvest.listed.items():
        per_category[(category[:32], str(kind))] += count
    session.add_all(
        FeedCategoryCount(day=harvest.day, category=category, announce_type=kind, count=count)
        for (category, kind), count in per_category.items()
    )
    gaps = {
        (kind, subject[:200]) for kind, subjects in _gap_subjects(harvest).items() for subject in subjects
    }
    session.add_all(HarvestGap(day=harvest.day, kind=kind, subject=subject) for kind, subject in sorted(gaps))
    session.flush()


def is_harvested(session: Session, day: dt.date) -> bool:
    """Whether the day's papers are stored already."""
    return bool(session.scalar(select(col(Run.harvested_at)).where(col(Run.day) == day)))


def last_harvested_before(session: Session, day: dt.date) -> dt.date | None:
    """The latest harvested day before `day`."""
    return session.scalar(
        select(col(Run.day))
        .where(col(Run.harvested_at).is_not(None), col(Run.day) < day)
        .order_by(col(Run.day).desc())
        .limit(1)
    )


def harvest_range(
    session: Session,
    feed_source: FeedSource,
    details_source: DetailsSource,
    first: dt.date | None = None,
    last: dt.date | None = None,
    categories: Sequence[str] = (),
) -> Iterator[str]:
    """Harvest the feed days in [first, last]: the current one from the feed, earlier ones from the API.

    Days stored already are left alone; everything is committed at once at the end.
    """
    if first and last and first > last:
        raise HarvestError(f"--from {first} is after --to {last}")
    feed = read_feed(feed_source)
    current = feed.day if feed.has_announcement else None
    last = last or current or first
    first = first or last
    if first is None or last is None:
        yield "no announcement in the feed (weekend or holiday); nothing to harvest"
        return
    days = [first] if first.weekday() < 5 else []
    days += feed_days_between(first, last + dt.timedelta(days=1))
    if not days:
        yield f"no feed day between {first} and {last}; nothing to harvest"
        return
    collected: list[DayHarvest] = []
    past = [d for d in days if d != current and not is_harvested(session, d) and (current is None or d < current)]
    for day in days:
        if is_harvested(session, day):
            yield f"{day}: already harvested; nothing fetched"
        elif current is not None and day > current:
            yield f"{day}: not announced yet (the feed shows {current})"
    if past:
        if not isinstance(details_source, SubmissionSearch) or not categories:
            raise HarvestError("past days need the arXiv API and NEWSLETTER_CATEGORIES to search submission windows")
        exclude = [i.record.arxiv_id for i in feed.items] if current in days else []
        collected += collect_missed_days(session, details_source, categories, past, exclude)
    if current in days and not is_harvested(session, current):
        collected.append(collect_feed_day(session, feed, details_source, categories))
    for day_harvest in collected:
        store_day(session, day_harvest)
    session.commit()
    for day_harvest in collected:
        stats = day_harvest.stats()
        yield (
            f"{day_harvest.day}: {stats['announced']} announced, {stats['replaced']} replaced, "
            f"{stats['from_feed_only']} from the feed only (from {day_harvest.source})"
        )
