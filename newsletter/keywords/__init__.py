"""Keyword profiles: the query language subscribers write, and the engine that matches them.

- `folding`: the canonical form (LaTeX rendered, accents and case folded, token streams, patterns)
- `syntax`: the query language (tokenizer, parser, Term / And / Or / AndNot, parse_keyword, validate_profile)
- `engine`: KeywordIndex, its scanners, PaperText, Match
- `parallel`: the forked scan of a large day
- `highlight`: highlight_spans, for the digest
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Each name loads its module on first use (PEP 562): a `newsletter subscribe` checks its keywords
# with the parser and must not pay for the matching engine (the automaton, the forked scan) or the
# highlighter it never runs.
_HOME = {
    "KeywordHits": "engine",
    "KeywordIndex": "engine",
    "Match": "engine",
    "PaperText": "engine",
    "fold_text": "folding",
    "highlight_spans": "highlight",
    "MAX_KEYWORDS": "syntax",
    "MAX_KEYWORD_LENGTH": "syntax",
    "And": "syntax",
    "AndNot": "syntax",
    "Expr": "syntax",
    "KeywordSyntaxError": "syntax",
    "Or": "syntax",
    "ProfileError": "syntax",
    "SyntaxProblem": "syntax",
    "Term": "syntax",
    "parse_keyword": "syntax",
    "validate_profile": "syntax",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])


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
