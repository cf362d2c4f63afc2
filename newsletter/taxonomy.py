"""arXiv's subject classification: the name of every category code, from the file shipped in the package."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from newsletter.resources import ARXIV_CATEGORIES_FILE


def load_category_names(path: Path = ARXIV_CATEGORIES_FILE) -> dict[str, str]:
    """code -> name from a `code<TAB>name` file; a malformed line is an error naming the line."""
    names: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        code, tab, name = line.partition("\t")
        if not tab or not code.strip() or not name.strip() or "\t" in name:
            raise ValueError(f"{path}:{number}: expected 'code<TAB>name', got {line!r}")
        names[code.strip()] = name.strip()
    return names


@lru_cache(maxsize=1)
def category_names() -> dict[str, str]:
    """The bundled taxonomy, read once per process."""
    return load_category_names()


def category_name(code: str) -> str | None:
    """The category's name ('cs.LG' -> 'Machine Learning'), or None for a code arXiv never had."""
    return category_names().get(code)
