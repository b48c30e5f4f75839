"""The Django tests again on Django >= 6.0 (its own ``django.tasks``), under Python >= 3.12.

This suite's interpreter has Django 5.2 and the ``django-tasks`` backport (Django 6 needs
Python 3.12 or newer). This test builds a virtualenv with the newest Python >= 3.12 it finds
and the newest Django, once -- it is kept under ``.cache/`` (git-ignored) and rebuilt only
when the requirements below change -- and runs there the Django tests and the conformance
suite's Django cases. It is skipped, saying so, only when no Python >= 3.12 is installed.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the Django tests import, for Django >= 6 (taskhandler itself is imported from the
# checkout, through pytest's pythonpath setting).
REQUIREMENTS = [
    "Django>=6.0",
    "pytest>=8",
    "pytest-django>=4.8",
    "webtest>=3.0",
    "werkzeug>=3.0",
    "webob>=1.8",
    "itsdangerous>=2.1",
    "pydantic>=2.5,<3",
    "PyYAML>=6.0",
]
TESTS = ["tests/test_django.py", "tests/test_django_backend.py", "tests/conformance"]


def newer_python() -> str | None:
    """The newest Python >= 3.12 on this machine (PATH, then pyenv's versions), or None."""
    candidates = [shutil.which(f"python3.{minor}") for minor in (14, 13, 12)]
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(f"{pyenv}/versions/3.1[2-9]*/bin/python3"), reverse=True)
    for candidate in candidates:
        if not candidate:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info >= (3, 12))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if probe.stdout.strip() == "True":
            return candidate
    return None


def venv_for(python: str) -> Path:
    """A virtualenv of ``python`` with REQUIREMENTS, built once and kept under .cache/."""
    version = subprocess.run(
        [python, "-c", "import sys; print('%d%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    venv = ROOT / ".cache" / f"django6-py{version}"
    stamp = venv / "requirements.sha256"
    wanted = hashlib.sha256("\n".join(REQUIREMENTS).encode()).hexdigest()
    if stamp.is_file() and stamp.read_text() == wanted:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
        check=True,
        timeout=900,
    )
    stamp.write_text(wanted)
    return venv


@pytest.mark.slow
def test_the_django_tests_pass_on_django_6() -> None:
    """The Django tests and the Django conformance cases pass on Django >= 6 (django.tasks)."""
    if os.environ.get("TASKHANDLER_DJANGO_NESTED"):
        pytest.skip("already inside the Django >= 6 run")
    python = newer_python()
    if python is None:
        pytest.skip("no Python >= 3.12 installed: Django 6 needs one (the Django tests ran on 5.2)")
    venv = venv_for(python)
    interpreter = str(venv / "bin" / "python")
    versions = subprocess.run(
        [
            interpreter,
            "-c",
            "import django; from taskhandler.django import _compat; "
            "print(django.VERSION[0], _compat.BaseTaskBackend.__module__)",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=True,
    ).stdout.split()
    assert int(versions[0]) >= 6
    assert versions[1] == "django.tasks.backends.base"  # Django's own, not the backport
    # The checkout's editable-install metadata (taskhandler.egg-info, beside the package)
    # registers the pytest plugin by its entry point; without it, name the plugin.
    plugin = (
        []
        if (ROOT / "taskhandler.egg-info").is_dir()
        else ["-p", "taskhandler.testing.pytest_plugin"]
    )
    run = subprocess.run(
        [
            interpreter,
            "-m",
            "pytest",
            *TESTS,
            "-k",
            "django",
            "-q",
            "-p",
            "no:cacheprovider",
            *plugin,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TASKHANDLER_DJANGO_NESTED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=900,
        check=False,
    )
    tail = "\n".join((run.stdout + run.stderr).splitlines()[-40:])
    assert run.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail, tail
    print(f"Django >= 6 on {python}: {tail.splitlines()[-1]}", file=sys.stderr)
