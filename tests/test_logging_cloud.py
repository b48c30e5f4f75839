"""taskhandler.logging: real log output from real task requests, read as Cloud Logging reads it.

Each test serves a request through ``TaskMiddleware`` (WSGI or ASGI) with
``taskhandler.logging.setup(stream=...)`` installed, parses every line written and checks it
against Cloud Logging's structured-logging field list below.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder

import taskhandler.logging as cloud_logging
from taskhandler import asgi, wsgi
from taskhandler.context import current_task

# Cloud Logging's special JSON fields, from "Structured logging" > "Special JSON fields in
# messages", https://cloud.google.com/logging/docs/structured-logging (and LogSeverity and
# HttpRequest in https://cloud.google.com/logging/docs/reference/v2/rest/v2/LogEntry).
SPECIAL_FIELDS = {
    "severity": str,
    "message": str,
    "log": str,
    "httpRequest": dict,
    "time": str,
    "timestamp": dict,
    "timestampSeconds": int,
    "timestampNanos": int,
    "logging.googleapis.com/insertId": str,
    "logging.googleapis.com/labels": dict,
    "logging.googleapis.com/operation": dict,
    "logging.googleapis.com/sourceLocation": dict,
    "logging.googleapis.com/spanId": str,
    "logging.googleapis.com/trace": str,
    "logging.googleapis.com/trace_sampled": bool,
}
SEVERITIES = {
    "DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY",
}  # fmt: skip
HTTP_REQUEST_FIELDS = {
    "requestMethod": str, "requestUrl": str, "requestSize": str, "status": int,
    "responseSize": str, "userAgent": str, "remoteIp": str, "serverIp": str, "referer": str,
    "latency": str, "cacheLookup": bool, "cacheHit": bool,
    "cacheValidatedWithOriginServer": bool, "cacheFillBytes": str, "protocol": str,
}  # fmt: skip
SOURCE_LOCATION_FIELDS = {"file": str, "line": str, "function": str}
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
DURATION = re.compile(r"\d+(\.\d{1,9})?s")

PROJECT = "demo-project"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TASK = {"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "task-1"}


def check_entry(entry: dict[str, Any]) -> None:
    """Fail unless ``entry`` is what Cloud Logging reads as a structured entry."""
    for name, kind in SPECIAL_FIELDS.items():
        if name in entry:
            assert isinstance(entry[name], kind), (name, entry[name])
    assert entry["severity"] in SEVERITIES
    assert RFC3339.fullmatch(entry["time"]), entry["time"]
    for name, value in entry.get("httpRequest", {}).items():
        assert isinstance(value, HTTP_REQUEST_FIELDS[name]), (name, value)
    if "latency" in entry.get("httpRequest", {}):
        assert DURATION.fullmatch(entry["httpRequest"]["latency"])
    for name, value in entry["logging.googleapis.com/sourceLocation"].items():
        assert isinstance(value, SOURCE_LOCATION_FIELDS[name]), (name, value)
    if "logging.googleapis.com/trace" in entry:
        assert re.fullmatch(
            r"projects/[^/]+/traces/[0-9a-f]{32}", entry["logging.googleapis.com/trace"]
        )
    if "logging.googleapis.com/spanId" in entry:
        assert re.fullmatch(r"[0-9a-f]{16}", entry["logging.googleapis.com/spanId"])


@pytest.fixture(autouse=True)
def _without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """These records carry the request's own trace: hide OpenTelemetry, should an earlier test
    have loaded it (its attempt span would name the span instead)."""
    monkeypatch.delitem(sys.modules, "opentelemetry.trace", raising=False)


@pytest.fixture
def output(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Every record, as ``setup()`` writes it; the root logger restored afterwards."""
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    stream = io.StringIO()
    cloud_logging.setup(project=PROJECT, stream=stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def entries(stream: io.StringIO) -> list[dict[str, Any]]:
    """The lines written, each one JSON object, checked against Cloud Logging's fields."""
    lines = stream.getvalue().splitlines()
    parsed = [json.loads(line) for line in lines]
    for entry in parsed:
        check_entry(entry)
    return parsed


app_log = logging.getLogger("example.app")


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A WSGI app that logs (as an app does) and fails when the path says so."""
    task = current_task()
    app_log.info("working on %s", task.task_name if task else "nothing")
    if environ["PATH_INFO"] == "/fail":
        raise ValueError("the database is away")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def serve_wsgi(path: str, headers: dict[str, str], peer: str = "0.1.0.2") -> str:
    environ = EnvironBuilder(
        path=path, method="POST", headers=headers, environ_base={"REMOTE_ADDR": peer}
    ).get_environ()
    status, _, _ = wsgi.call_wsgi(wsgi.TaskMiddleware(app), environ)
    return status


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    task = current_task()
    app_log.info("working on %s", task.task_name if task else "nothing")
    if scope["path"] == "/fail":
        raise ValueError("the database is away")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def serve_asgi(path: str, headers: dict[str, str], peer: str = "0.1.0.2") -> str:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": (peer, 1234), "server": ("localhost", 80),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asgi.TaskMiddleware(asgi_app)(scope, receive, send))
    return str(sent[0]["status"])


SERVERS = [pytest.param(serve_wsgi, id="wsgi"), pytest.param(serve_asgi, id="asgi")]

TRACE_HEADERS = [
    pytest.param(
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"}, SPAN_ID, True, id="traceparent-sampled"
    ),
    pytest.param(
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00"}, SPAN_ID, False, id="traceparent-unsampled"
    ),
    pytest.param(
        {"X-Cloud-Trace-Context": f"{TRACE_ID}/{int(SPAN_ID, 16)};o=1"},
        SPAN_ID,
        True,
        id="x-cloud-trace-context",
    ),
    pytest.param(
        {
            "traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01",
            "X-Cloud-Trace-Context": f"{'1' * 32}/1;o=0",
        },
        SPAN_ID,
        True,
        id="traceparent-wins",
    ),
]


@pytest.mark.parametrize("serve", SERVERS)
@pytest.mark.parametrize(("trace_headers", "span_id", "sampled"), TRACE_HEADERS)
def test_every_record_of_a_task_request_carries_its_trace(
    output: io.StringIO,
    serve: Any,
    trace_headers: dict[str, str],
    span_id: str,
    sampled: bool,
) -> None:
    """The app's own record and the per-task record both carry the request's trace."""
    assert serve("/work", {**TASK, **trace_headers}).startswith("200")
    written = entries(output)
    own = [e for e in written if e["logger"] == "example.app"]
    per_task = [e for e in written if e.get("outcome") is not None]
    assert [e["message"] for e in own] == ["working on task-1"]
    assert len(per_task) == 1
    for entry in (*own, *per_task):
        assert entry["logging.googleapis.com/trace"] == f"projects/{PROJECT}/traces/{TRACE_ID}"
        assert entry["logging.googleapis.com/spanId"] == span_id
        assert entry["logging.googleapis.com/trace_sampled"] is sampled
        assert (entry["queue_name"], entry["task_name"]) == ("default", "task-1")


@pytest.mark.parametrize("serve", SERVERS)
def test_the_per_task_record_has_the_task_fields(output: io.StringIO, serve: Any) -> None:
    """The per-task record: queue, task, counts, outcome, status, duration_ms, httpRequest."""
    headers = {**TASK, "X-AppEngine-TaskRetryCount": "2", "X-AppEngine-TaskExecutionCount": "1"}
    serve("/work", headers)
    (entry,) = [e for e in entries(output) if "outcome" in e]
    assert entry["severity"] == "INFO"
    assert {k: entry[k] for k in ("queue_name", "task_name", "retry_count", "execution_count")} == {
        "queue_name": "default",
        "task_name": "task-1",
        "retry_count": 2,
        "execution_count": 1,
    }
    assert (entry["outcome"], entry["status"]) == ("success", 200)
    assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
    assert entry["httpRequest"]["requestUrl"] == "/work"
    assert entry["httpRequest"]["status"] == 200


@pytest.mark.parametrize("serve", SERVERS)
def test_a_final_failure_puts_the_traceback_in_the_message(output: io.StringIO, serve: Any) -> None:
    """On a final attempt the ERROR entry's message holds the stack trace (Error Reporting)."""
    assert serve("/fail", {**TASK, "X-AppEngine-FailFast": "true"}).startswith("500")
    errors = [e for e in entries(output) if e["severity"] == "ERROR"]
    assert len(errors) == 1
    assert "Traceback (most recent call last)" in errors[0]["message"]
    assert "ValueError: the database is away" in errors[0]["message"]


@pytest.mark.parametrize("serve", SERVERS)
@pytest.mark.parametrize(
    ("headers", "peer"),
    [
        pytest.param({}, "203.0.113.9", id="plain-request"),
        pytest.param({**TASK, "traceparent": "not a trace"}, "0.1.0.2", id="malformed-trace"),
        pytest.param(
            {**TASK, "traceparent": f"00-{'0' * 32}-{SPAN_ID}-01"}, "0.1.0.2", id="zero-trace-id"
        ),
        pytest.param(
            {**TASK, "traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01-" + "x" * 300},
            "0.1.0.2",
            id="oversized",
        ),
    ],
)
def test_no_trace_is_invented(
    output: io.StringIO, serve: Any, headers: dict[str, str], peer: str
) -> None:
    """A request without a valid trace header gives records without trace fields."""
    serve("/work", headers, peer)
    written = entries(output)
    assert written
    for entry in written:
        assert "logging.googleapis.com/trace" not in entry
        assert "logging.googleapis.com/spanId" not in entry


def test_a_record_outside_any_request_has_no_trace(output: io.StringIO) -> None:
    """Records written between requests carry neither a trace nor task fields."""
    app_log.warning("starting up")
    (entry,) = entries(output)
    assert entry["severity"] == "WARNING"
    assert entry["message"] == "starting up"
    assert "logging.googleapis.com/trace" not in entry
    assert "queue_name" not in entry


@pytest.mark.parametrize(
    ("argument", "environment", "expected"),
    [
        pytest.param("from-arg", "from-env", "projects/from-arg/traces/", id="argument-wins"),
        pytest.param(None, "from-env", "projects/from-env/traces/", id="environment"),
        pytest.param(None, None, None, id="none-no-trace-field"),
    ],
)
def test_the_trace_field_names_the_project(
    output: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
    argument: str | None,
    environment: str | None,
    expected: str | None,
) -> None:
    """The project comes from the argument, else GOOGLE_CLOUD_PROJECT; none leaves it out."""
    for name in ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "GCP_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    if environment is not None:
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", environment)
    formatter = cloud_logging.CloudLoggingFormatter(argument)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    app_log.addHandler(handler)
    try:
        serve_wsgi("/work", {**TASK, "traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"})
    finally:
        app_log.removeHandler(handler)
    (entry,) = entries(stream)
    if expected is None:
        assert "logging.googleapis.com/trace" not in entry
        assert entry["logging.googleapis.com/spanId"] == SPAN_ID
    else:
        assert entry["logging.googleapis.com/trace"] == expected + TRACE_ID


def test_setup_twice_keeps_one_handler(output: io.StringIO) -> None:
    """A second setup() replaces the first one's handler instead of doubling every line."""
    second = io.StringIO()
    cloud_logging.setup(project=PROJECT, stream=second)
    app_log.warning("once")
    assert output.getvalue() == ""
    assert [e["message"] for e in entries(second)] == ["once"]


@pytest.mark.parametrize(
    ("level", "severity"),
    [
        pytest.param(logging.DEBUG, "DEBUG", id="debug"),
        pytest.param(logging.INFO, "INFO", id="info"),
        pytest.param(25, "INFO", id="custom-rounds-down"),
        pytest.param(logging.WARNING, "WARNING", id="warning"),
        pytest.param(logging.ERROR, "ERROR", id="error"),
        pytest.param(logging.CRITICAL, "CRITICAL", id="critical"),
        pytest.param(5, "DEFAULT", id="below-debug"),
    ],
)
def test_severity_of_each_level(level: int, severity: str) -> None:
    """Python's levels map onto Cloud Logging's severities."""
    assert cloud_logging.severity(level) == severity
    assert severity in SEVERITIES
