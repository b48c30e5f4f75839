"""The development server's console (``/_ah/admin/queues``), in process.

The server is built by ``taskhandler serve``'s own ``build()`` around a small Flask app, over a
real queue file and its history file; the queue is run with ``run_until_idle`` and the console
is asked over WSGI (werkzeug's test client) as a signed-in administrator.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask, request
from werkzeug.test import Client

from taskhandler import taskqueue
from taskhandler._console.history import History
from taskhandler._console.pages import in_words, pretty_payload
from taskhandler.auth import SignedCookieAuth
from taskhandler.devserver import CONSOLE_PATH, Served, build

SECRET = "k" * 40
QUEUE_YAML = """
queue:
- name: default
  rate: 500/s
  bucket_size: 100
  retry_parameters:
    task_retry_limit: 1
    min_backoff_seconds: 0.05
    max_backoff_seconds: 0.05
- name: slow
  rate: 1/s
"""


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """The dev server's app, queue and console around this module's Flask app."""
    monkeypatch.setenv("TASKHANDLER_SECRET_KEY", SECRET)
    monkeypatch.setenv("CONSOLE_TEST_DIR", str(tmp_path))
    (tmp_path / "queue.yaml").write_text(QUEUE_YAML)
    args = argparse.Namespace(
        app="tests.test_console:app",
        app_yaml=None,
        queue_yaml=str(tmp_path / "queue.yaml"),
        host="127.0.0.1",
        port=8080,
        db=str(tmp_path / "queue.sqlite3"),
        history=10_000,
    )
    served = build(args)
    served.recorder.install()
    try:
        yield served
    finally:
        served.recorder.uninstall()
        served.queue.close()
        served.console.close()
        served.history.close()


def _client(served: Served, *, admin: bool = True) -> Client:
    client = Client(served.app)
    cookie = SignedCookieAuth(SECRET).cookie_value("ada@example.com", admin=admin)
    client.set_cookie("taskhandler_signin", cookie, domain="localhost")
    return client


def _get(served: Served, path: str, **query: str) -> tuple[int, str]:
    url = CONSOLE_PATH + path + (f"?{urlencode(query)}" if query else "")
    response = _client(served).get(url, headers={"Host": "localhost:8080"})
    return response.status_code, response.get_data(as_text=True)


def _post(served: Served, action: str, **form: str) -> tuple[int, str]:
    """A console action from the console's own page; (status, Location)."""
    data = {"token": served.console.token, **form}
    response = _client(served).post(
        f"{CONSOLE_PATH}/{action}",
        data=data,
        headers={"Host": "localhost:8080", "Origin": "http://localhost:8080"},
    )
    return response.status_code, response.headers.get("Location", "")


def _names(page: str) -> list[str]:
    return re.findall(r'<tr data-task="([^"]+)"', page)


def _add(served: Served, **kwargs: Any) -> str:
    with taskqueue.use(served.queue):
        task = taskqueue.add(**kwargs)
    assert task.name is not None
    return task.name


def _fix_handler(tmp: Path) -> None:
    (tmp / "fixed").write_text("yes")


# -- the task states ----------------------------------------------------------------------------


def test_each_state_is_counted_and_listed(server: Served, tmp_path: Path) -> None:
    """Pending, scheduled, retrying, failed and done tasks are counted on the overview and
    listed under their state."""
    _add(server, url="/tasks/ok", name="done-1")
    _add(server, url="/tasks/fail", name="failed-1", params={"n": "1"})
    server.queue.run_until_idle(timeout=30)
    _add(server, url="/tasks/ok", name="pending-1")
    _add(server, url="/tasks/ok", name="scheduled-1", countdown=3600)
    _add(server, url="/tasks/ok", name="slow-1", queue_name="slow")
    status, overview = _get(server, "")
    assert status == 200
    row = re.search(r'<tr data-queue="default">(.*?)</tr>', overview, re.DOTALL)
    assert row is not None
    counts = [
        int(n.replace(",", "")) for n in re.findall(r'class="count[^"]*"[^>]*>([\d,]+)<', row[1])
    ]
    # pending, scheduled, running, retrying, failed, done
    assert counts == [1, 1, 0, 0, 1, 1]
    for state, names in [
        ("pending", ["pending-1"]),
        ("scheduled", ["scheduled-1"]),
        ("running", []),
        ("failed", ["failed-1"]),
        ("done", ["done-1"]),
    ]:
        assert _names(_get(server, "/tasks", queue="default", state=state)[1]) == names, state


def test_retrying_task_is_listed_with_its_last_status(server: Served) -> None:
    """A task that failed once and waits for its next attempt is under *retrying*, with the
    status of its last attempt."""
    _add(server, url="/tasks/fail", name="again", countdown=0)
    server.queue.run_due(timeout=30)
    page = _get(server, "/tasks", queue="default", state="retrying")[1]
    assert _names(page) == ["again"]
    assert "<td>500</td>" in page


def test_task_page_shows_payload_headers_and_each_attempt(server: Served) -> None:
    """A failed task's page shows its JSON payload indented, its headers, and every attempt with
    status, exception and traceback."""
    _add(
        server,
        url="/tasks/fail",
        name="inspect-me",
        payload=b'{"order": 7, "items": ["a"]}',
        headers={"Content-Type": "application/json", "X-Custom": "yes"},
    )
    server.queue.run_until_idle(timeout=30)
    status, page = _get(server, "/task", queue="default", name="inspect-me")
    assert status == 200
    assert '<span class="badge failed">failed</span>' in page
    assert "&quot;order&quot;: 7," in page  # indented JSON, escaped
    assert "<td class='name'>X-Custom</td>" in page
    assert page.count("class='attempt ") == 2
    assert "ValueError: boom on attempt 0" in page
    assert "ValueError: boom on attempt 1" in page
    assert "Traceback (most recent call last)" in page
    assert "failed: given up" in page


def test_retry_runs_a_failed_task_again_with_its_payload(server: Served, tmp_path: Path) -> None:
    """*Retry* on a failed task enqueues its request again; once the handler is fixed it is done."""
    _add(server, url="/tasks/fail", name="fix-me", params={"n": "42"})
    server.queue.run_until_idle(timeout=30)
    assert _names(_get(server, "/tasks", queue="default", state="failed")[1]) == ["fix-me"]
    _fix_handler(tmp_path)
    status, location = _post(server, "retry", queue="default", name="fix-me", back=CONSOLE_PATH)
    assert status == 303
    assert "enqueued+again+as" in location
    server.queue.run_until_idle(timeout=30)
    assert _names(_get(server, "/tasks", queue="default", state="failed")[1]) == []
    done = _get(server, "/tasks", queue="default", state="done")[1]
    assert len(_names(done)) == 1
    assert (tmp_path / "handled").read_text().splitlines()[-1] == "n=42"


@pytest.mark.parametrize(
    ("action", "form", "message"),
    [
        pytest.param(
            "run", {"name": "nope"}, "is not waiting", id="run now: a task that is not there"
        ),
        pytest.param(
            "delete", {"name": "nope"}, "no longer waiting", id="delete: a task that is not there"
        ),
        pytest.param(
            "delete", {"name": "nope", "finished": "1"}, "not kept", id="delete: no finished task"
        ),
        pytest.param(
            "add",
            {"url": "/tasks/ok", "countdown": "soon"},
            "countdown must be a number",
            id="add: countdown not a number",
        ),
        pytest.param(
            "add",
            {"url": "/tasks/ok", "params": "no equals sign"},
            "name=value",
            id="add: a param line without =",
        ),
        pytest.param(
            "add", {"url": "/tasks/ok", "method": "BREW"}, "Unknown method", id="add: bad method"
        ),
        pytest.param(
            "add", {"url": "no-slash"}, "InvalidUrlError", id="add: a URL the queue refuses"
        ),
    ],
)
def test_actions_answer_with_a_message(
    server: Served, action: str, form: dict[str, str], message: str
) -> None:
    """An action that cannot be done comes back to the page with a message saying why."""
    status, location = _post(server, action, queue="default", back=CONSOLE_PATH, **form)
    assert status == 303
    assert "err=1" in location
    page = _client(server).get(location, headers={"Host": "localhost:8080"}).get_data(as_text=True)
    shown = re.search(r'id="message">([^<]*)<', page)
    assert shown is not None
    assert message in shown[1].replace("&#x27;", "'")
    assert server.queue.tasks("default") == []


def test_add_form_adds_a_task_and_shows_it(server: Served) -> None:
    """The add form stores the task (params form-encoded) and goes to its page."""
    status, location = _post(
        server,
        "add",
        queue="slow",
        url="/tasks/ok",
        method="POST",
        params="a=1\nb=two",
        name="from-form",
        countdown="60",
    )
    assert status == 303
    assert location.startswith(f"{CONSOLE_PATH}/task?queue=slow&name=from-form")
    (task,) = server.queue.tasks("slow")
    assert task.task_name == "from-form"
    assert task.payload == b"a=1&b=two"
    page = _get(server, "/task", queue="slow", name="from-form")[1]
    assert "in 1 minute" in page


def test_list_pages_and_search(server: Served) -> None:
    """A long list is cut in pages of 50; search keeps tasks whose name or URL contains it."""
    with taskqueue.use(server.queue):
        taskqueue.Queue("default").add(
            [
                taskqueue.Task(
                    url=f"/tasks/ok?i={i}", method="GET", name=f"t-{i:03d}", countdown=600
                )
                for i in range(100)
            ]
        )
        taskqueue.Queue("default").add(
            [
                taskqueue.Task(url="/tasks/special", name=f"u-{i:03d}", countdown=600)
                for i in range(20)
            ]
        )
    first = _get(server, "/tasks", queue="default", state="scheduled")[1]
    assert "page 1 of 3 (120 tasks)" in first
    assert len(_names(first)) == 50
    third = _get(server, "/tasks", queue="default", state="scheduled", page="3")[1]
    assert len(_names(third)) == 20
    assert 'id="next"' not in third
    found = _get(server, "/tasks", queue="default", state="scheduled", q="special")[1]
    assert len(_names(found)) == 20
    by_name = _get(server, "/tasks", queue="default", state="scheduled", q="t-042")[1]
    assert _names(by_name) == ["t-042"]


def test_purge_asks_first(server: Served) -> None:
    """*Purge* shows a confirmation naming how many tasks go; its button purges them."""
    for i in range(3):
        _add(server, url="/tasks/ok", name=f"p-{i}", countdown=600)
    status, page = _get(server, "/purge", queue="default")
    assert status == 200
    assert "<b>3</b> task(s)" in page
    assert len(server.queue.tasks("default")) == 3
    assert _post(server, "purge", queue="default")[0] == 303
    assert server.queue.tasks("default") == []


def test_pause_and_resume(server: Served, tmp_path: Path) -> None:
    """*Pause* keeps a queue's tasks waiting (and says so to *run now*); *resume* runs them."""
    assert _post(server, "pause", queue="default", back=CONSOLE_PATH)[0] == 303
    assert server.queue.is_paused("default")
    assert '<span class="badge paused">paused</span>' in _get(server, "")[1]
    _add(server, url="/tasks/ok", name="held")
    assert server.queue.run_until_idle(timeout=5) == 0
    assert [t.task_name for t in server.queue.tasks("default")] == ["held"]
    _, location = _post(server, "run", queue="default", name="held", back=CONSOLE_PATH)
    assert "is+paused" in location
    assert _post(server, "resume", queue="default", back=CONSOLE_PATH)[0] == 303
    assert not server.queue.is_paused("default")
    assert server.queue.run_until_idle(timeout=30) == 1
    assert server.queue.tasks("default") == []


@pytest.mark.parametrize(
    "method",
    [pytest.param("pause", id="pause"), pytest.param("resume", id="resume")],
)
def test_pause_of_an_unknown_queue_is_refused(server: Served, method: str) -> None:
    """Pausing or resuming a queue that is not declared raises UnknownQueueError."""
    with pytest.raises(taskqueue.UnknownQueueError):
        getattr(server.queue, method)("nope")


def test_live_endpoint_gives_the_page_part_as_json(server: Served) -> None:
    """``/live`` answers JSON whose ``html`` is the part of the page that refreshes."""
    _add(server, url="/tasks/ok", name="live-1", countdown=600)
    client = _client(server)
    response = client.get(
        f"{CONSOLE_PATH}/live?view=tasks&queue=default&state=scheduled",
        headers={"Host": "localhost:8080"},
    )
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert 'data-task="live-1"' in response.get_json()["html"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/static/console.js", 200, id="script"),
        pytest.param("/static/console.css", 200, id="stylesheet"),
        pytest.param("/static/../app.py", 404, id="no path outside the assets"),
        pytest.param("/static/history.py", 404, id="only the assets"),
    ],
)
def test_static_assets_ship_with_the_package(server: Served, path: str, status: int) -> None:
    """The stylesheet and script are served from the package; nothing else is."""
    response = Client(server.app).get(CONSOLE_PATH + path, headers={"Host": "localhost:8080"})
    assert response.status_code == status


def test_console_escapes_what_tasks_carry(server: Served) -> None:
    """A task's name, URL, headers and payload reach the page as text, never as markup."""
    _add(
        server,
        url="/tasks/ok?x=<script>",
        method="GET",
        name="esc-1",
        headers={"X-Evil": "<img src=x onerror=alert(1)>"},
        countdown=600,
    )
    page = _get(server, "/task", queue="default", name="esc-1")[1]
    assert "<script>" not in page.replace(
        '<script src="/_ah/admin/queues/static/console.js" defer></script>', ""
    )
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_task_that_keeps_getting_404_is_reported(
    server: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """A task to a URL no route answers logs one WARNING naming the URL."""
    with taskqueue.use(server.queue):
        taskqueue.add(
            url="/no/such/route",
            name="lost",
            retry_options=taskqueue.TaskRetryOptions(
                task_retry_limit=3, min_backoff_seconds=0.01, max_backoff_seconds=0.01
            ),
        )
    with caplog.at_level(logging.WARNING, logger="taskhandler.devserver"):
        server.queue.run_until_idle(timeout=30)
    warnings = [r.getMessage() for r in caplog.records if "404 Not Found" in r.getMessage()]
    assert len(warnings) == 1
    assert "POST /no/such/route" in warnings[0]


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("tests.test_console:app", id="WSGI (Flask)"),
        pytest.param("tests.test_console:asgi_app", id="ASGI (Starlette)"),
    ],
)
def test_attempts_are_recorded_for_wsgi_and_asgi_apps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """Each delivery to a WSGI or an ASGI app is recorded with its status, request body and
    the exception the app raised."""
    monkeypatch.setenv("TASKHANDLER_SECRET_KEY", SECRET)
    monkeypatch.setenv("CONSOLE_TEST_DIR", str(tmp_path))
    (tmp_path / "queue.yaml").write_text(QUEUE_YAML)
    args = argparse.Namespace(
        app=target, app_yaml=None, queue_yaml=str(tmp_path / "queue.yaml"), host="127.0.0.1",
        port=8080, db=str(tmp_path / "q.sqlite3"), history=100,
    )  # fmt: skip
    served = build(args)
    served.recorder.install()
    try:
        _add(served, url="/tasks/fail", name="f", params={"k": "v"})
        served.queue.run_until_idle(timeout=30)
        attempts = served.history.attempts("default", "f")
    finally:
        served.recorder.uninstall()
        served.queue.close()
        served.console.close()
        served.history.close()
    assert [(a.retry_count, a.status, a.outcome) for a in attempts] == [
        (0, 500, "retry"),
        (1, 500, "failed"),
    ]
    assert attempts[0].payload == b"k=v"
    assert attempts[0].error == "ValueError: boom on attempt 0"
    assert attempts[1].traceback is not None
    assert "raise ValueError" in attempts[1].traceback


def test_history_keeps_the_newest(tmp_path: Path) -> None:
    """The history keeps at most ``limit`` attempts (the newest) and counts every one."""
    history = History(str(tmp_path / "h.sqlite3"), limit=5)
    try:
        for i in range(205):
            history.record(
                queue_name="default", task_name=f"t{i}", retry_count=0, method="POST",
                url="/x", headers=[], payload=b"", started=1000.0 + i, duration=0.001,
                status=200, error=None, trace=None,
            )  # fmt: skip
        kept = history.finished("default", "done", limit=100)[1]
        assert kept <= 5 + 100  # pruned every 100 writes
        assert history.totals()["default"]["done"] == 205
        assert [a.task_name for a in history.attempts("default", "t204")] == ["t204"]
        assert history.attempts("default", "t0") == []
    finally:
        history.close()


@pytest.mark.parametrize(
    ("delta", "words"),
    [
        pytest.param(0.2, "now", id="now"),
        pytest.param(5, "in 5 seconds", id="seconds ahead"),
        pytest.param(-1, "1 second ago", id="one second ago"),
        pytest.param(3594, "in 60 minutes", id="just under an hour"),
        pytest.param(3540, "in 59 minutes", id="59 minutes"),
        pytest.param(-7200, "2 hours ago", id="hours ago"),
        pytest.param(3 * 86400, "in 3 days", id="days"),
    ],
)
def test_times_in_words(delta: float, words: str) -> None:
    """ETAs and finish times read as words, not seconds."""
    assert in_words(1000.0 + delta, 1000.0) == words


@pytest.mark.parametrize(
    ("payload", "headers", "shown"),
    [
        pytest.param(
            b'{"a":1}', [], '<pre class="payload json">{\n  &quot;a&quot;: 1\n}</pre>', id="JSON"
        ),
        pytest.param(b"a=1&b=x+y", [], "<td class='url'>x y</td>", id="form"),
        pytest.param(b"plain words", [], '<pre class="payload text">plain words</pre>', id="text"),
        pytest.param(b"\xff\xfe", [], "2 bytes of binary data", id="binary"),
        pytest.param(b"", [], "No payload", id="empty"),
    ],
)
def test_payload_is_shown_readably(
    payload: bytes, headers: list[tuple[str, str]], shown: str
) -> None:
    """Payloads are pretty-printed: JSON indented, forms as fields, text as text."""
    assert shown in pretty_payload(payload, headers)


# -- the apps the server runs ----------------------------------------------------------------

app = Flask(__name__)


@app.route("/tasks/ok", methods=["GET", "POST"])
def ok() -> str:
    return "ok"


@app.post("/tasks/fail")
def fail() -> str:
    folder = Path(os.environ["CONSOLE_TEST_DIR"])
    if not (folder / "fixed").exists():
        retry = request.headers.get("X-AppEngine-TaskRetryCount", "?")
        raise ValueError(f"boom on attempt {retry}")
    with open(folder / "handled", "a") as handled:
        handled.write(request.get_data(as_text=True) + "\n")
    return "ok"


async def _asgi_fail(request: Any) -> Any:
    from starlette.responses import PlainTextResponse

    retry = request.headers.get("X-AppEngine-TaskRetryCount", "?")
    try:
        raise ValueError(f"boom on attempt {retry}")
    except ValueError:
        logging.getLogger("tests.asgi").exception("task failed")
    return PlainTextResponse("failed", status_code=500)


def _asgi_app() -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route("/tasks/fail", _asgi_fail, methods=["POST"])])


asgi_app = _asgi_app()
