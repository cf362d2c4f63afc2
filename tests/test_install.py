"""The package as a user installs it: a wheel in a fresh virtualenv, run from an empty folder."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

REPOSITORY = Path(__file__).resolve().parents[1]
# What a wheel is built from; anything else in the checkout must not be needed.
SOURCES = ["pyproject.toml", "setup.py", "README.md", "newsletter", "workers", "templates", "migrations"]


def _can_build_offline() -> bool:
    """Whether this interpreter's setuptools builds wheels itself (>= 70.1, or with `wheel`)."""
    try:
        import setuptools
    except ImportError:
        return False
    version = tuple(int(part) for part in setuptools.__version__.split(".")[:2] if part.isdigit())
    if version >= (70, 1):
        return True
    try:
        import wheel  # noqa: F401
    except ImportError:
        return False
    return version >= (68, 0)


def build_wheel(workdir: Path) -> Path:
    """A wheel built from a copy of the sources (a stale build/ in the checkout cannot leak in)."""
    source = workdir / "source"
    source.mkdir()
    for name in SOURCES:
        origin = REPOSITORY / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, source / name)
    wheels = workdir / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--quiet", "-w", str(wheels)]
    if _can_build_offline():
        command.append("--no-build-isolation")
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if built.returncode != 0:
        last = (built.stderr.strip().splitlines() or ["no output"])[-1]
        skip_or_fail(f"cannot build the wheel here (setuptools>=68 needs a package index): {last}")
    return next(wheels.glob("*.whl"))


def fresh_venv(workdir: Path, wheel: Path) -> Path:
    """A new virtualenv holding the wheel; its dependencies are the ones this interpreter already has."""
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    # Offline: the installed dependencies are borrowed through a path file. A path listed there
    # is only appended to sys.path, so the venv's own copy of the package comes first and any
    # editable-install hook in the borrowed directory stays inactive.
    ask = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = Path(subprocess.check_output([str(python), "-c", ask], text=True).strip())
    borrowed = [*site.getsitepackages(), sysconfig.get_path("purelib")]
    (purelib / "zz_borrowed_dependencies.pth").write_text("\n".join(dict.fromkeys(borrowed)) + "\n")
    return venv


def run_in(folder: Path, venv: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("NEWSLETTER_", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(list(command), cwd=folder, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_wheel_in_a_fresh_venv_migrates_runs_the_demo_and_loads_the_celery_app(tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path, build_wheel(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()

    paths = "import newsletter.resources as r; print(r.__file__, r.TEMPLATES_DIR, r.MIGRATIONS_DIR, r.SAMPLE_DIR)"
    where = run_in(empty, venv, "python", "-c", paths)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(venv)) for line in where.stdout.split()), where.stdout

    upgrade = run_in(empty, venv, "newsletter", "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert (empty / "newsletter.db").exists()

    demo = run_in(empty, venv, "newsletter", "demo")
    assert demo.returncode == 0, demo.stderr
    digests = sorted(path.name for path in (empty / "outbox").glob("*/*.eml"))
    assert digests == ["ada@example.org.eml", "alan@example.org.eml", "grace@example.org.eml"]
    assert "<html" in next((empty / "outbox").glob("*/ada@example.org.html")).read_text(encoding="utf-8").lower()

    celery = run_in(empty, venv, "python", "-m", "celery", "-A", "workers.celery_app", "inspect", "--help")
    assert celery.returncode == 0, celery.stderr
    app = run_in(empty, venv, "python", "-c", "from workers.celery_app import app; print(app.main)")
    assert app.returncode == 0, app.stderr
