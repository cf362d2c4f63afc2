"""Translation through the production DeepL client against the local DeepL stand-in, seen in the mailed digests."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from newsletter.demo import sample_transports
from newsletter.mail.outbox import OutboxBackend, outbox_name
from newsletter.matching import select_papers_for_day
from newsletter.models import Announcement, DeepLGlossary, DeepLUsage, Paper, Run, Translation, utcnow
from newsletter.pipeline import Transports, run_daily
from newsletter.status import status_lines
from newsletter.subscribers import find_subscriber, subscribe, unsubscribe
from newsletter.translate import (
    BUNDLED_GLOSSARIES,
    GlossaryError,
    TranslateResult,
    load_glossary,
    make_translator,
    request_size,
    translate_selected,
)
from tests.conftest import make_settings
from tests.servers.deepl import DOLLAR_MISTRANSLATION, DeepLServer
from tests.servers.pytest_plugin import DEEPL_TEST_KEY
from tests.test_cli import run as run_cli

DAY = dt.date(2026, 11, 24)
NEXT_DAY = dt.date(2026, 11, 25)
ENGLISH_NOTE = "Translation was not available for some papers today"
CHINESE_NOTE = "暂时无法翻译"
# Fault handling does not depend on the database: these run on PostgreSQL only, to keep the file fast.
POSTGRESQL_ONLY = pytest.mark.parametrize("engine", ["postgresql"], indirect=True)

PAPERS = [
    Paper(
        arxiv_id="2611.00001",
        title="Fast reinforcement learning with 2.5$\\times$ fewer samples",
        abstract="We bound $\\rho(E^s)$ for reinforcement learning agents\nand show \\textbf{robust} gains.",
        authors=["Ada Lovelace"],
        categories=["cs.LG"],
        primary_category="cs.LG",
    ),
    Paper(
        arxiv_id="2611.00002",
        title="Diffusion policies for robot arms",
        abstract="A diffusion policy reaches \\(\\alpha\\)-stable control at $5 per robot.",
        authors=["Grace Hopper"],
        categories=["cs.RO"],
        primary_category="cs.RO",
    ),
    Paper(
        arxiv_id="2611.00003",
        title="Reinforcement learning meets diffusion",
        abstract="We combine reinforcement learning and diffusion in $$\\sum_i r_i$$ form.",
        authors=["Alan Turing"],
        categories=["cs.AI"],
        primary_category="cs.AI",
    ),
]


def add_day(session: Session, papers: list[Paper] = PAPERS, day: dt.date = DAY) -> None:
    """The day's announced papers and four subscribers: two Chinese, one German, one English reader."""
    announce(session, [Paper(**paper.model_dump()) for paper in papers], day)
    subscribe(session, "ada@example.org", ["reinforcement learning"], confirmed=True)
    subscribe(session, "bob@example.org", ["diffusion"], confirmed=True)
    subscribe(session, "carl@example.org", ["reinforcement learning"], language="DE", confirmed=True)
    subscribe(session, "eve@example.org", ["diffusion"], language="EN-US", confirmed=True)
    session.commit()


def announce(session: Session, papers: list[Paper], day: dt.date) -> None:
    session.add_all(papers)
    session.flush()
    session.add_all(Announcement(day=day, arxiv_id=paper.arxiv_id, announce_type="new") for paper in papers)
    # Stored as a finished harvest would leave it, so the run goes straight to matching.
    if session.scalars(select(Run).where(Run.day == day)).first() is None:
        session.add(Run(day=day, harvested_at=utcnow()))
    session.commit()


def transports_for(settings) -> Transports:  # type: ignore[no-untyped-def]
    """The day is stored already, so only the translator and the outbox are used."""
    sample = sample_transports(settings.outbox_dir)
    return Transports(sample.feed, sample.details, make_translator(settings), OutboxBackend(settings.outbox_dir))


def settings_for(engine, tmp_path: Path, server: DeepLServer | None, **overrides):  # type: ignore[no-untyped-def]
    values: dict[str, object] = {"deepl_auth_key": DEEPL_TEST_KEY, "deepl_server_url": server.url if server else None,
                                 "deepl_retry_base_seconds": 0.01}
    values.update(overrides)
    return make_settings(engine.url.render_as_string(hide_password=False), tmp_path, **values)


def mailed(settings, address: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """The HTML and (flattened) text parts of the digest mailed to `address`."""
    path = Path(settings.outbox_dir) / DAY.isoformat() / f"{outbox_name(address)}.eml"
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    text = message.get_body(("plain",)).get_content()
    # Keyword highlights (*...*) and line wrapping set aside, the text reads as one line.
    return message.get_body(("html",)).get_content(), " ".join(text.replace("*", "").split())


def sent_texts(server: DeepLServer, language: str = "ZH-HANS") -> list[str]:
    return [text for request in server.translate_requests if request.target_lang == language for text in request.texts]


def test_math_survives_translation_and_reads_as_unicode_in_both_languages(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session)

    run_daily(session, settings, transports_for(settings), DAY)

    html, text = mailed(settings, "ada@example.org")
    assert "[ZH] Fast 强化学习 with 2.5× fewer samples" in text  # translated, glossary applied, math readable
    assert "Fast reinforcement learning with 2.5× fewer samples" in text  # and the English original
    assert "ρ(Eˢ)" in text and "[ZH] We bound ρ(Eˢ)" in text
    assert DOLLAR_MISTRANSLATION not in html + text
    assert CHINESE_NOTE not in html + text
    stored = session.get(Translation, ("2611.00001", "ZH-HANS"))
    assert stored is not None and "2.5$\\times$" in stored.title
    # What DeepL saw: placeholders in an ignored tag, never a dollar sign or a LaTeX command.
    request = next(r for r in deepl_server.translate_requests if r.context == "Fast reinforcement learning with 2.5× "
                   "fewer samples")
    assert request.tag_handling == "xml" and request.ignore_tags == ["x"]
    assert request.texts[0] == "Fast reinforcement learning with 2.5<x>0</x> fewer samples"
    assert not any("$" in sent or "\\" in sent for sent in sent_texts(deepl_server))


def test_each_paper_is_translated_once_per_language_and_shared_by_every_reader(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session)

    run_daily(session, settings, transports_for(settings), DAY)
    requests_after_first_run = len(deepl_server.translate_requests)
    translate_selected(session, DAY, make_translator(settings), settings.deepl_daily_character_budget)

    # ada and bob share paper 3; it is sent once for Chinese, once for German (carl), never for eve.
    chinese = sent_texts(deepl_server, "ZH-HANS")
    assert len(chinese) == 6 and len(set(chinese)) == 6
    german = sent_texts(deepl_server, "DE")
    assert len(german) == 4 and set(german) < set(chinese) and "Diffusion policies for robot arms" not in german
    assert {r.target_lang for r in deepl_server.translate_requests} == {"ZH-HANS", "DE"}
    # One request per paper and language (the title goes along as context for its abstract), none on the rerun.
    assert len(deepl_server.translate_requests) == requests_after_first_run == 5
    _, bob_text = mailed(settings, "bob@example.org")
    assert "[ZH] We combine 强化学习 and diffusion in ∑ᵢ rᵢ form." in bob_text
    _, eve_text = mailed(settings, "eve@example.org")
    assert "[ZH]" not in eve_text and ENGLISH_NOTE not in eve_text


def test_requests_are_sized_in_characters_and_a_long_abstract_still_arrives_whole(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server, deepl_request_characters=400)
    papers = [
        Paper(arxiv_id=f"2611.{n:05d}", title=f"Reinforcement learning study {n}", abstract=f"Words {n}. " * 12)
        for n in range(10, 40)
    ]
    papers.append(Paper(arxiv_id="2611.00099", title="Reinforcement learning at length",
                        abstract="A sentence of some length. " * 60))
    add_day(session, papers)
    run_daily(session, settings, transports_for(settings), DAY)

    chinese = [r for r in deepl_server.translate_requests if r.target_lang == "ZH-HANS"]
    assert max(sum(len(text) for text in r.texts) for r in chinese) <= 400
    long_requests = [r for r in chinese if r.context == "Reinforcement learning at length"]
    assert len(chinese) == 30 + len(long_requests)  # one request per paper, the long one cut at sentences
    assert len(long_requests) == 6  # its title, then 1,620 characters in five
    assert session.scalar(select(func.count()).select_from(Translation).where(Translation.language == "ZH-HANS")) == 31
    long_one = session.get(Translation, ("2611.00099", "ZH-HANS"))
    assert long_one.abstract.count("A sentence of some length.") == 60


def test_the_glossary_is_uploaded_once_and_reused_by_later_runs(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session)

    run_daily(session, settings, transports_for(settings), DAY)
    announce(session, [Paper(arxiv_id="2611.00099", title="More reinforcement learning", abstract="Again.")], NEXT_DAY)
    run_daily(session, settings, transports_for(settings), NEXT_DAY)

    assert len(deepl_server.glossaries) == 1
    glossary = next(iter(deepl_server.glossaries.values()))
    assert glossary.entries == load_glossary(BUNDLED_GLOSSARIES["zh"])
    assert glossary.entries["reinforcement learning"] == "强化学习"
    chinese = [r for r in deepl_server.translate_requests if r.target_lang == "ZH-HANS"]
    assert len(chinese) == 4 and {r.glossary_id for r in chinese} == {glossary.glossary_id}
    assert all(r.glossary_id is None for r in deepl_server.translate_requests if r.target_lang == "DE")


def test_a_changed_glossary_file_replaces_the_uploaded_glossary(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    glossary_file = tmp_path / "terms.tsv"
    glossary_file.write_text("reinforcement learning\t强化学习\n", encoding="utf-8")
    settings = settings_for(engine, tmp_path, deepl_server, deepl_glossary_file=glossary_file)
    add_day(session)
    run_daily(session, settings, transports_for(settings), DAY)
    first_id = session.get(DeepLGlossary, "zh").glossary_id

    glossary_file.write_text("reinforcement learning\t增强学习\ndiffusion\t扩散\n", encoding="utf-8")
    again = Paper(arxiv_id="2611.00099", title="Reinforcement learning again", abstract="Using diffusion.")
    announce(session, [again], NEXT_DAY)
    run_daily(session, settings, transports_for(settings), NEXT_DAY)

    assert list(deepl_server.glossaries) == [session.get(DeepLGlossary, "zh").glossary_id]
    assert first_id not in deepl_server.glossaries
    assert session.get(Translation, ("2611.00099", "ZH-HANS")).abstract == "[ZH] Using 扩散."


def test_a_malformed_glossary_file_only_means_no_glossary(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    glossary_file = tmp_path / "terms.tsv"
    glossary_file.write_text("reinforcement learning 强化学习\n", encoding="utf-8")  # no tab
    settings = settings_for(engine, tmp_path, deepl_server, deepl_glossary_file=glossary_file)
    add_day(session)

    run_daily(session, settings, transports_for(settings), DAY)

    assert deepl_server.glossaries == {}
    _, text = mailed(settings, "ada@example.org")
    assert "[ZH] Fast reinforcement learning with 2.5× fewer samples" in text


@POSTGRESQL_ONLY
@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_passing_fault_is_retried_and_the_digest_is_translated(
    status: int, engine, session: Session, deepl_server: DeepLServer, tmp_path: Path, deepl_fast_retries: None
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session)
    deepl_server.fail_next(2, status, path_prefix="/v2/translate")

    run_daily(session, settings, transports_for(settings), DAY)

    _, text = mailed(settings, "ada@example.org")
    assert "[ZH] Fast 强化学习" in text and CHINESE_NOTE not in text
    assert len(deepl_server.translate_requests) == 7  # two refused, then three Chinese and two German


def _unreachable_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"



FAULTS = {
    "quota exceeded (456)": lambda server: server.fail_next(10, 456, path_prefix="/v2/translate"),
    "server error (503)": lambda server: server.fail_next(10, 503, path_prefix="/v2/translate"),
    "too many requests (429) for good": lambda server: server.fail_next(10, 429, path_prefix="/v2/translate"),
}


@POSTGRESQL_ONLY
@pytest.mark.parametrize("fault", [*FAULTS, "bad key (403)", "no key", "unreachable"])
def test_when_deepl_fails_the_digest_goes_out_in_english_with_a_note_and_is_translated_next_run(
    fault: str, engine, session: Session, deepl_server: DeepLServer, tmp_path: Path, deepl_fast_retries: None
) -> None:
    overrides: dict[str, object] = {}
    if fault in FAULTS:
        FAULTS[fault](deepl_server)
    elif fault == "bad key (403)":
        overrides["deepl_auth_key"] = "wrong-key:fx"
    elif fault == "no key":
        overrides["deepl_auth_key"] = None
    else:
        overrides["deepl_server_url"] = _unreachable_url()
    settings = settings_for(engine, tmp_path, deepl_server, **overrides)
    add_day(session)

    summary = run_daily(session, settings, transports_for(settings), DAY)

    assert summary.status == "completed" and summary.stats["deliver"]["sent"] == 4
    assert summary.stats["translate"]["error"]
    html, text = mailed(settings, "ada@example.org")
    for part in (html, text):
        assert CHINESE_NOTE in part and "[ZH]" not in part
    assert "Fast reinforcement learning with 2.5× fewer samples" in text
    assert "We bound ρ(Eˢ) for reinforcement learning agents" in text
    carl_html, _ = mailed(settings, "carl@example.org")
    assert ENGLISH_NOTE in carl_html
    _, eve_text = mailed(settings, "eve@example.org")
    assert ENGLISH_NOTE not in eve_text
    assert session.scalar(select(func.count()).select_from(Translation)) == 0
    assert session.get(Run, 1).billed_characters == 0

    deepl_server.clear_faults()
    healthy = settings_for(engine, tmp_path, deepl_server)
    later = translate_selected(session, NEXT_DAY, make_translator(healthy), 10**6)

    assert later.translated == 5 and later.error is None  # 3 Chinese, 2 German
    assert session.get(Translation, ("2611.00001", "ZH-HANS")) is not None


def test_the_daily_budget_is_never_exceeded_even_across_runs(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    # The most-read paper (ada's and bob's) fits, no second one does.
    budget = request_size(PAPERS[2]) + 10
    settings = settings_for(engine, tmp_path, deepl_server, deepl_daily_character_budget=budget)
    add_day(session)
    today = dt.datetime.now(dt.UTC).date()

    first = run_daily(session, settings, transports_for(settings), DAY)
    second = translate_selected(session, DAY, make_translator(settings), budget)

    billed = sum(len(t) for r in deepl_server.translate_requests for t in r.texts)
    assert 0 < billed <= budget and deepl_server.character_count == billed
    assert first.stats["translate"]["error"] == "daily DeepL character budget reached"
    assert second.translated == 0 and second.error == "daily DeepL character budget reached"
    usage = session.get(DeepLUsage, today)
    assert usage.billed == billed and usage.committed == billed
    assert session.get(Run, 1).billed_characters == billed
    html, _ = mailed(settings, "ada@example.org")
    assert CHINESE_NOTE in html and "[ZH]" in html  # one paper translated, the rest noted


def test_a_reply_that_lost_the_math_is_not_stored(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session, PAPERS[:1])
    texts = ["[ZH] 快速强化学习 2.5 倍", "[ZH] 我们界定 <x>0</x>。"]  # the title lost its placeholder
    body = {"translations": [{"detected_source_language": "EN", "text": t, "billed_characters": 50} for t in texts]}
    deepl_server.respond_next(json.dumps(body), content_type="application/json", path_prefix="/v2/translate", n=2)

    summary = run_daily(session, settings, transports_for(settings), DAY)

    assert summary.stats["translate"]["rejected"] == 2  # the Chinese and the German request
    assert session.get(Translation, ("2611.00001", "ZH-HANS")) is None
    html, _ = mailed(settings, "ada@example.org")
    assert CHINESE_NOTE in html and "快速强化学习" not in html


def test_status_shows_characters_billed_today_this_month_and_deepls_own_count(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session)
    run_daily(session, settings, transports_for(settings), DAY)
    billed = deepl_server.character_count

    lines = list(status_lines(session, settings))

    assert f"DeepL characters {billed}" in lines[1]  # the run's own line
    assert any(f"today {billed} (budget 400000, {400000 - billed} left), this month {billed}" in line for line in lines)
    assert f"DeepL account: {billed} of 500000 characters this period" in lines


def test_runs_translating_at_the_same_time_share_one_budget(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session)
    select_papers_for_day(session, DAY)
    session.commit()
    budget = request_size(PAPERS[0]) + request_size(PAPERS[2]) + 10
    start = threading.Barrier(3)

    def another_process() -> TranslateResult:
        with Session(engine, expire_on_commit=False) as own:
            start.wait()
            return translate_selected(own, DAY, make_translator(settings), budget)

    with ThreadPoolExecutor(3) as pool:
        results = [future.result() for future in [pool.submit(another_process) for _ in range(3)]]

    assert deepl_server.character_count <= budget
    assert sum(r.billed_characters for r in results) == deepl_server.character_count
    stored = session.scalar(select(func.count()).select_from(Translation))
    assert stored >= 1 and stored == sum(r.translated for r in results)


def test_the_bundled_glossary_holds_common_ml_terms() -> None:
    entries = load_glossary(BUNDLED_GLOSSARIES["zh"])

    assert len(entries) >= 100
    assert entries["reinforcement learning"] == "强化学习" and entries["large language model"] == "大语言模型"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("reinforcement learning 强化学习\n", ":1: expected 'english<TAB>translation'"),
        ("a\tb\n\na\tc\n", ":3: 'a' is listed twice"),
        ("# only a comment\n", ": no entries"),
    ],
)
def test_a_malformed_glossary_file_is_named_with_its_line(content: str, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "terms.tsv"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(GlossaryError) as caught:
        load_glossary(path)

    assert str(caught.value).startswith(f"{path}{reason}")


def test_a_glossary_deleted_at_deepl_is_uploaded_again_on_the_next_run(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session)
    translator = make_translator(settings)  # one long-lived worker process
    transports = dataclasses.replace(transports_for(settings), translator=translator)
    run_daily(session, settings, transports, DAY)
    deepl_server.glossaries.clear()
    again = Paper(arxiv_id="2611.00099", title="More reinforcement learning", abstract="Again.")
    announce(session, [again], NEXT_DAY)

    run_daily(session, settings, transports, NEXT_DAY)

    assert list(deepl_server.glossaries) == [session.get(DeepLGlossary, "zh").glossary_id]
    assert session.get(Translation, ("2611.00099", "ZH-HANS")).title == "[ZH] More 强化学习"


def test_when_deepl_refuses_the_glossary_the_papers_are_translated_without_it(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session)
    deepl_server.fail_next(1, 400, path_prefix="/v2/translate")

    run_daily(session, settings, transports_for(settings), DAY)

    chinese = [r for r in deepl_server.translate_requests if r.target_lang == "ZH-HANS"]
    assert [r.glossary_id is not None for r in chinese] == [True, False, False, False]
    _, text = mailed(settings, "ada@example.org")
    assert "[ZH] Fast reinforcement learning with 2.5× fewer samples" in text and CHINESE_NOTE not in text


def test_failed_requests_give_their_reserved_characters_back(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path, deepl_fast_retries: None
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server, deepl_server_url=_unreachable_url())
    add_day(session)
    run_daily(session, settings, transports_for(settings), DAY)
    deepl_server.fail_next(1, 456, path_prefix="/v2/translate")
    translate_selected(session, DAY, make_translator(settings_for(engine, tmp_path, deepl_server)), 10**6)

    usage = session.get(DeepLUsage, dt.datetime.now(dt.UTC).date())
    assert usage.committed == 0 and usage.billed == 0


def test_a_garbled_reply_keeps_its_characters_counted_and_the_digest_goes_out(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session, PAPERS[:1])
    garbled = json.dumps({"translations": [{"text": "[ZH] 标题"}, {"text": "[ZH] 摘要"}]})  # no billed_characters
    deepl_server.respond_next(garbled, content_type="application/json", path_prefix="/v2/translate")

    summary = run_daily(session, settings, transports_for(settings), DAY)

    assert "unexpected reply" in summary.stats["translate"]["error"]
    # DeepL may have billed it: the characters stay counted against today's budget.
    usage = session.get(DeepLUsage, dt.datetime.now(dt.UTC).date())
    assert usage.committed == request_size(PAPERS[0]) and usage.billed == usage.committed
    html, _ = mailed(settings, "ada@example.org")
    assert CHINESE_NOTE in html and "标题" not in html


@POSTGRESQL_ONLY
def test_the_status_command_prints_the_deepl_figures(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session)
    run_daily(session, settings, transports_for(settings), DAY)
    billed = deepl_server.character_count
    env = dict(
        NEWSLETTER_DATABASE_URL=engine.url.render_as_string(hide_password=False),
        NEWSLETTER_DEEPL_AUTH_KEY=DEEPL_TEST_KEY,
        NEWSLETTER_DEEPL_SERVER_URL=deepl_server.url,
    )

    # From this checkout: the installed console script may be another checkout's code, not this schema's.
    status = run_cli(["status"], tmp_path, **env)

    assert status.returncode == 0, status.stderr
    assert f"DeepL characters billed: today {billed} (budget 400000" in status.stdout
    assert f"DeepL account: {billed} of 500000 characters this period" in status.stdout


def test_papers_only_an_unsubscribed_reader_chose_are_not_translated(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session)
    select_papers_for_day(session, DAY)
    unsubscribe(find_subscriber(session, "bob@example.org"))
    session.commit()

    translate_selected(session, DAY, make_translator(settings), 10**6)

    chinese = sent_texts(deepl_server, "ZH-HANS")
    assert "Diffusion policies for robot arms" not in chinese  # only bob chose it
    assert "Reinforcement learning meets diffusion" in chinese  # ada chose it too
