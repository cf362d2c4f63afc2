"""The `newsletter` command as a user runs it: the demo, and one clear line for bad input."""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NEWSLETTER = shutil.which("newsletter") or str(Path(sys.executable).with_name("newsletter"))


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return subprocess.run(
        [NEWSLETTER, *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def test_demo_writes_bilingual_digests_and_a_second_run_adds_nothing(tmp_path: Path) -> None:
    first = run(["demo"], tmp_path)
    assert first.returncode == 0, first.stderr
    outbox = tmp_path / "outbox" / "2026-11-24"
    emls = sorted(outbox.glob("*.eml"))
    assert [p.name for p in emls] == ["ada@example.org.eml", "alan@example.org.eml", "grace@example.org.eml"]
    assert f"file://{outbox.resolve() / 'ada@example.org.html'}" in first.stdout
    message = email.message_from_bytes(emls[0].read_bytes(), policy=email.policy.default)
    html = message.get_body(("html",)).get_content()
    assert "强化学习" in html and "reinforcement learning" in html.lower()
    before = {p.name: p.stat().st_mtime_ns for p in emls}

    second = run(["demo"], tmp_path)

    assert second.returncode == 0, second.stderr
    assert "0 new digest(s)" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in sorted(outbox.glob("*.eml"))} == before


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["status"], {"NEWSLETTER_SMTP_PORT": "not-a-port"}, "NEWSLETTER_SMTP_PORT"),
        (["status"], {"NEWSLETTER_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}, "database error"),
        (["run-daily", "--frobnicate"], {}, "No such option"),
        (["subscribe", "not-an-address", "-k", "rl"], {}, "not valid"),
        (["subscribe", "a@example.org", "-k", "(unbalanced"], {}, "position"),
        (["harvest", "--from", "2026-13-01"], {}, "YYYY-MM-DD"),
    ],
)
def test_bad_input_gives_one_clear_line_and_a_failing_exit(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run(["db", "upgrade"], tmp_path)
    assert result.returncode == 0, result.stderr

    result = run(args, tmp_path, **env)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_a_subscriber_added_by_the_cli_gets_a_preview(tmp_path: Path) -> None:
    assert run(["demo"], tmp_path).returncode == 0
    added = run(["subscribe", "Ada@Example.org", "-k", "deep learning", "--confirmed"], tmp_path)
    assert added.returncode == 0, added.stderr
    out = tmp_path / "preview.html"

    preview = run(["preview", "ada@example.org", "--out", str(out)], tmp_path)

    assert preview.returncode == 0, preview.stderr
    assert "arXiv" in out.read_text(encoding="utf-8")
