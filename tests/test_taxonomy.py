"""Every arXiv category a paper can carry is shown by name, from the taxonomy file shipped in the package."""

from __future__ import annotations

import re
from pathlib import Path

import feedparser
import pytest

from newsletter.demo import SAMPLE_DIR
from newsletter.render import subjects_line
from newsletter.taxonomy import category_name, category_names, load_category_names, subject_label
from tests.conftest import REFERENCE
from tests.real_text import REFERENCE_DIGEST, reference_day
from tests.servers.arxiv import load_entries_from_atom


def recorded_categories() -> dict[str, str]:
    """category -> where it was seen, over the bundled sample and every recorded arXiv reply and feed."""
    seen: dict[str, str] = {}
    for path in [*sorted((SAMPLE_DIR / "api").glob("*.xml")), *sorted((REFERENCE / "arxiv" / "api").rglob("*.xml"))]:
        for paper in load_entries_from_atom(path):
            for code in (*paper.categories, paper.primary_category):
                seen.setdefault(code, f"{path.name}:{paper.arxiv_id}")
    for path in [SAMPLE_DIR / "feed.xml", *sorted((REFERENCE / "arxiv" / "feed").glob("*.xml"))]:
        for entry in feedparser.parse(path.read_bytes()).entries:
            for tag in entry.get("tags", []):
                seen.setdefault(tag["term"], f"{path.name}:{entry.get('id')}")
    for reference in reference_day():
        for code in reference.paper.categories:
            seen.setdefault(code, f"reference:{reference.paper.arxiv_id}")
    return seen


def test_every_category_in_the_sample_and_the_recorded_arxiv_replies_has_a_name() -> None:
    seen = recorded_categories()

    assert len(seen) >= 10
    assert {code: where for code, where in seen.items() if subject_label(code) == code} == {}
    assert subject_label("53C") == "MSC 53C" and seen["53C"].startswith("pubs_id_list_math_0211159")


def test_names_are_the_ones_arxiv_and_the_reference_digest_print() -> None:
    pairs = set(re.findall(r"([A-Z][A-Za-z ,\-]+) \(([a-z\-]+\.[A-Za-z\-]+)\)", REFERENCE_DIGEST.read_text("utf-8")))
    printed = {(name, code) for name, code in pairs if code in category_names()}

    assert len(printed) >= 10
    assert {(name, code) for name, code in printed if category_name(code) != name} == set()
    assert category_name("stat.ML") == "Machine Learning"  # as arXiv lists it, with the code beside it


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("cs.AR", "Hardware Architecture"), ("cs.CY", "Computers and Society"), ("stat.AP", "Applications"),
        ("math.OC", "Optimization and Control"), ("astro-ph.GA", "Astrophysics of Galaxies"),
        ("cond-mat.stat-mech", "Statistical Mechanics"), ("hep-th", "High Energy Physics - Theory"),
        ("gr-qc", "General Relativity and Quantum Cosmology"), ("quant-ph", "Quantum Physics"),
        ("nlin.CD", "Chaotic Dynamics"), ("nucl-th", "Nuclear Theory"), ("math-ph", "Mathematical Physics"),
        ("physics.flu-dyn", "Fluid Dynamics"), ("q-bio.NC", "Neurons and Cognition"),
        ("q-fin.ST", "Statistical Finance"), ("eess.SP", "Signal Processing"), ("econ.EM", "Econometrics"),
        # archives of the 1990s, folded into today's categories but still on their papers
        ("cmp-lg", "Computation and Language"), ("solv-int", "Exactly Solvable and Integrable Systems"),
        ("chao-dyn", "Chaotic Dynamics"), ("adap-org", "Adaptation, Noise, and Self-Organizing Systems"),
        ("astro-ph", "Astrophysics"), ("cond-mat", "Condensed Matter"),
    ],
)
def test_each_archive_of_the_taxonomy_is_named(code: str, name: str) -> None:
    assert category_name(code) == name


def test_every_archive_group_is_covered() -> None:
    archives = {code.split(".")[0] for code in category_names()}

    assert {"cs", "math", "physics", "astro-ph", "cond-mat", "hep-ex", "hep-lat", "hep-ph", "hep-th", "nlin",
            "nucl-ex", "nucl-th", "quant-ph", "gr-qc", "math-ph", "q-bio", "q-fin", "stat", "eess", "econ"} <= archives
    assert len(category_names()) >= 170


def test_a_code_arxiv_never_had_is_shown_as_it_is() -> None:
    assert subjects_line(["cs.LG", "cs.ZZ"], "cs.LG") == "Machine Learning (cs.LG); cs.ZZ"


def test_a_malformed_taxonomy_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "categories.tsv"
    path.write_text("# comment\ncs.LG\tMachine Learning\ncs.AI Artificial Intelligence\n", encoding="utf-8")

    with pytest.raises(ValueError, match=r"categories\.tsv:3: expected 'code<TAB>name'"):
        load_category_names(path)
