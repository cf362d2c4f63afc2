"""Benchmark: every subscriber's selection for one announcement day, engine vs. naive regexes.

    python bench/matching.py [--subscribers 10000] [--papers 2000] [--naive-sample 60] [--feedback-share 0.1]

Papers are the real arXiv entries in tests/fixtures/reference/arxiv, re-keyed and with their
abstract sentences shuffled to reach --papers. Profiles draw 1-3 word phrases that occur in
those abstracts, with Zipf popularity, plus about 10% boolean keywords (AND / OR / ANDNOT,
ti: abs: au: cat:, prefix *). Since the papers are copies of ~145 real ones, every keyword
matches at least ~1/145 of them: a denser day than a real one, and the engine's work grows
with the matches. Each method runs in a fresh subprocess so that peak memory figures do not
mix. The naive way (a regex per subscriber keyword, run over each paper) runs on a fixed
random sample of subscribers and is extrapolated linearly to all of them.

Ranking: the match stage's in-memory work as select_papers_for_day does it (index, select, selection
rows with their rank signals), then the added cost of ranking by feedback for --feedback-share of the
subscribers, each with 5 verdicts (3 liked, 2 refused) on papers of earlier days: one TF-IDF fit over
the day's chosen papers and the papers named, then per subscriber a max over their block of cosines.
The naive way fits TF-IDF per subscriber over their own papers (sampled, extrapolated).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from newsletter.config import Settings  # noqa: E402
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
from newsletter.matching import _new_selections  # noqa: E402
from newsletter.ranking import (  # noqa: E402
    Taste,
    add_match_signals,
    rank_by_taste,
    rows_by_subscriber,
    tfidf_text,
)

REFERENCE = ROOT / "tests" / "fixtures" / "reference" / "arxiv"
ATOM = {"a": "http://www.w3.org/2005/Atom"}
STOPWORDS = set(
    """a an the of in on for to and or with by from as at is are be this that these those we
    our its it their which can has have not into than such via using based between over under
    both also more most new two one only each all any how what when where while who whose
    show shows paper study approach method results propose proposed present""".split()
)
DAY = dt.date(2026, 5, 4)
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
    cumulative = list(accumulate(1 / (rank + 1) for rank in range(len(ranked))))
    surnames = sorted({name.split()[-1] for paper in real for name in paper.authors if name.split()})

    def phrase() -> str:
        text = rng.choices(ranked, cum_weights=cumulative)[0]
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

SOFT_CHARS = r"\s\-_'\u2010-\u2015\u2019\u02bc\u00ad\u200b"
SOFT = rf"[{SOFT_CHARS}]*"
JOIN = r"[\-_'\u2010-\u2015\u2019\u02bc\u00ad\u200b]*"
HARD_GAP = rf"[{SOFT_CHARS}]*[^\w{SOFT_CHARS}][\W_]*"
LETTER, NOT_LETTER, NOT_DIGIT = r"[^\W\d_]", r"(?<![^\W\d_])", r"(?<!\d)"


def naive_regex(term: Term) -> re.Pattern[str]:
    """The term's matching rules written as one regex over folded text."""
    pattern = term.pattern
    parts = []
    for offset, char in enumerate(pattern):
        if char == "\x00":  # punctuation the keyword itself contains
            parts.append(HARD_GAP)
            continue
        if offset and pattern[offset - 1] != "\x00":
            parts.append(SOFT if term.breaks >> offset & 1 else JOIN)
        parts.append(re.escape(char))
    start = NOT_DIGIT if pattern[0].isdigit() else NOT_LETTER
    if term.prefix:
        end = ""
    else:
        plural = ""
        if term.scope != "au":  # English plurals: +s, +es after a sibilant or o, y -> ies
            plural = "(?:e?s)?" if pattern.endswith(("s", "x", "z", "ch", "sh", "o")) else "s?"
            if re.search(r"[^\W\daeiou]y$", pattern):
                parts[-1], plural = "(?:ies|ys?)", ""
        end = plural + (r"(?!\d)" if pattern[-1].isdigit() else rf"(?!{LETTER})")
    return re.compile(start + "".join(parts) + end)


FIELDS = {"text": ("title", "abstract"), "ti": ("title",), "abs": ("abstract",), "au": ("authors",)}
FoldedPaper = tuple[dict[str, str], list[str]]  # folded fields by name, lowercase categories


def naive_predicate(expr: Expr) -> Callable[[FoldedPaper], bool]:
    """A test of one keyword on one folded paper, its regexes compiled once."""
    if isinstance(expr, Term):
        if expr.scope == "cat":
            category, prefix = expr.pattern, expr.prefix
            return lambda paper: any(
                c.startswith(category) if prefix else category in (c, c.split(".")[0]) for c in paper[1]
            )
        regex, fields = naive_regex(expr), FIELDS[expr.scope]
        return lambda paper: any(regex.search(paper[0][name]) for name in fields)
    if isinstance(expr, Or):
        options = [naive_predicate(option) for option in expr.options]
        return lambda paper: any(option(paper) for option in options)
    left, right = naive_predicate(expr.left), naive_predicate(expr.right)
    if isinstance(expr, And):
        return lambda paper: left(paper) and right(paper)
    assert isinstance(expr, AndNot)
    return lambda paper: left(paper) and not right(paper)


def fold_papers(papers: list[PaperText]) -> list[FoldedPaper]:
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
    profiles: list[tuple[int, list[str]]], papers: list[PaperText], folded: list[FoldedPaper]
) -> dict[int, list[list[str]]]:
    """For each subscriber, for each keyword: compile it, then test every paper."""
    selection = {}
    for subscriber, keywords in profiles:
        sections = []
        for keyword in keywords:
            test = naive_predicate(parse_keyword(keyword))
            sections.append([paper.key for paper, fields in zip(papers, folded, strict=True) if test(fields)])
        selection[subscriber] = sections
    return selection


# ---------------------------------------------------------------------------------------
# Methods, each run in its own subprocess
# ---------------------------------------------------------------------------------------


Figures = dict[str, Any]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """Wall and CPU seconds since the last lap: the machine may be shared, CPU time less so."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), self.cpu_seconds()

    @staticmethod
    def cpu_seconds() -> float:
        """This process's CPU time and that of its finished children (forked scanners)."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), self.cpu_seconds()
        elapsed = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return elapsed


def run_setup(args: argparse.Namespace) -> Figures:
    workload(args)
    return {"peak_mib": peak_rss_mib()}


def run_engine(args: argparse.Namespace, per_paper: bool, processes: int = 1) -> Figures:
    papers, profiles = workload(args)
    baseline = peak_rss_mib()
    clock = Clock()
    index = KeywordIndex.build(profiles)
    build = clock.lap()
    if per_paper:
        selected = sum(len(index.match(paper)) for paper in papers)
    else:
        selection = index.select(papers, processes)
        selected = sum(len(hits) for sections in selection.values() for hits in sections)
    matching = clock.lap()
    # A forked scanner's pages are mostly the parent's, shared; adding its whole peak is an upper bound.
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if index.processes_used > 1 else 0
    return {
        "build": build,
        "match": matching,
        "baseline_mib": baseline,
        "peak_mib": peak_rss_mib() + children_peak,
        "selected": selected,
    }


def run_naive(args: argparse.Namespace) -> Figures:
    papers, profiles = workload(args)
    sample = random.Random(3).sample(profiles, args.naive_sample)
    baseline = peak_rss_mib()
    clock = Clock()
    folded = fold_papers(papers)
    fold = clock.lap()
    selection = naive_select(sample, papers, folded)
    matching = clock.lap()
    return {
        "build": fold,
        "match": matching,
        "baseline_mib": baseline,
        "peak_mib": peak_rss_mib(),
        "selected": sum(len(keys) for sections in selection.values() for keys in sections),
        "selection": selection,
    }


def feedback_workload(
    args: argparse.Namespace, subscribers: list[int]
) -> tuple[dict[int, Taste], dict[str, str]]:
    """5 verdicts (3 liked, 2 refused) on earlier days' papers for --feedback-share of the subscribers."""
    rng = random.Random(4)
    earlier = [
        PaperText(f"2604.{number:05d}", paper.title, paper.abstract, paper.authors, paper.categories)
        for number, paper in enumerate(make_papers(load_real_papers(), args.papers, random.Random(7)))
    ]
    keys = [paper.key for paper in earlier]
    tastes = {}
    for subscriber in rng.sample(subscribers, int(len(subscribers) * args.feedback_share)):
        named = rng.sample(keys, 5)
        tastes[subscriber] = Taste(liked=named[:3], refused=named[3:])
    return tastes, {paper.key: tfidf_text(paper.title, paper.abstract) for paper in earlier}


def run_ranking(args: argparse.Namespace) -> Figures:
    """The match stage's in-memory work without feedback, then the feedback ranking added to it."""
    papers, profiles = workload(args)
    tastes, earlier_texts = feedback_workload(args, [subscriber for subscriber, _ in profiles])
    texts = {**earlier_texts, **{paper.key: tfidf_text(paper.title, paper.abstract) for paper in papers}}
    clock = Clock()
    import sklearn.feature_extraction.text  # noqa: F401 - once per worker process, not per day

    imports = clock.lap()
    index = KeywordIndex.build(profiles)
    selected = index.select(papers)
    engine = clock.lap()
    rows = list(_new_selections(selected, DAY, set(), set()).values())
    selection_rows = clock.lap()
    chosen = {row["arxiv_id"] for row in rows}
    titles = index.title_labels(paper for paper in papers if paper.key in chosen)
    add_match_signals(rows, titles, {paper.key: number for number, paper in enumerate(papers)})
    signals = clock.lap()
    by_subscriber = rows_by_subscriber(rows)
    ranked = rank_by_taste(by_subscriber, tastes, texts, 0.15)
    feedback = clock.lap()
    sample = dict(list(tastes.items())[: args.naive_sample])
    clock.lap()
    for subscriber, taste in sample.items():
        rank_by_taste({subscriber: by_subscriber[subscriber]}, {subscriber: taste}, texts, 0.15)
    naive = clock.lap()
    moved = sum(1 for subscriber in tastes for row in by_subscriber.get(subscriber, []) if row["feedback_band"])
    return {
        "engine": engine, "rows_built": selection_rows, "signals": signals, "imports": imports,
        "feedback": feedback, "naive": naive,
        "naive_sampled": len(sample), "with_feedback": ranked, "rows": len(rows),
        "feedback_rows": sum(len(by_subscriber.get(subscriber, [])) for subscriber in tastes), "moved": moved,
    }


def print_ranking(args: argparse.Namespace) -> None:
    """The ranking figures: the match stage without feedback beside the cost feedback adds."""
    figures = in_subprocess("ranking", args)
    engine, signals, feedback, naive = figures["engine"], figures["signals"], figures["feedback"], figures["naive"]
    built = figures["rows_built"]
    stage = (engine[0] + built[0] + signals[0], engine[1] + built[1] + signals[1])
    scale = figures["with_feedback"] / max(1, figures["naive_sampled"])
    print(f"\nranking: {figures['with_feedback']:,} of {args.subscribers:,} subscribers with feedback "
          f"(5 verdicts each), {figures['feedback_rows']:,} of {figures['rows']:,} selection rows to score")
    header = f"{'part of the match stage (one process)':<52}{'wall s':>10}{'CPU s':>10}"
    print(header)
    print("-" * len(header))
    print(f"{'index build + select()':<52}{engine[0]:>10.3f}{engine[1]:>10.3f}")
    print(f"{'selection rows (first keyword, merged terms)':<52}{built[0]:>10.3f}{built[1]:>10.3f}")
    print(f"{'rank signals (title scan, distinct terms, position)':<52}{signals[0]:>10.3f}{signals[1]:>10.3f}")
    print(f"{'= match stage without feedback':<52}{stage[0]:>10.3f}{stage[1]:>10.3f}")
    print(f"{'+ feedback ranking: TF-IDF once per paper':<52}{feedback[0]:>10.3f}{feedback[1]:>10.3f}")
    print(f"{'  naive: TF-IDF per subscriber (extrapolated)':<52}{naive[0] * scale:>10.3f}{naive[1] * scale:>10.3f}")
    imports = figures["imports"]
    print(f"{'(importing scikit-learn, once per process)':<52}{imports[0]:>10.3f}{imports[1]:>10.3f}")
    print("(the stage's writes of the selection rows come on top of the stage's figure: the share is an upper bound)")
    added = feedback[1] / stage[1]
    print(f"feedback ranking adds {added:.1%} CPU ({feedback[0] / stage[0]:.1%} wall) to the match stage's "
          f"in-memory work; target < 20%: {'met' if added < 0.2 else 'NOT met'}; "
          f"naive / ours: {naive[1] * scale / feedback[1]:.0f}x; {figures['moved']:,} rows left the neutral band")


METHODS: dict[str, Callable[[argparse.Namespace], Figures]] = {
    "setup": run_setup,
    "engine-select": lambda args: run_engine(args, per_paper=False),
    "engine-select-forked": lambda args: run_engine(args, per_paper=False, processes=Settings().match_processes),
    "engine-match": lambda args: run_engine(args, per_paper=True),
    "naive": run_naive,
    "ranking": run_ranking,
}


def in_subprocess(method: str, args: argparse.Namespace) -> Figures:
    options = ["--subscribers", args.subscribers, "--papers", args.papers, "--keywords", args.keywords]
    options += ["--naive-sample", args.naive_sample, "--feedback-share", args.feedback_share, "--method", method]
    command = [sys.executable, __file__, *map(str, options)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    figures: Figures = json.loads(output.strip().splitlines()[-1])
    return figures


def is_plain_phrase(keyword: str) -> bool:
    """A keyword with no operators, fields, quotes, parentheses or wildcard."""
    term = parse_keyword(keyword)
    return isinstance(term, Term) and term.scope == "text" and not term.prefix and not re.search(r"[\"():*]", keyword)


def agreement(
    profiles: list[tuple[int, list[str]]], papers: list[PaperText], naive: dict[str, list[list[str]]]
) -> tuple[int, int, int, list[str]]:
    """Compare the engine's and the naive selections for the sampled subscribers' plain phrases."""
    selection = KeywordIndex.build(profiles).select(papers)
    keywords = dict(profiles)
    same = compared = nonempty = 0
    differences = []
    for subscriber, sections in naive.items():
        for position, naive_keys in enumerate(sections):
            keyword = keywords[int(subscriber)][position]
            if not is_plain_phrase(keyword):
                continue
            engine_keys = list(selection[int(subscriber)][position])
            compared += 1
            nonempty += bool(naive_keys)
            if engine_keys == naive_keys:
                same += 1
            else:
                differences.append(f"{keyword!r}: engine {len(engine_keys)} papers, naive {len(naive_keys)}")
    return same, compared, nonempty, differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--papers", type=int, default=2_000)
    parser.add_argument("--keywords", type=int, default=5, help="keywords per subscriber")
    parser.add_argument("--naive-sample", type=int, default=60, help="subscribers the naive way runs for")
    parser.add_argument("--feedback-share", type=float, default=0.1, help="share of subscribers with feedback")
    parser.add_argument("--ranking-only", action="store_true", help="print only the ranking figures")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(METHODS[args.method](args)))
        return
    if args.ranking_only:
        print_ranking(args)
        return

    papers, profiles = workload(args)
    keywords = [keyword for _, profile in profiles for keyword in profile]
    distinct = set(keywords)
    print(
        f"workload: {len(profiles):,} subscribers x {args.keywords} keywords; {len(distinct):,} distinct keywords, "
        f"{sum(not is_plain_phrase(k) for k in keywords) / len(keywords):.0%} of them boolean or fielded"
    )
    print(f"          {len(papers):,} papers made from {len(load_real_papers())} real arXiv entries")
    print(f"          {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print("each method runs in a fresh subprocess; peak = ru_maxrss, own = peak minus after loading the data")
    print("(with forked scanners: CPU seconds include theirs, peak adds their peak to the parent's)\n")

    setup = in_subprocess("setup", args)
    select = in_subprocess("engine-select", args)
    forked = in_subprocess("engine-select-forked", args)
    match = in_subprocess("engine-match", args)
    naive = in_subprocess("naive", args)
    scale = args.subscribers / args.naive_sample
    naive_total = (naive["build"][0] + naive["match"][0] * scale, naive["build"][1] + naive["match"][1] * scale)

    header = (
        f"{'method':<38}{'build/fold s':>13}{'match s':>10}{'total s':>10}{'total CPU s':>12}"
        f"{'peak MiB':>10}{'own MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    processes = Settings().match_processes
    for name, figures, total in (
        ("engine: build + select(), 1 process", select, None),
        (f"engine: ... select(), {processes} processes", forked, None),
        ("engine: build + match() per paper", match, None),
        ("naive regexes (extrapolated)", naive, naive_total),
    ):
        build, matching = figures["build"], figures["match"]
        if total is None:
            total = (build[0] + matching[0], build[1] + matching[1])
        else:
            matching = (matching[0] * scale, matching[1] * scale)
        own = figures["peak_mib"] - figures["baseline_mib"]
        print(
            f"{name:<38}{build[0]:>13.3f}{matching[0]:>10.3f}{total[0]:>10.3f}{total[1]:>12.3f}"
            f"{figures['peak_mib']:>10.1f}{own:>9.1f}"
        )
    print(f"{'(loading the data alone)':<83}{setup['peak_mib']:>10.1f}")
    print()
    print(
        f"naive: EXTRAPOLATED linearly from {args.naive_sample} of {args.subscribers:,} subscribers "
        f"({naive['match'][0]:.1f} s measured), plus folding every paper once ({naive['build'][0]:.2f} s)"
    )
    engine_total = forked["build"][0] + forked["match"][0]
    single_total = select["build"][0] + select["match"][0]
    print(
        f"speed-up, naive / engine (build + select): {naive_total[0] / engine_total:,.0f}x "
        f"({naive_total[0] / single_total:,.0f}x in one process)"
    )
    print(
        f"(subscriber, keyword, paper) selections: engine {select['selected']:,}, "
        f"naive ~{naive['selected'] * scale:,.0f} (extrapolated); "
        f"{select['selected'] / len(profiles):.0f} papers per subscriber"
    )
    met = engine_total < 1 and forked["peak_mib"] < 300
    print(
        f"target for the engine as the match stage runs it (NEWSLETTER_MATCH_PROCESSES={processes}), "
        f"< 1 s and < 300 MB: {'met' if met else 'NOT met'} ({engine_total:.3f} s; one process: {single_total:.3f} s)"
    )

    same, compared, nonempty, differences = agreement(profiles, papers, naive["selection"])
    print(
        f"\nagreement, plain-phrase keywords of the {args.naive_sample} naive subscribers: "
        f"{same}/{compared} selections identical ({nonempty} of them non-empty)"
    )
    for difference in differences[:10]:
        print(f"  differs: {difference}")
    print_ranking(args)


if __name__ == "__main__":
    main()
