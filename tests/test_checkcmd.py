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
    ("name", "text", "kind"),
    [
        pytest.param("app.yaml", "runtime: python312\n", "app.yaml", id="app.yaml"),
        pytest.param("service-a.yaml", "handlers: []\n", "app.yaml", id="app.yaml by handlers"),
        pytest.param("web.xml", "<web-app/>", "web.xml", id="web.xml"),
        pytest.param("Web.XML", "\ufeff<?xml version='1.0'?><web-app/>", "web.xml", id="BOM xml"),
        pytest.param("security.txt", "<!-- c --><web-app/>", "web.xml", id="xml of any name"),
        pytest.param("queue.yaml", "queue:\n- name: a\n", "queue.yaml", id="queue.yaml"),
        pytest.param("q.yaml", "queue:\n- name: a\n", "queue.yaml", id="queue file named q"),
        pytest.param(
            "app.yaml", "total_storage_limit: 1M\n", "queue.yaml", id="queue file named app.yaml"
        ),
        pytest.param("jobs.yml", "cron:\n- url: /a\n", "cron.yaml", id="cron file"),
        pytest.param("d.yaml", "dispatch: []\n", "dispatch.yaml", id="dispatch file"),
        pytest.param("i.yaml", "indexes: []\n", "index.yaml", id="index file"),
        pytest.param(
            "queue.yaml", "application: x\nruntime: go\n", "app.yaml", id="app file named queue"
        ),
    ],
)
def test_file_kind(tmp_path: Path, name: str, text: str, kind: str) -> None:
    """The kind of file is told from its content, whatever its name."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert file_kind(str(path)) == kind


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("", "it is empty", id="empty file"),
        pytest.param("application: x\n", "it sets nothing", id="only application"),
        pytest.param("- a\n", "expected XML (web.xml) or a YAML mapping", id="a list"),
        pytest.param(
            "queues:\n- name: a\n",
            "did you mean 'queue' (queue.yaml) on line 1?",
            id="misspelt queue key",
        ),
        pytest.param(
            "handler:\n- url: /a\n", "did you mean 'handlers' (app.yaml)", id="misspelt handlers"
        ),
        pytest.param("colour: red\n", "no top-level key (['colour'])", id="unknown key"),
        pytest.param(
            "queue: []\nhandlers: []\n", "belong to app.yaml and queue.yaml", id="mixed kinds"
        ),
        pytest.param("a: [\n", "invalid YAML", id="broken YAML"),
    ],
)
def test_file_kind_unknown(tmp_path: Path, text: str, fragment: str) -> None:
    """A file whose kind cannot be told is a ConfigError naming it, never checked as app.yaml."""
    path = tmp_path / "app.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        run_check([str(path)])
    assert info.value.path == str(path)
    assert fragment in str(info.value)


def test_misspelt_queue_file_is_checked_as_a_queue_file(tmp_path: Path) -> None:
    """A queue file with a mistake, whatever its name, reports the queue error."""
    path = tmp_path / "q.yaml"
    path.write_text("queue:\n- name: a\n  rate: 5/x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        run_check([str(path)])
    assert (info.value.path, info.value.line) == (str(path), 3)
    assert "rate '5/x'" in str(info.value)


def test_cron_yaml_is_described() -> None:
    """A cron.yaml is validated and its jobs are listed."""
    path = str(DATA / "config" / "cron.yaml")
    text = run_check([path])
    assert text.startswith(f"{path} (cron.yaml): OK\ncron jobs:")
    assert _table_rows(text.replace("#  url", "#  pattern")) == [
        ["1", "/tasks/summary", "every", "24", "hours", "UTC", "worker"],
        ["2", "/mail/weekly", "every", "monday", "09:00", "Australia/NSW", "-"],
        [
            "3",
            "/tasks/cleanup",
            "every",
            "5",
            "minutes",
            "from",
            "10:00",
            "to",
            "14:00",
            "UTC",
            "-",
        ],
    ]


@pytest.mark.parametrize("name", ["dispatch.yaml", "index.yaml"])
def test_unused_files_have_their_keys_checked(tmp_path: Path, name: str) -> None:
    """dispatch.yaml and index.yaml pass when their keys are App Engine's, fail otherwise."""
    good = str(DATA / "config" / name)
    assert (
        run_check([good])
        == f"{good} ({name}): OK (keys checked; taskhandler does not use this file)"
    )
    bad = tmp_path / name
    bad.write_text((DATA / "config" / name).read_text().replace("  - name: queue", "  - nmae: q"))
    bad.write_text(bad.read_text().replace("  service: api", "  servce: api"))
    with pytest.raises(ConfigError, match=r"unknown key '(nmae|servce)'") as info:
        run_check([str(bad)])
    assert info.value.path == str(bad)


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
        pytest.param(
            "handlers:\n- url: /a\n  script: auto\n  login: admni\n",
            ":4: handlers[1].login: 'admni'",
            id="login",
        ),
        pytest.param(
            "handlers:\n- url: /a(\n  script: auto\n",
            ":2: handlers[1].url: bad url regex",
            id="regex",
        ),
        pytest.param("handlers: [\n", "invalid YAML", id="yaml"),
        pytest.param(
            "runtime: go\nhandler:\n- url: /a\n", ":2: unknown key 'handler'", id="unknown key"
        ),
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
