"""The keyword language and matching engine, as a subscriber experiences them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import billiard
import pytest

from newsletter.keywords import (
    MAX_KEYWORDS,
    And,
    AndNot,
    KeywordHits,
    KeywordIndex,
    KeywordSyntaxError,
    Match,
    Or,
    PaperText,
    ProfileError,
    SyntaxProblem,
    fold_text,
    highlight_spans,
    parse_keyword,
    validate_profile,
)
from tests.conftest import REFERENCE as FIXTURE_REFERENCE

REFERENCE = FIXTURE_REFERENCE / "arxiv" / "api"
ATOM = {"a": "http://www.w3.org/2005/Atom"}


def load_atom(path: Path) -> list[PaperText]:
    """Papers from an arXiv API Atom answer, keyed by their id without version."""
    papers = []
    for entry in ET.parse(path).getroot().findall("a:entry", ATOM):
        arxiv_id = (entry.findtext("a:id", "", ATOM) or "").rsplit("/abs/", 1)[-1]
        papers.append(
            PaperText(
                key=arxiv_id.rsplit("v", 1)[0],
                title=entry.findtext("a:title", "", ATOM) or "",
                abstract=entry.findtext("a:summary", "", ATOM) or "",
                authors=tuple(a.findtext("a:name", "", ATOM) or "" for a in entry.findall("a:author", ATOM)),
                categories=tuple(c.get("term", "") for c in entry.findall("a:category", ATOM)),
            )
        )
    return papers


@pytest.fixture(scope="module")
def testing_papers() -> list[PaperText]:
    """The 100 real entries arXiv returned for the search "testing"."""
    (path,) = REFERENCE.glob("q_testing_s0_m100_*.xml")
    papers = load_atom(path)
    assert len(papers) == 100
    return papers


def selected(keyword: str, papers: Sequence[PaperText]) -> set[str]:
    """Keys of the papers one subscriber with this single keyword receives."""
    (hits,) = KeywordIndex.build([("reader", [keyword])]).select(papers)["reader"]
    return set(hits)


def paper(title: str = "", abstract: str = "", **fields: Sequence[str]) -> PaperText:
    return PaperText(key="2601.00001", title=title, abstract=abstract, **fields)


def matches(keyword: str, title: str = "", abstract: str = "", **fields: Sequence[str]) -> bool:
    return bool(selected(keyword, [paper(title, abstract, **fields)]))


# --- phrases, spelling variants, word boundaries ------------------------------------------


@pytest.mark.parametrize("text", ["multi-agent planning", "multi agent planning", "Multiagent planning"])
@pytest.mark.parametrize("keyword", ["multi-agent", "multi agent", "multiagent", "Multi-Agent"])
def test_hyphen_space_and_joined_spellings_are_one_term(keyword: str, text: str) -> None:
    assert matches(keyword, abstract=text)


def test_phrase_is_case_insensitive_and_hyphen_insensitive() -> None:
    assert matches("reinforcement learning", title="Deep Reinforcement-Learning for Robots")
    assert matches("Reinforcement-Learning", abstract="we use reinforcement learning")


def test_bare_words_form_one_phrase_not_separate_words() -> None:
    assert matches("reinforcement learning", abstract="Reinforcement learning in games")
    assert not matches("reinforcement learning", abstract="learning with positive reinforcement")


def test_a_phrase_does_not_run_across_punctuation() -> None:
    assert not matches("graph learning", abstract="We study the graph. Learning it is hard.")


def test_trailing_plural_s_matches_both_ways() -> None:
    assert matches("graph neural network", title="Graph Neural Networks at Scale")
    assert matches("graph neural networks", title="A Graph Neural Network for Molecules")
    assert matches("process", abstract="Gaussian processes")
    assert not matches("graph neural network", title="Graph Neural Networking stack")


@pytest.mark.parametrize(
    ("keyword", "text", "expected"),
    [
        ("diffusion policy", "Diffusion Policies for Manipulation", True),
        ("diffusion policies", "a diffusion policy for manipulation", True),
        ("diffusion policies", "diffusion policies for manipulation", True),
        ("party", "multi-party computation with many parties", True),
        ("part", "a party of three", False),  # only English plural endings, not any letters
        ("strategy", "search strategies", True),
        ("movies", "a movie recommender", True),  # not "movy"
        ("species", "one species of bird", True),
        ("approaches", "a new approach", True),
        ("approach", "two approaches", True),
    ],
)
def test_english_plurals_match_both_ways(keyword: str, text: str, expected: bool) -> None:
    assert matches(keyword, abstract=text) is expected


@pytest.mark.parametrize(
    ("keyword", "text", "expected"),
    [
        ("net", "a neural network", False),
        ("net", "Petri nets", True),
        ("RL", "offline RL agents", True),
        ("RL", "the URL of the page", False),
        ("RL", "RL-based control", True),
        ("AI", "AI safety", True),
        ("AI", "an a i.i.d. sample", False),  # spaces do not glue letters into "ai"
        ("dataset", "a new data set", True),  # but they may split long words
    ],
)
def test_whole_words_only(keyword: str, text: str, expected: bool) -> None:
    assert matches(keyword, abstract=text) is expected


def test_letters_and_digits_are_separate_words() -> None:
    assert matches("GPT-4", abstract="we prompt GPT4 and GPT-4o")
    assert matches("gpt 4", abstract="evaluated with GPT-4.")
    assert matches("ResNet", abstract="a ResNet50 backbone")


def test_punctuation_inside_a_keyword_counts() -> None:
    assert matches("i.i.d.", abstract="given i.i.d. samples")
    assert not matches("iid", abstract="given i.i.d. samples")


# --- accents and LaTeX ---------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["schrodinger equation", "Schrödinger equation", 'Schr\\"{o}dinger equation'])
@pytest.mark.parametrize(
    "title", ['The Schr\\"{o}dinger equation', "The Schrödinger equation", 'The Schr\\"odinger Equation']
)
def test_latex_and_accents_fold_to_plain_letters(keyword: str, title: str) -> None:
    assert matches(keyword, title=title)


def test_fold_text_renders_latex_and_strips_accents() -> None:
    assert fold_text('Schr\\"{o}dinger, na\\"ive G\\"odel') == "schrodinger, naive godel"
    assert fold_text("Møldrup, Mäntylä, Ramírez") == "moldrup, mantyla, ramirez"
    assert fold_text("2.5$\\times$ faster") == "2.5× faster"


def test_the_ascii_fold_table_is_the_whole_tables_ascii_part() -> None:
    from newsletter.keywords.folding import _ASCII_FOLD_TABLE, _fold_table

    # So ASCII text folds as it always did.
    assert {code: value for code, value in _fold_table().items() if code < 128} == _ASCII_FOLD_TABLE


def test_percent_sign_does_not_swallow_the_rest_of_the_abstract() -> None:
    # In LaTeX % starts a comment; abstracts use it as a plain percent sign.
    assert matches("graph neural network", abstract="50% of graph neural networks fail")


def test_latex_macros_in_abstracts_are_read_as_their_text() -> None:
    assert matches("oracle problem", abstract="AFP tools face the \\emph{oracle problem}.")


# --- boolean syntax, fields, categories, authors, prefixes --------------------------------


def test_and_binds_tighter_than_or() -> None:
    a, b, c = (parse_keyword(word) for word in "abc")
    assert parse_keyword("a OR b AND c") == Or((a, And(b, c)))
    assert parse_keyword("(a OR b) AND c") == And(Or((a, b)), c)
    assert parse_keyword("a AND b ANDNOT c") == AndNot(And(a, b), c)


def test_boolean_keywords_select_the_right_papers() -> None:
    robots = paper(abstract="Reinforcement learning for legged robots")
    games = paper(abstract="Reinforcement learning for board games")
    both = [robots, PaperText("2601.00002", games.title, games.abstract)]
    assert selected("reinforcement learning AND robot*", both) == {"2601.00001"}
    assert selected("reinforcement learning ANDNOT robots", both) == {"2601.00002"}
    assert selected("robots OR games", both) == {"2601.00001", "2601.00002"}


def test_operators_are_uppercase_only() -> None:
    assert matches("research and development", abstract="Research and development costs")
    assert not matches("research and development", abstract="research costs and development")


def test_quoted_phrase_keeps_operators_as_words() -> None:
    assert matches('"salt AND pepper noise"', abstract="robust to salt and pepper noise")


def test_field_prefixes_restrict_where_the_words_are_looked_for() -> None:
    in_title = paper(title="Graph Neural Networks", abstract="We study molecules.")
    assert matches("ti:graph neural network", in_title.title, in_title.abstract)
    assert not matches("abs:graph neural network", in_title.title, in_title.abstract)
    assert matches('ti:"graph neural" AND abs:molecules', in_title.title, in_title.abstract)
    assert matches("ti:(molecules OR graph)", in_title.title, in_title.abstract)
    assert not matches("ti:(molecules OR proteins)", in_title.title, in_title.abstract)


def test_author_field_matches_names_with_accents() -> None:
    authors = ["Aurora Ramírez", "José Raúl Romero"]
    assert matches("au:ramirez", authors=authors)
    assert matches('au:"Jose Raul Romero"', authors=authors)
    assert not matches("au:romero", abstract="Romero et al. showed", authors=["A. Smith"])
    assert not matches("ramirez", authors=authors)  # no prefix: title and abstract only


def test_categories_match_exactly_or_by_archive() -> None:
    robotics = ["cs.RO", "cs.SE"]
    assert matches("cat:cs.RO", categories=robotics)
    assert matches("cat:cs.ro", categories=robotics)
    assert matches("cat:cs.*", categories=robotics)
    assert matches("cat:cs", categories=robotics)
    assert not matches("cat:cs.R", categories=robotics)
    assert not matches("cat:math.*", categories=robotics)
    assert matches("cat:hep-ph", categories=["hep-ph"])


def test_trailing_star_is_a_prefix() -> None:
    assert matches("transform*", title="Transformers for vision")
    assert matches("transform*", title="A transformation group")
    assert not matches("transform*", title="Vision models", abstract="retransformed data")


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "message", "position"),
    [
        ("(robots OR drones", "unbalanced parenthesis", 0),
        ("robots OR drones)", "unbalanced parenthesis", 16),
        ("reinforcement AND", "operator AND needs a term after it", 14),
        ("AND robots", "operator AND needs a term before it", 0),
        ("robots AND OR drones", "operator AND needs a term after it", 7),
        ("foo:bar", "unknown field 'foo:'", 0),
        ("   ", "empty keyword", 0),
        ("x" * 201, "keyword longer than 200 characters", 200),
        ('"graph neural', "unclosed quote", 0),
        ("deep* learning", "wildcard * is only allowed at the end of a term", 4),
        ("tr*", "prefix 'tr*' is too short, use at least 3 letters before *", 0),
        ("()", "empty parentheses", 0),
        ("ti:", "field ti: needs a term after it", 0),
        ('"robots" drones', "missing operator (AND, OR or ANDNOT) between terms", 9),
        ("cat:cs RO", "missing operator (AND, OR or ANDNOT) between terms", 7),
        ("cat:cs/RO", "invalid category 'cs/RO'", 4),
        ("robots NOT drones", "NOT is not an operator, use ANDNOT", 7),
        ("???", "term '???' has no letters or digits", 0),
    ],
)
def test_syntax_errors_say_what_and_where(keyword: str, message: str, position: int) -> None:
    with pytest.raises(KeywordSyntaxError) as raised:
        parse_keyword(keyword)
    assert (raised.value.message, raised.value.position) == (message, position)
    # Counted from 1 in what people read, as on the web page.
    assert str(raised.value) == f"{message} at character {position + 1}"


@pytest.mark.parametrize("keyword", ["a\x00b", "robot\x1b[31m", "graph\x7f", "ti:(a\x0bb)", "x\x85y", "bad\ud800"])
def test_a_control_character_in_a_keyword_is_refused_with_where_it_is(keyword: str) -> None:
    with pytest.raises(KeywordSyntaxError) as raised:
        parse_keyword(keyword)
    assert raised.value.problem == SyntaxProblem.CONTROL_CHARACTER
    assert keyword[raised.value.position] == chr(int(str(raised.value.params["character"])[2:], 16))
    assert "control character U+" in str(raised.value)


def test_a_tab_inside_a_keyword_is_a_space_not_a_control_character() -> None:
    assert matches("graph\tneural network", title="Graph neural network")


def test_a_colon_after_a_plain_word_is_not_a_field() -> None:
    assert matches("testing: a survey", title="Testing: A Survey")


# --- profiles ---------------------------------------------------------------------------------


def test_profile_is_cleaned_in_order() -> None:
    lines = ["  graph neural networks ", "", "Robotics", "robotics", "Multi-Agent", "multi agent", "cat:cs.RO"]
    assert validate_profile(lines) == ["graph neural networks", "Robotics", "Multi-Agent", "cat:cs.RO"]


def test_profile_errors_name_each_bad_line_and_the_limit() -> None:
    lines = ["robots", "(drones", "ok AND"] + [f"topic{number}" for number in range(MAX_KEYWORDS)]
    with pytest.raises(ProfileError) as raised:
        validate_profile(lines)
    assert raised.value.problems == [
        (2, "unbalanced parenthesis at character 1"),
        (3, "operator AND needs a term after it at character 4"),
        (None, "too many keywords: 21 given, at most 20 allowed"),
    ]
    assert "line 2: unbalanced parenthesis at character 1" in str(raised.value)


def test_twenty_keywords_are_fine() -> None:
    assert len(validate_profile([f"topic {number}" for number in range(MAX_KEYWORDS)])) == MAX_KEYWORDS


# --- the engine -------------------------------------------------------------------------------


def test_each_subscriber_gets_matches_per_keyword_position() -> None:
    index = KeywordIndex.build(
        [
            ("ann", ["robotics", "graph neural networks"]),
            ("bob", ["Graph-Neural-Network"]),
            ("cy", ["quantum"]),
        ]
    )
    found = index.match(paper(title="Graph neural networks for robotics"))
    assert sorted(found, key=lambda m: (m.subscriber, m.position)) == [
        Match("ann", 0, frozenset({"robotics"})),
        Match("ann", 1, frozenset({"graph neural networks"})),
        Match("bob", 0, frozenset({"graph neural networks"})),
    ]


def test_matched_terms_leave_out_excluded_words() -> None:
    index = KeywordIndex.build([("ann", ["(robots OR drones) ANDNOT underwater"])])
    (found,) = index.match(paper(abstract="robots and drones on land"))
    assert found.terms == frozenset({"robots", "drones"})
    assert index.match(paper(abstract="underwater robots")) == []


def test_selection_lists_every_keyword_even_without_papers() -> None:
    index = KeywordIndex.build([("ann", ["robotics", "quantum", "bad AND"])])
    papers = [paper(title="Robotics today"), PaperText("2601.00002", "More robotics", "")]
    selection = index.select(papers)
    assert [list(hits) for hits in selection["ann"]] == [["2601.00001", "2601.00002"], [], []]
    ((subscriber, position, error),) = index.invalid
    assert (subscriber, position, error.message) == ("ann", 2, "operator AND needs a term after it")


def test_forked_processes_select_exactly_what_one_process_selects(testing_papers: list[PaperText]) -> None:
    # Six copies of the 100 real entries, so that two processes get a share each.
    papers = [
        PaperText(f"{copy}-{p.key}", p.title, p.abstract, p.authors, p.categories)
        for copy in range(6)
        for p in testing_papers
    ]
    profiles = [
        ("ann", ["metamorphic testing", "ti:hypothesis testing", "fuzz*"]),
        ("bob", ["group testing ANDNOT DNA", "cat:cs.RO", 'au:"Arnaud Gotlieb" AND cat:cs.AI']),
        ("cy", ["smart contracts OR petri nets", "RL"]),
    ]
    index = KeywordIndex.build(profiles)

    def as_lists(selection: dict[str, list[KeywordHits]]) -> dict[str, list[list[tuple[str, frozenset[str]]]]]:
        return {subscriber: [list(hits.items()) for hits in sections] for subscriber, sections in selection.items()}

    alone = as_lists(index.select(papers))
    assert index.processes_used == 1
    assert as_lists(index.select(papers, processes=2)) == alone
    assert index.processes_used == 2
    assert len(alone["ann"][0]) == 6 * len(selected("metamorphic testing", testing_papers)) > 0
    assert [key for key, _ in alone["bob"][2]] == [f"{copy}-2407.18756" for copy in range(6)]


def select_in_a_pool_worker(papers: list[PaperText]) -> tuple[int, int]:
    index = KeywordIndex.build([("ann", ["metamorphic testing"])])
    (hits,) = index.select(papers, processes=2)["ann"]
    return len(hits), index.processes_used


def test_a_celery_pool_worker_forks_its_scanners_too(testing_papers: list[PaperText]) -> None:
    # Celery's prefork workers are daemon processes (billiard), which multiprocessing may not fork.
    papers = [PaperText(f"{copy}-{p.key}", p.title, p.abstract) for copy in range(6) for p in testing_papers]
    with billiard.Pool(1) as pool:
        count, processes = pool.apply(select_in_a_pool_worker, (papers,))
    assert processes == 2
    assert count == 6 * len(selected("metamorphic testing", testing_papers)) > 0


def test_same_subscriber_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        KeywordIndex.build([("ann", ["a"]), ("ann", ["b"])])


# --- highlighting -----------------------------------------------------------------------------


def test_highlight_spans_cover_the_original_spelling() -> None:
    text = "Multi-agent RL with graph neural networks, not URL networking."
    spans = highlight_spans(text, ["multi agent", "RL", "graph neural network", "net"])
    assert [text[start:end] for start, end in spans] == ["Multi-agent", "RL", "graph neural networks"]


def test_highlight_covers_plural_forms() -> None:
    text = "Diffusion policies and search strategies."
    spans = highlight_spans(text, ["diffusion policy", "strategies"])
    assert [text[start:end] for start, end in spans] == ["Diffusion policies", "strategies"]


def test_highlight_spans_are_sorted_and_merged() -> None:
    text = "deep reinforcement learning"
    assert highlight_spans(text, ["reinforcement learning", "deep reinforcement"]) == [(0, len(text))]


def test_highlight_prefix_marks_the_whole_word() -> None:
    text = "Transformers transform."
    assert [text[a:b] for a, b in highlight_spans(text, ["transform*"])] == ["Transformers", "transform"]


def test_highlight_through_latex_and_accents() -> None:
    text = 'On the Schr\\"{o}dinger equation and Gödel'
    spans = highlight_spans(text, ["schrodinger", "godel"])
    assert [text[a:b] for a, b in spans] == ['Schr\\"{o}dinger', "Gödel"]


# --- real arXiv papers ------------------------------------------------------------------------


def test_real_abstracts_phrase_matches(testing_papers: list[PaperText]) -> None:
    assert selected("metamorphic testing", testing_papers) >= {"2407.18756", "1904.08007", "2502.09460"}
    # "differential, metamorphic, mutation, and combinatorial testing" is a list, not the phrase.
    assert "2202.12139" not in selected("metamorphic testing", testing_papers)
    assert selected("learning to rank", testing_papers) == {"2405.13786"}  # "Learning-to-Rank"
    assert selected("cyber physical system", testing_papers) >= {"2005.14124", "1601.06222"}
    assert selected("smart contracts", testing_papers) == {"1908.03707", "2102.08864"}
    assert selected("petri net", testing_papers) == {"1509.08401"}  # "Petri Nets"


def test_real_abstracts_latex_and_accents(testing_papers: list[PaperText]) -> None:
    # Title "$\omega$Test: WebView-Oriented Testing for Android Applications".
    assert selected("webview oriented testing", testing_papers) == {"2306.03845"}
    # "AFP tools face the \emph{oracle problem}."
    assert "1904.08007" in selected("oracle problem", testing_papers)
    assert selected("au:mantyla", testing_papers) == {"2202.09076"}  # Mika V. Mäntylä
    assert selected("au:moldrup", testing_papers) == {"2505.05162"}  # Lasse Møldrup


def test_real_abstracts_fields_and_booleans(testing_papers: list[PaperText]) -> None:
    anywhere = selected("hypothesis testing", testing_papers)
    in_title = selected("ti:hypothesis testing", testing_papers)
    assert in_title == {"2403.16981", "1704.08347", "1609.07528", "2304.14166", "1706.08286"}
    assert "2507.16734" in anywhere - in_title  # said in its abstract only
    assert selected("cat:cs.RO", testing_papers) == {"2108.07910"}
    # Of the group testing papers, 1106.3680 is the one about DNA screening.
    assert "1106.3680" in selected("group testing", testing_papers)
    assert "1106.3680" not in selected("group testing ANDNOT DNA", testing_papers)
    assert selected('au:"Arnaud Gotlieb" AND cat:cs.AI', testing_papers) == {"2407.18756"}


def test_real_abstracts_word_boundaries(testing_papers: list[PaperText]) -> None:
    assert selected("RL", testing_papers) == {"2301.05651"}  # "deep RL", never inside "URL"
    assert selected("GAN", testing_papers) >= {"2104.11069"}  # "Online GANs"
    assert "2108.07910" not in selected("net", testing_papers)  # it says "network" only


def test_same_answers_as_arxiv_for_boolean_author_queries() -> None:
    # arXiv's own answers to three queries, recorded in 2016: run ours over their union.
    folder = REFERENCE / "legacy-arxiv.py_2016"
    answers = {path.name: {p.key for p in load_atom(path)} for path in folder.glob("search_query_au_del_maestro*.xml")}
    papers = {p.key: p for path in folder.glob("search_query_au_del_maestro*.xml") for p in load_atom(path)}
    candidates = list(papers.values())
    assert (
        selected('au:del_maestro AND ti:"quantum criticality"', candidates)
        == answers["search_query_au_del_maestro_AND_ti__quantum_criticality_.xml"]
    )
    assert (
        selected("au:del_maestro AND ti:checkerboard", candidates)
        == answers["search_query_au_del_maestro_AND_ti_checkerboard.xml"]
    )
    excluded = selected("au:del_maestro ANDNOT (ti:checkerboard OR ti:Pyrochlore)", candidates)
    assert excluded == answers["search_query_au_del_maestro_ANDNOT__28ti_checkerboard_OR_ti_Pyrochlore_29.xml"]
