"""The keyword language: tokenizer, parser, expression tree, and the profile check.

A keyword is a phrase by default ("graph neural network") and may use the arXiv search
syntax: quoted phrases, AND / OR / ANDNOT (uppercase, AND and ANDNOT bind tighter than OR),
parentheses, the field prefixes ti: abs: au: cat: (all: and no prefix mean title or abstract)
and a trailing * for a prefix (transform*, cat:cs.*).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import NamedTuple

from newsletter.keywords.folding import _phrase_pattern, fold_text

MAX_KEYWORDS = 20
MAX_KEYWORD_LENGTH = 200
# A shorter prefix (a*) would fire on most words of every abstract.
MIN_PREFIX_LENGTH = 3


class SyntaxProblem(StrEnum):
    """What is wrong with a keyword; the pages word each one in the reader's language."""

    TOO_LONG = "too_long"
    EMPTY = "empty"
    UNCLOSED_QUOTE = "unclosed_quote"
    UNKNOWN_FIELD = "unknown_field"
    NOT_OPERATOR = "not_operator"
    UNBALANCED = "unbalanced"
    MISSING_OPERATOR = "missing_operator"
    TERM_AFTER_OPERATOR = "term_after_operator"
    TERM_BEFORE_OPERATOR = "term_before_operator"
    EXPECTED_TERM = "expected_term"
    TERM_AFTER_FIELD = "term_after_field"
    EMPTY_PARENTHESES = "empty_parentheses"
    EMPTY_QUOTE = "empty_quote"
    INNER_WILDCARD = "inner_wildcard"
    INVALID_CATEGORY = "invalid_category"
    NO_LETTERS = "no_letters"
    SHORT_PREFIX = "short_prefix"
    UNREADABLE = "unreadable"
    CONTROL_CHARACTER = "control_character"


# The parser's words for each problem, in English; newsletter/web/i18n.py has the other languages.
SYNTAX_MESSAGES = {
    SyntaxProblem.TOO_LONG: "keyword longer than {limit} characters",
    SyntaxProblem.EMPTY: "empty keyword",
    SyntaxProblem.UNCLOSED_QUOTE: "unclosed quote",
    SyntaxProblem.UNKNOWN_FIELD: "unknown field '{field}'",
    SyntaxProblem.NOT_OPERATOR: "NOT is not an operator, use ANDNOT",
    SyntaxProblem.UNBALANCED: "unbalanced parenthesis",
    SyntaxProblem.MISSING_OPERATOR: "missing operator (AND, OR or ANDNOT) between terms",
    SyntaxProblem.TERM_AFTER_OPERATOR: "operator {operator} needs a term after it",
    SyntaxProblem.TERM_BEFORE_OPERATOR: "operator {operator} needs a term before it",
    SyntaxProblem.EXPECTED_TERM: "expected a term",
    SyntaxProblem.TERM_AFTER_FIELD: "field {field}: needs a term after it",
    SyntaxProblem.EMPTY_PARENTHESES: "empty parentheses",
    SyntaxProblem.EMPTY_QUOTE: "empty quoted phrase",
    SyntaxProblem.INNER_WILDCARD: "wildcard * is only allowed at the end of a term",
    SyntaxProblem.INVALID_CATEGORY: "invalid category '{category}'",
    SyntaxProblem.NO_LETTERS: "term '{term}' has no letters or digits",
    SyntaxProblem.SHORT_PREFIX: "prefix '{term}' is too short, use at least {limit} letters before *",
    SyntaxProblem.UNREADABLE: "unreadable keyword ({detail})",
    SyntaxProblem.CONTROL_CHARACTER: "invisible control character {character} is not allowed",
}


class KeywordSyntaxError(ValueError):
    """A keyword that does not parse: `problem` and its `params` say what, `position` (0-based) where."""

    def __init__(self, problem: SyntaxProblem, position: int, **params: object) -> None:
        self.problem = problem
        self.params = params
        self.message = SYNTAX_MESSAGES[problem].format(**params)  # in English
        self.position = position
        # Counted from 1, as the pages and the CLI show it.
        super().__init__(f"{self.message} at character {position + 1}")


class ProfileError(ValueError):
    """A profile with bad lines; `problems` holds (line number or None, message) pairs."""

    def __init__(self, problems: list[tuple[int | None, str]]) -> None:
        super().__init__(
            "\n".join(message if line is None else f"line {line}: {message}" for line, message in problems)
        )
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Term:
    """One searchable unit: a phrase in some fields, or a category."""

    scope: str  # "text" (title or abstract), "ti", "abs", "au" or "cat"
    pattern: str  # canonical form (module docstring); for "cat" the lowercase category
    prefix: bool = False
    breaks: int = 0  # bit i set: a whitespace gap in the text may sit at offset i of the pattern
    text: str = field(default="", compare=False)  # as the subscriber wrote it, for display


@dataclass(frozen=True, slots=True)
class And:
    """Both sides match."""

    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class AndNot:
    """The left side matches and the right side does not."""

    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Or:
    """Any option matches."""

    options: tuple[Expr, ...]


Expr = Term | And | AndNot | Or

_FIELDS = {"ti": "ti", "abs": "abs", "au": "au", "cat": "cat", "all": "text"}
_OPERATORS = ("AND", "OR", "ANDNOT")
_QUOTES = '"\u201c\u201d'
_FIELD_PREFIX = re.compile(r"([A-Za-z]+):")
# Anything that makes a keyword more than a plain phrase.
_SYNTAX = re.compile(r"[()\"\u201c\u201d:*]|(?<!\S)(?:AND|OR|ANDNOT|NOT)(?!\S)")
# C0 and C1 controls but tab, and surrogates (unencodable, so never from a real form).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
_CATEGORY = re.compile(r"[a-z][a-z-]*(?:\.[a-z][a-z-]*)?")
_CATEGORY_PREFIX = re.compile(r"[a-z][a-z-]*(?:\.(?:[a-z][a-z-]*)?)?")


class _Token(NamedTuple):  # a NamedTuple: tokenizing every profile makes many of them
    kind: str  # "(", ")", "op", "field", "word", "quoted"
    text: str
    position: int


# One lexeme per match: whitespace, a parenthesis, a quoted phrase (group "closed" is empty
# when the quote is never closed) or a bare word. A backslash escapes the next character, so
# Schr\"{o}dinger is one word rather than the start of a quote.
_LEXEME = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<paren>[()])
    | [\"\u201c\u201d](?P<quoted>(?:\\.|[^\"\u201c\u201d\\])*\\?)(?P<closed>[\"\u201c\u201d])?
    | (?P<word>(?:[^\s()\"\u201c\u201d\\]+|\\.|\\$)+)
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    for lexeme in _LEXEME.finditer(source):
        kind, index = lexeme.lastgroup, lexeme.start()
        if kind == "space":
            continue
        if kind == "paren":
            tokens.append(_Token(lexeme.group(), lexeme.group(), index))
        elif lexeme.group("quoted") is not None:
            if lexeme.group("closed") is None:
                raise KeywordSyntaxError(SyntaxProblem.UNCLOSED_QUOTE, index)
            tokens.append(_Token("quoted", lexeme.group("quoted"), index))
        else:
            tokens.extend(_word_tokens(lexeme.group(), index))
    return tokens


def _word_tokens(word: str, index: int) -> list[_Token]:
    prefix = _FIELD_PREFIX.match(word)
    # "testing: a survey" is a phrase; "foo:bar" and "ti: graph" name fields.
    if prefix and (prefix.group(1).lower() in _FIELDS or prefix.end() < len(word)):
        name = prefix.group(1).lower()
        if name not in _FIELDS:
            raise KeywordSyntaxError(SyntaxProblem.UNKNOWN_FIELD, index, field=prefix.group())
        field_token = _Token("field", name, index)
        if prefix.end() == len(word):
            return [field_token]
        return [field_token, _Token("word", word[prefix.end() :], index + prefix.end())]
    if word in _OPERATORS:
        return [_Token("op", word, index)]
    if word == "NOT":
        raise KeywordSyntaxError(SyntaxProblem.NOT_OPERATOR, index)
    return [_Token("word", word, index)]


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def parse(self) -> Expr:
        expr = self.parse_or(None)
        leftover = self.peek()
        if leftover is not None:
            # parse_or stops early only at a ")" nothing opened.
            raise KeywordSyntaxError(SyntaxProblem.UNBALANCED, leftover.position)
        return expr

    def parse_or(self, scope: str | None) -> Expr:
        options = [self.parse_and(scope)]
        while (token := self.peek()) is not None and token.kind == "op" and token.text == "OR":
            self.require_term_after(self.advance())
            options.append(self.parse_and(scope))
        return options[0] if len(options) == 1 else Or(tuple(options))

    def parse_and(self, scope: str | None) -> Expr:
        expr = self.parse_unary(scope)
        while (token := self.peek()) is not None and token.kind != ")":
            if token.kind != "op":
                raise KeywordSyntaxError(SyntaxProblem.MISSING_OPERATOR, token.position)
            if token.text == "OR":
                break
            self.require_term_after(self.advance())
            right = self.parse_unary(scope)
            expr = And(expr, right) if token.text == "AND" else AndNot(expr, right)
        return expr

    def require_term_after(self, operator: _Token) -> None:
        following = self.peek()
        if following is None or following.kind not in ("word", "quoted", "field", "("):
            raise KeywordSyntaxError(SyntaxProblem.TERM_AFTER_OPERATOR, operator.position, operator=operator.text)

    def parse_unary(self, scope: str | None) -> Expr:
        token = self.peek()
        if token is None:  # only reachable through a bug elsewhere; keep the message useful
            raise KeywordSyntaxError(SyntaxProblem.EXPECTED_TERM, len(self.tokens))
        if token.kind == "op":
            raise KeywordSyntaxError(SyntaxProblem.TERM_BEFORE_OPERATOR, token.position, operator=token.text)
        if token.kind == ")":
            raise KeywordSyntaxError(SyntaxProblem.UNBALANCED, token.position)
        if token.kind == "field":
            self.advance()
            following = self.peek()
            if following is None or following.kind not in ("word", "quoted", "("):
                raise KeywordSyntaxError(SyntaxProblem.TERM_AFTER_FIELD, token.position, field=token.text)
            return self.parse_unary(_FIELDS[token.text])
        if token.kind == "(":
            self.advance()
            following = self.peek()
            if following is None:
                raise KeywordSyntaxError(SyntaxProblem.UNBALANCED, token.position)
            if following.kind == ")":
                raise KeywordSyntaxError(SyntaxProblem.EMPTY_PARENTHESES, token.position)
            inner = self.parse_or(scope)
            closing = self.peek()
            if closing is None or closing.kind != ")":
                raise KeywordSyntaxError(SyntaxProblem.UNBALANCED, token.position)
            self.advance()
            return inner
        if token.kind == "quoted":
            self.advance()
            if not token.text.strip():
                raise KeywordSyntaxError(SyntaxProblem.EMPTY_QUOTE, token.position)
            return _make_term(scope or "text", [(token.text, token.position + 1)])
        words = [(self.advance().text, token.position)]
        if scope != "cat":  # bare adjacent words form one phrase; a category is one word
            while (following := self.peek()) is not None and following.kind == "word":
                words.append((following.text, following.position))
                self.advance()
        return _make_term(scope or "text", words)


def _make_term(scope: str, words: list[tuple[str, int]]) -> Term:
    """Build a term from its words and their positions, checking wildcards."""
    for number, (text, position) in enumerate(words):
        star = text.find("*")
        is_trailing = number == len(words) - 1 and star == len(text.rstrip()) - 1
        if star != -1 and not is_trailing:
            raise KeywordSyntaxError(SyntaxProblem.INNER_WILDCARD, position + star)
    display = " ".join(text for text, _ in words).strip()
    if scope == "cat":
        prefix = display.endswith("*")
        category = (display[:-1] if prefix else display).strip().lower()
        valid = _CATEGORY_PREFIX if prefix else _CATEGORY
        if not valid.fullmatch(category):
            raise KeywordSyntaxError(SyntaxProblem.INVALID_CATEGORY, words[0][1], category=display)
        return Term("cat", category, prefix, text=display)
    return _phrase_term(scope, display, words[0][1])


def _phrase_term(scope: str, display: str, start: int) -> Term:
    """The term for a phrase (maybe a prefix) in a scope other than cat, as the subscriber wrote it."""
    prefix = display.endswith("*")
    pattern = _phrase_pattern(fold_text(display[:-1] if prefix else display), scope != "au" and not prefix)
    if pattern is None:
        raise KeywordSyntaxError(SyntaxProblem.NO_LETTERS, start, term=display)
    if prefix and len(pattern.text) < MIN_PREFIX_LENGTH:
        raise KeywordSyntaxError(SyntaxProblem.SHORT_PREFIX, start, term=display, limit=MIN_PREFIX_LENGTH)
    return Term(scope, pattern.text, prefix, pattern.breaks, text=display)


def control_character_at(text: str) -> int | None:
    """Where the first control character (NUL, ESC, DEL, a lone surrogate...) of `text` is, if any; tabs pass."""
    # PostgreSQL refuses NUL in text, and none of these is ever typed on purpose.
    found = _CONTROL.search(text)
    return found.start() if found else None


# Subscribers share keywords: a bulk import or a day's match parses each distinct one once (the trees are frozen).
@lru_cache(maxsize=8192)
def parse_keyword(keyword: str) -> Expr:
    """Parse one keyword into its expression tree, or raise KeywordSyntaxError."""
    if len(keyword) > MAX_KEYWORD_LENGTH:
        raise KeywordSyntaxError(SyntaxProblem.TOO_LONG, MAX_KEYWORD_LENGTH, limit=MAX_KEYWORD_LENGTH)
    control = control_character_at(keyword)
    if control is not None:
        character = f"U+{ord(keyword[control]):04X}"
        raise KeywordSyntaxError(SyntaxProblem.CONTROL_CHARACTER, control, character=character)
    if not keyword.strip():
        raise KeywordSyntaxError(SyntaxProblem.EMPTY, 0)
    if not _SYNTAX.search(keyword):  # a plain phrase, as most keywords are
        return _phrase_term("text", " ".join(keyword.split()), len(keyword) - len(keyword.lstrip()))
    return _Parser(_tokenize(keyword)).parse()


def validate_profile(keywords: list[str]) -> list[str]:
    """Return the profile's keywords stripped, blank and duplicate lines dropped, or raise ProfileError."""
    cleaned: list[str] = []
    seen_text: set[str] = set()
    seen_expr: set[Expr] = set()
    problems: list[tuple[int | None, str]] = []
    for line_number, line in enumerate(keywords, start=1):
        keyword = line.strip()
        if not keyword:
            continue
        try:
            expr = parse_keyword(keyword)
        except KeywordSyntaxError as error:
            problems.append((line_number, str(error)))
            continue
        # Two spellings of one expression ("multi-agent", "Multi agent") would give two
        # identical digest sections.
        if keyword.casefold() in seen_text or expr in seen_expr:
            continue
        seen_text.add(keyword.casefold())
        seen_expr.add(expr)
        cleaned.append(keyword)
    if len(cleaned) > MAX_KEYWORDS:
        problems.append((None, f"too many keywords: {len(cleaned)} given, at most {MAX_KEYWORDS} allowed"))
    if problems:
        raise ProfileError(problems)
    return cleaned
