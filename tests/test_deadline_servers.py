"""Deadlines end to end: real HTTP to gunicorn (gthread and sync workers) and uvicorn.

The task deadline is 0.3 s with a 0.15 s grace, so the error comes 0.15 s into a request.
This module is also what the servers serve (``tests.test_deadline_servers:wsgi_app`` and
``:asgi_app``): the real ``TaskMiddleware`` of each kind around a small app.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest

from taskhandler import asgi, wsgi
from taskhandler._watchdog import INTERRUPTS_SUPPORTED
from taskhandler.context import current_task
from taskhandler.exceptions import DeadlineExceededError
from taskhandler.trust import TrustPolicy

from .servers import serve

pytestmark = pytest.mark.slow

DEADLINE, GRACE = 0.3, 0.15
LIMIT = 5.0  # no handler runs longer than this, whatever happens
TRUST = TrustPolicy(queue_sources=["127.0.0.1"])


def _work() -> int:
    return sum(i * i for i in range(200))


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _work()


# -- the WSGI app -----------------------------------------------------------------------------


def _sync_handler(path: str) -> bytes:
    if path == "/tasks/loop":  # CPU-bound, never checks the time: interrupted
        _spin(LIMIT)
        return b"finished"
    if path == "/tasks/save":  # catches the error, saves, returns within the grace
        try:
            _spin(LIMIT)
        except DeadlineExceededError:
            return b"saved"
        return b"finished"
    if path == "/tasks/swallow":  # bare except swallowing everything, returns too late
        end = time.monotonic() + DEADLINE + 0.1
        swallowed = 0
        while time.monotonic() < end:
            try:
                _work()
            except:  # noqa: E722 - the behaviour under test
                swallowed += 1
        return f"finished, swallowed {swallowed}".encode()
    if path == "/tasks/sleep":  # blocked in a C call
        time.sleep(LIMIT)
        return b"finished"
    if path == "/tasks/short-sleep":  # blocked in a C call until after the deadline
        time.sleep(DEADLINE + 0.05)
        return b"finished"
    if path == "/tasks/remaining":
        task = current_task()
        return str(None if task is None else task.time_remaining()).encode()
    return b"fast"


def _inner_wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = _sync_handler(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


wsgi_app = wsgi.TaskMiddleware(_inner_wsgi, trust=TRUST, deadline=DEADLINE, grace=GRACE)


# -- the ASGI app -----------------------------------------------------------------------------


async def _async_handler(path: str) -> bytes:
    if path == "/tasks/loop":  # suspended at an await when the deadline comes
        end = time.monotonic() + LIMIT
        while time.monotonic() < end:
            await asyncio.sleep(0.01)
        return b"finished"
    if path == "/tasks/save":
        try:
            await asyncio.sleep(LIMIT)
        except DeadlineExceededError:
            await asyncio.sleep(0.01)  # save, with awaits
            return b"saved"
        return b"finished"
    if path == "/tasks/block":  # holds the event loop past the deadline, returns
        time.sleep(DEADLINE + 0.05)
        return b"finished"
    if path == "/tasks/remaining":
        task = current_task()
        return str(None if task is None else task.time_remaining()).encode()
    return b"fast"


async def _inner_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = await _async_handler(scope["path"])
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


asgi_app = asgi.TaskMiddleware(_inner_asgi, trust=TRUST, deadline=DEADLINE, grace=GRACE)


# -- the tests --------------------------------------------------------------------------------


def _task(client: httpx.Client, path: str, n: int = 0) -> httpx.Response:
    headers = {"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": f"task-{n}"}
    return client.post(path, headers=headers)


SERVERS = {
    "gunicorn gthread": (
        "gunicorn",
        "tests.test_deadline_servers:wsgi_app",
        "--worker-class",
        "gthread",
        "--threads",
        "4",
    ),
    "gunicorn sync": ("gunicorn", "tests.test_deadline_servers:wsgi_app", "--worker-class", "sync"),
    "uvicorn": ("uvicorn", "tests.test_deadline_servers:asgi_app", "--lifespan", "off"),
}


@pytest.fixture(scope="module")
def base_url() -> Iterator[Callable[[str], str]]:
    """The URL of a named server, started on first use and stopped with the module."""
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}

        def url(name: str) -> str:
            if name not in urls:
                kind, target, *extra = SERVERS[name]
                urls[name] = stack.enter_context(serve(kind, target, extra=extra))
            return urls[name]

        yield url


GTHREAD, SYNC, UVICORN = "gunicorn gthread", "gunicorn sync", "uvicorn"
# Sync handlers are interrupted only where the interpreter allows it (see deadline.py).
SYNC_MARKS = pytest.mark.skipif(
    not INTERRUPTS_SUPPORTED,
    reason="this CPython lets asynchronous exceptions skip except blocks (cpython#139622)",
)
EXCEEDED = (500, "deadline-exceeded", None)


@pytest.mark.parametrize(
    ("name", "path", "expected"),
    [
        pytest.param(
            GTHREAD, "/tasks/loop", EXCEEDED, marks=SYNC_MARKS, id="gthread: CPU loop interrupted"
        ),
        pytest.param(
            GTHREAD,
            "/tasks/save",
            (200, "success", b"saved"),
            marks=SYNC_MARKS,
            id="gthread: saves",
        ),
        pytest.param(
            GTHREAD, "/tasks/swallow", EXCEEDED, marks=SYNC_MARKS, id="gthread: bare except overran"
        ),
        pytest.param(
            GTHREAD, "/tasks/short-sleep", EXCEEDED, id="gthread: sleep, error when it returns"
        ),
        pytest.param(
            SYNC, "/tasks/loop", EXCEEDED, marks=SYNC_MARKS, id="sync: CPU loop interrupted"
        ),
        pytest.param(
            SYNC, "/tasks/save", (200, "success", b"saved"), marks=SYNC_MARKS, id="sync: saves"
        ),
        pytest.param(
            SYNC, "/tasks/swallow", EXCEEDED, marks=SYNC_MARKS, id="sync: bare except overran"
        ),
        pytest.param(
            SYNC,
            "/tasks/sleep",
            EXCEEDED,
            marks=SYNC_MARKS,
            id="sync: main-thread sleep interrupted",
        ),
        pytest.param(UVICORN, "/tasks/loop", EXCEEDED, id="uvicorn: interrupted at its await"),
        pytest.param(UVICORN, "/tasks/save", (200, "success", b"saved"), id="uvicorn: saves"),
        pytest.param(UVICORN, "/tasks/block", EXCEEDED, id="uvicorn: blocked loop detected"),
    ],
)
def test_deadline_over_real_http(
    base_url: Callable[[str], str], name: str, path: str, expected: tuple[int, str, bytes | None]
):
    """Each handler kind ends with the status and outcome SPEC §5-6 give it."""
    status, outcome, body = expected
    with httpx.Client(base_url=base_url(name), timeout=LIMIT - 1) as client:
        response = _task(client, path)
    assert (response.status_code, response.headers["X-Task-Outcome"]) == (status, outcome)
    if body is not None:
        assert response.content == body


SERVER_NAMES = [
    pytest.param(name, id=name, marks=() if name == UVICORN else SYNC_MARKS) for name in SERVERS
]


@pytest.mark.parametrize("name", SERVER_NAMES)
def test_no_error_reaches_the_requests_that_follow(base_url: Callable[[str], str], name: str):
    """After deadlines fired on every worker thread, fast requests on them all succeed."""
    with httpx.Client(base_url=base_url(name), timeout=LIMIT - 1) as client:

        def one(n: int) -> tuple[int, str]:
            path = "/tasks/loop" if n < 4 else "/tasks/fast"
            response = _task(client, path, n)
            return response.status_code, response.headers["X-Task-Outcome"]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            first = list(pool.map(one, range(4)))  # one deadline per worker thread
            after = list(pool.map(one, range(4, 44)))
    assert first == [(500, "deadline-exceeded")] * 4
    assert after == [(200, "success")] * 40


@pytest.mark.parametrize("name", SERVER_NAMES)
def test_time_remaining_is_seen_by_the_handler(base_url: Callable[[str], str], name: str):
    """TaskContext.time_remaining() in a handler counts down to the soft deadline."""
    with httpx.Client(base_url=base_url(name), timeout=LIMIT - 1) as client:
        response = _task(client, "/tasks/remaining")
    assert response.status_code == 200
    assert 0 < float(response.text) <= DEADLINE - GRACE
