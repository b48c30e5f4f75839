"""The documentation: the site builds strictly and offline, and the README keeps its promises.

- ``mkdocs build --strict`` succeeds: every page is in the nav, every nav entry exists, every
  internal link and anchor resolves (mkdocs.yml turns each of those into a warning, and
  ``--strict`` makes a warning fatal), and the built pages load no web fonts;
- the README stays short, and its first code block holds exactly the two commands CI and
  newcomers run (CI runs the second one verbatim);
- no page speaks of the specification the product was built from: the docs say what the
  product does;
- the files and functions the pages name exist, so a rename cannot leave the docs behind.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README_LINES = 220

SERVE_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[flask]' && .venv/bin/taskhandler "
    "serve examples.flask_style.main:app --app-yaml examples/flask_style/app.yaml "
    "--queue-yaml examples/flask_style/queue.yaml --db /tmp/taskhandler-dev.sqlite3"
)
TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest"
)

PAGES = sorted(DOCS.glob("*.md"))
USER_DOCS = [*PAGES, README, ROOT / "CHANGES.md"]
# A repository path in backticks: `taskhandler/_decision.py`, `tests/security/`, `bench/asgi.py`.
REPO_PATH = re.compile(r"`((?:taskhandler|tests|examples)/[\w./-]*|bench/[\w-]+\.py)`")
# A function or method named as a call in backticks: `decide()`, `TrustPolicy.source(peer, ...)`.
CALLED = re.compile(r"`(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*)\(")


def _nav_files(entries: object) -> list[str]:
    """Every file the mkdocs.yml nav names, at any depth."""
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, list):
        return [name for entry in entries for name in _nav_files(entry)]
    if isinstance(entries, dict):
        return [name for value in entries.values() for name in _nav_files(value)]
    return []


def _first_fenced_block(text: str) -> list[str]:
    """The lines inside the first ``` fence of a Markdown text."""
    match = re.search(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match is not None, "no fenced code block"
    return match.group(1).splitlines()


def _mkdocs_config() -> dict[str, object]:
    # mkdocs.yml may hold !!python/name tags in general; ours holds none, so safe_load reads it.
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    return config


def test_mkdocs_build_is_strict_and_offline(tmp_path: Path) -> None:
    """``mkdocs build --strict`` succeeds, builds every nav page, and loads no web fonts."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs-material is not installed (it comes with the test and dev extras)")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build failed:\n{result.stdout}\n{result.stderr}"
    for name in _nav_files(_mkdocs_config()["nav"]):
        page = site / ("index.html" if name == "index.md" else f"{name[:-3]}/index.html")
        assert page.is_file(), f"{name} was not built"
    fetched = [
        str(page.relative_to(site))
        for page in site.rglob("*.html")
        if "fonts.googleapis.com" in page.read_text(encoding="utf-8")
    ]
    assert not fetched, f"pages that load Google Fonts: {fetched}"


def test_nav_lists_every_page_and_nothing_else() -> None:
    """The nav of mkdocs.yml names each page in docs/ exactly once, and no missing file."""
    named = _nav_files(_mkdocs_config()["nav"])
    assert len(named) == len(set(named)), f"pages named twice: {named}"
    assert sorted(named) == sorted(page.name for page in PAGES)


def test_theme_fetches_no_fonts() -> None:
    """The theme is told not to fetch web fonts (``theme.font: false``)."""
    theme = _mkdocs_config()["theme"]
    assert isinstance(theme, dict)
    assert theme.get("font") is False


def test_readme_is_short() -> None:
    """The README stays an entry point: at most 220 lines, the rest lives in docs/."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"


def test_readme_first_block_is_the_two_commands() -> None:
    """The README's first code block holds exactly the serve command and the test command."""
    block = _first_fenced_block(README.read_text(encoding="utf-8"))
    commands = [line for line in block if line.strip() and not line.lstrip().startswith("#")]
    assert commands == [SERVE_COMMAND, TEST_COMMAND]


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run ends with the README's test command, byte for byte."""
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert lines[-1] == TEST_COMMAND


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_docs_never_cite_the_specification(path: Path) -> None:
    """A user page says what the product does; it never cites "SPEC" or a "§" section."""
    text = path.read_text(encoding="utf-8")
    found = [
        f"line {number}: {line.strip()}"
        for number, line in enumerate(text.splitlines(), 1)
        if "SPEC" in line or "§" in line
    ]
    assert not found, "\n".join(found)


def _defined_names() -> set[str]:
    """Every function, method and class name defined in the package."""
    names: set[str] = set()
    for module in (ROOT / "taskhandler").rglob("*.py"):
        text = module.read_text(encoding="utf-8")
        names.update(re.findall(r"^\s*(?:async\s+)?(?:def|class)\s+(\w+)", text, re.MULTILINE))
    return names


@pytest.mark.parametrize("path", [*PAGES, README], ids=lambda path: str(path.relative_to(ROOT)))
def test_repository_paths_named_exist(path: Path) -> None:
    """Every repository file or folder a page names in backticks exists."""
    named = sorted(set(REPO_PATH.findall(path.read_text(encoding="utf-8"))))
    missing = [name for name in named if not (ROOT / name).exists()]
    assert not missing, f"{path.name} names missing paths: {missing}"


def test_request_flow_names_only_real_functions() -> None:
    """Every function the contributors' walk-through names as a call is defined in the package."""
    text = (DOCS / "request-flow.md").read_text(encoding="utf-8")
    called = sorted(set(CALLED.findall(text)))
    assert len(called) > 20, f"too few names found to be a real check: {called}"
    missing = [name for name in called if name not in _defined_names()]
    assert not missing, f"request-flow.md names functions the package does not define: {missing}"
