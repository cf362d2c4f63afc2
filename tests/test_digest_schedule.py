"""Weekly digests, the empty-day note and the "Updated" section, end to end: the arXiv feed and API
stand-in, the production pipeline on SQLite and PostgreSQL, and what the SMTP server received."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.models import DigestFrequency
from newsletter.periods import WEEKDAY_NAMES, is_due, parse_frequency, parse_weekday, period_start, weekday_name
from newsletter.pipeline import production_transports, run_daily
from newsletter.subscribers import DigestChoices, find_subscriber, subscribe
from tests.conftest import make_settings
from tests.servers import ArxivServer, SmtpSink, build_feed
from tests.servers.arxiv import Paper, build_empty_feed, make_paper

CATEGORIES = ["cs.LG", "cs.AI"]
TUESDAY = dt.date(2026, 11, 24)


def feed_days(first: dt.date, count: int) -> list[dt.date]:
    """`count` announcement days (Monday to Friday) from `first` on."""
    days: list[dt.date] = []
    day = first
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day += dt.timedelta(days=1)
    return days


class Week:
    """Announcement days served one by one by the arXiv stand-in, each run through the real pipeline."""

    def __init__(self, session: Session, settings: Settings, arxiv: ArxivServer) -> None:
        self.session, self.settings, self.arxiv = session, settings, arxiv

    def announce(self, day: dt.date, items: list[tuple[Paper, str]]) -> str:
        self.arxiv.add_papers(*(paper for paper, _ in items))
        self.arxiv.set_feed(CATEGORIES, build_feed(day, items, categories=CATEGORIES))
        summary = run_daily(self.session, self.settings, production_transports(self.settings), day)
        return str(summary.status)


@pytest.fixture
def week(engine: Engine, tmp_path: Path, arxiv_server: ArxivServer, smtp_sink: SmtpSink) -> Iterator[Week]:
    """On SQLite (the embedded default) and PostgreSQL."""
    settings = make_settings(
        engine.url.render_as_string(hide_password=False), tmp_path,
        arxiv_feed_url=arxiv_server.feed_base_url, arxiv_api_url=arxiv_server.api_url, arxiv_delay_seconds=0,
        categories=CATEGORIES, redis_url="redis://127.0.0.1:1/0", mail_backend="smtp", smtp_host="127.0.0.1",
        smtp_port=smtp_sink.port, smtp_max_per_second=1000, base_url="https://digest.example.org",
    )
    with Session(engine, expire_on_commit=False) as session:
        yield Week(session, settings, arxiv_server)


def paper(number: int, title: str, **fields: object) -> Paper:
    return make_paper(f"2611.{number:05d}", title=title, categories=CATEGORIES, **fields)  # type: ignore[arg-type]


def received(sink: SmtpSink, address: str) -> list[EmailMessage]:
    return [
        email.message_from_bytes(m.raw, policy=email.policy.default)  # type: ignore[misc]
        for m in sink.messages_to(address)
    ]


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())  # type: ignore[attr-defined]


def html_of(message: EmailMessage) -> str:
    body = message.get_body(("html",))
    assert body is not None
    return str(body.get_content())  # type: ignore[attr-defined]


def cards(message: EmailMessage) -> list[str]:
    """The arXiv IDs shown as full cards (in the text part: each card has its abstract's abs link line)."""
    text = text_of(message).split("==== Updated ====")[0]
    return sorted(set(re.findall(r"https://arxiv\.org/abs/(2611\.\d{5})", text)))


def add(session: Session, address: str, keywords: list[str], **choices: object) -> None:
    subscribe(session, address, keywords, "EN-US", "UTC", confirmed=True, choices=DigestChoices(**choices))  # type: ignore[arg-type]
    session.commit()


def test_a_weekly_subscriber_gets_each_paper_once_across_two_weeks_and_a_switch_to_daily_and_back(
    week: Week, smtp_sink: SmtpSink
) -> None:
    days = feed_days(TUESDAY, 6)  # Tue, Wed, Thu, Fri, Mon, Tue
    papers = [paper(i + 1, f"Reinforcement learning study {i + 1}") for i in range(len(days))]
    add(week.session, "ada@example.org", ["reinforcement learning"], frequency="weekly", weekday="tue")
    add(week.session, "bob@example.org", ["reinforcement learning"])  # daily: the control

    statuses = []
    for number, (day, item) in enumerate(zip(days, papers, strict=True)):
        statuses.append(week.announce(day, [(item, "new")]))
        if number == 2:  # after Thursday's run: weekly -> daily, mid-week
            add(week.session, "ada@example.org", ["reinforcement learning"], frequency="daily")
        if number == 4:  # after Monday's run: back to weekly on Tuesdays
            add(week.session, "ada@example.org", ["reinforcement learning"], frequency="weekly")

    assert statuses == ["completed"] * len(days)
    ids = [p.arxiv_id for p in papers]
    ada = [cards(message) for message in received(smtp_sink, "ada@example.org")]
    # Tuesday (weekly, its day); Friday (daily now: Wednesday's and Thursday's papers carried, and Friday's);
    # Monday (daily); the next Tuesday (weekly again).
    assert ada == [[ids[0]], [ids[1], ids[2], ids[3]], [ids[4]], [ids[5]]]
    sent = [arxiv_id for digest in ada for arxiv_id in digest]
    assert sorted(sent) == sorted(ids) and len(sent) == len(set(sent))
    assert [cards(message) for message in received(smtp_sink, "bob@example.org")] == [[i] for i in ids]


def test_a_weekly_digest_waits_for_its_weekday_even_when_that_day_had_nothing_to_send(
    week: Week, smtp_sink: SmtpSink
) -> None:
    days = feed_days(TUESDAY, 8)  # Tue, Wed, Thu, Fri, Mon, Tue, Wed, Thu
    titles = ["Reinforcement learning", "Graph networks", "Graph networks"] + ["Reinforcement learning"] * 5
    papers = [paper(i + 1, f"{title} study {i + 1}") for i, title in enumerate(titles)]
    add(week.session, "ada@example.org", ["reinforcement learning"], frequency="weekly", weekday="thu")

    for day, item in zip(days, papers, strict=True):
        week.announce(day, [(item, "new")])
    week.announce(days[-1], [(papers[-1], "new")])  # the second Thursday again

    ada = [cards(message) for message in received(smtp_sink, "ada@example.org")]
    ids = [p.arxiv_id for p in papers]
    # The first Tuesday's run opened the period that began the Thursday before. Thursday had nothing
    # to send, so Friday's paper waits for the next Thursday instead of going out on Friday.
    assert ada == [[ids[0]], ids[3:]]


def test_the_empty_day_note_goes_only_to_who_asked_in_their_language_and_never_on_a_day_without_announcement(
    week: Week, smtp_sink: SmtpSink
) -> None:
    add(week.session, "carol@example.org", ["quantum chromodynamics", "lattice gauge"], empty_day_note=True)
    add(week.session, "dave@example.org", ["quantum chromodynamics"])
    subscribe(week.session, "erin@example.org", ["quantum chromodynamics"], "ZH-HANS", "Asia/Shanghai",
              confirmed=True, choices=DigestChoices(empty_day_note=True))
    week.session.commit()
    items = [(paper(i + 1, f"Graph networks {i + 1}"), "new") for i in range(4)]
    items.append((paper(9, "A cross-listed graph paper"), "cross"))

    assert week.announce(TUESDAY, items) == "completed"

    (note,) = received(smtp_sink, "carol@example.org")
    text = text_of(note)
    assert "arXiv announced 5 papers in your categories today; none matched quantum chromodynamics, lattice gauge" \
        in " ".join(text.split())
    assert "https://digest.example.org/manage/" in text and "https://digest.example.org/manage/" in html_of(note)
    raw = smtp_sink.messages_to("carol@example.org")[0].raw
    assert re.search(rb"^List-Unsubscribe: <https://digest\.example\.org/unsubscribe/[^>\s]+>\r$", raw, re.M)
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
    (chinese,) = received(smtp_sink, "erin@example.org")
    chinese_text = text_of(chinese)
    assert "arXiv 今天在您关注的分类中发布了 5 篇论文" in chinese_text and "quantum chromodynamics" in chinese_text
    assert received(smtp_sink, "dave@example.org") == []

    # Saturday: arXiv announces nothing, and nobody hears from us.
    saturday = TUESDAY + dt.timedelta(days=4)
    week.arxiv.set_feed(CATEGORIES, build_empty_feed(saturday, CATEGORIES))
    summary = run_daily(week.session, week.settings, production_transports(week.settings), None)
    assert summary.status == "no_announcement"
    assert len(smtp_sink.messages) == 2


def test_a_paper_sent_monday_and_replaced_wednesday_is_listed_as_updated_not_sent_again(
    week: Week, smtp_sink: SmtpSink
) -> None:
    monday, tuesday, wednesday = feed_days(dt.date(2026, 11, 23), 3)
    first = paper(1, "Reinforcement learning for robots")
    add(week.session, "ada@example.org", ["reinforcement learning"])
    add(week.session, "quiet@example.org", ["reinforcement learning"], updates=False)
    week.announce(monday, [(first, "new")])
    add(week.session, "late@example.org", ["reinforcement learning"])  # never received the first paper
    week.announce(tuesday, [(paper(2, "Reinforcement learning in games"), "new")])
    replaced = paper(1, "Reinforcement learning for robots", version=3, journal_ref="J. Robot. Learn. 4 (2027)")

    week.announce(wednesday, [(paper(3, "Reinforcement learning at scale"), "new"), (replaced, "replace")])

    monday_digest, _, wednesday_digest = received(smtp_sink, "ada@example.org")
    assert cards(monday_digest) == [first.arxiv_id]
    assert cards(wednesday_digest) == ["2611.00003"]  # no second card for the replaced paper
    text = text_of(wednesday_digest)
    updated = text.split("==== Updated ====")[1]
    assert "Reinforcement learning for robots" in updated and "v1 -> v3" in updated
    assert "J. Robot. Learn. 4 (2027)" in updated and f"https://arxiv.org/abs/{first.arxiv_id}" in updated
    html = html_of(wednesday_digest)
    assert "v1 -&gt; v3" in html and f'href="https://arxiv.org/abs/{first.arxiv_id}"' in html
    for address in ("late@example.org", "quiet@example.org"):
        assert "==== Updated ====" not in text_of(received(smtp_sink, address)[-1])

    # Reported once: Thursday's digest does not list it again.
    week.announce(wednesday + dt.timedelta(days=1), [(paper(4, "Reinforcement learning, again"), "new")])
    assert "==== Updated ====" not in text_of(received(smtp_sink, "ada@example.org")[-1])


def test_a_journal_reference_and_doi_gained_without_a_new_version_are_listed_once(
    week: Week, smtp_sink: SmtpSink
) -> None:
    monday, tuesday = feed_days(dt.date(2026, 11, 23), 2)
    first = paper(1, "Reinforcement learning for robots")
    add(week.session, "ada@example.org", ["reinforcement learning"])
    week.announce(monday, [(first, "new")])
    published = paper(1, "Reinforcement learning for robots", journal_ref="Nature 600, 1 (2027)",
                      doi="10.1038/s41586-027-00001-x")

    week.announce(tuesday, [(paper(2, "Reinforcement learning in games"), "new"), (published, "replace")])

    updated = text_of(received(smtp_sink, "ada@example.org")[-1]).split("==== Updated ====")[1]
    assert "journal reference: Nature 600, 1 (2027)" in updated
    assert "DOI: 10.1038/s41586-027-00001-x" in updated and "https://doi.org/10.1038/s41586-027-00001-x" in updated
    assert "new version" not in updated


def test_a_weekly_subscriber_who_asked_for_it_gets_the_note_for_a_week_without_matches(
    week: Week, smtp_sink: SmtpSink
) -> None:
    add(week.session, "ada@example.org", ["quantum chromodynamics"], frequency="weekly", weekday="wed",
        empty_day_note=True)
    days = feed_days(TUESDAY, 2)  # Tuesday opens the period begun last Wednesday; Wednesday opens the next
    for number, day in enumerate(days):
        week.announce(day, [(paper(10 * number + i, f"Graph networks {number} {i}"), "new") for i in range(1, 4)])

    notes = [text_of(message) for message in received(smtp_sink, "ada@example.org")]
    assert len(notes) == 2
    assert "arXiv announced 6 papers in your categories in the last 7 days" in " ".join(notes[1].split())


@pytest.mark.parametrize(
    ("day", "weekday", "start"),
    [
        (dt.date(2026, 11, 24), 1, dt.date(2026, 11, 24)),  # Tuesday, weekly on Tuesdays
        (dt.date(2026, 11, 23), 1, dt.date(2026, 11, 17)),  # Monday: the period began last Tuesday
        (dt.date(2026, 11, 30), 5, dt.date(2026, 11, 28)),  # Monday after a Saturday choice
    ],
)
def test_a_weekly_period_starts_on_the_latest_chosen_weekday(day: dt.date, weekday: int, start: dt.date) -> None:
    assert period_start(day, DigestFrequency.WEEKLY, weekday) == start
    assert period_start(day, DigestFrequency.DAILY, weekday) == day


def test_a_weekly_digest_is_due_on_the_first_announcement_day_of_its_period() -> None:
    saturday = parse_weekday("sat")
    monday = dt.date(2026, 11, 30)
    assert is_due(monday, DigestFrequency.WEEKLY, saturday, [dt.date(2026, 11, 27)])  # Friday is last period
    assert not is_due(monday + dt.timedelta(days=1), DigestFrequency.WEEKLY, saturday, [monday])
    assert is_due(monday, DigestFrequency.DAILY, saturday, [monday - dt.timedelta(days=1)])


@pytest.mark.parametrize("text", ["", "m", "mo", "Moon", "8", "周一", "monday\n", "tues day"])
def test_a_weekday_that_is_not_one_is_refused(text: str) -> None:
    if text.strip().lower() in ("monday",):
        assert parse_weekday(text) == 0
        return
    with pytest.raises(ValueError, match="is not a weekday"):
        parse_weekday(text)


@given(st.text(max_size=40))
def test_any_typed_weekday_or_frequency_is_read_as_one_of_the_choices_or_refused_with_a_reason(text: str) -> None:
    try:
        weekday = parse_weekday(text)
    except ValueError as exc:
        assert "is not a weekday" in str(exc)
    else:
        assert weekday_name(weekday) == text.strip().lower()[:3]
    try:
        frequency = parse_frequency(text)
    except ValueError as exc:
        assert "is not a frequency" in str(exc)
    else:
        assert frequency in ("daily", "weekly")


@given(st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2100, 1, 1)), st.integers(0, 6))
def test_every_day_falls_in_the_week_that_began_on_its_latest_chosen_weekday(day: dt.date, weekday: int) -> None:
    start = period_start(day, DigestFrequency.WEEKLY, weekday)
    assert start.weekday() == weekday and dt.timedelta(0) <= day - start < dt.timedelta(days=7)
    assert parse_weekday(WEEKDAY_NAMES[weekday].upper()) == weekday


def test_subscriber_choices_stored_by_subscribe_are_kept_when_an_update_omits_them(week: Week) -> None:
    add(week.session, "ada@example.org", ["rl"], frequency="weekly", weekday="Friday", empty_day_note=True,
        updates=False)
    add(week.session, "ada@example.org", ["rl", "robots"])
    stored = find_subscriber(week.session, "ada@example.org")
    assert stored is not None
    assert (stored.frequency, stored.weekday, stored.empty_day_note, stored.updates) == ("weekly", 4, True, False)
