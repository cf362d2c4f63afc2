"""The matching engine: every subscriber's keywords compiled once, a paper matched in one pass.

Match.terms (what to highlight) are the keyword's terms as the subscriber wrote them, those
present in the paper, leaving out what follows ANDNOT.
"""

from __future__ import annotations

import gc
import logging
import os
from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from typing import Generic, TypeVar

import ahocorasick_rs

from newsletter.keywords.folding import _FIELD_BREAK, _forbidden_breaks, _plural_forms, _Stream, _stream, fold_text
from newsletter.keywords.parallel import _MIN_PAPERS_PER_PROCESS, _ForkedScan
from newsletter.keywords.syntax import And, AndNot, Expr, KeywordSyntaxError, Or, SyntaxProblem, Term, parse_keyword

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaperText:
    """What matching needs of a paper."""

    key: str
    title: str
    abstract: str
    authors: Sequence[str] = ()
    categories: Sequence[str] = ()


@dataclass(frozen=True)
class Match(Generic[K]):
    """A paper satisfies keyword `position` of `subscriber`; `terms` are the words to highlight."""

    subscriber: K
    position: int
    terms: frozenset[str]


class KeywordHits(Mapping[str, frozenset[str]]):
    """Paper key -> matched terms, for every paper one keyword selected, in the order given.

    Lists rather than a dict: a day fills tens of thousands of these, and appending to a
    list costs a fraction of a dict insert. A one-term keyword has one label for all papers.
    """

    __slots__ = ("_index", "_keys", "_label", "_labels")

    def __init__(self, keys: list[str], labels: list[frozenset[str]] | None, label: frozenset[str] = frozenset()):
        self._keys = keys
        self._labels = labels  # one per key, or None: `label` for all
        self._label = label
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __getitem__(self, key: str) -> frozenset[str]:
        if self._index is None:
            self._index = {found: number for number, found in enumerate(self._keys)}
        number = self._index[key]
        return self._label if self._labels is None else self._labels[number]

    def items(self) -> Iterator[tuple[str, frozenset[str]]]:  # type: ignore[override]
        return zip(self._keys, self._labels if self._labels is not None else repeat(self._label), strict=False)

_FIELD_SCOPES = frozenset(("ti", "abs"))  # terms looked for in only one of title and abstract

# A compiled keyword: whether the expression holds, given the ids of the terms present.
_Predicate = Callable[[set[int]], bool]


class _Scanner:
    """One automaton over the canonical forms (and plural forms) of a set of terms.

    A hit counts only where it starts a token. Then: a hit that is a whole token satisfies
    its terms at once; any other must end at a token end (unless its term is a prefix) and
    may hold a whitespace gap only where the term allows one. Title and abstract are one
    stream; ti: and abs: terms count only on their side of it.
    """

    def __init__(self, terms: list[tuple[int, Term]], plurals: bool) -> None:
        form_ids: dict[str, int] = {}
        sources: list[list[tuple[int, Term, int]]] = []  # form id -> (term id, term, forbidden breaks)
        for term_id, term in terms:
            forms = (term.pattern,) if term.prefix or not plurals else (term.pattern, *_plural_forms(term.pattern))
            for form in forms:
                form_id = form_ids.setdefault(form, len(form_ids))
                if form_id == len(sources):
                    sources.append([])
                sources[form_id].append((term_id, term, _forbidden_breaks(len(form), term.breaks)))
        # Per form id, for terms looked for anywhere: the terms a hit that is one whole
        # token satisfies; the (term, forbidden breaks) to check for another hit that ends
        # at a token end; and for the forms of prefix terms, the only ones that may end
        # inside a word, theirs.
        self.whole = [tuple(t for t, term, _ in found if term.scope not in _FIELD_SCOPES) for found in sources]
        self.at_end = [
            tuple((t, forbidden) for t, term, forbidden in found if term.scope not in _FIELD_SCOPES)
            for found in sources
        ]
        self.inside = {
            form_id: prefixes
            for form_id, found in enumerate(sources)
            if (prefixes := tuple((t, f) for t, term, f in found if term.prefix and term.scope == "text"))
        }
        # Form id -> (term, in the title, is a prefix, forbidden breaks) for ti: and abs: terms.
        self.fielded = {
            form_id: entries
            for form_id, found in enumerate(sources)
            if (entries := tuple((t, x.scope == "ti", x.prefix, f) for t, x, f in found if x.scope in _FIELD_SCOPES))
        }
        self.automaton = ahocorasick_rs.AhoCorasick(list(form_ids), matchkind=ahocorasick_rs.MatchKind.Standard)

    def scan(self, stream: _Stream, present: set[int]) -> None:
        """Add to `present` the terms found in the stream."""
        found = self.automaton.find_matches_as_indexes(stream.text, overlapping=True)
        tokens, ends, spaces, inside, at_end = stream.tokens, stream.ends, stream.spaces, self.inside, self.at_end
        # Comprehensions, not loops, for the per-hit work. Most hits are dropped at once:
        # "net" inside "network" does not begin a word; "learn" ends inside "learning".
        hits = [
            (form_id, begin, end)
            for form_id, begin, end in found
            if begin in tokens and (end in ends or form_id in inside)
        ]
        whole = self.whole
        present.update(*[whole[form_id] for form_id, begin, end in hits if tokens[begin] == end])
        present.update(
            [
                term_id
                for form_id, begin, end in hits
                if tokens[begin] != end
                for term_id, forbidden in (at_end if end in ends else inside)[form_id]
                if not (spaces >> begin) & forbidden
            ]
        )
        if self.fielded:
            self._scan_fielded(stream, found, present)

    def _scan_fielded(self, stream: _Stream, found: list[tuple[int, int, int]], present: set[int]) -> None:
        tokens, ends, fielded = stream.tokens, stream.ends, self.fielded
        title_end = stream.text.find(_FIELD_BREAK)
        for form_id, begin, end in [hit for hit in found if hit[0] in fielded]:
            if begin not in tokens:
                continue
            whole_token = tokens[begin] == end
            for term_id, in_title, prefix, forbidden in fielded[form_id]:
                if (begin < title_end) is in_title and (
                    whole_token or ((prefix or end in ends) and not (stream.spaces >> begin) & forbidden)
                ):
                    present.add(term_id)


def _needs_every_positive(expr: Expr) -> bool:
    """Whether every term outside an ANDNOT is present whenever `expr` is true (no OR among them)."""
    if isinstance(expr, Term):
        return True
    if isinstance(expr, Or):
        return len(expr.options) == 1 and _needs_every_positive(expr.options[0])
    if isinstance(expr, AndNot):
        return _needs_every_positive(expr.left)
    return _needs_every_positive(expr.left) and _needs_every_positive(expr.right)



@contextmanager
def _collector_paused() -> Iterator[None]:
    # Building the index and a day's selections creates some 10^5 long-lived objects and no
    # reference cycles, and meanwhile CPython's cycle collector would walk the whole heap
    # several times (up to a third of the build time, measured). Pause it, and leave it as
    # it was found.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class KeywordIndex(Generic[K]):
    """Every subscriber's keywords compiled once; matches a paper in one pass over its text."""

    def __init__(self) -> None:
        self._terms: list[Term] = []
        self._term_ids: dict[Term, int] = {}
        # Term id -> the expression that is this term alone (-1: none), and -> the compound
        # expressions the term can make true (it is not only under an ANDNOT).
        self._term_alone: list[int] = []
        self._term_compound: list[list[int]] = []
        self._singles: list[frozenset[int]] = []
        self._single_labels: list[frozenset[str]] = []
        self._predicates: list[_Predicate | None] = []  # None: the expression is one term
        self._positives: list[frozenset[int]] = []  # terms not under an ANDNOT, to highlight
        self._expr_ids: dict[Expr, int] = {}
        self._slots: list[list[tuple[K, int]]] | None = None  # expression -> (subscriber, position)
        self._profiles: dict[K, list[int | None]] = {}
        self._categories: dict[tuple[str, bool], list[int]] = defaultdict(list)
        self._text_scanner: _Scanner | None = None  # terms looked for in titles and abstracts
        self._author_scanner: _Scanner | None = None  # au: terms
        # Filled once all profiles are in, shaped for the per-paper loop: term id -> (its
        # single-term expression, label) or None; term id -> compound expressions; and the
        # terms that have any compound expression at all.
        self._alone_hits: list[tuple[int, frozenset[str]] | None] = []
        self._compound: list[tuple[int, ...]] = []
        self._in_compound: frozenset[int] = frozenset()
        self._labels: dict[frozenset[int], frozenset[str]] = {}
        # Expression -> its label when the same for every paper (one term; terms all required), else None.
        self._fixed_labels: list[frozenset[str] | None] = []
        self._match_cache: dict[tuple[int, frozenset[str]], tuple[Match[K], ...]] = {}
        self.invalid: list[tuple[K, int, KeywordSyntaxError]] = []
        self.unreadable: list[tuple[str, str]] = []  # (paper key, reason) of papers select() could not scan
        self.processes_used = 0  # processes that scanned papers in the last select()

    @classmethod
    def build(cls, profiles: Iterable[tuple[K, Sequence[str]]]) -> KeywordIndex[K]:
        """Compile all profiles; keywords that do not parse are skipped and listed in `invalid`."""
        with _collector_paused():
            return cls()._add_profiles(profiles)

    def _add_profiles(self, profiles: Iterable[tuple[K, Sequence[str]]]) -> KeywordIndex[K]:
        parsed: dict[str, int | KeywordSyntaxError] = {}
        for subscriber, keywords in profiles:
            if subscriber in self._profiles:
                raise ValueError(f"subscriber {subscriber!r} appears twice")
            expr_ids: list[int | None] = []
            for position, keyword in enumerate(keywords):
                if keyword not in parsed:
                    try:
                        parsed[keyword] = self._add_expr(parse_keyword(keyword.strip()))
                    except KeywordSyntaxError as error:
                        parsed[keyword] = error
                    except Exception as exc:  # noqa: BLE001 - one stored keyword never stops everyone's match
                        detail = f"{type(exc).__name__}: {exc}"
                        parsed[keyword] = KeywordSyntaxError(SyntaxProblem.UNREADABLE, 0, detail=detail)
                compiled = parsed[keyword]
                if isinstance(compiled, KeywordSyntaxError):
                    self.invalid.append((subscriber, position, compiled))
                    expr_ids.append(None)
                    continue
                expr_ids.append(compiled)
            self._profiles[subscriber] = expr_ids
        self._compile_scanners()
        self._alone_hits = [
            None if expr_id < 0 else (expr_id, label)
            for expr_id, label in zip(self._term_alone, self._single_labels, strict=True)
        ]
        self._compound = [tuple(expr_ids) for expr_ids in self._term_compound]
        self._in_compound = frozenset(term_id for term_id, found in enumerate(self._compound) if found)
        return self

    def _add_expr(self, expr: Expr) -> int:
        # Identical expressions (also "Multi-Agent" vs "multi agent") share one entry.
        expr_id = self._expr_ids.get(expr)
        if expr_id is None:
            expr_id = len(self._predicates)
            self._expr_ids[expr] = expr_id
            if isinstance(expr, Term):
                term_id = self._add_term(expr)
                self._term_alone[term_id] = expr_id
                self._predicates.append(None)
                self._positives.append(self._singles[term_id])
                self._fixed_labels.append(self._single_labels[term_id])
            else:
                self._predicates.append(self._compile(expr))
                self._positives.append(frozenset(self._positive_terms(expr)))
                fixed = _needs_every_positive(expr)
                self._fixed_labels.append(self._label(self._positives[expr_id]) if fixed else None)
                for term_id in self._triggers(expr):
                    self._term_compound[term_id].append(expr_id)
        return expr_id

    def _add_term(self, term: Term) -> int:
        term_id = self._term_ids.get(term)
        if term_id is None:
            term_id = len(self._terms)
            self._term_ids[term] = term_id
            self._terms.append(term)
            self._term_alone.append(-1)
            self._term_compound.append([])
            self._singles.append(frozenset((term_id,)))
            self._single_labels.append(frozenset((term.text,)))
        return term_id

    def _compile(self, expr: Expr) -> _Predicate:
        # Closures over term ids, with the usual shapes (a term beside a term or beside a
        # sub-expression, an OR of terms) tested in one call: a day evaluates 10^5 of them.
        if isinstance(expr, Term):
            term_id = self._add_term(expr)
            return lambda present: term_id in present
        if isinstance(expr, Or):
            terms = frozenset(self._add_term(option) for option in expr.options if isinstance(option, Term))
            others = [self._compile(option) for option in expr.options if not isinstance(option, Term)]
            if not others:
                return lambda present: not terms.isdisjoint(present)
            return lambda present: not terms.isdisjoint(present) or any(other(present) for other in others)
        is_and = isinstance(expr, And)
        if isinstance(expr.right, Term):
            right_id = self._add_term(expr.right)
            if isinstance(expr.left, Term):
                left_id = self._add_term(expr.left)
                if is_and:
                    return lambda present: left_id in present and right_id in present
                return lambda present: left_id in present and right_id not in present
            left = self._compile(expr.left)
            if is_and:
                return lambda present: right_id in present and left(present)
            return lambda present: right_id not in present and left(present)
        left, right = self._compile(expr.left), self._compile(expr.right)
        if is_and:
            return lambda present: left(present) and right(present)
        return lambda present: left(present) and not right(present)

    def _positive_terms(self, expr: Expr) -> set[int]:
        if isinstance(expr, Term):
            return {self._term_ids[expr]}
        if isinstance(expr, Or):
            return set().union(*(self._positive_terms(option) for option in expr.options))
        left = self._positive_terms(expr.left)
        return left if isinstance(expr, AndNot) else left | self._positive_terms(expr.right)

    def _triggers(self, expr: Expr) -> set[int]:
        """Terms of which at least one is present whenever `expr` is true."""
        if isinstance(expr, Term):
            return {self._term_ids[expr]}
        if isinstance(expr, Or):
            return set().union(*(self._triggers(option) for option in expr.options))
        if isinstance(expr, AndNot):  # the excluded side can never make it true
            return self._triggers(expr.left)
        # Either side's triggers will do: take the rarer side, so that a keyword such as
        # "cat:cs.* AND swarm robotics" is evaluated only for papers that mention swarms.
        left, right = self._triggers(expr.left), self._triggers(expr.right)
        return left if self._rarity(left) >= self._rarity(right) else right

    def _rarity(self, term_ids: set[int]) -> int:
        # A guess without statistics: a set fires as often as its commonest member, long
        # phrases and names are rarer than short words, categories and prefixes are broad.
        def rarity(term: Term) -> int:
            if term.scope == "cat":
                return 0 if term.prefix or "." not in term.pattern else 1
            return len(term.pattern) + (10 if term.scope == "au" else 0) - (5 if term.prefix else 0)

        return min(rarity(self._terms[term_id]) for term_id in term_ids)

    def _compile_scanners(self) -> None:
        text_terms: list[tuple[int, Term]] = []
        author_terms: list[tuple[int, Term]] = []
        for term_id, term in enumerate(self._terms):
            if term.scope == "cat":
                self._categories[(term.pattern, term.prefix)].append(term_id)
            else:
                (author_terms if term.scope == "au" else text_terms).append((term_id, term))
        # Names are matched as written (no plurals), and only in the author list.
        if text_terms:
            self._text_scanner = _Scanner(text_terms, plurals=True)
        if author_terms:
            self._author_scanner = _Scanner(author_terms, plurals=False)

    def _present_terms(self, paper: PaperText) -> set[int]:
        try:
            return self._scan_paper(paper)
        except Exception as exc:  # noqa: BLE001 - one paper we cannot read never stops the day's match
            log.warning("%s: not matched (%s: %s)", paper.key, type(exc).__name__, exc)
            self.unreadable.append((paper.key, f"{type(exc).__name__}: {exc}"))
            return set()

    def _scan_paper(self, paper: PaperText) -> set[int]:
        present: set[int] = set()
        if self._text_scanner is not None:
            text = f"{fold_text(paper.title)}{_FIELD_BREAK}{fold_text(paper.abstract)}"
            self._text_scanner.scan(_stream(text), present)
        if self._author_scanner is not None and paper.authors:
            self._author_scanner.scan(_stream(fold_text("; ".join(paper.authors))), present)
        if self._categories:
            for category in paper.categories:
                self._scan_category(category.lower(), present)
        return present

    def title_labels(self, papers: Iterable[PaperText]) -> dict[str, frozenset[str]]:
        """Per paper key, the terms (as written) found in its title: a rank signal, apart from matching.

        Titles only, so it costs a small share of the day's scan; abs: terms never count here.
        """
        found: dict[str, frozenset[str]] = {}
        scanner = self._text_scanner
        if scanner is None:
            return found
        terms = self._terms
        for paper in papers:
            present: set[int] = set()
            try:
                scanner.scan(_stream(f"{fold_text(paper.title)}{_FIELD_BREAK}"), present)
            except Exception:  # noqa: BLE001 - _present_terms logged this paper already; it just ranks lower
                continue
            found[paper.key] = frozenset(terms[term_id].text for term_id in present)
        return found

    def _present_terms_of(self, papers: list[PaperText], processes: int) -> Iterator[set[int]]:
        """Each paper's present terms, in order; forked processes take shares when there are many."""
        shares = min(processes, len(papers) // _MIN_PAPERS_PER_PROCESS)
        self.processes_used = 1
        if shares < 2 or not hasattr(os, "fork"):
            yield from map(self._present_terms, papers)
            return
        size = -(-len(papers) // shares)
        starts = range(size, len(papers), size)
        forked = [(start, _ForkedScan.start(self, papers[start : start + size])) for start in starts]
        try:
            yield from map(self._present_terms, papers[:size])
            for start, child in forked:
                found = child.collect() if child is not None else None
                if found is None:  # the fork was refused or the child failed: scan its share here
                    yield from map(self._present_terms, papers[start : start + size])
                else:
                    self.processes_used += 1
                    yield from found
        finally:
            for _, child in forked:
                if child is not None:
                    child.close()

    def _scan_category(self, category: str, present: set[int]) -> None:
        categories = self._categories
        present.update(categories.get((category, False), ()))
        archive = category.split(".", 1)[0]
        if archive != category:  # cat:cs means the whole cs archive
            present.update(categories.get((archive, False), ()))
        for end in range(1, len(category) + 1):
            present.update(categories.get((category[:end], True), ()))

    def _satisfied(self, paper: PaperText) -> list[tuple[int, frozenset[str]]]:
        """The expressions the paper satisfies, each with the words to highlight."""
        present = self._present_terms(paper)
        # Most keywords are one term: their hits need no evaluation. map/filter keep the
        # per-term work in C.
        satisfied = list(filter(None, map(self._alone_hits.__getitem__, present)))
        satisfied.extend(self._compounds_satisfied(present))
        return satisfied

    def _compounds_satisfied(self, present: set[int]) -> list[tuple[int, frozenset[str]]]:
        """The expressions of several terms that the present terms make true, with their labels."""
        triggered = present & self._in_compound
        if not triggered:
            return []
        candidates = set().union(*map(self._compound.__getitem__, triggered))
        predicates, positives, fixed = self._predicates, self._positives, self._fixed_labels
        return [
            (expr_id, fixed[expr_id] or self._label(positives[expr_id] & present))
            for expr_id in candidates
            if predicates[expr_id](present)  # type: ignore[misc]  # compound: never None
        ]

    def _label(self, term_ids: frozenset[int]) -> frozenset[str]:
        label = self._labels.get(term_ids)
        if label is None:
            label = self._labels[term_ids] = frozenset(self._terms[term_id].text for term_id in term_ids)
        return label

    def _subscribers(self, expr_id: int) -> list[tuple[K, int]]:
        """The (subscriber, keyword position) pairs that use an expression."""
        if self._slots is None:  # built on first use: select() never needs them
            self._slots = [[] for _ in self._predicates]
            for subscriber, expr_ids in self._profiles.items():
                for position, used in enumerate(expr_ids):
                    if used is not None:
                        self._slots[used].append((subscriber, position))
        return self._slots[expr_id]

    def match(self, paper: PaperText) -> list[Match[K]]:
        """Return every (subscriber, keyword position, matched terms) the paper satisfies."""
        matches: list[Match[K]] = []
        cache = self._match_cache
        for expr_id, terms in self._satisfied(paper):
            found = cache.get((expr_id, terms))
            if found is None:
                # Matches are immutable, so one tuple serves every paper with these terms.
                found = tuple(Match(subscriber, position, terms) for subscriber, position in self._subscribers(expr_id))
                cache[(expr_id, terms)] = found
            matches.extend(found)
        return matches

    def select(self, papers: Iterable[PaperText], processes: int = 1) -> dict[K, list[KeywordHits]]:
        """Return, per subscriber and keyword position, the papers it selected with their matched terms.

        Papers are taken to have distinct keys. With `processes` > 1, forked processes scan
        shares of a large list of papers meanwhile.
        """
        papers = list(papers)
        with _collector_paused():
            keys: list[list[str]] = [[] for _ in self._predicates]
            labels: dict[int, list[frozenset[str]]] = {}  # for keywords of several terms
            # Term id -> the paper keys of the keyword that is this term alone, for the terms that are.
            alone_terms = frozenset(term_id for term_id, expr_id in enumerate(self._term_alone) if expr_id >= 0)
            alone_keys = [keys[expr_id] if expr_id >= 0 else [] for expr_id in self._term_alone]
            for paper, present in zip(papers, self._present_terms_of(papers, processes), strict=True):
                key = paper.key
                # Append the key for every one-term keyword present, as a loop in C: the
                # Python loop was a fifth of the time.
                deque(map(list.append, map(alone_keys.__getitem__, present & alone_terms), repeat(key)), maxlen=0)
                for expr_id, terms in self._compounds_satisfied(present):
                    keys[expr_id].append(key)
                    labels.setdefault(expr_id, []).append(terms)
            # Subscribers sharing a keyword share one read-only view of its hits.
            views = [
                KeywordHits(found, None if predicate is None else labels.get(expr_id, []), label or frozenset())
                for expr_id, (found, predicate, label) in enumerate(
                    zip(keys, self._predicates, self._fixed_labels, strict=True)
                )
            ]
            empty = KeywordHits([], None)
            return {
                subscriber: [empty if expr_id is None else views[expr_id] for expr_id in expr_ids]
                for subscriber, expr_ids in self._profiles.items()
            }
