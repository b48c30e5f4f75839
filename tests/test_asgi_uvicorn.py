"""End to end under uvicorn on 127.0.0.1: real HTTP, both of uvicorn's HTTP parsers (h11 and
httptools), headers written byte for byte on a raw socket (underscore spellings, repeated
lines) so that no client library tidies them up first.

This module is also the app uvicorn serves (``tests.test_asgi_uvicorn:app`` and ``:queue_app``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskhandler import task_handler
from taskhandler.asgi import TaskMiddleware
from taskhandler.config import AccessRule, AppConfig
from taskhandler.context import TaskContext, current_task
from taskhandler.deadline import DeadlineExceededError
from taskhandler.trust import TrustPolicy

from .servers import raw_request, serve, status_of


class Counter(BaseModel):
    amount: int


@task_handler(payload=Counter)
async def count(task: TaskContext, payload: Counter) -> dict[str, Any]:
    """Echo the task and payload, read back through current_task() after an await."""
    await asyncio.sleep(0)
    current = current_task()
    return {
        "task_name": task.task_name,
        "retry_count": task.retry_count,
        "current": None if current is None else current.task_name,
        "amount": payload.amount,
    }


@task_handler
async def slow(task: TaskContext) -> str:
    """Wait for longer than the deadline; save and say so when told to stop."""
    try:
        await asyncio.sleep(30)
    except DeadlineExceededError:
        return "saved"
    return "finished"


async def echo(request: Request) -> Response:
    """The headers as the app received them, every copy and spelling."""
    return JSONResponse(
        {
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in request.scope["headers"]
            ],
            "stripped": request.scope.get("taskhandler.stripped"),
            "task": None if current_task() is None else current_task().task_name,  # type: ignore[union-attr]
        }
    )


ROUTES = [
    Route("/tasks/count", count, methods=["POST"]),
    Route("/tasks/slow", slow, methods=["POST"]),
    Route("/echo", echo, methods=["GET", "POST"]),
    Route("/admin/echo", echo),
]
CONFIG = AppConfig(rules=(AccessRule(url=r"/admin/.*", login="admin"),))

# A stranger's view: 127.0.0.1 is not the queue.
app = TaskMiddleware(Starlette(routes=ROUTES), config=CONFIG)
# The queue's view: requests from 127.0.0.1 are the queue (a local queue on this machine).
queue_app = TaskMiddleware(
    Starlette(routes=ROUTES),
    trust=TrustPolicy(queue_sources=["127.0.0.1"]),
    config=CONFIG,
    deadline=0.4,
    grace=0.3,
)

# A task handler with no framework around it.
handler_app = TaskMiddleware(count)

PARSERS = ["h11", "httptools"]


@pytest.fixture(scope="module", params=PARSERS)
def servers(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """uvicorn serving the stranger's app and the queue's app with one HTTP parser."""
    extra = ["--http", request.param, "--no-access-log"]
    with (
        serve("uvicorn", "tests.test_asgi_uvicorn:app", extra=extra) as stranger,
        serve("uvicorn", "tests.test_asgi_uvicorn:queue_app", extra=extra) as queue,
    ):
        yield {"stranger": stranger, "queue": queue}


def raw(
    base_url: str, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {base_url.removeprefix('http://')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return raw_request(base_url, "\r\n".join(lines).encode("latin-1") + body)


def body_of(response: bytes) -> Any:
    head, _, body = response.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return json.loads(body)


TASK = [("X-AppEngine-QueueName", "default"), ("X-AppEngine-TaskName", "task-1")]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("headers", "stripped"),
    [
        pytest.param(TASK, ["x-appengine-queuename", "x-appengine-taskname"], id="dash spelling"),
        pytest.param(
            [("X_AppEngine_QueueName", "default"), ("x_appengine_taskname", "t")],
            ["x-appengine-queuename", "x-appengine-taskname"],
            id="underscore spelling",
        ),
        pytest.param(
            [*TASK, ("X-AppEngine-TaskName", "task-2"), ("X_APPENGINE_TASKNAME", "task-3")],
            ["x-appengine-queuename", "x-appengine-taskname"],
            id="three copies, two spellings",
        ),
        pytest.param(
            [("X-CloudTasks-TaskRetryCount", "9"), ("X-AppEngine-User-Is-Admin", "1")],
            ["x-cloudtasks-taskretrycount", "x-appengine-user-is-admin"],
            id="cloud tasks and admin claim",
        ),
    ],
)
def test_stranger_loses_every_spelling_and_copy(
    servers: dict[str, str], headers: list[tuple[str, str]], stripped: list[str]
) -> None:
    """Over real HTTP, every copy and spelling of a task header from a stranger is removed."""
    response = raw(servers["stranger"], "GET", "/echo", [*headers, ("X-Other", "kept")])
    assert status_of(response) == 200
    seen = body_of(response)
    names = [name.replace("_", "-").lower() for name, _ in seen["headers"]]
    assert not [n for n in names if n.startswith(("x-appengine-", "x-cloudtasks-"))]
    assert ["x-other", "kept"] in seen["headers"]
    assert seen["stripped"] == stripped
    assert seen["task"] is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([*TASK, ("X-AppEngine-TaskName", "task-2")], id="repeated line"),
        pytest.param([*TASK, ("x_appengine_taskname", "task-1")], id="underscore copy"),
        pytest.param([*TASK, ("X-AppEngine-TaskRetryCount", "1e3")], id="bad count"),
    ],
)
def test_queue_with_ambiguous_headers_gets_400(
    servers: dict[str, str], headers: list[tuple[str, str]]
) -> None:
    """Over real HTTP, a trusted request whose task headers are ambiguous is refused."""
    response = raw(servers["queue"], "POST", "/tasks/count", headers, b'{"amount": 1}')
    assert status_of(response) == 400
    assert b"x-task-outcome: rejected" in response.lower()


@pytest.mark.slow
def test_queue_runs_typed_async_handler(servers: dict[str, str]) -> None:
    """The queue's request runs the handler with its context and typed payload."""
    response = httpx.post(
        servers["queue"] + "/tasks/count",
        headers=[*TASK, ("X-AppEngine-TaskRetryCount", "2")],
        json={"amount": 5},
        timeout=10,
    )
    assert (response.status_code, response.headers["x-task-outcome"]) == (200, "success")
    assert response.json() == {
        "task_name": "task-1",
        "retry_count": 2,
        "current": "task-1",
        "amount": 5,
    }


@pytest.mark.slow
def test_stranger_is_refused_by_the_handler_and_the_rules(servers: dict[str, str]) -> None:
    """A stranger gets 403 from the task handler and a sign-in redirect from login: admin."""
    task = httpx.post(servers["stranger"] + "/tasks/count", headers=TASK, json={"amount": 1})
    admin = httpx.get(servers["stranger"] + "/admin/echo", follow_redirects=False)
    assert (task.status_code, task.headers["x-task-outcome"]) == (403, "rejected")
    assert admin.status_code == 302
    assert admin.headers["location"].startswith("/_ah/login?continue=")


@pytest.mark.slow
def test_deadline_reaches_the_handler_under_uvicorn(servers: dict[str, str]) -> None:
    """Under a real server, DeadlineExceededError arrives at the handler's await in time."""
    response = httpx.post(servers["queue"] + "/tasks/slow", headers=TASK, timeout=10)
    assert (response.status_code, response.text) == (200, "saved")


@pytest.mark.slow
def test_handler_without_a_framework_under_uvicorn() -> None:
    """A task handler served with only the middleware in front refuses strangers."""
    with serve("uvicorn", "tests.test_asgi_uvicorn:handler_app") as base:
        response = httpx.post(base + "/", headers=TASK, json={"amount": 1}, timeout=10)
    assert (response.status_code, response.headers["x-task-outcome"]) == (403, "rejected")
