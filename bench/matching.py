"""Benchmark: every subscriber's selection for one announcement day, engine vs. naive regexes.

    python bench/matching.py [--subscribers 10000] [--papers 2000] [--naive-sample 100]

Papers are the real arXiv entries in shared/reference/arxiv, re-keyed and with their
abstract sentences shuffled to reach --papers. Profiles draw 1-3 word phrases that occur in
those abstracts, with Zipf popularity, plus about 10% boolean keywords (AND / OR / ANDNOT,
ti: abs: au: cat:, prefix *). Each method runs in a fresh subprocess so peak memory figures
do not mix. The naive way (one regex per subscriber keyword per paper) runs on a fixed random
sample of subscribers and is extrapolated linearly to all of them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from newsletter.keywords import (  # noqa: E402
    And,
    AndNot,
    Expr,
    KeywordIndex,
    Or,
    PaperText,
    Term,
    fold_text,
    parse_keyword,
)

REFERENCE = ROOT.parent / "shared" / "reference" / "arxiv"
ATOM = {"a": "http://www.w3.org/2005/Atom"}
STOPWORDS = set(
    """a an the of in on for to and or with by from as at is are be this that these those we
    our its it their which can has have not into than such via using based between over under
    both also more most new two one only each all any how what when where while who whose
    show shows paper study approach method results propose proposed present""".split()
)
TEMPLATE_CATEGORIES = ["cs.SE", "cs.LG", "cs.AI", "cs.IT", "math.ST", "cs.*", "stat.*"]


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def load_real_papers() -> list[PaperText]:
    """Every distinct real entry in the reference Atom and RSS files."""
    papers: dict[str, PaperText] = {}
    for path in sorted(REFERENCE.glob("api/**/*.xml")):
        for entry in ET.parse(path).getroot().findall("a:entry", ATOM):
            arxiv_id = (entry.findtext("a:id", "", ATOM) or "").rsplit("/abs/", 1)[-1]
            title = entry.findtext("a:title", "", ATOM) or ""
            if not arxiv_id or title == "Error":
                continue
            papers[re.sub(r"v\d+$", "", arxiv_id)] = PaperText(
                key=arxiv_id,
                title=" ".join(title.split()),
                abstract=entry.findtext("a:summary", "", ATOM) or "",
                authors=tuple(a.findtext("a:name", "", ATOM) or "" for a in entry.findall("a:author", ATOM)),
                categories=tuple(c.get("term", "") for c in entry.findall("a:category", ATOM)),
            )
    for path in sorted(REFERENCE.glob("feed/*.xml")):
        for item in ET.parse(path).getroot().iter("item"):
            arxiv_id = (item.findtext("link") or "").rsplit("/", 1)[-1]
            description = item.findtext("description") or ""
            papers[arxiv_id] = PaperText(
                key=arxiv_id,
                title=item.findtext("title") or "",
                abstract=description.split("Abstract:", 1)[-1].strip(),
                authors=tuple(
                    name.strip()
                    for name in (item.findtext("{http://purl.org/dc/elements/1.1/}creator") or "").split(",")
                ),
                categories=tuple(c.text or "" for c in item.findall("category")),
            )
    return list(papers.values())


def make_papers(real: list[PaperText], count: int, rng: random.Random) -> list[PaperText]:
    """`count` papers: the real ones, then copies with new ids and shuffled sentences."""
    papers = list(real[:count])
    while len(papers) < count:
        base = real[len(papers) % len(real)]
        sentences = re.split(r"(?<=\.)\s+", base.abstract.strip())
        rng.shuffle(sentences)
        papers.append(
            PaperText(
                key=f"2605.{len(papers):05d}",
                title=base.title,
                abstract=" ".join(sentences),
                authors=base.authors,
                categories=base.categories,
            )
        )
    return papers


def phrase_vocabulary(real: list[PaperText]) -> list[str]:
    """1-3 word phrases found in the real abstracts."""
    document_frequency: Counter[str] = Counter()
    for paper in real:
        words = re.findall(r"[a-z][a-z0-9-]*[a-z0-9]", f"{paper.title}. {paper.abstract}".lower())
        found: set[str] = set()
        for size in (1, 2, 3):
            for start in range(len(words) - size + 1):
                gram = words[start : start + size]
                if gram[0] in STOPWORDS or gram[-1] in STOPWORDS or (size == 1 and len(gram[0]) < 5):
                    continue
                found.add(" ".join(gram))
        document_frequency.update(found)
    # The reference papers all come from one search ("testing"), so words like "testing"
    # occur in nearly all of them; a daily arXiv batch is broader, and a subscriber who
    # follows such a word would get most of the day. Keep phrases found in at most 10%.
    phrases = [phrase for phrase, df in document_frequency.items() if df <= len(real) // 10]
    return sorted(phrases)


def make_profiles(
    real: list[PaperText], subscribers: int, per_subscriber: int, rng: random.Random
) -> list[tuple[int, list[str]]]:
    """Profiles with Zipf-popular phrases, as people type them, and ~10% boolean keywords."""
    vocabulary = phrase_vocabulary(real)
    # Popularity is not breadth: which topics are popular is a matter of taste, so the
    # Zipf ranks go to phrases in random order.
    ranked = list(vocabulary)
    rng.shuffle(ranked)
    weights = [1 / (rank + 1) for rank in range(len(ranked))]
    surnames = sorted({name.split()[-1] for paper in real for name in paper.authors if name.split()})

    def phrase() -> str:
        text = rng.choices(ranked, weights)[0]
        style = rng.random()
        if style < 0.1:
            return text.title()
        if style < 0.15:
            return text.replace(" ", "-")
        return text

    def boolean() -> str:
        a, b = phrase(), phrase()
        template = rng.randrange(8)
        if template == 0:
            return f"{a} AND {b}"
        if template == 1:
            return f"{a} OR {b}"
        if template == 2:
            return f"{a} ANDNOT {b}"
        if template == 3:
            return f"ti:{a}"
        if template == 4:
            return f'abs:"{a}" AND cat:{rng.choice(TEMPLATE_CATEGORIES)}'
        if template == 5:
            return f"({a} OR {b}) ANDNOT cat:{rng.choice(TEMPLATE_CATEGORIES)}"
        if template == 6:
            return f"au:{rng.choice(surnames)}"
        word = max(a.split(), key=len)
        return f"{word[: max(4, len(word) - 3)]}*"

    profiles = []
    for subscriber in range(subscribers):
        keywords: list[str] = []
        while len(keywords) < per_subscriber:
            keyword = boolean() if rng.random() < 0.1 else phrase()
            if keyword not in keywords:
                keywords.append(keyword)
        profiles.append((subscriber, keywords))
    return profiles


def workload(args: argparse.Namespace) -> tuple[list[PaperText], list[tuple[int, list[str]]]]:
    """The same papers and profiles in every subprocess (fixed seeds)."""
    real = load_real_papers()
    papers = make_papers(real, args.papers, random.Random(1))
    profiles = make_profiles(real, args.subscribers, args.keywords, random.Random(2))
    return papers, profiles


# ---------------------------------------------------------------------------------------
# The naive way: one compiled regex per subscriber keyword, run over each paper
# ---------------------------------------------------------------------------------------

SOFT = r"[\s\-_'\u2010-\u2015\u2019\u02bc\u00ad\u200b]*"
JOIN = r"[\-_'\u2010-\u2015\u2019\u02bc\u00ad\u200b]*"
LETTER, NOT_LETTER, NOT_DIGIT = r"[^\W\d_]", r"(?<![^\W\d_])", r"(?<!\d)"


def naive_regex(term: Term) -> re.Pattern[str]:
    """The term's matching rules written as one regex over folded text."""
    pattern = term.pattern
    parts = [re.escape(pattern[0])]
    for offset in range(1, len(pattern)):
        parts.append(SOFT if offset in term.splits else JOIN)
        parts.append(re.escape(pattern[offset]))
    start = NOT_DIGIT if pattern[0].isdigit() else NOT_LETTER
    if term.prefix:
        end = ""
    else:
        plural = "(?:e?s)?" if term.scope != "au" else ""
        end = plural + (r"(?!\d)" if pattern[-1].isdigit() else rf"(?!{LETTER})")
    return re.compile(start + "".join(parts) + end)


FIELDS = {"text": ("title", "abstract"), "ti": ("title",), "abs": ("abstract",), "au": ("authors",)}


def naive_matches(expr: Expr, paper: dict[str, str], categories: list[str]) -> bool:
    """Evaluate a keyword on one folded paper, compiling each term's regex on the spot."""
    if isinstance(expr, Term):
        if expr.scope == "cat":
            return any(
                category.startswith(expr.pattern)
                if expr.prefix
                else category == expr.pattern or category.split(".")[0] == expr.pattern
                for category in categories
            )
        regex = naive_regex(expr)
        return any(regex.search(paper[name]) for name in FIELDS[expr.scope])
    if isinstance(expr, Or):
        return any(naive_matches(option, paper, categories) for option in expr.options)
    if isinstance(expr, And):
        return naive_matches(expr.left, paper, categories) and naive_matches(expr.right, paper, categories)
    assert isinstance(expr, AndNot)
    return naive_matches(expr.left, paper, categories) and not naive_matches(expr.right, paper, categories)


def fold_papers(papers: list[PaperText]) -> list[tuple[dict[str, str], list[str]]]:
    """Fold every paper once; the naive way needs it as much as the engine does."""
    return [
        (
            {
                "title": fold_text(paper.title),
                "abstract": fold_text(paper.abstract),
                "authors": fold_text("; ".join(paper.authors)),
            },
            [category.lower() for category in paper.categories],
        )
        for paper in papers
    ]


def naive_select(
    profiles: list[tuple[int, list[str]]], papers: list[PaperText], folded: list[tuple[dict[str, str], list[str]]]
) -> dict[int, list[list[str]]]:
    """For each subscriber, for each keyword, test every paper."""
    selection = {}
    for subscriber, keywords in profiles:
        sections = []
        for keyword in keywords:
            expr = parse_keyword(keyword)
            sections.append(
                [paper.key for paper, (fields, cats) in zip(papers, folded) if naive_matches(expr, fields, cats)]
            )
        selection[subscriber] = sections
    return selection


# ---------------------------------------------------------------------------------------
# Methods, each run in its own subprocess
# ---------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_setup(args: argparse.Namespace) -> dict[str, float]:
    workload(args)
    return {"peak_mib": peak_rss_mib()}


def run_engine_select(args: argparse.Namespace) -> dict[str, float]:
    papers, profiles = workload(args)
    baseline = peak_rss_mib()
    started = time.perf_counter()
    index = KeywordIndex.build(profiles)
    built = time.perf_counter()
    selection = index.select(papers)
    finished = time.perf_counter()
    selected = sum(len(hits) for sections in selection.values() for hits in sections)
    return {
        "build_s": built - started,
        "match_s": finished - built,
        "total_s": finished - started,
        "baseline_mib": baseline,
        "peak_mib": peak_rss_mib(),
        "selected": selected,
    }


def run_engine_match(args: argparse.Namespace) -> dict[str, float]:
    papers, profiles = workload(args)
    baseline = peak_rss_mib()
    started = time.perf_counter()
    index = KeywordIndex.build(profiles)
    built = time.perf_counter()
    results = [index.match(paper) for paper in papers]
    finished = time.perf_counter()
    return {
        "build_s": built - started,
        "match_s": finished - built,
        "total_s": finished - started,
        "baseline_mib": baseline,
        "peak_mib": peak_rss_mib(),
        "selected": sum(map(len, results)),
    }


def run_naive(args: argparse.Namespace) -> dict[str, float]:
    papers, profiles = workload(args)
    sample = random.Random(3).sample(profiles, args.naive_sample)
    baseline = peak_rss_mib()
    started = time.perf_counter()
    folded = fold_papers(papers)
    folded_at = time.perf_counter()
    selection = naive_select(sample, papers, folded)
    finished = time.perf_counter()
    scale = len(profiles) / len(sample)
    return {
        "fold_s": folded_at - started,
        "sample_match_s": finished - folded_at,
        "total_s": (folded_at - started) + (finished - folded_at) * scale,
        "baseline_mib": baseline,
        "peak_mib": peak_rss_mib(),
        "selected": sum(len(keys) for sections in selection.values() for keys in sections) * scale,
    }


METHODS: dict[str, Callable[[argparse.Namespace], dict[str, float]]] = {
    "setup": run_setup,
    "engine-select": run_engine_select,
    "engine-match": run_engine_match,
    "naive": run_naive,
}


def in_subprocess(method: str, args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--method",
        method,
        "--subscribers",
        str(args.subscribers),
        "--papers",
        str(args.papers),
        "--keywords",
        str(args.keywords),
        "--naive-sample",
        str(args.naive_sample),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def is_plain_phrase(keyword: str) -> bool:
    """A keyword with no operators, fields, quotes, parentheses or wildcard."""
    term = parse_keyword(keyword)
    return isinstance(term, Term) and term.scope == "text" and not term.prefix and not re.search(r"[\"():*]", keyword)


def agreement(args: argparse.Namespace) -> tuple[int, int, int, list[str]]:
    """Compare engine and naive selections for the plain phrases of a sample of subscribers."""
    papers, profiles = workload(args)
    sample = random.Random(4).sample(profiles, args.agreement_sample)
    selection = KeywordIndex.build(profiles).select(papers)
    naive = naive_select(sample, papers, fold_papers(papers))
    same = compared = nonempty = 0
    differences = []
    for subscriber, keywords in sample:
        for position, keyword in enumerate(keywords):
            if not is_plain_phrase(keyword):
                continue
            engine_keys = [key for key, _ in selection[subscriber][position]]
            naive_keys = naive[subscriber][position]
            compared += 1
            nonempty += bool(naive_keys)
            if engine_keys == naive_keys:
                same += 1
            else:
                differences.append(f"{keyword!r}: engine {len(engine_keys)}, naive {len(naive_keys)}")
    return same, compared, nonempty, differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--papers", type=int, default=2_000)
    parser.add_argument("--keywords", type=int, default=5, help="keywords per subscriber")
    parser.add_argument("--naive-sample", type=int, default=100, help="subscribers the naive way runs for")
    parser.add_argument("--agreement-sample", type=int, default=300)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(METHODS[args.method](args)))
        return

    papers, profiles = workload(args)
    keywords = [keyword for _, profile in profiles for keyword in profile]
    plain = sum(map(is_plain_phrase, set(keywords)))
    print(f"workload: {len(profiles):,} subscribers x {args.keywords} keywords = {len(keywords):,} keywords")
    print(f"          {len(set(keywords)):,} distinct keyword strings ({plain:,} plain phrases),")
    print(f"          {sum(not is_plain_phrase(k) for k in keywords) / len(keywords):.0%} of keywords boolean/fielded")
    print(f"          {len(papers):,} papers from {len(load_real_papers())} real arXiv entries")
    print("each method in a fresh subprocess (peak RSS = ru_maxrss; 'own' = peak minus after-setup)\n")

    setup = in_subprocess("setup", args)
    select = in_subprocess("engine-select", args)
    match = in_subprocess("engine-match", args)
    naive = in_subprocess("naive", args)

    rows = [
        ("engine: build + select()", select["build_s"], select["match_s"], select["total_s"], select),
        ("engine: build + match() per paper", match["build_s"], match["match_s"], match["total_s"], match),
    ]
    header = f"{'method':<40}{'build s':>9}{'match s':>10}{'total s':>10}{'peak MiB':>10}{'own MiB':>9}"
    print(header)
    print("-" * len(header))
    for name, build, matching, total, figures in rows:
        own = figures["peak_mib"] - figures["baseline_mib"]
        print(f"{name:<40}{build:>9.3f}{matching:>10.3f}{total:>10.3f}{figures['peak_mib']:>10.1f}{own:>9.1f}")
    naive_name = f"naive regexes (extrapolated x{args.subscribers / args.naive_sample:g})"
    naive_own = naive["peak_mib"] - naive["baseline_mib"]
    print(
        f"{naive_name:<40}{naive['fold_s']:>9.3f}{naive['total_s'] - naive['fold_s']:>10.1f}"
        f"{naive['total_s']:>10.1f}{naive['peak_mib']:>10.1f}{naive_own:>9.1f}"
    )
    print(f"{'(data set-up alone)':<40}{'':>29}{setup['peak_mib']:>10.1f}")
    print()
    print(
        f"naive: measured on {args.naive_sample} of {args.subscribers:,} subscribers "
        f"({naive['sample_match_s']:.2f} s) plus folding all papers once ({naive['fold_s']:.2f} s), "
        "then extrapolated linearly; its 'build' column is that folding"
    )
    print(f"(subscriber, keyword, paper) selections: engine {select['selected']:,.0f}, naive ~{naive['selected']:,.0f}")
    print(f"speed-up, naive / engine select(): {naive['total_s'] / select['total_s']:,.0f}x")
    target = "met" if select["total_s"] < 1 and select["peak_mib"] < 300 else "NOT met"
    print(f"target (< 1 s, < 300 MB) for the engine: {target}")

    same, compared, nonempty, differences = agreement(args)
    print(
        f"\nagreement on plain phrases, {args.agreement_sample} sampled subscribers: "
        f"{same}/{compared} keyword selections identical ({nonempty} non-empty)"
    )
    for difference in differences[:10]:
        print(f"  differs: {difference}")


if __name__ == "__main__":
    main()
