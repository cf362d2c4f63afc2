"""How readable each LaTeX-to-Unicode converter makes real abstracts, and how fast.

Scores pylatexenc, flatlatex, unicodeit and ours (newsletter.latex) on the display table of
tests/test_real_text.py (rows right out of the total), counts the inputs of the recorded corpus
each one raises on, and times a pass over the corpus. Run: `python bench/latex_display.py`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from newsletter.latex import latex_to_unicode  # noqa: E402
from tests.real_text import fixture_texts  # noqa: E402
from tests.test_real_text import DISPLAY  # noqa: E402


def converters() -> dict[str, Callable[[str], str]]:
    found: dict[str, Callable[[str], str]] = {"ours (newsletter.latex)": latex_to_unicode}
    try:
        from pylatexenc.latex2text import LatexNodes2Text

        found["pylatexenc"] = LatexNodes2Text(math_mode="text", strict_latex_spaces=False).latex_to_text
    except ImportError:
        print("pylatexenc not installed: skipped")
    try:
        import flatlatex

        flat = flatlatex.converter()
        found["flatlatex"] = lambda text: flat.convert(text.replace("$", ""))
    except ImportError:
        print("flatlatex not installed: skipped")
    try:
        import unicodeit

        found["unicodeit"] = lambda text: unicodeit.replace(text).replace("$", "")
    except ImportError:
        print("unicodeit not installed: skipped")
    return found


def main() -> None:
    corpus = [text for _, text in fixture_texts()]
    print(f"display table: {len(DISPLAY)} rows; corpus: {len(corpus)} recorded titles and abstracts")
    print(f"{'converter':26} {'rows right':>10} {'raises':>7} {'corpus ms':>10}")
    for name, convert in converters().items():
        right = 0
        for latex, shown in DISPLAY:
            try:
                right += convert(latex) == shown
            except Exception:  # noqa: BLE001, S112 - a converter that raises scores nothing for the row
                continue
        raised = 0
        started = time.perf_counter()
        for text in corpus:
            try:
                convert(text)
            except Exception:  # noqa: BLE001
                raised += 1
        elapsed = (time.perf_counter() - started) * 1000
        print(f"{name:26} {right:>5}/{len(DISPLAY):<4} {raised:>7} {elapsed:>10.1f}")


if __name__ == "__main__":
    main()
