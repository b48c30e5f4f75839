"""``@task_handler`` in its three WSGI styles: a plain WSGI app, a Flask view, a webapp2-style method.

Every style serves the same handler body, so one table of SPEC §6 rows runs against all three
(behind ``TaskMiddleware`` and, for the access rows, without it). Requests are webob requests
given straight to the WSGI app, with the peer address set as a server would set it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask import Response as FlaskResponse
from pydantic import BaseModel, Field

from taskhandler import task_handler
from taskhandler.context import TaskContext
from taskhandler.deadline import DeadlineExceededError
from taskhandler.exceptions import PermanentTaskFailure, RetryTask
from taskhandler.trust import RequestInfo, User
from taskhandler.webapp import Request, RequestHandler, WSGIApplication
from taskhandler.wsgi import TaskMiddleware

QUEUE_PEER = "0.1.0.2"
STRANGER = "203.0.113.7"
STYLES = ["wsgi", "flask", "webapp2"]
SECRET = "secret-detail-from-the-handler"


class Params(BaseModel):
    """What every test handler reads: which behaviour to show, and a number."""

    kind: str = "none"
    amount: int = Field(default=1, ge=0)


def header_user(info: RequestInfo) -> User | None:
    """Stand-in for a sign-in system: the ``X-Test-User`` header names the user."""
    who = info.header("x-test-user")
    if who is None:
        return None
    return User(f"{who}@example.com", is_admin=who == "admin")


def body(task: TaskContext, payload: Params, own_status: Callable[[int], Any]) -> Any:
    """The handler body shared by every style; ``payload.kind`` picks the behaviour."""
    kind = payload.kind
    if kind == "none":
        return None
    if kind == "text":
        return f"counted {payload.amount}"
    if kind == "json":
        return {"amount": payload.amount}
    if kind == "context":
        return {
            "queue_name": task.queue_name,
            "task_name": task.task_name,
            "retry_count": task.retry_count,
            "trusted_by": task.trusted_by,
        }
    if kind.startswith("status-"):
        return own_status(int(kind.removeprefix("status-")))
    if kind == "retry":
        raise RetryTask("not yet")
    if kind == "retry-503":
        raise RetryTask("overloaded", status=503)
    if kind == "permanent":
        raise PermanentTaskFailure("cannot ever work")
    if kind == "permanent-hook-fails":
        raise PermanentTaskFailure("make the hook fail")
    if kind == "deadline":
        raise DeadlineExceededError()
    if kind == "overrun":
        end = time.monotonic() + 0.12
        while time.monotonic() < end:  # a handler that ignores the deadline and runs on
            with contextlib.suppress(DeadlineExceededError):
                time.sleep(0.01)
        return None
    if kind == "crash":
        raise ValueError(SECRET)
    raise AssertionError(f"unknown kind {kind}")


class Built:
    """A style's app and what its hooks saw."""

    def __init__(self) -> None:
        self.app: Any = None
        self.hooks: list[tuple[str, str, str]] = []


def build(style: str, *, middleware: bool = True, deadline: float | None = None) -> Built:
    """The shared handler in ``style``, behind ``TaskMiddleware`` unless ``middleware=False``."""
    built = Built()

    def on_give_up(task: TaskContext, exc: BaseException) -> None:
        built.hooks.append(("give-up", task.task_name, type(exc).__name__))

    def on_permanent_failure(task: TaskContext, exc: BaseException) -> None:
        built.hooks.append(("permanent", task.task_name, str(exc)))
        if str(exc) == "make the hook fail":
            raise RuntimeError("the dead-letter store is down")

    options: dict[str, Any] = {
        "payload": Params,
        "max_attempts": 3,
        "on_give_up": on_give_up,
        "on_permanent_failure": on_permanent_failure,
    }
    if not middleware:
        options["authenticator"] = header_user
        if deadline is not None:
            options["deadline"] = deadline
    app: Any
    if style == "wsgi":

        @task_handler(**options)
        def handle(task: TaskContext, payload: Params) -> Any:
            return body(task, payload, lambda code: ("own status", code))

        app = handle
    elif style == "flask":
        flask_app = Flask(__name__)

        @task_handler(**options)
        def handle_flask(task: TaskContext, payload: Params) -> Any:
            return body(task, payload, lambda code: FlaskResponse("own status", status=code))

        flask_app.add_url_rule("/task", view_func=handle_flask, methods=["GET", "POST"])
        app = flask_app
    else:

        class TaskHandlerClass(RequestHandler):
            @task_handler(**options)
            def post(self, task: TaskContext, payload: Params) -> Any:
                def own_status(code: int) -> None:
                    self.response.set_status(code)
                    self.response.write("own status")

                return body(task, payload, own_status)

            get = post

        app = WSGIApplication([("/task", TaskHandlerClass)])
    if middleware:
        wrapped = TaskMiddleware(
            app.wsgi_app if isinstance(app, Flask) else app,
            authenticator=header_user,
            deadline=deadline,
        )
        if isinstance(app, Flask):
            app.wsgi_app = wrapped  # type: ignore[method-assign]
        else:
            app = wrapped
    built.app = app
    return built


def deliver(
    app: Any,
    payload: dict[str, Any] | None = None,
    *,
    peer: str = QUEUE_PEER,
    task: bool = True,
    task_name: str = "task-1",
    retry_count: int = 0,
    send_as: str = "json",
    user: str | None = None,
) -> Any:
    """Send one request to ``app`` the way the queue (or a stranger) would."""
    headers: dict[str, str] = {}
    if task:
        headers.update(
            {
                "X-AppEngine-QueueName": "default",
                "X-AppEngine-TaskName": task_name,
                "X-AppEngine-TaskRetryCount": str(retry_count),
                "X-AppEngine-TaskExecutionCount": str(retry_count),
            }
        )
    if user is not None:
        headers["X-Test-User"] = user
    data = {"kind": "none"} if payload is None else payload
    if send_as == "json":
        request = Request.blank(
            "/task",
            method="POST",
            headers=headers,
            remote_addr=peer,
            body=json.dumps(data).encode(),
            content_type="application/json",
        )
    elif send_as == "form":
        request = Request.blank(
            "/task",
            headers=headers,
            remote_addr=peer,
            POST={k: str(v) for k, v in data.items()},
        )
    else:
        request = Request.blank("/task", headers=headers, remote_addr=peer, query_string="")
        request.GET.update({k: str(v) for k, v in data.items()})
        request.method = "GET"
    return request.get_response(app)


@pytest.fixture(params=STYLES)
def style(request: pytest.FixtureRequest) -> str:
    """Each WSGI style of ``@task_handler``."""
    return str(request.param)


OUTCOME_ROWS = [
    pytest.param({"kind": "none"}, 0, 200, "success", [], id="returns None"),
    pytest.param({"kind": "text", "amount": 4}, 0, 200, "success", [], id="returns a str body"),
    pytest.param({"kind": "json", "amount": 4}, 0, 200, "success", [], id="returns a dict"),
    pytest.param({"kind": "status-202"}, 0, 202, "success", [], id="returns its own 2xx"),
    pytest.param({"kind": "status-503"}, 0, 503, "retry", [], id="returns its own 503"),
    pytest.param({"kind": "status-404"}, 2, 404, "retry", [], id="own 404 is not given up"),
    pytest.param({"kind": "retry"}, 0, 500, "retry", [], id="raises RetryTask"),
    pytest.param({"kind": "retry-503"}, 0, 503, "retry", [], id="raises RetryTask status 503"),
    pytest.param(
        {"kind": "permanent"},
        0,
        200,
        "permanent-failure",
        [("permanent", "task-1", "cannot ever work")],
        id="raises PermanentTaskFailure",
    ),
    pytest.param(
        {"kind": "json", "amount": "lots"},
        0,
        200,
        "permanent-failure",
        [("permanent", "task-1", "invalid payload: amount: Input should be a valid integer")],
        id="payload fails validation",
    ),
    pytest.param(
        {"kind": "json", "amount": -1},
        0,
        200,
        "permanent-failure",
        [("permanent", "task-1", "invalid payload: amount: Input should be greater")],
        id="payload out of range",
    ),
    pytest.param({"kind": "deadline"}, 0, 500, "deadline-exceeded", [], id="raises deadline"),
    pytest.param({"kind": "crash"}, 0, 500, "retry", [], id="raises anything else"),
    pytest.param({"kind": "crash"}, 1, 500, "retry", [], id="fails before its last attempt"),
    pytest.param(
        {"kind": "crash"},
        2,
        200,
        "given-up",
        [("give-up", "task-1", "ValueError")],
        id="fails on its last attempt",
    ),
    pytest.param(
        {"kind": "retry"},
        2,
        200,
        "given-up",
        [("give-up", "task-1", "RetryTask")],
        id="RetryTask on its last attempt",
    ),
    pytest.param(
        {"kind": "permanent-hook-fails"},
        0,
        500,
        "retry",
        [("permanent", "task-1", "make the hook fail")],
        id="failing hook makes it retry",
    ),
]


@pytest.mark.parametrize(("payload", "retry_count", "status", "outcome", "hooks"), OUTCOME_ROWS)
def test_outcome_table(
    style: str,
    payload: dict[str, Any],
    retry_count: int,
    status: int,
    outcome: str,
    hooks: list[tuple[str, str, str]],
) -> None:
    """Each SPEC §6 row gives the same status, outcome and hook calls in every style."""
    built = build(style)
    response = deliver(built.app, payload, retry_count=retry_count)
    assert (response.status_int, response.headers["X-Task-Outcome"]) == (status, outcome)
    assert len(built.hooks) == len(hooks)
    for seen, expected in zip(built.hooks, hooks, strict=True):
        assert seen[:2] == expected[:2]
        assert seen[2].startswith(expected[2])  # pydantic may add detail after the prefix
    assert b"Traceback" not in response.body
    assert SECRET.encode() not in response.body


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param({"kind": "text", "amount": 4}, b"counted 4", id="str body"),
        pytest.param({"kind": "json", "amount": 4}, {"amount": 4}, id="dict as JSON"),
        pytest.param({"kind": "status-202"}, b"own status", id="own response body"),
    ],
)
def test_success_bodies(style: str, payload: dict[str, Any], expected: Any) -> None:
    """What the handler returned is the body, in every style."""
    response = deliver(build(style).app, payload)
    assert response.json == expected if isinstance(expected, dict) else response.body == expected


def test_overrun_is_deadline_exceeded(style: str) -> None:
    """A handler that swallows the deadline error and runs past the deadline gets 500."""
    built = build(style, deadline=0.05)
    response = deliver(built.app, {"kind": "overrun"})
    assert (response.status_int, response.headers["X-Task-Outcome"]) == (500, "deadline-exceeded")


@pytest.mark.parametrize("send_as", ["json", "form", "query"])
def test_payload_sources(style: str, send_as: str) -> None:
    """The payload model is filled from a JSON body, a form body or the query string."""
    response = deliver(build(style).app, {"kind": "json", "amount": 7}, send_as=send_as)
    assert (response.status_int, response.json) == (200, {"amount": 7})


REFUSED_ROWS = [
    pytest.param({"peer": STRANGER, "task": False}, id="stranger without task headers"),
    pytest.param({"peer": STRANGER, "task": True}, id="stranger with task headers"),
    pytest.param({"peer": "127.0.0.1", "task": True}, id="localhost with task headers"),
    pytest.param({"peer": QUEUE_PEER, "task": False}, id="queue address without headers"),
    pytest.param({"peer": STRANGER, "task": True, "user": "bob"}, id="signed-in non-admin"),
    pytest.param({"peer": STRANGER, "task": False, "user": "bob"}, id="non-admin no headers"),
]


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "standalone"])
@pytest.mark.parametrize("request_kwargs", REFUSED_ROWS)
def test_non_task_requests_are_rejected(
    style: str, middleware: bool, request_kwargs: dict[str, Any]
) -> None:
    """A request that is not a trusted task gets 403 ``rejected`` and the handler never runs."""
    built = build(style, middleware=middleware)
    response = deliver(built.app, {"kind": "permanent"}, **request_kwargs)
    assert (response.status_int, response.headers["X-Task-Outcome"]) == (403, "rejected")
    assert built.hooks == []


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "standalone"])
def test_queue_task_runs_without_middleware_too(style: str, middleware: bool) -> None:
    """A task from the queue's address runs with its own context, with or without middleware."""
    response = deliver(build(style, middleware=middleware).app, {"kind": "context"}, retry_count=1)
    assert response.json == {
        "queue_name": "default",
        "task_name": "task-1",
        "retry_count": 1,
        "trusted_by": "queue",
    }


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "standalone"])
def test_admin_without_headers_gets_synthetic_context(style: str, middleware: bool) -> None:
    """An admin opening the URL runs the handler as queue ``default``, a generated name, admin."""
    response = deliver(
        build(style, middleware=middleware).app,
        {"kind": "context"},
        peer=STRANGER,
        task=False,
        user="admin",
    )
    assert response.status_int == 200
    data = response.json
    assert data["task_name"].startswith("manual-")
    assert (data["queue_name"], data["retry_count"], data["trusted_by"]) == ("default", 0, "admin")


def test_admin_may_send_task_headers(style: str) -> None:
    """An admin's own task headers are believed, with ``trusted_by="admin"``."""
    response = deliver(
        build(style).app,
        {"kind": "context"},
        peer=STRANGER,
        task_name="by-hand",
        retry_count=2,
        user="admin",
    )
    assert response.json == {
        "queue_name": "default",
        "task_name": "by-hand",
        "retry_count": 2,
        "trusted_by": "admin",
    }


def test_each_admin_run_gets_a_new_task_name(style: str) -> None:
    """Two admin runs are two different synthetic tasks."""
    app = build(style).app
    names = {
        deliver(app, {"kind": "context"}, peer=STRANGER, task=False, user="admin").json["task_name"]
        for _ in range(2)
    }
    assert len(names) == 2
