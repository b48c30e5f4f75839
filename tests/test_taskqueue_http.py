"""LocalTaskQueue over HTTP to a gunicorn-served app on 127.0.0.1.

The WSGI app at the bottom of this module is what gunicorn serves; it appends one JSON line per
request to the file named by TASKQUEUE_TEST_LOG so the test can see what arrived.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhandler import taskqueue
from taskhandler.taskqueue import LocalTaskQueue, ManualClock, QueueConfig, RetryParameters, Task
from tests.servers import free_port, serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("http") / "requests.jsonl"
    extra = ["--worker-class", "gthread", "--threads", "8", "--keep-alive", "10"]
    with serve(
        "gunicorn",
        "tests.test_taskqueue_http:app",
        extra=extra,
        env={"TASKQUEUE_TEST_LOG": str(log)},
    ) as base_url:
        yield base_url, log


@pytest.fixture
def base_url(server: tuple[str, Path]) -> str:
    """The server's base URL, with its request log emptied for this test."""
    url, log = server
    log.write_text("")
    return url


def _requests(server: tuple[str, Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server[1].read_text().splitlines()]


FAST = [QueueConfig("default", rate=200, bucket_size=50)]


def test_http_delivers_method_body_and_headers(base_url: str, server: tuple[str, Path]) -> None:
    """POST params and a GET query reach the server with the queue's task headers."""
    with LocalTaskQueue(base_url, queues=FAST) as q, taskqueue.use(q):
        taskqueue.add(url="/ok", params={"a": "1"}, name="form-task")
        taskqueue.add(url="/ok?key=blue", method="GET", name="get-task")
        assert q.run_until_idle(timeout=20) == 2
    got = {r["headers"]["X-Appengine-Taskname"]: r for r in _requests(server)}
    assert (got["form-task"]["method"], got["form-task"]["body"]) == ("POST", "a=1")
    assert got["form-task"]["content_type"] == "application/x-www-form-urlencoded"
    assert (got["get-task"]["method"], got["get-task"]["query"]) == ("GET", "key=blue")
    for r in got.values():
        assert r["headers"]["X-Appengine-Queuename"] == "default"
        assert r["headers"]["X-Appengine-Taskretrycount"] == "0"


def test_http_keep_alive(base_url: str, server: tuple[str, Path]) -> None:
    """One delivery thread sends every task on one kept-alive connection."""
    with LocalTaskQueue(base_url, queues=FAST, workers=1) as q, taskqueue.use(q):
        taskqueue.Queue().add([Task(url="/ok") for _ in range(6)])
        q.run_until_idle(timeout=20)
    ports = {r["port"] for r in _requests(server)}
    assert len(_requests(server)) == 6
    assert len(ports) == 1


def test_http_retry_after_500(base_url: str, server: tuple[str, Path]) -> None:
    """A 500 from the server is retried, with the previous response in the headers."""
    with LocalTaskQueue(base_url, queues=FAST) as q, taskqueue.use(q):
        taskqueue.add(url="/fail-once", name="flaky")
        assert q.run_until_idle(timeout=20) == 2
    first, second = _requests(server)
    assert first["headers"]["X-Appengine-Taskretrycount"] == "0"
    assert second["headers"]["X-Appengine-Taskretrycount"] == "1"
    assert second["headers"]["X-Appengine-Taskpreviousresponse"] == "500"
    assert second["headers"]["X-Appengine-Taskretryreason"] == "HTTP 500"


def test_http_max_concurrent_requests(base_url: str, server: tuple[str, Path]) -> None:
    """No more than max_concurrent_requests requests of a queue are in flight at once."""
    queues = [QueueConfig("two", rate=500, bucket_size=100, max_concurrent_requests=2)]
    with LocalTaskQueue(base_url, queues=queues, workers=8) as q, taskqueue.use(q):
        taskqueue.Queue("two").add([Task(url="/concurrent") for _ in range(8)])
        assert q.run_until_idle(timeout=20) == 8
    assert max(r["active"] for r in _requests(server)) <= 2


def test_http_timeout_is_a_retry(base_url: str, server: tuple[str, Path]) -> None:
    """A response slower than dispatch_timeout fails the attempt as executed, reason timeout."""
    clock = ManualClock()
    with (
        LocalTaskQueue(base_url, queues=FAST, clock=clock, dispatch_timeout=0.3) as q,
        taskqueue.use(q),
    ):
        taskqueue.add(url="/slow", name="slow-task")
        assert q.run_due(timeout=20) == 1
        (task,) = q.tasks()
    assert (task.retry_count, task.execution_count, task.previous_response) == (1, 1, None)
    assert task.retry_reason == "timeout after 0.3s"


def test_http_refused_connection_is_a_retry() -> None:
    """A refused connection is retried, not counted as an execution."""
    clock = ManualClock()
    retry = RetryParameters(task_retry_limit=1)
    queues = [QueueConfig("default", rate=100, retry_parameters=retry)]
    target = f"http://127.0.0.1:{free_port()}"
    with LocalTaskQueue(target, queues=queues, clock=clock) as q, taskqueue.use(q):
        taskqueue.add(url="/x", name="nobody-home")
        assert q.run_due(timeout=20) == 1
        (task,) = q.tasks()
        assert (task.retry_count, task.execution_count, task.retry_reason) == (
            1,
            0,
            "connection refused",
        )
        assert q.run_until_idle(timeout=20) == 1
        assert q.counts()["default"]["failed"] == 1


# -- the app gunicorn serves -----------------------------------------------------------------

_lock = threading.Lock()
_active = 0


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Record the request, then answer as the path says (/ok, /fail-once, /slow, /concurrent)."""
    global _active
    path = environ["PATH_INFO"]
    headers = {
        key[5:].replace("_", "-").title(): value
        for key, value in environ.items()
        if key.startswith("HTTP_X_APPENGINE_")
    }
    body = environ["wsgi.input"].read()
    with _lock:
        _active += 1
        active = _active
    try:
        if path == "/slow":
            time.sleep(1.0)
        elif path == "/concurrent":
            time.sleep(0.05)
        record = {
            "path": path,
            "method": environ["REQUEST_METHOD"],
            "query": environ.get("QUERY_STRING", ""),
            "body": body.decode("latin-1"),
            "content_type": environ.get("CONTENT_TYPE"),
            "port": environ.get("REMOTE_PORT"),
            "headers": headers,
            "active": active,
        }
        with _lock, open(os.environ["TASKQUEUE_TEST_LOG"], "a") as log:
            log.write(json.dumps(record) + "\n")
    finally:
        with _lock:
            _active -= 1
    failing = path == "/fail-once" and headers.get("X-Appengine-Taskretrycount") == "0"
    start_response("500 Error" if failing else "200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
