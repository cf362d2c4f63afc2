"""arXiv's subject classification: the name of every category code, from the file shipped in the package."""

from __future__ import annotations

import re
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


# arXiv's API lists an old paper's Mathematics Subject Classification and ACM Computing Classification
# codes among its categories ("53C", "68T05", "I.2.6"): not arXiv categories, but shown for what they are.
_MSC = re.compile(r"\d\d[A-Z](?:\d\d|xx)?|\d\d-(?:\d\d|XX)")
_ACM = re.compile(r"[A-K]\.(?:\d+|m)(?:\.\d+|\.m)?")


@lru_cache(maxsize=4096)
def subject_label(code: str) -> str:
    """'Machine Learning (cs.LG)', 'MSC 53C', 'ACM I.2.6', or the code itself when nothing is known of it."""
    name = category_name(code)
    if name:
        return f"{name} ({code})"
    if _MSC.fullmatch(code):
        return f"MSC {code}"
    if _ACM.fullmatch(code):
        return f"ACM {code}"
    return code
