"""Log records as Cloud Logging reads them: one JSON object per line (SPEC §16).

On Cloud Run, GKE and App Engine, a line written to stdout or stderr that is a JSON object
becomes a structured log entry: ``severity``, ``message``, ``time``, the request's trace
(``logging.googleapis.com/trace``, ``.../spanId``, ``.../trace_sampled``), ``httpRequest`` and
``logging.googleapis.com/sourceLocation`` are read as the entry's own fields; the rest stays in
its ``jsonPayload``. Every record written while a task request is handled, the application's
own included, carries that request's trace, so Logs Explorer shows them under the request;
records written in a task also carry the task's ``queue_name``, ``task_name``, ``retry_count``
and ``execution_count``, and the per-task record its ``outcome``, ``status`` and
``duration_ms``.

Example::

    import taskhandler.logging
    taskhandler.logging.setup()          # project from GOOGLE_CLOUD_PROJECT

Standard library only (this module is ``taskhandler.logging``; the standard library's is
imported as ``_logging``).
"""

from __future__ import annotations

import json
import logging as _logging
import os
import sys
from datetime import datetime, timezone
from typing import IO, Any

from ._trace import Trace, current_trace
from .context import current_task

__all__ = ["CloudLoggingFormatter", "setup"]

# Where Cloud Logging's severities and Python's levels meet (LogSeverity: DEBUG=100 ... ).
_SEVERITY = (
    (_logging.CRITICAL, "CRITICAL"),
    (_logging.ERROR, "ERROR"),
    (_logging.WARNING, "WARNING"),
    (_logging.INFO, "INFO"),
    (_logging.DEBUG, "DEBUG"),
)
_PROJECT_VARIABLES = ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "GCP_PROJECT")
_TASK_FIELDS = ("queue_name", "task_name", "retry_count", "execution_count")
_RECORD_FIELDS = ("outcome", "status", "duration_ms", "trusted_by")


def severity(levelno: int) -> str:
    """Cloud Logging's severity for a Python level (a custom level rounds down)."""
    for floor, name in _SEVERITY:
        if levelno >= floor:
            return name
    return "DEFAULT"


def _project_from_environment() -> str | None:
    for name in _PROJECT_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    return None


class CloudLoggingFormatter(_logging.Formatter):
    """Format each record as one line of JSON with Cloud Logging's field names.

    Args:
        project: the Google Cloud project the traces belong to (the trace field is
            ``projects/<project>/traces/<trace id>``); default ``GOOGLE_CLOUD_PROJECT``
            (or ``GCLOUD_PROJECT``, ``GCP_PROJECT``). Without a project the trace field is
            left out (Cloud Logging does not group by a bare id); the span id stays.
    """

    def __init__(self, project: str | None = None) -> None:
        super().__init__()
        self.project = project if project is not None else _project_from_environment()

    def format(self, record: _logging.LogRecord) -> str:
        return json.dumps(self.fields(record), default=str, ensure_ascii=False)

    def fields(self, record: _logging.LogRecord) -> dict[str, Any]:
        """The JSON object for ``record``, before it is written."""
        message = record.getMessage()
        if record.exc_info:
            # In the message, so that Error Reporting finds the stack trace.
            message = f"{message}\n{self.formatException(record.exc_info)}"
        elif record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        entry: dict[str, Any] = {
            "severity": severity(record.levelno),
            "message": message,
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "logger": record.name,
            "logging.googleapis.com/sourceLocation": {
                "file": record.pathname,
                "line": str(record.lineno),
                "function": record.funcName,
            },
        }
        trace = current_trace() or _otel_trace()
        if trace is not None:
            if self.project:
                entry["logging.googleapis.com/trace"] = (
                    f"projects/{self.project}/traces/{trace.trace_id}"
                )
            if trace.span_id:
                entry["logging.googleapis.com/spanId"] = trace.span_id
            entry["logging.googleapis.com/trace_sampled"] = trace.sampled
        task = getattr(record, "taskhandler", None)
        if isinstance(task, dict):
            for name in (*_TASK_FIELDS, *_RECORD_FIELDS):
                if name in task:
                    entry[name] = task[name]
            entry["httpRequest"] = _http_request(task)
        else:
            ctx = current_task()
            if ctx is not None:
                for name in _TASK_FIELDS:
                    entry[name] = getattr(ctx, name)
        return entry


def _http_request(task: dict[str, Any]) -> dict[str, Any]:
    """Cloud Logging's ``HttpRequest`` for a per-task record: URL, status, latency."""
    http: dict[str, Any] = {}
    if "method" in task:
        http["requestMethod"] = task["method"]
    if "path" in task:
        http["requestUrl"] = task["path"]
    if "status" in task:
        http["status"] = task["status"]
    if "duration" in task:
        http["latency"] = f"{float(task['duration']):.6f}s"
    return http


def _otel_trace() -> Trace | None:
    """The current OpenTelemetry span, when the application uses OpenTelemetry."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return None
    return Trace(f"{span.trace_id:032x}", f"{span.span_id:016x}", span.trace_flags.sampled)


class _SetupHandler(_logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`setup` installs (so a second call replaces it)."""


def setup(
    project: str | None = None,
    level: int | str = _logging.INFO,
    stream: IO[str] | None = None,
) -> _logging.Handler:
    """Write every log record to ``stream`` (default stdout) as Cloud Logging's JSON.

    Sets the root logger's level and replaces the handler an earlier call installed;
    other handlers are left alone. Returns the handler.
    """
    root = _logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _SetupHandler):
            root.removeHandler(handler)
    handler = _SetupHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(CloudLoggingFormatter(project))
    root.addHandler(handler)
    root.setLevel(level)
    return handler
