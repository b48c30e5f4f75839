"""Failed attempts in the logs and to ``on_error`` (SPEC §16): a WARNING line while the queue
will retry, the traceback at ERROR on the final attempt unless an ``on_error`` hook takes it.

Real requests through ``TaskMiddleware`` to ``@task_handler`` functions and plain WSGI apps.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder

from taskhandler import task_handler, wsgi
from taskhandler.context import TaskContext
from taskhandler.exceptions import ConfigError, PermanentTaskFailure, RetryTask

Report = tuple[str, str, bool]


def headers(retries: int, executions: int | None = None, fail_fast: bool = False) -> dict[str, str]:
    found = {
        "X-AppEngine-QueueName": "default",
        "X-AppEngine-TaskName": "task-1",
        "X-AppEngine-TaskRetryCount": str(retries),
        "X-AppEngine-TaskExecutionCount": str(retries if executions is None else executions),
    }
    if fail_fast:
        found["X-AppEngine-FailFast"] = "true"
    return found


def serve(app: Any, task_headers: dict[str, str], **middleware: Any) -> tuple[str, str]:
    environ = EnvironBuilder(
        path="/tasks/x",
        method="POST",
        headers=task_headers,
        environ_base={"REMOTE_ADDR": "0.1.0.2"},
    ).get_environ()
    status, response_headers, _ = wsgi.call_wsgi(wsgi.TaskMiddleware(app, **middleware), environ)
    return status.split(" ", 1)[0], dict(response_headers)["X-Task-Outcome"]


def failure_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records about the exception (the per-task record aside)."""
    return [r for r in caplog.records if "raised" in r.getMessage()]


def make_handler(exc: BaseException, reports: list[Report] | None, **options: Any) -> Any:
    def hook(task: TaskContext, error: BaseException, final: bool) -> None:
        assert reports is not None
        reports.append((task.task_name, type(error).__name__, final))

    @task_handler(on_error=hook if reports is not None else None, **options)
    def handler(task: TaskContext) -> None:
        raise exc

    return handler


CASES = [
    # id, attempt headers, handler options, with a hook?, (status, outcome), level, traceback?, final
    pytest.param(headers(0), {}, False, ("500", "retry"), logging.WARNING, False, False,
                 id="retried-no-max"),
    pytest.param(headers(1), {"max_attempts": 3}, False, ("500", "retry"), logging.WARNING,
                 False, False, id="retried-before-max"),
    pytest.param(headers(2), {"max_attempts": 3}, False, ("200", "given-up"), logging.ERROR,
                 True, True, id="final-attempt-traceback"),
    pytest.param(headers(2), {"max_attempts": 3}, True, ("200", "given-up"), logging.ERROR,
                 False, True, id="final-with-on-error-no-traceback"),
    pytest.param(headers(0), {}, True, ("500", "retry"), logging.WARNING, False, False,
                 id="retried-with-on-error"),
    pytest.param(headers(0, fail_fast=True), {}, False, ("500", "retry"), logging.ERROR, True,
                 True, id="fail-fast-is-final"),
    pytest.param(headers(5, executions=1), {"max_attempts": 3,
                 "max_attempts_counts": "executions"}, False, ("500", "retry"), logging.WARNING,
                 False, False, id="executions-counted-not-yet"),
    pytest.param(headers(5, executions=2), {"max_attempts": 3,
                 "max_attempts_counts": "executions"}, True, ("200", "given-up"), logging.ERROR,
                 False, True, id="executions-counted-final"),
    pytest.param(headers(5, executions=1), {"max_attempts": 3}, False, ("200", "given-up"),
                 logging.ERROR, True, True, id="retries-counted-by-default"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("task_headers", "options", "hooked", "answer", "level", "traceback", "final"), CASES
)
def test_failed_attempt_is_logged_by_the_rule(
    caplog: pytest.LogCaptureFixture,
    task_headers: dict[str, str],
    options: dict[str, Any],
    hooked: bool,
    answer: tuple[str, str],
    level: int,
    traceback: bool,
    final: bool,
) -> None:
    """One record about the exception: its level, traceback and the hook's ``final``."""
    reports: list[Report] | None = [] if hooked else None
    handler = make_handler(KeyError("no such row"), reports, **options)
    with caplog.at_level(logging.INFO, logger="taskhandler"):
        assert serve(handler, task_headers) == answer
    (record,) = failure_records(caplog)
    assert record.levelno == level
    assert bool(record.exc_info) is traceback
    assert "\n" not in record.getMessage()
    assert "no such row" in record.getMessage()
    if reports is not None:
        assert reports == [("task-1", "KeyError", final)]


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        pytest.param(RetryTask("later"), "retry", id="retry-task"),
        pytest.param(PermanentTaskFailure("bad input"), "permanent-failure", id="permanent"),
    ],
)
def test_deliberate_answers_do_not_reach_on_error(
    caplog: pytest.LogCaptureFixture, exc: BaseException, outcome: str
) -> None:
    """RetryTask and PermanentTaskFailure are answers, not errors: no hook, no traceback."""
    reports: list[Report] = []
    handler = make_handler(exc, reports)
    with caplog.at_level(logging.INFO, logger="taskhandler"):
        assert serve(handler, headers(0))[1] == outcome
    assert reports == []
    assert not any(r.exc_info for r in caplog.records)


def test_middleware_on_error_reports_a_plain_app(caplog: pytest.LogCaptureFixture) -> None:
    """TaskMiddleware(on_error=...) is told of an exception escaping a plain WSGI app."""
    reports: list[Report] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        raise ValueError("boom")

    def hook(task: TaskContext, error: BaseException, final: bool) -> None:
        reports.append((task.task_name, type(error).__name__, final))

    with caplog.at_level(logging.INFO, logger="taskhandler"):
        assert serve(app, headers(0), on_error=hook) == ("500", "retry")
        assert serve(app, headers(3, fail_fast=True), on_error=hook) == ("500", "retry")
    assert reports == [("task-1", "ValueError", False), ("task-1", "ValueError", True)]
    assert [r.levelno for r in failure_records(caplog)] == [logging.WARNING, logging.ERROR]
    assert not any(r.exc_info for r in failure_records(caplog))


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        pytest.param(True, ["handler"], id="handler-hook-wins"),
        pytest.param(False, ["middleware"], id="middleware-hook-used"),
    ],
)
def test_handler_hook_or_middleware_hook(own: bool, expected: list[str]) -> None:
    """A handler's on_error wins over the middleware's; without one, the middleware's runs."""
    called: list[str] = []

    @task_handler(on_error=(lambda t, e, f: called.append("handler")) if own else None)
    def handler(task: TaskContext) -> None:
        raise KeyError("x")

    serve(handler, headers(0), on_error=lambda t, e, f: called.append("middleware"))
    assert called == expected


def test_a_failing_hook_is_logged_and_the_answer_stands(caplog: pytest.LogCaptureFixture) -> None:
    """An on_error hook that raises is logged with its own traceback; the status is unchanged."""

    def hook(task: TaskContext, error: BaseException, final: bool) -> None:
        raise RuntimeError("reporter down")

    @task_handler(on_error=hook)
    def handler(task: TaskContext) -> None:
        raise KeyError("x")

    with caplog.at_level(logging.INFO, logger="taskhandler"):
        assert serve(handler, headers(0)) == ("500", "retry")
    failed = [r for r in caplog.records if "on_error hook failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info and failed[0].exc_info[0] is RuntimeError


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"on_error": "report"}, "on_error must be callable", id="hook-not-callable"),
        pytest.param(
            {"max_attempts_counts": "deliveries"},
            "max_attempts_counts must be 'retries' or 'executions'",
            id="unknown-count",
        ),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    """A hook that is not callable or an unknown count is refused when the handler is made."""
    with pytest.raises(ConfigError, match=message):
        task_handler(**options)(lambda task: None)


def test_middleware_refuses_a_hook_that_is_not_callable() -> None:
    """TaskMiddleware(on_error=...) must be callable."""
    with pytest.raises(ConfigError, match="on_error must be callable"):
        wsgi.TaskMiddleware(lambda e, s: [], on_error="report")
