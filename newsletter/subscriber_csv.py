"""Subscribers in bulk: a CSV file in, each row checked by the one validator and stored in batches; and out again.

The format is one table, `COLUMNS`: a column's header, where its value goes, how a cell is read and
written. Import and export both follow it, so a new column is one line there (and, for a new
subscriber setting, its model attribute).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy import func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from newsletter.config import Settings
from newsletter.periods import parse_frequency, parse_weekday, weekday_name
from newsletter.subscriber_tables import (
    DigestFrequency,
    Subscriber,
    SubscriberKeyword,
    SubscriberStatus,
    table_of,
    utcnow,
)
from newsletter.subscribers import LEFT, SubscriptionError, confirm, replace_keywords, validate

# Rows checked and written together: one round trip per table per batch.
BATCH_SIZE = 500
# No real cell comes near this (20 keywords of at most 200 characters); a longer one is a broken file.
MAX_CELL_CHARACTERS = 5_000
KEYWORD_SEPARATOR = ";"
YES = ("yes", "true", "1", "y")
NO = ("no", "false", "0", "n", "")
UTF8_BOM = b"\xef\xbb\xbf"


class CsvError(ValueError):
    """The file as a whole cannot be imported (its header); the message says why."""


def split_keywords(cell: str) -> list[str]:
    """The keywords of a cell: separated by `;` outside double quotes (`ti:"a;b"` is one keyword)."""
    if '"' not in cell:  # most cells: no quotes to look inside
        return [keyword.strip() for keyword in cell.split(KEYWORD_SEPARATOR) if keyword.strip()]
    keywords: list[str] = []
    current: list[str] = []
    quoted = False
    for char in cell:
        if char == '"':
            quoted = not quoted
        if char == KEYWORD_SEPARATOR and not quoted:
            keywords.append("".join(current))
            current = []
        else:
            current.append(char)
    keywords.append("".join(current))
    return [keyword.strip() for keyword in keywords if keyword.strip()]


def join_keywords(keywords: Sequence[str]) -> str:
    """The cell `split_keywords` reads back as `keywords`."""
    return f"{KEYWORD_SEPARATOR} ".join(keywords)


def read_yes_no(cell: str) -> bool:
    """yes/no, true/false, 1/0 (any case); empty is no."""
    value = cell.strip().lower()
    if value in YES:
        return True
    if value in NO:
        return False
    raise ValueError(f"must be yes or no, not {cell.strip()!r}")


@dataclass(frozen=True)
class Column:
    """One CSV column: its header, the key of its value, and how a cell is read and written."""

    header: str
    key: str
    read: Callable[[str], Any] = str.strip  # ValueError: the reason the row is refused
    write: Callable[[Any], str] = str
    # The cell of a file that has no such column; None: the column is required.
    default: str | None = ""
    # A plain Subscriber attribute of that name, compared and copied as it is.
    attribute: bool = False
    # For a choice read as None (an empty cell): a new subscriber gets this, a stored one keeps theirs.
    new_value: Any = None


def optional(read: Callable[[str], Any]) -> Callable[[str], Any]:
    """`read` for a cell that may be left empty: None then."""
    return lambda cell: read(cell) if cell.strip() else None


def write_yes_no(value: bool) -> str:
    return "yes" if value else "no"


COLUMNS: tuple[Column, ...] = (
    Column("email", "email", default=None),
    Column("keywords", "keywords", read=split_keywords, write=join_keywords, default=None),
    Column("language", "language", attribute=True),  # empty: NEWSLETTER_DEFAULT_LANGUAGE
    Column("time_zone", "timezone", attribute=True),  # empty: NEWSLETTER_DEFAULT_TIMEZONE
    Column("confirmed", "confirmed", read=read_yes_no, write=write_yes_no),
    # The digest choices: empty keeps what is stored (a new subscriber: daily, mon, no note, updates).
    Column("frequency", "frequency", read=optional(parse_frequency), write=str, attribute=True,
           new_value=DigestFrequency.DAILY),
    Column("weekday", "weekday", read=optional(parse_weekday), write=weekday_name, attribute=True, new_value=0),
    Column("empty_day_note", "empty_day_note", read=optional(read_yes_no), write=write_yes_no, attribute=True,
           new_value=False),
    Column("updates", "updates", read=optional(read_yes_no), write=write_yes_no, attribute=True, new_value=True),
)
HEADERS = tuple(column.header for column in COLUMNS)


@dataclass(frozen=True)
class CsvRow:
    """One record of the file: the line it starts on, its cells by header, or why it cannot be read."""

    line: int
    cells: dict[str, str]
    problem: str | None = None

    @property
    def email(self) -> str:
        return self.cells.get("email", "").strip()


@dataclass(frozen=True)
class Refusal:
    line: int
    email: str
    reason: str


@dataclass
class ImportReport:
    """What the import did, row by row counted."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    refused: list[Refusal] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.added + self.updated + self.unchanged + len(self.refused)

    def summary(self) -> str:
        return (
            f"{self.total} row(s): {self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{len(self.refused)} refused"
        )


# ---------------------------------------------------------------------------------------
# Reading the file
# ---------------------------------------------------------------------------------------


def read_csv(data: bytes) -> list[CsvRow]:
    """The file's records, each with its cells or the reason it cannot be read; CsvError for a bad header."""
    # Bytes that are not UTF-8 stay as surrogates, so only their rows are refused, not the file.
    text = data.removeprefix(UTF8_BOM).decode("utf-8", errors="surrogateescape")
    records = _records(text)
    header = next((record for record in records if record.cells), None)
    if header is None:
        raise CsvError(f"the file has no header line; the columns are: {', '.join(HEADERS)}")
    headers = _check_header(header)
    return [_row(record, headers) for record in records if record.line > header.line and _has_content(record)]


@dataclass(frozen=True)
class _Record:
    line: int
    cells: dict[str, str]  # by position ("0", "1", ...) until the header names them
    problem: str | None = None


def _records(text: str) -> list[_Record]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[_Record] = []
    last_line = 0
    while True:
        start = last_line + 1
        try:
            cells = next(reader)
        except StopIteration:
            return records
        except csv.Error as exc:  # a broken quote or a huge field: that record only, the reader goes on
            records.append(_Record(start, {}, f"not valid CSV: {exc}"))
        else:
            records.append(_Record(start, {str(index): cell for index, cell in enumerate(cells)}))
        last_line = reader.line_num


def _check_header(header: _Record) -> list[str]:
    names = [_printable(cell).strip().lower() for cell in header.cells.values()]
    unknown = [name for name in names if name not in HEADERS]
    missing = [column.header for column in COLUMNS if column.default is None and column.header not in names]
    repeated = sorted({name for name in names if names.count(name) > 1})
    expected = f"the columns are: {', '.join(HEADERS)}"
    if unknown or missing or repeated:
        what = [f"unknown column(s) {', '.join(map(repr, unknown))}"] if unknown else []
        what += [f"missing column(s) {', '.join(missing)}"] if missing else []
        what += [f"repeated column(s) {', '.join(repeated)}"] if repeated else []
        raise CsvError(f"line {header.line}: {'; '.join(what)} ({expected})")
    return names


def _has_content(record: _Record) -> bool:
    # An empty line, or one of commas only (spreadsheets write those), is no row.
    return record.problem is not None or any(cell.strip() for cell in record.cells.values())


def _row(record: _Record, headers: list[str]) -> CsvRow:
    values = list(record.cells.values())
    cells = dict(zip(headers, values, strict=False))
    if record.problem:
        return CsvRow(record.line, cells, record.problem)
    if len(values) > len(headers):
        return CsvRow(record.line, cells, f"{len(values)} cells, but the header has {len(headers)} columns")
    for header, cell in cells.items():
        if _printable(cell) != cell:
            return CsvRow(record.line, {"email": _printable(cells.get("email", ""))}, f"{header}: not UTF-8 text")
        if len(cell) > MAX_CELL_CHARACTERS:
            return CsvRow(
                record.line, {"email": cells.get("email", "")[:100]},
                f"{header}: {len(cell)} characters, at most {MAX_CELL_CHARACTERS}",
            )
    return CsvRow(record.line, cells)


def _printable(cell: str) -> str:
    """The cell with bytes that were not UTF-8 shown as U+FFFD."""
    return cell.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------
# Checking and storing rows
# ---------------------------------------------------------------------------------------


def checked_values(row: CsvRow, settings: Settings) -> dict[str, Any]:
    """The row's values by column key, checked by the subscriber service's one validator; ValueError says why."""
    if row.problem:
        raise ValueError(row.problem)
    values: dict[str, Any] = {}
    for column in COLUMNS:
        cell = row.cells.get(column.header, column.default or "")
        try:
            values[column.key] = column.read(cell)
        except ValueError as exc:
            raise ValueError(f"{column.header}: {exc}") from exc
    request = validate(
        values["email"],
        values["keywords"],
        values["language"] or settings.default_language,
        values["timezone"] or settings.default_timezone,
    )
    preferences = request.preferences
    values.update(
        email=request.email, keywords=preferences.keywords, language=preferences.language, timezone=preferences.timezone
    )
    return values


def import_subscribers(
    session: Session, settings: Settings, rows: Sequence[CsvRow], advance: Callable[[int], None] = lambda n: None
) -> ImportReport:
    """Add or update a subscriber per row, in batches, committing after each; refused rows are reported.

    A row is stored whole or not at all; a rerun of the same file changes nothing. An import never
    subscribes again an address that unsubscribed or bounced, and `confirmed: no` never takes back a
    confirmation.
    """
    report = ImportReport()
    first_line: dict[str, int] = {}
    for batch in _batches(rows, BATCH_SIZE):
        accepted: list[tuple[CsvRow, dict[str, Any]]] = []
        for row in batch:
            try:
                values = checked_values(row, settings)
            except (ValueError, SubscriptionError) as exc:
                report.refused.append(Refusal(row.line, row.email, str(exc)))
                continue
            key = values["email"].lower()
            if key in first_line:
                report.refused.append(Refusal(row.line, row.email, f"the address is on line {first_line[key]} already"))
                continue
            first_line[key] = row.line
            accepted.append((row, values))
        _store_batch(session, accepted, report)
        advance(len(batch))
    return report


def _batches(rows: Sequence[CsvRow], size: int) -> Iterator[Sequence[CsvRow]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _store_batch(session: Session, accepted: list[tuple[CsvRow, dict[str, Any]]], report: ImportReport) -> None:
    counts = ImportReport()
    try:
        with session.begin_nested():
            _write(session, accepted, counts)
    except SQLAlchemyError:
        # Something in the batch was refused by the database (a row added meanwhile by someone else,
        # say): row by row, each on its own, so only that row is lost.
        counts = ImportReport()
        for row, values in accepted:
            try:
                with session.begin_nested():
                    _write(session, [(row, values)], counts)
            except SQLAlchemyError as exc:
                reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                counts.refused.append(Refusal(row.line, row.email, f"the database refused it: {reason}"))
    session.commit()
    report.added += counts.added
    report.updated += counts.updated
    report.unchanged += counts.unchanged
    report.refused += counts.refused


def _write(session: Session, accepted: list[tuple[CsvRow, dict[str, Any]]], counts: ImportReport) -> None:
    existing = _existing(session, [values["email"] for _, values in accepted])
    new: list[dict[str, Any]] = []
    for row, values in accepted:
        found = existing.get(values["email"].lower())
        if found is None:
            new.append(values)
            continue
        subscriber, keywords = found
        if subscriber.status in LEFT:
            reason = f"{subscriber.status}: an import does not subscribe again an address that left"
            counts.refused.append(Refusal(row.line, row.email, reason))
        elif _update(session, subscriber, keywords, values):
            counts.updated += 1
        else:
            counts.unchanged += 1
    _insert(session, new)
    session.flush()
    counts.added += len(new)


def _existing(session: Session, emails: Iterable[str]) -> dict[str, tuple[Subscriber, list[str]]]:
    """The stored subscribers with these addresses (any case) and their keywords, by lower-cased address."""
    lowered = sorted({email.lower() for email in emails})
    if not lowered:
        return {}
    subscribers = session.scalars(select(Subscriber).where(func.lower(col(Subscriber.email)).in_(lowered))).all()
    keywords: dict[int | None, list[str]] = {subscriber.id: [] for subscriber in subscribers}
    for subscriber_id, expression in session.execute(
        select(col(SubscriberKeyword.subscriber_id), col(SubscriberKeyword.expression))
        .where(col(SubscriberKeyword.subscriber_id).in_(list(keywords)))
        .order_by(col(SubscriberKeyword.subscriber_id), col(SubscriberKeyword.position))
    ):
        keywords[subscriber_id].append(expression)
    return {subscriber.email.lower(): (subscriber, keywords[subscriber.id]) for subscriber in subscribers}


def _update(session: Session, subscriber: Subscriber, keywords: list[str], values: dict[str, Any]) -> bool:
    """Bring a stored subscriber to the row's values; False when they are already there."""
    attributes = {
        column.key: values[column.key] for column in COLUMNS if column.attribute and values[column.key] is not None
    }
    confirming = values["confirmed"] and subscriber.status == SubscriberStatus.PENDING
    if not confirming and keywords == values["keywords"] and all(
        getattr(subscriber, name) == value for name, value in attributes.items()
    ):
        return False
    for name, value in attributes.items():
        setattr(subscriber, name, value)
    if confirming:
        confirm(subscriber)
    if keywords != values["keywords"]:
        replace_keywords(session, subscriber, values["keywords"])
    return True


def _or_new(value: Any, column: Column) -> Any:
    return column.new_value if value is None else value


def _insert(session: Session, new: list[dict[str, Any]]) -> None:
    if not new:
        return
    now = utcnow()
    # One multi-row INSERT ... RETURNING per table (the ORM would add them one by one), on the Core
    # tables: the ORM's bulk insert costs more than the statements themselves, for the same ones. The
    # new IDs come back with their addresses: asked for in the rows' order, SQLite would insert row by row.
    subscriber_rows = [
        {
            **{column.key: _or_new(values[column.key], column) for column in COLUMNS if column.attribute},
            "email": values["email"],
            "status": SubscriberStatus.ACTIVE if values["confirmed"] else SubscriberStatus.PENDING,
            "created_at": now,
            "confirmed_at": now if values["confirmed"] else None,
            "consecutive_hard_failures": 0,
        }
        for values in new
    ]
    subscribers = table_of(Subscriber)
    inserted = session.execute(insert(subscribers).returning(subscribers.c.email, subscribers.c.id), subscriber_rows)
    ids: dict[str, int] = dict(inserted.all())
    keyword_rows = [
        {"subscriber_id": ids[values["email"]], "position": position, "expression": keyword}
        for values in new
        for position, keyword in enumerate(values["keywords"])
    ]
    session.execute(insert(table_of(SubscriberKeyword)), keyword_rows)


# ---------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------


def exported_values(session: Session) -> Iterator[dict[str, Any]]:
    """Every subscriber who has not left, as values by column key, in address order."""
    subscribers = session.scalars(
        select(Subscriber).where(col(Subscriber.status).not_in(list(LEFT))).order_by(col(Subscriber.email))
    )
    for chunk in _chunks(subscribers, BATCH_SIZE):
        keywords = _existing(session, [subscriber.email for subscriber in chunk])
        for subscriber in chunk:
            values = {column.key: getattr(subscriber, column.key) for column in COLUMNS if column.attribute}
            values.update(
                email=subscriber.email,
                keywords=keywords[subscriber.email.lower()][1],
                confirmed=subscriber.status != SubscriberStatus.PENDING,
            )
            yield values


def _chunks(items: Iterable[Subscriber], size: int) -> Iterator[list[Subscriber]]:
    chunk: list[Subscriber] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_rows(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    """Write values by column key in the format `read_csv` reads; returns how many rows."""
    writer = csv.writer(out)
    writer.writerow(HEADERS)
    count = 0
    for values in rows:
        writer.writerow([column.write(values[column.key]) for column in COLUMNS])
        count += 1
    return count


def write_csv(session: Session, out: TextIO) -> int:
    """Write the subscribers who have not left; returns how many."""
    return write_rows(exported_values(session), out)
