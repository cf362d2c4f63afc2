"""The digest HTML against caniemail.com's data (npm @jsx-email/doiuse-email): nothing Gmail, Outlook,
Apple Mail or Yahoo cannot show, apart from the features listed in IGNORED_HARMLESSLY with the reason.

The package is installed by this test's setup with the machine's npm into a cache directory
(NEWSLETTER_NODE_CACHE, default ~/.cache/arxiv-digest-node); without node/npm, or when the
install fails, the tests skip (or fail under NEWSLETTER_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from newsletter.models import Paper, Translation
from newsletter.render import DigestRenderer, paper_view
from tests.conftest import skip_or_fail
from tests.test_render import make_digest, many_papers, sample_papers, view

PACKAGE = "@jsx-email/doiuse-email@1.0.4"
CLIENT_FAMILIES = ["gmail.*", "outlook.*", "apple-mail.*", "yahoo.*"]
# What the check reports that those clients skip without harm to the email, and why it is there.
IGNORED_HARMLESSLY = {
    # The dark-scheme block is one `@media (prefers-color-scheme: dark)` rule in <head>. A client without
    # media queries drops the block and shows the light email, whose inline colours it keeps (Gmail's
    # mobile web client, Outlook for Windows and Windows Mail; the Gmail and Outlook apps invert those
    # colours themselves). Nothing in the light layout depends on the block.
    "`@media` is not supported by `gmail.mobile-webmail`",
    "`@media` is not supported by `outlook.windows`",
    "`@media` is not supported by `outlook.windows-mail`",
}
CHECK_SCRIPT = r"""
const { doIUseEmail } = require('@jsx-email/doiuse-email');
const fs = require('fs');
const [families, ...files] = process.argv.slice(2);
const out = {};
for (const file of files) {
  out[file] = {};
  for (const family of JSON.parse(families)) {
    const result = doIUseEmail(fs.readFileSync(file, 'utf8'), { emailClients: [family] });
    out[file][family] = [...new Set(result.errors || [])];
  }
}
process.stdout.write(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def doiuse_dir() -> Path:
    """A directory whose node_modules holds the checker, installed on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        skip_or_fail("node and npm are needed for the email compatibility check")
    cache = Path(os.environ.get("NEWSLETTER_NODE_CACHE", Path.home() / ".cache" / "arxiv-digest-node"))
    if not (cache / "node_modules" / "@jsx-email" / "doiuse-email" / "package.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            installed = subprocess.run(
                [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--loglevel=error", PACKAGE],
                capture_output=True, text=True, timeout=300,
            )
        except subprocess.TimeoutExpired:
            skip_or_fail(f"npm install {PACKAGE} timed out")
        if installed.returncode != 0:
            skip_or_fail(f"npm install {PACKAGE} failed: {installed.stderr.strip()[-300:]}")
    (cache / "check.js").write_text(CHECK_SCRIPT, encoding="utf-8")
    return cache


def unsupported(doiuse_dir: Path, tmp_path: Path, pages: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """Per page and client family, the features caniemail lists as not supported there."""
    paths = []
    for name, html in pages.items():
        path = tmp_path / f"{name}.html"
        path.write_text(html, encoding="utf-8")
        paths.append(str(path))
    result = subprocess.run(
        ["node", str(doiuse_dir / "check.js"), json.dumps(CLIENT_FAMILIES), *paths],
        cwd=doiuse_dir, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return {Path(path).stem: errors for path, errors in json.loads(result.stdout).items()}


def test_nothing_in_the_digest_is_unsupported_by_the_four_big_clients(doiuse_dir: Path, tmp_path: Path) -> None:
    renderer = DigestRenderer()
    hostile = Paper(**{**sample_papers()[0].model_dump(), "title": 'x<y & "z"', "abstract": "a <b> & c"})
    pages = {
        "chinese": renderer.render(make_digest([("learning", many_papers(20)), ("quantum", [])])).html,
        "english": renderer.render(
            make_digest([("testing", [view(p, ["testing"], "EN-US") for p in sample_papers()[:8]])], language="EN-US")
        ).html,
        "sixty_papers": renderer.render(make_digest([("learning", many_papers(60))])).html,
        "untranslated_and_escaped": renderer.render(make_digest([("x", [
            paper_view(hostile, None, ["x"], translation_wanted=True),
            paper_view(sample_papers()[1], Translation(arxiv_id="x", language="ZH-HANS", title="标题", abstract="摘要"),
                       ["learning"], translation_wanted=True),
        ])])).html,
    }

    found = unsupported(doiuse_dir, tmp_path, pages)

    errors = {name: {family: sorted(set(e) - IGNORED_HARMLESSLY) for family, e in by.items()}
              for name, by in found.items()}
    assert errors == {name: {family: [] for family in CLIENT_FAMILIES} for name in pages}
    reported = {error for by in found.values() for e in by.values() for error in e}
    assert IGNORED_HARMLESSLY <= reported  # each excuse is for something the check still reports


def test_the_check_flags_what_those_clients_ignore(doiuse_dir: Path, tmp_path: Path) -> None:
    page = (
        "<html><head><style>@media (prefers-color-scheme: dark) { .a { color: #fff } }</style></head>"
        '<body><div class="a" style="display:none;opacity:0">hidden</div><mark>hit</mark></body></html>'
    )

    found = unsupported(doiuse_dir, tmp_path, {"raw": page})["raw"]

    assert any("`@media` is not supported by `gmail.mobile-webmail`" in e for e in found["gmail.*"])
    assert any("`<body> element` is not supported" in e for e in found["outlook.*"])
    assert any("`HTML5 semantics`" in e for e in found["outlook.*"])
