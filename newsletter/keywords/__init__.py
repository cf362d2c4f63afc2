"""Keyword profiles: the query language subscribers write, and the engine that matches them.

- `folding`: the canonical form (LaTeX rendered, accents and case folded, token streams, patterns)
- `syntax`: the query language (tokenizer, parser, Term / And / Or / AndNot, parse_keyword, validate_profile)
- `engine`: KeywordIndex, its scanners, PaperText, Match
- `parallel`: the forked scan of a large day
- `highlight`: highlight_spans, for the digest
"""

from newsletter.keywords.engine import KeywordHits, KeywordIndex, Match, PaperText
from newsletter.keywords.folding import fold_text
from newsletter.keywords.highlight import highlight_spans
from newsletter.keywords.syntax import (
    MAX_KEYWORD_LENGTH,
    MAX_KEYWORDS,
    And,
    AndNot,
    Expr,
    KeywordSyntaxError,
    Or,
    ProfileError,
    SyntaxProblem,
    Term,
    parse_keyword,
    validate_profile,
)

__all__ = [
    "MAX_KEYWORDS",
    "MAX_KEYWORD_LENGTH",
    "And",
    "AndNot",
    "Expr",
    "KeywordHits",
    "KeywordIndex",
    "KeywordSyntaxError",
    "SyntaxProblem",
    "Match",
    "Or",
    "PaperText",
    "ProfileError",
    "Term",
    "fold_text",
    "highlight_spans",
    "parse_keyword",
    "validate_profile",
]
