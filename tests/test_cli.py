"""The ``taskhandler`` command: ``--version``, defaults in ``--help``, ``add`` and ``tasks`` on the
dev server's queue file, the sign-in key kept beside it, app factories, a taken port, a missing
framework, and ``serve --reload``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from taskhandler import __version__
from taskhandler.cli import main
from taskhandler.devserver import _install_hint, import_app, signing_key
from taskhandler.exceptions import ConfigError
from taskhandler.taskqueue import LocalTaskQueue
from tests.servers import ROOT, free_port, wait_for_port


def _run(
    *argv: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskhandler.cli", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``taskhandler --version`` prints the installed version."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"taskhandler {__version__}"


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        pytest.param("serve", "(default: 8080)", id="serve: port"),
        pytest.param("serve", "(default: 127.0.0.1)", id="serve: host"),
        pytest.param("serve", "(default: .taskhandler-queue.sqlite3)", id="serve: database"),
        pytest.param("add", "(default: default)", id="add: queue"),
        pytest.param("tasks", "(default: pending)", id="tasks: state"),
    ],
)
def test_help_shows_defaults(capsys: pytest.CaptureFixture[str], command: str, shown: str) -> None:
    """Each option's default is shown in ``--help``."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert shown.replace(" ", "") in "".join(out.split())
    assert "(default: None)" not in out


@pytest.fixture
def queue_db(tmp_path: Path) -> Path:
    """A queue file as ``taskhandler serve`` leaves it."""
    db = tmp_path / "q.sqlite3"
    LocalTaskQueue("http://127.0.0.1:1", db=str(db)).close()
    return db


def test_add_then_tasks(queue_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``add`` stores a task in the queue file (params, @file payload, countdown, name), and
    ``tasks`` lists it in a table."""
    payload = tmp_path / "order.json"
    payload.write_text('{"order": 1}')
    assert (
        main(["add", "/tasks/count", "--param", "amount=3", "--name", "c-1", "--db", str(queue_db)])
        == 0
    )
    assert (
        main(
            [
                "add",
                "/tasks/json",
                "--payload",
                f"@{payload}",
                "--countdown",
                "600",
                "--db",
                str(queue_db),
            ]
        )
        == 0
    )
    queue = LocalTaskQueue("http://127.0.0.1:1", db=str(queue_db))
    try:
        by_url = {t.url: t for t in queue.tasks("default")}
    finally:
        queue.close()
    assert by_url["/tasks/count"].payload == b"amount=3"
    assert by_url["/tasks/count"].task_name == "c-1"
    assert by_url["/tasks/json"].payload == b'{"order": 1}'
    assert ("Content-Type", "application/json") in by_url["/tasks/json"].headers
    capsys.readouterr()
    assert main(["tasks", "--db", str(queue_db)]) == 0
    pending = capsys.readouterr().out
    assert pending.splitlines()[0].split() == [
        "TASK",
        "METHOD",
        "URL",
        "ETA",
        "RETRIES",
        "LAST",
        "STATUS",
    ]
    assert "c-1" in pending
    assert "/tasks/json" not in pending
    assert main(["tasks", "--state", "scheduled", "--db", str(queue_db)]) == 0
    assert "in 10 minutes" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        pytest.param(
            ["add", "/x", "--db", "MISSING"], "no queue database here", id="no database file"
        ),
        pytest.param(
            ["add", "/x", "--param", "novalue", "--db", "DB"], "NAME=VALUE", id="param without ="
        ),
        pytest.param(
            ["add", "/x", "--payload", "@MISSING", "--db", "DB"],
            "cannot read the payload",
            id="payload file missing",
        ),
        pytest.param(
            ["add", "/x", "--queue", "nope", "--db", "DB"],
            "UnknownQueueError",
            id="undeclared queue",
        ),
        pytest.param(["add", "x", "--db", "DB"], "InvalidUrlError", id="relative URL without /"),
        pytest.param(
            ["tasks", "--db", "MISSING"], "no queue database here", id="tasks: no database file"
        ),
    ],
)
def test_add_and_tasks_refuse_bad_input(
    queue_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    """Bad input is one line on stderr and a non-zero exit, never a traceback."""
    argv = [
        str(queue_db) if a == "DB" else str(tmp_path / "missing") if a == "MISSING" else
        "@" + str(tmp_path / "missing") if a == "@MISSING" else a
        for a in argv
    ]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert error in err
    assert "Traceback" not in err


def test_signing_key_is_kept_beside_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without TASKHANDLER_SECRET_KEY the key is made once, kept readable by its owner only,
    and read again on the next start (so a restart does not sign you out)."""
    monkeypatch.delenv("TASKHANDLER_SECRET_KEY", raising=False)
    db = str(tmp_path / "q.sqlite3")
    first = signing_key(db)
    key_file = tmp_path / "q.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert signing_key(db) == first
    assert len(first) >= 32
    monkeypatch.setenv("TASKHANDLER_SECRET_KEY", "e" * 40)
    assert signing_key(db) == "e" * 40


def test_signing_key_file_others_can_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key file others can read (e.g. planted in /tmp) is refused, not trusted."""
    monkeypatch.delenv("TASKHANDLER_SECRET_KEY", raising=False)
    key_file = tmp_path / "q.key"
    key_file.write_text("k" * 43)
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by you only"):
        signing_key(str(tmp_path / "q.sqlite3"))


def create_app() -> object:
    """A Flask-style app factory."""
    return wsgi_app


def wsgi_app(environ: dict[str, object], start_response: object) -> list[bytes]:
    return [b"app"]


def make_with_config(config: str = "dev") -> object:
    return wsgi_app


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param("tests.test_cli:create_app()", wsgi_app, id="factory()"),
        pytest.param("tests.test_cli:create_app", wsgi_app, id="factory taking no arguments"),
        pytest.param("tests.test_cli:make_with_config", wsgi_app, id="factory with defaults"),
        pytest.param("tests.test_cli:wsgi_app", wsgi_app, id="a WSGI function is not called"),
    ],
)
def test_app_factories(target: str, expected: object) -> None:
    """``MODULE:factory()`` and zero-argument factory functions give the app they return."""
    got = import_app(target)
    assert got.__name__ == expected.__name__  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("missing", "hint"),
    [
        pytest.param("flask", "pip install 'taskhandler[flask]'", id="flask"),
        pytest.param("starlette.routing", "pip install 'taskhandler[asgi]'", id="starlette"),
        pytest.param("uvicorn", "pip install 'taskhandler[asgi]'", id="uvicorn"),
        pytest.param("numpy", "", id="unknown module: no hint"),
        pytest.param(None, "", id="no module name"),
    ],
)
def test_missing_framework_names_the_extra(missing: str | None, hint: str) -> None:
    """An app whose framework is not installed is told which extra installs it."""
    assert _install_hint(missing).endswith(hint)
    assert bool(_install_hint(missing)) is bool(hint)


@pytest.mark.slow
def test_taken_port_is_one_line(tmp_path: Path) -> None:
    """A port in use is a one-line error and exit status 2, and nothing is printed as serving."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        result = _run(
            "serve",
            "tests.test_cli:wsgi_app",
            "--port",
            str(port),
            "--db",
            str(tmp_path / "q.sqlite3"),
        )
    finally:
        holder.close()
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert "serving on" not in result.stdout


APP_V1 = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"VERSION"]
"""


def _port_closes(port: int, timeout: float = 20.0) -> bool:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
        except OSError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.parametrize(
    "stop",
    [
        pytest.param("terminate", id="watcher stopped with SIGTERM"),
        pytest.param("kill", id="watcher killed with SIGKILL"),
    ],
)
def test_reload_restarts_on_change(tmp_path: Path, stop: str) -> None:
    """``serve --reload`` serves the new code after a .py file changes, and its server stops
    with the watcher, however the watcher ends."""
    (tmp_path / "reloaded.py").write_text(APP_V1.replace("VERSION", "one"))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskhandler.cli",
            "serve",
            "reloaded:app",
            "--reload",
            "--port",
            str(port),
            "--db",
            str(tmp_path / "q.sqlite3"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "one"
        time.sleep(1.1)  # a new modification time, on file systems that keep whole seconds
        (tmp_path / "reloaded.py").write_text(APP_V1.replace("VERSION", "two"))
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline and text != "two":
            with contextlib.suppress(httpx.HTTPError):
                text = httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text
            time.sleep(0.2)
        assert text == "two"
        getattr(proc, stop)()
        proc.wait(timeout=15)
        assert _port_closes(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
