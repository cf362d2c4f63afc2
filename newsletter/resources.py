"""Where the bundled files are, whether the package runs from a checkout or from an installed wheel.

`templates/` and `migrations/` sit at the repository's top level (the design card) and a wheel
installs them inside the package, as `newsletter/templates` and `newsletter/migrations` (setup.py
maps them). So the package's own directory is asked first, through importlib.resources, and the
checkout's top level is the fallback for a source tree and an editable install.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PACKAGE_DIR = Path(str(files("newsletter")))


def bundled_dir(name: str) -> Path:
    """The directory `name` installed inside the package, else the one at the top of the checkout."""
    installed = PACKAGE_DIR / name
    if installed.is_dir():
        return installed
    checkout = PACKAGE_DIR.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"{name}/ is neither in {PACKAGE_DIR} nor beside it; the package is incomplete")


TEMPLATES_DIR = bundled_dir("templates")
MIGRATIONS_DIR = bundled_dir("migrations")
SAMPLE_DIR = PACKAGE_DIR / "sample"
# arXiv's category codes and names (a plain file inside the package, so a wheel carries it).
ARXIV_CATEGORIES_FILE = PACKAGE_DIR / "arxiv_categories.tsv"
