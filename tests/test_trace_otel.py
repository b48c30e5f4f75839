"""OpenTelemetry spans per attempt (SPEC §16), read back with the SDK's in-memory exporter.

A real round trip: a task is added inside an enqueuing request's span, a LocalTaskQueue
dispatches it to a WSGI app behind ``TaskMiddleware``, the handler adds a second task, and
both attempts come out as ``SERVER`` spans whose parents are the requests that added them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from taskhandler import task_handler, taskqueue, wsgi
from taskhandler.context import TaskContext
from taskhandler.exceptions import PermanentTaskFailure
from taskhandler.taskqueue import LocalTaskQueue, ManualClock

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (set once: OpenTelemetry allows no second) exporting here."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def router(routes: dict[str, Any]) -> Any:
    """A WSGI app dispatching on PATH_INFO to ``@task_handler`` functions, behind the middleware."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return routes[environ["PATH_INFO"]](environ, start_response)

    return wsgi.TaskMiddleware(app)


def task_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("task ")]


def test_attempts_are_children_of_the_requests_that_added_them(
    spans: InMemorySpanExporter,
) -> None:
    """enqueue -> dispatch -> handle -> enqueue -> handle: one trace, each span's parent its adder."""
    seen: list[str] = []

    @task_handler
    def first(task: TaskContext) -> None:
        seen.append(task.task_name)
        taskqueue.add(url="/tasks/second", name="second-1")

    @task_handler
    def second(task: TaskContext) -> None:
        seen.append(task.task_name)

    app = router({"/tasks/first": first, "/tasks/second": second})
    tracer = trace.get_tracer("tests")
    with LocalTaskQueue(app, clock=ManualClock(1_700_000_000.0)) as q, taskqueue.use(q):
        with tracer.start_as_current_span("enqueuing request") as root:
            taskqueue.add(url="/tasks/first", name="first-1")
        assert q.run_until_idle(timeout=10) == 2
    assert seen == ["first-1", "second-1"]

    by_task = {s.attributes["taskhandler.task"]: s for s in task_spans(spans)}  # type: ignore[index]
    one, two = by_task["first-1"], by_task["second-1"]
    root_ctx = root.get_span_context()
    assert one.parent is not None and two.parent is not None
    assert one.parent.span_id == root_ctx.span_id
    assert two.parent.span_id == one.context.span_id  # type: ignore[union-attr]
    assert {one.context.trace_id, two.context.trace_id} == {root_ctx.trace_id}  # type: ignore[union-attr]
    for span in (one, two):
        assert span.kind is trace.SpanKind.SERVER
        assert span.name == "task default"
        assert dict(span.attributes or {}) | {"taskhandler.task": "-"} == {
            "taskhandler.queue": "default",
            "taskhandler.task": "-",
            "taskhandler.retry_count": 0,
            "taskhandler.execution_count": 0,
            "taskhandler.outcome": "success",
            "http.response.status_code": 200,
        }


@pytest.mark.parametrize(
    ("exc", "outcome", "status", "error"),
    [
        pytest.param(KeyError("x"), "retry", 500, True, id="raised-retry"),
        pytest.param(PermanentTaskFailure("bad"), "permanent-failure", 200, False, id="permanent"),
    ],
)
def test_a_failed_attempt_span_has_its_outcome(
    spans: InMemorySpanExporter, exc: BaseException, outcome: str, status: int, error: bool
) -> None:
    """The span records the attempt's outcome and status; a non-2xx answer is an error status."""

    @task_handler(max_attempts=5)
    def handler(task: TaskContext) -> None:
        raise exc

    queue = LocalTaskQueue(router({"/tasks/h": handler}), clock=ManualClock(1.7e9))
    with queue as q, taskqueue.use(q):
        taskqueue.add(url="/tasks/h", name="h-1")
        q.run_due(timeout=10)
    span = task_spans(spans)[0]
    assert span.attributes is not None
    assert span.attributes["taskhandler.outcome"] == outcome
    assert span.attributes["http.response.status_code"] == status
    assert (span.status.status_code is trace.StatusCode.ERROR) is error
    assert span.parent is None  # added outside any request: a root span


@pytest.mark.parametrize("raises", [False, True], ids=["success", "view raises"])
def test_a_django_attempt_is_a_span_under_the_requests_trace(
    spans: InMemorySpanExporter, raises: bool
) -> None:
    """The Django middleware opens the attempt's span too, a child of the request's traceparent."""
    from werkzeug.test import EnvironBuilder

    from tests.conformance.django_adapter import configure

    configure()
    from django.core.handlers.wsgi import WSGIRequest
    from django.http import HttpResponse

    from taskhandler.django import TaskMiddleware
    from taskhandler.django._settings import settings_from_mapping

    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    def view(request: Any) -> Any:
        if raises:
            raise ValueError("boom")
        return HttpResponse("ok")

    middleware = TaskMiddleware(view, settings=settings_from_mapping({"AUTHENTICATOR": None}))
    environ = EnvironBuilder(
        path="/tasks/x",
        method="POST",
        headers={
            "X-AppEngine-QueueName": "default",
            "X-AppEngine-TaskName": "django-1",
            "traceparent": f"00-{trace_id}-{parent_id}-01",
        },
        environ_base={"REMOTE_ADDR": "0.1.0.2"},
    ).get_environ()
    response = middleware(WSGIRequest(environ))
    [span] = task_spans(spans)
    assert span.parent is not None
    assert (span.context.trace_id, span.parent.span_id) == (int(trace_id, 16), int(parent_id, 16))
    assert span.attributes is not None
    assert span.attributes["taskhandler.outcome"] == response["X-Task-Outcome"]
    assert span.attributes["http.response.status_code"] == response.status_code
    assert response.status_code == (500 if raises else 200)
