"""LocalTaskQueue: in-process delivery to real WSGI (Flask) and ASGI (Starlette) apps.

Time is a ManualClock: ETAs, backoff and rate tokens are reached by advancing it, never by sleeping.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from taskhandler import taskqueue
from taskhandler.context import TaskContext, current_task
from taskhandler.exceptions import ConfigError
from taskhandler.taskqueue import (
    LocalTaskQueue,
    ManualClock,
    QueueConfig,
    RetryParameters,
    Task,
    TaskRetryOptions,
)
from taskhandler.taskqueue._store import process_host
from taskhandler.wsgi import TaskMiddleware

NOW = 1_700_000_000.0
APPENGINE_PREFIX = "HTTP_X_APPENGINE_"


class Recorder:
    """A WSGI app that records each request and answers with the next scripted status."""

    def __init__(
        self, clock: Callable[[], float] | None = None, statuses: list[int | str] | None = None
    ) -> None:
        self.clock = clock
        self.statuses = list(statuses or [])
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        with self.lock:
            self.requests.append(
                {
                    "method": environ["REQUEST_METHOD"],
                    "path": environ["PATH_INFO"],
                    "query": environ["QUERY_STRING"],
                    "peer": environ["REMOTE_ADDR"],
                    "body": environ["wsgi.input"].read(),
                    "headers": headers,
                    "at": None if self.clock is None else self.clock(),
                }
            )
            status = self.statuses.pop(0) if self.statuses else 200
        if status == "raise":
            raise ValueError("handler failed")
        start_response(f"{status} X", [("Content-Type", "text/plain")])
        return [b"done"]

    def task_headers(self) -> list[dict[str, str]]:
        return [
            {k: v for k, v in r["headers"].items() if k.startswith("X-Appengine-")}
            for r in self.requests
        ]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def make_queue(clock: ManualClock) -> Iterator[Callable[..., LocalTaskQueue]]:
    """Build queues on the test's clock; every one is closed and uninstalled at the end."""
    made: list[LocalTaskQueue] = []

    def make(target: object, **kwargs: Any) -> LocalTaskQueue:
        kwargs.setdefault("clock", clock)
        q = LocalTaskQueue(target, **kwargs)
        made.append(q)
        return q

    with taskqueue.use(None):
        yield make
    for q in made:
        q.close()


# -- the seed's three equivalent calls, to a Flask app under TaskMiddleware -----------------


def _flask_app(seen: list[dict[str, Any]]) -> Any:
    app = Flask(__name__)

    @app.route("/update-counter", methods=["GET", "POST"])
    def update_counter() -> str:
        ctx = current_task()
        seen.append(
            {
                "method": request.method,
                "args": request.args.to_dict(),
                "form": request.form.to_dict(),
                "data": request.get_data(as_text=True),
                "content_type": request.content_type,
                "task": ctx,
            }
        )
        return "ok"

    app.wsgi_app = TaskMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


SEED_CALLS = [
    pytest.param(
        {"method": "GET", "url": "/update-counter?key=blue", "target": "worker"},
        {"method": "GET", "args": {"key": "blue"}, "form": {}, "data": ""},
        id="GET with the key in the query string",
    ),
    pytest.param(
        {"url": "/update-counter", "params": {"key": "blue"}, "target": "worker"},
        {"method": "POST", "args": {}, "form": {"key": "blue"}, "data": ""},
        id="POST with params form-encoded",
    ),
    pytest.param(
        {"url": "/update-counter", "payload": "{'key': 'blue'}", "target": "worker"},
        {"method": "POST", "args": {}, "form": {}, "data": "{'key': 'blue'}"},
        id="POST with the payload as the body",
    ),
]


@pytest.mark.parametrize(("call", "expected"), SEED_CALLS)
def test_seed_calls_deliver_to_flask(
    make_queue: Callable[..., LocalTaskQueue], call: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Each of the seed's equivalent add() calls reaches the Flask view with its data, as a task."""
    seen: list[dict[str, Any]] = []
    q = make_queue(_flask_app(seen))
    with taskqueue.use(q):
        task = taskqueue.add(**call)
        assert q.run_until_idle(timeout=10) == 1
    (got,) = seen
    ctx = got.pop("task")
    got.pop("content_type")
    # Flask parses the form of a form-encoded body, leaving get_data() empty.
    assert got == expected
    assert isinstance(ctx, TaskContext)
    assert (ctx.queue_name, ctx.task_name, ctx.retry_count, ctx.trusted_by) == (
        "default",
        task.name,
        0,
        "queue",
    )
    assert ctx.eta is not None and ctx.eta.timestamp() == pytest.approx(NOW)
    assert q.tasks() == []


# -- headers and retries ---------------------------------------------------------------------


def test_retry_sequence_headers(
    make_queue: Callable[..., LocalTaskQueue], clock: ManualClock
) -> None:
    """Retries carry rising counts, the previous status and reason, and the backoff ETA."""
    app = Recorder(clock, statuses=[500, 503, "raise", 200])
    retry = RetryParameters(min_backoff_seconds=10, max_doublings=3)
    q = make_queue(app, queues=[QueueConfig("work", rate=100, retry_parameters=retry)])
    with taskqueue.use(q):
        taskqueue.add(url="/work", name="job-1", queue_name="work")
        assert q.run_until_idle(timeout=10) == 4
    rows = [
        (
            h["X-Appengine-Taskretrycount"],
            h["X-Appengine-Taskexecutioncount"],
            h.get("X-Appengine-Taskpreviousresponse"),
            h.get("X-Appengine-Taskretryreason"),
            float(h["X-Appengine-Tasketa"]) - NOW,
        )
        for h in app.task_headers()
    ]
    assert rows == [
        ("0", "0", None, None, 0.0),
        ("1", "1", "500", "HTTP 500", 10.0),
        ("2", "2", "503", "HTTP 503", 30.0),
        ("3", "3", "500", "app raised ValueError", 70.0),
    ]
    assert [r["at"] - NOW for r in app.requests] == [0.0, 10.0, 30.0, 70.0]
    assert {r["peer"] for r in app.requests} == {"0.1.0.2"}
    for headers in app.task_headers():
        assert headers["X-Appengine-Queuename"] == "work"
        assert headers["X-Appengine-Taskname"] == "job-1"
        # The handler side's strict parser accepts every header set the queue sends.
        TaskContext.from_headers(headers)


LIMITS = [
    pytest.param({"task_retry_limit": 0}, None, 1, id="retry limit 0: one attempt"),
    pytest.param({"task_retry_limit": 3}, None, 4, id="retry limit 3: four attempts"),
    pytest.param(
        {"task_age_limit": 60.0}, None, 5, id="age limit 60 s: attempts at 0,10,30,60,100"
    ),
    pytest.param(
        {"task_retry_limit": 2, "task_age_limit": 60.0},
        None,
        5,
        id="retry limit 2 and age 60 s: until both exceeded",
    ),
    pytest.param(
        {"task_retry_limit": 6, "task_age_limit": 15.0},
        None,
        7,
        id="retry limit 6 and age 15 s: the retry limit decides",
    ),
    pytest.param(
        {"task_retry_limit": 5},
        TaskRetryOptions(task_retry_limit=1),
        2,
        id="task options override the queue's limit",
    ),
]


@pytest.mark.parametrize(("retry", "options", "attempts"), LIMITS)
def test_retry_limits(
    make_queue: Callable[..., LocalTaskQueue],
    retry: dict[str, Any],
    options: TaskRetryOptions | None,
    attempts: int,
) -> None:
    """An always-failing task is attempted until every set limit is exceeded, then dropped."""
    app = Recorder(statuses=[500] * 50)
    params = RetryParameters(min_backoff_seconds=10, max_doublings=0, **retry)
    q = make_queue(app, queues=[QueueConfig("work", rate=100, retry_parameters=params)])
    with taskqueue.use(q):
        taskqueue.add(url="/x", name="doomed", queue_name="work", retry_options=options)
        assert q.run_until_idle(timeout=10) == attempts
        assert q.tasks("work") == []
        assert q.counts()["work"]["failed"] == 1
        with pytest.raises(taskqueue.TombstonedTaskError):
            taskqueue.add(url="/x", name="doomed", queue_name="work")


def test_step_through_retries(
    make_queue: Callable[..., LocalTaskQueue], clock: ManualClock
) -> None:
    """run_due() delivers only what is due, so a test sees the task between attempts."""
    app = Recorder(statuses=[502, 200])
    q = make_queue(app)
    with taskqueue.use(q):
        taskqueue.add(url="/x", name="stepped")
        assert q.run_due() == 1
        (waiting,) = q.tasks()
        assert (waiting.retry_count, waiting.previous_response, waiting.retry_reason) == (
            1,
            502,
            "HTTP 502",
        )
        assert waiting.eta.timestamp() == pytest.approx(NOW + 0.1)
        assert q.run_due() == 0
        clock.advance(0.1)
        assert q.run_due() == 1
        assert q.tasks() == []


def test_rate_limit_token_bucket(
    make_queue: Callable[..., LocalTaskQueue], clock: ManualClock
) -> None:
    """A 2/s queue with a bucket of 3 starts 3 tasks at once, then one every 0.5 s."""
    app = Recorder(clock)
    q = make_queue(app, queues=[QueueConfig("slow", rate=2, bucket_size=3)])
    with taskqueue.use(q):
        taskqueue.Queue("slow").add([Task(url=f"/{i}") for i in range(9)])
        q.run_until_idle(timeout=10)
    assert [r["at"] - NOW for r in app.requests] == pytest.approx(
        [0, 0, 0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    )


def test_eta_order_and_countdown(
    make_queue: Callable[..., LocalTaskQueue], clock: ManualClock
) -> None:
    """Tasks run in ETA order, each not before its ETA."""
    app = Recorder(clock)
    q = make_queue(app, queues=[QueueConfig("one", rate=100, max_concurrent_requests=1)])
    with taskqueue.use(q):
        for name, countdown in [("c", 30), ("a", 0), ("b", 10)]:
            taskqueue.add(url=f"/{name}", countdown=countdown, queue_name="one")
        q.run_until_idle(timeout=10)
    assert [(r["path"], r["at"] - NOW) for r in app.requests] == [
        ("/a", 0.0),
        ("/b", 10.0),
        ("/c", 30.0),
    ]


def test_max_concurrent_requests(make_queue: Callable[..., LocalTaskQueue]) -> None:
    """No more than max_concurrent_requests deliveries of a queue run at once."""
    active = 0
    peak = 0
    lock = threading.Lock()
    pair = threading.Barrier(2, timeout=5)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            pair.wait()  # proves two really run together
        finally:
            with lock:
                active -= 1
        start_response("200 OK", [])
        return [b""]

    q = make_queue(
        app, queues=[QueueConfig("two", rate=500, bucket_size=100, max_concurrent_requests=2)]
    )
    with taskqueue.use(q):
        taskqueue.Queue("two").add([Task(url=f"/{i}") for i in range(8)])
        assert q.run_until_idle(timeout=20) == 8
    assert peak == 2


# -- dedup and tombstones, across a reopen of the file --------------------------------------


def test_dedup_survives_reopen(
    make_queue: Callable[..., LocalTaskQueue], clock: ManualClock, tmp_path: Path
) -> None:
    """Live and finished names stay reserved after the queue file is reopened; tombstones expire."""
    db = tmp_path / "queue.sqlite3"
    first = make_queue(Recorder(), db=db, tombstone_seconds=3600)
    with taskqueue.use(first):
        taskqueue.add(url="/x", name="done-task")
        first.run_until_idle(timeout=10)
        taskqueue.add(url="/y", name="later-task", countdown=600, params={"n": "1"})
    first.close()

    second = make_queue(Recorder(), db=db, tombstone_seconds=3600)
    with taskqueue.use(second):
        with pytest.raises(taskqueue.TombstonedTaskError):
            taskqueue.add(url="/x", name="done-task")
        with pytest.raises(taskqueue.TaskAlreadyExistsError):
            taskqueue.add(url="/y", name="later-task")
        (kept,) = second.tasks()
        assert (kept.task_name, kept.payload, kept.url) == ("later-task", b"n=1", "/y")
        clock.advance(3601)
        taskqueue.add(url="/x", name="done-task")  # the tombstone has expired
        assert {t.task_name for t in second.tasks()} == {"done-task", "later-task"}


def test_deleted_task_is_not_delivered(make_queue: Callable[..., LocalTaskQueue]) -> None:
    """A task deleted before its ETA never reaches the app, and its name is tombstoned."""
    app = Recorder()
    q = make_queue(app)
    with taskqueue.use(q):
        taskqueue.add(url="/x", name="cancelled", countdown=60)
        taskqueue.add(url="/y", countdown=60)
        assert q.delete("default", "cancelled")
        assert not q.delete("default", "cancelled")
        q.run_until_idle(timeout=10)
    assert [r["path"] for r in app.requests] == ["/y"]
    assert q.counts()["default"]["deleted"] == 1


def test_run_now_skips_the_wait(make_queue: Callable[..., LocalTaskQueue]) -> None:
    """run_now() makes a pending task due at once."""
    app = Recorder()
    q = make_queue(app)
    with taskqueue.use(q):
        taskqueue.add(url="/x", name="soon", countdown=3600)
        assert q.run_due() == 0
        assert q.run_now("default", "soon")
        assert q.run_due() == 1


def test_paused_queue_is_not_dispatched(make_queue: Callable[..., LocalTaskQueue]) -> None:
    """A rate-0 queue keeps its tasks, and run_until_idle does not wait for them."""
    app = Recorder()
    q = make_queue(app, queues=[QueueConfig("held", rate=0)])
    with taskqueue.use(q):
        taskqueue.add(url="/x", queue_name="held")
        assert q.run_until_idle(timeout=5) == 0
    assert len(q.tasks("held")) == 1


def test_run_until_idle_times_out(make_queue: Callable[..., LocalTaskQueue]) -> None:
    """A task failing forever with no limits makes run_until_idle raise TimeoutError."""
    q = make_queue(Recorder(statuses=[500] * 100_000))
    with taskqueue.use(q):
        taskqueue.add(url="/x")
        with pytest.raises(TimeoutError):
            q.run_until_idle(timeout=0.3)


# -- ASGI and several targets ----------------------------------------------------------------


def _starlette_app(seen: list[dict[str, Any]], statuses: list[int]) -> Starlette:
    async def handle(req: Request) -> PlainTextResponse:
        seen.append(
            {
                "client": req.client.host if req.client else None,
                "headers": {k: v for k, v in req.headers.items() if k.startswith("x-appengine-")},
                "body": await req.body(),
                "query": req.url.query,
            }
        )
        return PlainTextResponse("ok", status_code=statuses.pop(0) if statuses else 200)

    return Starlette(routes=[Route("/a", handle, methods=["POST", "GET"])])


def test_asgi_app_is_dispatched_on_an_event_loop(make_queue: Callable[..., LocalTaskQueue]) -> None:
    """A Starlette app receives the task with peer 0.1.0.2, its body and headers; 500 is retried."""
    seen: list[dict[str, Any]] = []
    q = make_queue(_starlette_app(seen, [500]))
    with taskqueue.use(q):
        taskqueue.add(url="/a", payload=b"hello", name="asgi-1")
        assert q.run_until_idle(timeout=10) == 2
    assert [s["client"] for s in seen] == ["0.1.0.2", "0.1.0.2"]
    assert [s["body"] for s in seen] == [b"hello", b"hello"]
    assert seen[1]["headers"]["x-appengine-taskretrycount"] == "1"
    assert seen[1]["headers"]["x-appengine-taskpreviousresponse"] == "500"


def test_plain_asgi_function(make_queue: Callable[..., LocalTaskQueue]) -> None:
    """An `async def app(scope, receive, send)` is recognised as ASGI."""
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    q = make_queue(app)
    with taskqueue.use(q):
        taskqueue.add(url="/p%20q", method="GET", params={"a": "1"})
        q.run_until_idle(timeout=10)
    (scope,) = scopes
    assert (scope["path"], scope["query_string"], scope["client"]) == (
        "/p q",
        b"a=1",
        ("0.1.0.2", 0),
    )


def test_targets_route_by_service(make_queue: Callable[..., LocalTaskQueue]) -> None:
    """A task whose target names a service in `targets` goes to that app; others to the default."""
    default_app, worker_app = Recorder(), Recorder()
    q = make_queue(
        default_app,
        targets={"worker": worker_app},
        queues=[QueueConfig("to-worker", target="worker")],
    )
    with taskqueue.use(q):
        taskqueue.add(url="/plain")
        taskqueue.add(url="/by-task", target="worker")
        taskqueue.add(url="/by-queue", queue_name="to-worker", target="ignored")
        q.run_until_idle(timeout=10)
    assert [r["path"] for r in default_app.requests] == ["/plain"]
    assert sorted(r["path"] for r in worker_app.requests) == ["/by-queue", "/by-task"]


# -- the background dispatcher ---------------------------------------------------------------


def test_background_dispatcher(make_queue: Callable[..., LocalTaskQueue]) -> None:
    """start() delivers tasks added afterwards from other threads; stop() ends it."""
    delivered = threading.Event()
    app = Recorder()

    def wrapped(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        result = app(environ, start_response)
        if len(app.requests) == 3:
            delivered.set()
        return result

    q = make_queue(wrapped, clock=None)
    with taskqueue.use(q):
        q.start()
        assert q.running
        with pytest.raises(RuntimeError):
            q.run_until_idle()
        threads = [
            threading.Thread(target=taskqueue.add, kwargs={"url": f"/{i}"}) for i in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert delivered.wait(timeout=10)
        q.stop()
        assert not q.running
    assert sorted(r["path"] for r in app.requests) == ["/0", "/1", "/2"]
    assert q.tasks() == []


# -- construction and recovery ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"target": "ftp://example.com"}, id="non-HTTP URL"),
        pytest.param({"target": 42}, id="not an app"),
        pytest.param({"workers": 0}, id="no workers"),
        pytest.param({"db": "/nonexistent-dir/q.sqlite3"}, id="missing directory"),
        pytest.param({"dispatch_timeout": 0}, id="zero timeout"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any]) -> None:
    """Bad LocalTaskQueue arguments raise ConfigError at construction."""
    target = kwargs.pop("target", Recorder())
    with pytest.raises(ConfigError):
        LocalTaskQueue(target, **kwargs)


def test_foreign_file_is_refused(tmp_path: Path) -> None:
    """A SQLite file that is not a queue database raises ConfigError naming it."""
    db = tmp_path / "other.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    conn.close()
    with pytest.raises(ConfigError, match=r"other\.sqlite3"):
        LocalTaskQueue(Recorder(), db=db)


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    return int(proc.stdout)


@pytest.mark.parametrize(
    ("owner_pid", "expires_in", "released"),
    [
        pytest.param(lambda: os.getppid(), 3600.0, False, id="live process, lease valid: kept"),
        pytest.param(_dead_pid, 3600.0, True, id="dead process: released"),
        pytest.param(lambda: os.getppid(), -1.0, True, id="expired lease: released"),
    ],
)
def test_recovery_on_open(
    make_queue: Callable[..., LocalTaskQueue],
    tmp_path: Path,
    owner_pid: Callable[[], int],
    expires_in: float,
    released: bool,
) -> None:
    """Opening a file releases leases of dead processes and expired leases, nothing else."""
    db = tmp_path / "q.sqlite3"
    first = make_queue(Recorder(), db=db)
    with taskqueue.use(first):
        taskqueue.add(url="/x", name="in-flight")
    first.close()
    # Make the row look leased by another process, as a crash would leave it.
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE tasks SET state='leased', lease_id=?, lease_expires=?",
            (f"{process_host()}/{owner_pid()}/x/1", NOW + expires_in),
        )
    conn.close()
    app = Recorder()
    second = make_queue(app, db=db)
    (task,) = second.tasks()
    assert task.state == ("pending" if released else "leased")
    second.run_due(timeout=5)
    assert len(app.requests) == (1 if released else 0)
    if released:
        assert app.task_headers()[0]["X-Appengine-Taskretrycount"] == "1"
