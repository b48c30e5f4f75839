"""Outcomes, proven on both middlewares and both kinds of ``@task_handler`` (SPEC §5-7):
what the app or handler did becomes the status the queue sees and one log record."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from taskhandler.context import TaskContext, current_task
from taskhandler.deadline import DeadlineExceededError
from taskhandler.exceptions import PermanentTaskFailure, RetryTask
from taskhandler.trust import TrustPolicy

from .harness import Adapter, Behaviour, Request
from .test_trust_strip import QUEUE, STRANGER, TASK, HeaderUser


def _raise(exc: BaseException) -> Callable[[], BaseException]:
    return lambda: exc


@pytest.mark.parametrize(
    ("behaviour", "status", "outcome"),
    [
        pytest.param(Behaviour(200), 200, "success", id="200 success"),
        pytest.param(Behaviour(204, body=b""), 204, "success", id="204 success"),
        pytest.param(Behaviour(302), 302, "retry", id="redirect is a retry"),
        pytest.param(Behaviour(404), 404, "retry", id="404 retry"),
        pytest.param(Behaviour(503), 503, "retry", id="503 retry"),
        pytest.param(
            Behaviour(200, outcome="permanent-failure"), 200, "permanent-failure", id="own outcome"
        ),
        pytest.param(Behaviour(raises=_raise(ValueError("x"))), 500, "retry", id="exception"),
        pytest.param(
            Behaviour(raises=_raise(RetryTask("busy", status=503))),
            503,
            "retry",
            id="RetryTask 503",
        ),
        pytest.param(
            Behaviour(raises=_raise(PermanentTaskFailure("bad"))),
            200,
            "permanent-failure",
            id="PermanentTaskFailure",
        ),
        pytest.param(
            Behaviour(raises=_raise(DeadlineExceededError())),
            500,
            "deadline-exceeded",
            id="DeadlineExceededError",
        ),
        pytest.param(Behaviour(sleep=0.06), 500, "deadline-exceeded", id="overrun"),
    ],
)
def test_outcomes_of_a_plain_app(
    adapter: Adapter,
    behaviour: Behaviour,
    status: int,
    outcome: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The app's status or exception becomes the queue's status, X-Task-Outcome and one record."""
    caplog.set_level(logging.INFO, "taskhandler")
    result = adapter.run(Request(headers=TASK, peer=QUEUE), behaviour, deadline=0.05, grace=0.02)
    assert (result.status, result.outcome) == (status, outcome)
    assert b"Traceback" not in result.body
    records = [r for r in caplog.records if hasattr(r, "taskhandler")]
    assert len(records) == 1
    fields = records[0].taskhandler
    assert (fields["task_name"], fields["status"], fields["outcome"]) == ("task-1", status, outcome)


def test_non_task_requests_get_no_outcome_and_no_record(
    adapter: Adapter, caplog: pytest.LogCaptureFixture
) -> None:
    """An ordinary request is passed through: no X-Task-Outcome, no task log record."""
    caplog.set_level(logging.INFO, "taskhandler")
    result = adapter.run(Request(headers=TASK, peer=STRANGER), Behaviour(404))
    assert (result.status, result.outcome) == (404, None)
    assert not [r for r in caplog.records if hasattr(r, "taskhandler")]


def test_current_task_is_gone_after_the_request(adapter: Adapter) -> None:
    """The current task is published only while the app runs."""
    result = adapter.run(Request(headers=TASK, peer=QUEUE))
    assert result.seen is not None
    assert result.seen.task is not None
    assert current_task() is None


# -- @task_handler -------------------------------------------------------------------------


class Counter(BaseModel):
    amount: int
    note: str = ""


def echo(task: TaskContext, payload: Counter | None = None) -> Any:
    """What the handler saw, as JSON."""
    current = current_task()
    return {
        "queue_name": task.queue_name,
        "task_name": task.task_name,
        "trusted_by": task.trusted_by,
        "current": None if current is None else current.task_name,
        "payload": None if payload is None else payload.model_dump(),
    }


def returns(value: Any) -> Callable[..., Any]:
    def handler(task: TaskContext, payload: Any = None) -> Any:
        return value

    return handler


def raises(exc: BaseException) -> Callable[..., Any]:
    def handler(task: TaskContext, payload: Any = None) -> Any:
        raise exc

    return handler


JSON = [("Content-Type", "application/json")]
FORM = [("Content-Type", "application/x-www-form-urlencoded")]


@pytest.mark.parametrize(
    ("func", "options", "request_", "status", "outcome", "body"),
    [
        pytest.param(returns(None), {}, Request(), 200, "success", b"", id="returns None"),
        pytest.param(returns("done"), {}, Request(), 200, "success", b"done", id="returns str"),
        pytest.param(returns(b"\x00"), {}, Request(), 200, "success", b"\x00", id="returns bytes"),
        pytest.param(
            returns({"a": 1}), {}, Request(), 200, "success", b'{"a": 1}', id="returns dict"
        ),
        pytest.param(returns(("later", 503)), {}, Request(), 503, "retry", b"later", id="own 503"),
        pytest.param(returns(202), {}, Request(), 202, "success", b"", id="returns status"),
        pytest.param(
            raises(RetryTask("busy")), {}, Request(), 500, "retry", b"retry\n", id="RetryTask"
        ),
        pytest.param(
            raises(RetryTask("slow down", status=429)),
            {},
            Request(),
            429,
            "retry",
            b"retry\n",
            id="RetryTask 429",
        ),
        pytest.param(
            raises(PermanentTaskFailure("no")),
            {},
            Request(),
            200,
            "permanent-failure",
            b"permanent-failure\n",
            id="PermanentTaskFailure",
        ),
        pytest.param(
            raises(KeyError("secret")), {}, Request(), 500, "retry", b"retry\n", id="exception"
        ),
        pytest.param(
            raises(DeadlineExceededError()),
            {},
            Request(),
            500,
            "deadline-exceeded",
            b"deadline-exceeded\n",
            id="DeadlineExceededError",
        ),
        pytest.param(
            raises(ValueError("x")),
            {"max_attempts": 3},
            Request(headers=[("X-AppEngine-TaskRetryCount", "2")]),
            200,
            "given-up",
            b"given-up\n",
            id="last attempt gives up",
        ),
        pytest.param(
            raises(ValueError("x")),
            {"max_attempts": 3},
            Request(headers=[("X-AppEngine-TaskRetryCount", "1")]),
            500,
            "retry",
            b"retry\n",
            id="attempt before the last retries",
        ),
        pytest.param(
            echo,
            {"payload": Counter},
            Request(body=b'{"amount": 3}', headers=JSON),
            200,
            "success",
            None,
            id="JSON payload",
        ),
        pytest.param(
            echo,
            {"payload": Counter},
            Request(body=b"amount=4&note=hi", headers=FORM),
            200,
            "success",
            None,
            id="form payload",
        ),
        pytest.param(
            echo,
            {"payload": Counter},
            Request(method="GET", query="amount=5"),
            200,
            "success",
            None,
            id="query payload",
        ),
        pytest.param(
            echo,
            {"payload": Counter},
            Request(body=b'{"amount": "many"}', headers=JSON),
            200,
            "permanent-failure",
            b"permanent-failure\n",
            id="invalid payload",
        ),
        pytest.param(
            echo,
            {"payload": Counter},
            Request(body=b"<xml/>", headers=[("Content-Type", "application/xml")]),
            200,
            "permanent-failure",
            b"permanent-failure\n",
            id="unsupported content type",
        ),
    ],
)
@pytest.mark.parametrize("behind", [True, False], ids=["behind middleware", "on its own"])
def test_task_handler_outcomes(
    adapter: Adapter,
    behind: bool,
    func: Callable[..., Any],
    options: dict[str, Any],
    request_: Request,
    status: int,
    outcome: str,
    body: bytes | None,
) -> None:
    """What a handler returns or raises maps to SPEC §6, with or without a middleware in front."""
    handler = adapter.handler(func, **options)
    request_ = dataclasses.replace(request_, headers=[*TASK, *request_.headers], peer=QUEUE)
    result = adapter.run_handler(handler, request_, middleware={} if behind else None)
    assert (result.status, result.outcome) == (status, outcome)
    if body is not None:
        assert result.body == body
    else:
        seen = json.loads(result.body)
        assert seen["task_name"] == seen["current"] == "task-1"
        assert seen["payload"]["amount"] in (3, 4, 5)


@pytest.mark.parametrize("behind", [True, False], ids=["behind middleware", "on its own"])
def test_task_handler_refuses_requests_that_are_not_tasks(adapter: Adapter, behind: bool) -> None:
    """A stranger, spoofed headers or not, gets 403 rejected and the handler never runs."""
    handler = adapter.handler(raises(AssertionError("must not run")))
    result = adapter.run_handler(
        handler, Request(headers=TASK, peer=STRANGER), middleware={} if behind else None
    )
    assert (result.status, result.outcome) == (403, "rejected")


@pytest.mark.parametrize(
    ("options", "headers", "trusted_by"),
    [
        pytest.param(
            {"authenticator": HeaderUser()}, [("X-Test-User", "a@x.test!")], "admin", id="admin"
        ),
        pytest.param({"trust": TrustPolicy.development()}, [], "development", id="development"),
    ],
)
@pytest.mark.parametrize("behind", [True, False], ids=["behind middleware", "on its own"])
def test_admin_without_task_headers_runs_a_synthetic_task(
    adapter: Adapter,
    behind: bool,
    options: dict[str, Any],
    headers: list[tuple[str, str]],
    trusted_by: str,
) -> None:
    """An admin opening a handler's URL runs it as queue ``default`` with a generated name."""
    handler = adapter.handler(echo, **({} if behind else options))
    result = adapter.run_handler(
        handler,
        Request(headers=headers, peer=STRANGER),
        middleware=options if behind else None,
    )
    assert (result.status, result.outcome) == (200, "success")
    seen = json.loads(result.body)
    assert seen["queue_name"] == "default"
    assert seen["task_name"].startswith("manual-")
    assert seen["current"] == seen["task_name"]
    assert seen["trusted_by"] == trusted_by


def test_give_up_hook_runs_before_acknowledging(adapter: Adapter) -> None:
    """On the last attempt the on_give_up hook receives the task and the error."""
    calls: list[tuple[str, str]] = []
    handler = adapter.handler(
        raises(ValueError("boom")),
        max_attempts=1,
        on_give_up=lambda task, exc: calls.append((task.task_name, str(exc))),
    )
    result = adapter.run_handler(handler, Request(headers=TASK, peer=QUEUE), middleware={})
    assert (result.status, result.outcome) == (200, "given-up")
    assert calls == [("task-1", "boom")]
