"""``taskhandler check``: validates the files and prints the access table and the deadline."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskhandler import checkcmd
from taskhandler.checkcmd import file_kind, run_check
from taskhandler.cli import main
from taskhandler.exceptions import ConfigError

DATA = Path(__file__).parent / "data"
APP_YAML = str(DATA / "app_realworld.yaml")
WEB_XML = str(DATA / "web.xml")


def _table_rows(text: str) -> list[list[str]]:
    """The rows of the first access table in ``text``, split into cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("#  pattern"))
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("  ") or not line.strip()[0].isdigit():
            break
        rows.append(line.split())
    return rows


def test_app_yaml_table_and_deadline() -> None:
    """The app.yaml check prints each rule (pattern, login, failure action, secure) in order."""
    text = run_check([APP_YAML])
    assert text.startswith(f"{APP_YAML} (app.yaml): OK")
    assert _table_rows(text) == [
        ["1", "(?:/static)/.*", "optional", "redirect", "optional"],
        ["2", r"/favicon\.ico", "optional", "redirect", "optional"],
        ["3", "/tasks/.*", "admin", "redirect", "optional"],
        ["4", "/account/.*", "required", "unauthorized", "always"],
        ["5", "/.*", "optional", "redirect", "always"],
    ]
    assert "task deadline: 600 s (10 min)" in text
    assert "entrypoint: gunicorn -b :$PORT -w 2 main:app" in text
    assert "never match" not in text


def test_web_xml_table_flags_unreachable_rules() -> None:
    """The web.xml check prints the servlet-ordered table and says which rules never match."""
    text = run_check([WEB_XML])
    assert [row[1:3] for row in _table_rows(text)] == [
        ["/cron/run", "admin"],
        ["/tasks(?:/.*)?", "admin"],
        ["/.*", "optional"],
        [r"/.*\.csv", "required"],
    ]
    assert "note: rules after #3 never match" in text


@pytest.mark.parametrize(
    ("scaling", "shown"),
    [
        pytest.param("", "600 s (10 min)", id="automatic by default"),
        pytest.param("basic_scaling:\n  max_instances: 1\n", "86400 s (24 h)", id="basic"),
        pytest.param("manual_scaling:\n  instances: 1\n", "86400 s (24 h)", id="manual"),
    ],
)
def test_deadline_is_printed(tmp_path: Path, scaling: str, shown: str) -> None:
    """The task deadline the scaling section implies is printed."""
    path = tmp_path / "app.yaml"
    path.write_text(f"runtime: python312\n{scaling}")
    text = run_check([str(path)])
    assert f"task deadline: {shown}" in text
    assert "access rules: none" in text


def test_both_files_are_described(tmp_path: Path) -> None:
    """app.yaml and web.xml given together are each validated and described."""
    text = run_check([APP_YAML, WEB_XML])
    assert f"{APP_YAML} (app.yaml): OK" in text
    assert f"{WEB_XML} (web.xml): OK" in text


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        pytest.param("app.yaml", "app.yaml", id="app.yaml"),
        pytest.param("service-a.yaml", "app.yaml", id="any other yaml"),
        pytest.param("web.xml", "web.xml", id="web.xml"),
        pytest.param("WEB-INF/Web.XML", "web.xml", id="upper-case xml"),
        pytest.param("queue.yaml", "queue.yaml", id="queue.yaml"),
        pytest.param("conf/queue.yml", "queue.yaml", id="queue.yml"),
        pytest.param("prod-queue.yaml", "queue.yaml", id="prefixed queue file"),
        pytest.param("queues.yaml", "app.yaml", id="queues is not queue"),
    ],
)
def test_file_kind(name: str, kind: str) -> None:
    """The kind of file is told from its name."""
    assert file_kind(name) == kind


def test_queue_yaml_goes_to_the_hook(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A queue.yaml is handed to the queue checker hook and its text is printed."""
    seen: list[str] = []

    def describe(path: str) -> str:
        seen.append(path)
        return "queues: default"

    monkeypatch.setattr(checkcmd, "QUEUE_YAML_CHECKER", describe)
    queue = tmp_path / "queue.yaml"
    queue.write_text("queue:\n- name: default\n")
    text = run_check([APP_YAML, str(queue)])
    assert seen == [str(queue)]
    assert f"{queue} (queue.yaml): OK\nqueues: default" in text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("handlers:\n- url: /a\n  login: admni\n", ":3: handlers: login", id="login"),
        pytest.param("handlers:\n- url: /a(\n", ":2: handlers: bad url regex", id="regex"),
        pytest.param("handlers: [\n", "invalid YAML", id="yaml"),
    ],
)
def test_cli_reports_bad_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, fragment: str
) -> None:
    """``taskhandler check`` exits 2 and names the file and line of the problem."""
    path = tmp_path / "app.yaml"
    path.write_text(text)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"taskhandler: {path}")
    assert fragment in err


def test_cli_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    """``taskhandler check app.yaml`` exits 0 and prints the table."""
    assert main(["check", APP_YAML]) == 0
    assert "/tasks/.*" in capsys.readouterr().out


def test_nothing_to_check() -> None:
    """Calling the check with no files is a ConfigError, not an empty report."""
    with pytest.raises(ConfigError, match="nothing to check"):
        run_check([])
