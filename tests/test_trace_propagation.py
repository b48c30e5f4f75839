"""A task added while a request is handled carries that request's ``traceparent`` (SPEC §16).

Without OpenTelemetry: run in a fresh interpreter that never imports it (and checks so), a
plain request with a trace header adds a task to a LocalTaskQueue; the task request the
queue delivers carries the trace, and so does a task that task adds in turn.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from taskhandler._trace import parse_cloud_trace, parse_traceparent, trace_from_headers
from tests.servers import ROOT

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"

ROUND_TRIP = textwrap.dedent(
    """
    import json, sys
    from werkzeug.test import EnvironBuilder
    from taskhandler import task_handler, taskqueue, wsgi
    from taskhandler.taskqueue import LocalTaskQueue, ManualClock

    seen = []

    def enqueue(environ, start_response):
        taskqueue.add(url="/tasks/first", name="first-1")
        start_response("200 OK", [])
        return [b"queued"]

    @task_handler
    def first(task):
        taskqueue.add(url="/tasks/second", name="second-1")

    @task_handler
    def second(task):
        pass

    routes = {"/enqueue": enqueue, "/tasks/first": first, "/tasks/second": second}

    def app(environ, start_response):
        if environ["PATH_INFO"].startswith("/tasks/"):
            seen.append(environ.get("HTTP_TRACEPARENT"))
        return routes[environ["PATH_INFO"]](environ, start_response)

    app = wsgi.TaskMiddleware(app)
    with LocalTaskQueue(app, clock=ManualClock(1.7e9)) as q, taskqueue.use(q):
        environ = EnvironBuilder(
            path="/enqueue", headers=json.loads(sys.argv[1]),
            environ_base={"REMOTE_ADDR": "203.0.113.9"},
        ).get_environ()
        wsgi.call_wsgi(app, environ)
        q.run_until_idle(timeout=10)
    print(json.dumps({
        "seen": seen,
        "otel": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
    }))
    """
)


def round_trip(headers: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP, json.dumps(headers)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"},
            [f"00-{TRACE_ID}-{SPAN_ID}-01"] * 2,
            id="traceparent",
        ),
        pytest.param(
            {"X-Cloud-Trace-Context": f"{TRACE_ID}/{int(SPAN_ID, 16)};o=1"},
            [f"00-{TRACE_ID}-{SPAN_ID}-01"] * 2,
            id="x-cloud-trace-context",
        ),
        pytest.param({}, [None, None], id="no-trace-none-invented"),
    ],
)
def test_tasks_carry_the_trace_without_opentelemetry(
    headers: dict[str, str], expected: list[str | None]
) -> None:
    """The enqueuing request's trace reaches the task, and the task's reaches the next one."""
    result = round_trip(headers)
    assert result["seen"] == expected
    assert result["otel"] == []


@pytest.mark.parametrize(
    ("traceparent", "cloud", "expected"),
    [
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-01", None, (TRACE_ID, SPAN_ID, True), id="w3c"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-00", None, (TRACE_ID, SPAN_ID, False), id="w3c-off"),
        pytest.param(
            f"01-{TRACE_ID}-{SPAN_ID}-01-future", None, (TRACE_ID, SPAN_ID, True), id="w3c-later"
        ),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-01-extra", None, None, id="w3c-00-extra-refused"),
        pytest.param(f"ff-{TRACE_ID}-{SPAN_ID}-01", None, None, id="w3c-version-ff"),
        pytest.param(f"00-{TRACE_ID.upper()}-{SPAN_ID}-01", None, None, id="w3c-upper-case"),
        pytest.param(f"00-{TRACE_ID}-{'0' * 16}-01", None, None, id="w3c-zero-span"),
        pytest.param(None, f"{TRACE_ID}/1;o=1", (TRACE_ID, "0000000000000001", True), id="cloud"),
        pytest.param(None, f"{TRACE_ID}", (TRACE_ID, "", False), id="cloud-trace-only"),
        pytest.param(None, f"{TRACE_ID}/{2**64}", None, id="cloud-span-too-big"),
        pytest.param(None, "nonsense", None, id="cloud-nonsense"),
        pytest.param("bad", f"{TRACE_ID}/2;o=0", (TRACE_ID, "0000000000000002", False),
                     id="bad-w3c-falls-back"),
    ],
)  # fmt: skip
def test_trace_headers_are_read(
    traceparent: str | None, cloud: str | None, expected: tuple[str, str, bool] | None
) -> None:
    """Both headers are parsed strictly; what is not a trace gives none."""
    trace = trace_from_headers(traceparent, cloud)
    got = None if trace is None else (trace.trace_id, trace.span_id, trace.sampled)
    assert got == expected


def test_a_trace_without_span_gets_a_fresh_parent_span() -> None:
    """X-Cloud-Trace-Context without a span still propagates a valid traceparent."""
    trace = parse_cloud_trace(TRACE_ID)
    assert trace is not None
    again = parse_traceparent(trace.traceparent)
    assert again is not None and again.trace_id == TRACE_ID and len(again.span_id) == 16
