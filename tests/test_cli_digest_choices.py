"""`newsletter subscribe` with the digest choices, and `newsletter subscribers show`, as an operator runs them."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli import run


def shown(tmp_path: Path, address: str, **env: str) -> dict[str, str]:
    result = run(["subscribers", "show", address], tmp_path, **env)
    assert result.returncode == 0, result.stderr
    return dict(line.split(": ", 1) for line in result.stdout.splitlines())


def test_subscribe_stores_the_schedule_and_extras_and_show_prints_them_one_per_line(
    tmp_path: Path, sqlite_url: str
) -> None:
    env = {"NEWSLETTER_DATABASE_URL": sqlite_url, "NEWSLETTER_ENVIRONMENT": "test"}
    assert run(["db", "upgrade"], tmp_path, **env).returncode == 0
    added = run(["subscribe", "ada@example.org", "-k", "reinforcement learning", "-k", "diffusion policy",
                 "--frequency", "weekly", "--weekday", "wed", "--empty-day-note", "--no-updates", "--confirmed"],
                tmp_path, **env)
    assert added.returncode == 0, added.stderr

    preferences = shown(tmp_path, "Ada@Example.org", **env)

    assert preferences["frequency"] == "weekly" and preferences["weekday"] == "wed"
    assert preferences["empty_day_note"] == "true" and preferences["updates"] == "false"
    assert preferences["keywords"] == "reinforcement learning; diffusion policy"
    assert preferences["status"] == "active" and preferences["email"] == "ada@example.org"
    # The private feed's signed URL, the same on every call (a feed reader keeps it).
    assert "/feed/" in preferences["feed"] and preferences["feed"].startswith("http")
    # Changing the keywords alone keeps the schedule; a flag changes just its own choice.
    assert run(["subscribe", "ada@example.org", "-k", "robots", "--updates"], tmp_path, **env).returncode == 0
    again = shown(tmp_path, "ada@example.org", **env)
    assert (again["frequency"], again["weekday"], again["empty_day_note"], again["updates"]) == (
        "weekly", "wed", "true", "true")
    assert again["feed"] == preferences["feed"]


def test_a_new_subscriber_gets_daily_digests_with_updates_and_no_empty_day_note(
    tmp_path: Path, sqlite_url: str
) -> None:
    env = {"NEWSLETTER_DATABASE_URL": sqlite_url, "NEWSLETTER_ENVIRONMENT": "test"}
    assert run(["db", "upgrade"], tmp_path, **env).returncode == 0
    assert run(["subscribe", "bob@example.org", "-k", "rl"], tmp_path, **env).returncode == 0

    preferences = shown(tmp_path, "bob@example.org", **env)

    assert (preferences["frequency"], preferences["empty_day_note"], preferences["updates"]) == (
        "daily", "false", "true")


def test_a_bad_frequency_or_weekday_is_refused_with_one_line_and_nothing_is_stored(
    tmp_path: Path, sqlite_url: str
) -> None:
    env = {"NEWSLETTER_DATABASE_URL": sqlite_url, "NEWSLETTER_ENVIRONMENT": "test"}
    assert run(["db", "upgrade"], tmp_path, **env).returncode == 0

    refused = run(["subscribe", "ada@example.org", "-k", "rl", "--frequency", "fortnightly", "--weekday", "someday"],
                  tmp_path, **env)

    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "'fortnightly' is not a frequency" in refused.stderr and "'someday' is not a weekday" in refused.stderr
    missing = run(["subscribers", "show", "ada@example.org"], tmp_path, **env)
    assert missing.returncode == 1 and "no subscriber ada@example.org" in missing.stderr
