"""`newsletter subscribers import / export`: CSV in and out, row by row refusals, reruns that change nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from newsletter.config import Settings
from newsletter.models import DigestFrequency, Subscriber, SubscriberKeyword, SubscriberStatus
from newsletter.subscriber_csv import (
    HEADERS,
    MAX_CELL_CHARACTERS,
    CsvError,
    ImportReport,
    checked_values,
    import_subscribers,
    read_csv,
    split_keywords,
    write_csv,
    write_rows,
)
from newsletter.subscribers import LANGUAGES, keywords_of, subscribe, unsubscribe
from tests.conftest import inserts_refused, make_settings
from tests.test_cli import run

HEADER = "email,keywords,language,time_zone,confirmed\r\n"


def import_text(session: Session, settings: Settings, data: bytes | str) -> ImportReport:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return import_subscribers(session, settings, read_csv(raw))


def stored(session: Session) -> dict[str, tuple[str, str, str, list[str]]]:
    """Every subscriber: address -> (status, language, time zone, keywords)."""
    session.expire_all()
    return {
        s.email: (s.status, s.language, s.timezone, keywords_of(session, s))
        for s in session.scalars(select(Subscriber).order_by(col(Subscriber.email)))
    }


def test_an_import_adds_subscribers_with_their_keywords_language_zone_and_confirmation(
    session: Session, settings: Settings
) -> None:
    report = import_text(
        session, settings,
        HEADER
        + "ada@example.org,reinforcement learning; diffusion policy,EN-US,Europe/London,yes\r\n"
        + "Grace@Example.org,deep learning,,,no\r\n",
    )

    assert (report.added, report.updated, report.unchanged, report.refused) == (2, 0, 0, [])
    assert stored(session) == {
        "ada@example.org": (SubscriberStatus.ACTIVE, "EN-US", "Europe/London",
                            ["reinforcement learning", "diffusion policy"]),
        "grace@example.org": (SubscriberStatus.PENDING, "ZH-HANS", "Asia/Shanghai", ["deep learning"]),
    }


def test_running_the_same_file_again_changes_nothing_and_counts_every_row_unchanged(
    session: Session, settings: Settings
) -> None:
    data = HEADER + "".join(f"reader{n}@example.org,topic {n}; graph neural network,,,yes\r\n" for n in range(1203))
    first = import_text(session, settings, data)
    before = stored(session)
    ids = session.scalars(select(SubscriberKeyword.id).order_by(col(SubscriberKeyword.id))).all()

    again = import_text(session, settings, data)

    assert (first.added, again.added, again.updated, again.unchanged) == (1203, 0, 0, 1203)
    assert stored(session) == before
    assert session.scalars(select(SubscriberKeyword.id).order_by(col(SubscriberKeyword.id))).all() == ids


def test_a_changed_row_updates_only_that_subscriber(session: Session, settings: Settings) -> None:
    import_text(session, settings, HEADER + "ada@example.org,rl,,,no\r\nbob@example.org,rl,,,yes\r\n")

    changed = HEADER + "ada@example.org,rl; robotics,JA,,yes\r\nbob@example.org,rl,,,no\r\n"
    report = import_text(session, settings, changed)

    assert (report.updated, report.unchanged) == (1, 1)
    assert stored(session)["ada@example.org"] == (SubscriberStatus.ACTIVE, "JA", "Asia/Shanghai", ["rl", "robotics"])
    # "confirmed: no" never takes a confirmation back.
    assert stored(session)["bob@example.org"][0] == SubscriberStatus.ACTIVE


def test_the_digest_choices_are_columns_and_an_empty_cell_keeps_what_is_stored(
    session: Session, settings: Settings
) -> None:
    header = "email,keywords,frequency,weekday,empty_day_note,updates\r\n"
    import_text(session, settings, header + "ada@example.org,rl,weekly,wed,yes,no\r\nbob@example.org,rl,,,,\r\n")
    subscribers = session.scalars(select(Subscriber))
    choices = {s.email: (s.frequency, s.weekday, s.empty_day_note, s.updates) for s in subscribers}
    assert choices == {"ada@example.org": (DigestFrequency.WEEKLY, 2, True, False),
                       "bob@example.org": (DigestFrequency.DAILY, 0, False, True)}

    again = import_text(session, settings, header + "ada@example.org,rl,,fri,,\r\nbob@example.org,rl,monthly,,,\r\n")

    session.expire_all()
    ada = session.scalars(select(Subscriber).where(col(Subscriber.email) == "ada@example.org")).one()
    assert (ada.frequency, ada.weekday, ada.empty_day_note, ada.updates) == (DigestFrequency.WEEKLY, 4, True, False)
    assert [(r.line, r.email) for r in again.refused] == [(3, "bob@example.org")]
    assert "frequency" in again.refused[0].reason and "monthly" in again.refused[0].reason


def test_an_address_that_unsubscribed_is_not_subscribed_again_by_an_import(
    session: Session, settings: Settings
) -> None:
    unsubscribe(subscribe(session, "ada@example.org", ["rl"], confirmed=True))
    session.commit()

    report = import_text(session, settings, HEADER + "ada@example.org,rl,,,yes\r\n")

    assert [(r.line, r.email) for r in report.refused] == [(2, "ada@example.org")]
    assert "unsubscribed" in report.refused[0].reason
    assert stored(session)["ada@example.org"][0] == SubscriberStatus.UNSUBSCRIBED


def test_export_writes_what_import_reads_and_the_round_trip_changes_nothing(
    session: Session, settings: Settings
) -> None:
    subscribe(session, "ada@example.org", ["reinforcement learning", 'ti:"a; b"', "x, y"], "EN-US", "UTC",
              confirmed=True)
    subscribe(session, "bob@example.org", ["deep learning"])
    unsubscribe(subscribe(session, "gone@example.org", ["rl"], confirmed=True))
    session.commit()
    out = io.StringIO()

    assert write_csv(session, out) == 2

    assert out.getvalue().splitlines() == [
        ",".join(HEADERS),
        'ada@example.org,"reinforcement learning; ti:""a; b""; x, y",EN-US,UTC,yes,daily,mon,no,yes',
        "bob@example.org,deep learning,ZH-HANS,Asia/Shanghai,no,daily,mon,no,yes",
    ]
    report = import_text(session, settings, out.getvalue())
    assert (report.added, report.updated, report.unchanged, report.refused) == (0, 0, 2, [])


def test_a_row_the_database_refuses_is_stored_not_at_all_and_the_others_are(
    session: Session, settings: Settings, engine: Engine
) -> None:
    with inserts_refused(engine, "subscriber_keyword", "disk full"):
        report = import_text(session, settings, HEADER + "ada@example.org,rl,,,yes\r\nbob@example.org,rl,,,yes\r\n")

    assert [(r.line, r.email) for r in report.refused] == [(2, "ada@example.org"), (3, "bob@example.org")]
    assert all("the database refused it" in r.reason and "disk full" in r.reason for r in report.refused)
    # No subscriber without their keywords: each row was written whole or not at all.
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 0
    again = import_text(session, settings, HEADER + "ada@example.org,rl,,,yes\r\n")
    assert again.added == 1


# --- hostile but real files ---------------------------------------------------------------------

HOSTILE = {
    "BOM and CRLF": (b"\xef\xbb\xbf" + HEADER.encode() + b"ada@example.org,rl,,,yes\r\n", ["ada@example.org"], []),
    "LF only, columns in another order": (
        b"confirmed,email,keywords\nyes,ada@example.org,rl\n", ["ada@example.org"], [],
    ),
    "quoted semicolons and commas": (
        (HEADER + 'ada@example.org,"ti:""a;b""; graph, neural",,,yes\r\n').encode(), ["ada@example.org"], [],
    ),
    "empty lines and comma-only lines": (
        (HEADER + "\r\n\r\nada@example.org,rl,,,yes\r\n,,,,\r\n\r\n").encode(), ["ada@example.org"], [],
    ),
    "the same address twice, in two spellings": (
        (HEADER + "ada@example.org,rl,,,yes\r\nADA@example.org,other,,,yes\r\n").encode(),
        ["ada@example.org"], [(3, "on line 2 already")],
    ),
    "bytes that are not UTF-8": (
        HEADER.encode() + b"ada@example.org,r\xe9seaux,,,yes\r\nbob@example.org,rl,,,yes\r\n",
        ["bob@example.org"], [(2, "keywords: not UTF-8 text")],
    ),
    "a huge field": (
        (HEADER + f"ada@example.org,{'x' * 200_000},,,yes\r\nbob@example.org,rl,,,yes\r\n").encode(),
        ["bob@example.org"], [(2, "field larger than field limit")],
    ),
    "a long field under the CSV limit": (
        (HEADER + f"ada@example.org,{'x' * 20_000},,,yes\r\nbob@example.org,rl,,,yes\r\n").encode(),
        ["bob@example.org"], [(2, f"at most {MAX_CELL_CHARACTERS}")],
    ),
    "a quote left open swallows the rest, which is refused": (
        (HEADER + 'ada@example.org,rl,,,yes\r\nbob@example.org,"rl,,,yes\r\ncy@example.org,rl,,,yes\r\n').encode(),
        ["ada@example.org"], [(3, "not valid CSV")],
    ),
    "too many cells": (
        (HEADER + "ada@example.org,rl,,,yes,extra\r\nbob@example.org,rl\r\n").encode(),
        ["bob@example.org"], [(2, "6 cells, but the header has 5")],
    ),
    "bad values, each row on its own": (
        (HEADER + "not-an-address,rl,,,\r\nada@example.org,(rl,,,\r\nbob@example.org,rl,XX,,\r\n"
         "cy@example.org,rl,,Mars/Base,\r\ndee@example.org,,,,\r\neve@example.org,rl,,,maybe\r\n"
         "fay@example.org,rl,,,\r\n").encode(),
        ["fay@example.org"],
        [(2, "not valid"), (3, "position 1: unbalanced parenthesis"), (4, "'XX' is not a supported language"),
         (5, "'Mars/Base' is not a known time zone"), (6, "give at least one keyword"),
         (7, "confirmed: must be yes or no")],
    ),
}


@pytest.mark.parametrize(("data", "added", "refused"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_files_refuse_only_their_bad_rows_with_the_line_and_reason(
    session: Session, settings: Settings, data: bytes, added: list[str], refused: list[tuple[int, str]]
) -> None:
    report = import_subscribers(session, settings, read_csv(data))

    assert sorted(stored(session)) == added
    assert [r.line for r in report.refused] == [line for line, _ in refused]
    for refusal, (_, reason) in zip(report.refused, refused, strict=True):
        assert reason in refusal.reason, refusal


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no header line"),
        (b"\r\n\r\n", "no header line"),
        (b"mail,keywords\r\nada@example.org,rl\r\n", "unknown column(s) 'mail'; missing column(s) email"),
        (b"email,keywords,timezone\r\n", "unknown column(s) 'timezone'"),
        (b"email,keywords,email\r\n", "repeated column(s) email"),
        (b"ada@example.org,rl,,,yes\r\n", "unknown column(s)"),
    ],
)
def test_a_file_whose_header_is_wrong_is_refused_whole_naming_the_columns(data: bytes, reason: str) -> None:
    with pytest.raises(CsvError) as raised:
        read_csv(data)
    assert reason in str(raised.value)
    assert "the columns are: email, keywords, language, time_zone, confirmed" in str(raised.value)


# --- properties -----------------------------------------------------------------------------------

WORDS = st.sampled_from(["graph", "neural", "network", "diffusion", "policy", "robot", "transformer", "learning"])
KEYWORD = st.one_of(
    st.lists(WORDS, min_size=1, max_size=3).map(" ".join),
    st.lists(WORDS, min_size=2, max_size=3).map(lambda words: f'ti:"{"; ".join(words)}"'),
    st.tuples(WORDS, WORDS).map(lambda pair: f"{pair[0]}, {pair[1]}"),
)
ROW = st.fixed_dictionaries({
    "email": st.from_regex(r"[a-z][a-z0-9+]{0,10}(\.[a-z0-9]{1,5})?@[a-z]{1,8}\.org", fullmatch=True),
    "keywords": st.lists(KEYWORD, min_size=1, max_size=5, unique_by=lambda k: k.replace(",", "").casefold()),
    "language": st.sampled_from(sorted(LANGUAGES)),
    "timezone": st.sampled_from(["UTC", "Asia/Shanghai", "America/New_York", "Europe/Berlin"]),
    "confirmed": st.booleans(),
    "frequency": st.sampled_from(list(DigestFrequency)),
    "weekday": st.integers(0, 6),
    "empty_day_note": st.booleans(),
    "updates": st.booleans(),
})


@given(st.lists(ROW, max_size=8, unique_by=lambda row: row["email"]))
def test_what_is_written_reads_back_as_the_same_values(rows: list[dict[str, object]]) -> None:
    out = io.StringIO()
    write_rows(rows, out)
    settings = make_settings("sqlite://", Path("."))

    read = [checked_values(row, settings) for row in read_csv(out.getvalue().encode("utf-8"))]

    assert read == rows


@given(st.binary(max_size=400))
def test_any_bytes_give_rows_or_a_header_error_never_a_crash(data: bytes) -> None:
    settings = make_settings("sqlite://", Path("."))
    try:
        rows = read_csv(HEADER.encode() + data)
    except CsvError:
        return
    for row in rows:
        try:
            checked_values(row, settings)
        except ValueError as exc:  # InvalidInput is a ValueError too
            assert str(exc)


@given(st.text(alphabet=st.characters(blacklist_characters='"'), max_size=80))
def test_without_quotes_keywords_are_the_semicolon_separated_parts(cell: str) -> None:
    assert split_keywords(cell) == [part.strip() for part in cell.split(";") if part.strip()]


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters='";'), min_size=1, max_size=10), max_size=4))
def test_a_quoted_phrase_keeps_its_semicolons(words: list[str]) -> None:
    phrase = f'ti:"{"; ".join(words)}"'
    assert split_keywords(f"first; {phrase}; last") == ["first", phrase.strip(), "last"]


# --- the command ----------------------------------------------------------------------------------


def test_the_import_command_reports_each_refused_row_and_exits_non_zero_and_a_rerun_changes_nothing(
    tmp_path: Path,
) -> None:
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    (tmp_path / "people.csv").write_bytes(
        (HEADER + "ada@example.org,rl,,,yes\r\nbroken,rl,,,yes\r\nbob@example.org,rl,,,no\r\n").encode()
    )

    first = run(["subscribers", "import", "people.csv"], tmp_path)
    again = run(["subscribers", "import", "people.csv"], tmp_path)

    assert first.returncode != 0
    assert first.stdout.splitlines() == [
        "line 3: broken: that email address is not valid: An email address must have an @-sign.",
        "3 row(s): 2 added, 0 updated, 0 unchanged, 1 refused",
    ]
    assert first.stderr.strip().splitlines()[-1] == (
        "newsletter: 1 of 3 row(s) refused (listed above); the rest is stored"
    )
    assert again.stdout.splitlines()[-1] == "3 row(s): 0 added, 0 updated, 2 unchanged, 1 refused"
    exported = run(["subscribers", "export", "out.csv"], tmp_path)
    assert exported.returncode == 0 and exported.stdout == "wrote 2 subscriber(s) to out.csv\n"
    back = run(["subscribers", "import", "out.csv"], tmp_path)
    assert back.returncode == 0 and back.stdout.splitlines() == ["2 row(s): 0 added, 0 updated, 2 unchanged, 0 refused"]


def test_the_import_command_refuses_a_missing_file_or_a_bad_header_in_one_line(tmp_path: Path) -> None:
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    (tmp_path / "wrong.csv").write_text("name,mail\nAda,ada@example.org\n")

    missing = run(["subscribers", "import", "nothing.csv"], tmp_path)
    wrong = run(["subscribers", "import", "wrong.csv"], tmp_path)

    assert missing.returncode != 0 and missing.stderr.startswith("newsletter: cannot read nothing.csv")
    assert wrong.returncode != 0
    assert wrong.stderr.strip().splitlines() == [
        "newsletter: wrong.csv: line 1: unknown column(s) 'name', 'mail'; missing column(s) email, keywords "
        "(the columns are: email, keywords, language, time_zone, confirmed, frequency, weekday, "
        "empty_day_note, updates)"
    ]
