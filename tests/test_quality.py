"""The package stays typed and clean: mypy strict and ruff, run as part of the test suite."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.servers import ROOT


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (ROOT / ".venv/bin/ruff").exists(),
    reason="ruff is part of the test extra",
)
def test_ruff_is_clean() -> None:
    """ruff reports nothing on the package, the tests, the examples and the benchmarks."""
    result = _run(
        sys.executable, "-m", "ruff", "check", "taskhandler", "tests", "examples", "bench"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    """mypy --strict (configured in pyproject.toml) reports nothing on taskhandler/."""
    result = _run(sys.executable, "-m", "mypy", "taskhandler")
    assert result.returncode == 0, result.stdout + result.stderr
