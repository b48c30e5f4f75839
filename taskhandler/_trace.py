"""The trace of the request being handled: read from its headers, kept for its duration (SPEC §16).

``traceparent`` (W3C Trace Context) wins over ``X-Cloud-Trace-Context`` (Google's older
header, ``TRACE_ID/SPAN_ID;o=1`` with a decimal span id). The adapters publish the trace in a
context variable while a request is handled, so that every log record written meanwhile can
carry it (:class:`taskhandler.logging.CloudLoggingFormatter`) and a task added meanwhile
carries it on (``traceparent``). A task request's attempt is also an :class:`Attempt`, where
the per-task log record leaves its outcome for the OpenTelemetry span (``taskhandler.otel``).

Pure: standard library only; OpenTelemetry is imported only when the application has
imported it itself.
"""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import TaskContext

__all__ = [
    "Attempt",
    "Trace",
    "attempt",
    "current_attempt",
    "current_trace",
    "outgoing_traceparent",
    "publish",
    "trace_from_headers",
]

TRACEPARENT = "traceparent"
CLOUD_TRACE = "x-cloud-trace-context"
OTEL_MODULE = "opentelemetry.trace"  # in sys.modules once the application uses OpenTelemetry
_MAX_HEADER = 256  # both headers are well under 100 characters; longer ones are ignored

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([01]))?")


@dataclass(frozen=True, slots=True)
class Trace:
    """A request's trace: 32 hex digits of trace id, 16 of the caller's span id, sampled.

    ``span_id`` is ``""`` when the header named no span (``X-Cloud-Trace-Context: T``).
    """

    trace_id: str
    span_id: str
    sampled: bool

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` header for this trace and span (a new span id if none)."""
        span_id = self.span_id or secrets.token_hex(8)
        return f"00-{self.trace_id}-{span_id}-{'01' if self.sampled else '00'}"


def parse_traceparent(value: str) -> Trace | None:
    """A W3C ``traceparent`` header, or ``None`` when it is not one (version ff, all zeros)."""
    if len(value) > _MAX_HEADER:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or (version == "00" and len(value.strip()) != 55):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return Trace(trace_id, span_id, bool(int(flags, 16) & 1))


def parse_cloud_trace(value: str) -> Trace | None:
    """An ``X-Cloud-Trace-Context`` header (``TRACE/SPAN;o=1``), or ``None``."""
    if len(value) > _MAX_HEADER:
        return None
    match = _CLOUD_TRACE.fullmatch(value.strip())
    if match is None:
        return None
    trace_id, span, sampled = match.groups()
    span_number = int(span) if span else 0
    if trace_id == "0" * 32 or span_number >= 1 << 64:
        return None
    span_id = f"{span_number:016x}" if span_number else ""
    return Trace(trace_id.lower(), span_id, sampled == "1")


def trace_from_headers(traceparent: str | None, cloud_trace: str | None) -> Trace | None:
    """The trace the two headers name: ``traceparent`` first, then ``X-Cloud-Trace-Context``."""
    if traceparent:
        trace = parse_traceparent(traceparent)
        if trace is not None:
            return trace
    if cloud_trace:
        return parse_cloud_trace(cloud_trace)
    return None


def trace_from_mapping(headers: Mapping[str, str]) -> Trace | None:
    """The trace in lower-case-named ``headers`` (a task's, a test's)."""
    return trace_from_headers(headers.get(TRACEPARENT), headers.get(CLOUD_TRACE))


_trace: ContextVar[Trace | None] = ContextVar("taskhandler.trace", default=None)


def current_trace() -> Trace | None:
    """The trace of the request being handled, or ``None``."""
    return _trace.get()


@contextmanager
def publish(trace: Trace | None) -> Iterator[None]:
    """Make ``trace`` the current trace for the block (nothing to do for ``None``)."""
    if trace is None:
        yield
        return
    token = _trace.set(trace)
    try:
        yield
    finally:
        _trace.reset(token)


class Attempt:
    """One task request being handled: its trace, and the outcome its log record gave."""

    __slots__ = ("ctx", "on_error", "outcome", "status", "trace")

    def __init__(self, ctx: TaskContext, trace: Trace | None, on_error: Any = None) -> None:
        self.ctx = ctx
        self.trace = trace
        self.on_error = on_error
        """The middleware's ``on_error`` hook, or ``None``."""
        self.outcome: str | None = None
        self.status: int | None = None


_attempt: ContextVar[Attempt | None] = ContextVar("taskhandler.attempt", default=None)


def current_attempt() -> Attempt | None:
    """The task request being handled, or ``None``."""
    return _attempt.get()


def _otel_loaded() -> bool:
    """Whether the application uses OpenTelemetry (never imported here otherwise)."""
    return OTEL_MODULE in sys.modules


def attempt_watched(on_error: Any) -> bool:
    """Whether an attempt without a trace still needs :func:`attempt` (a hook, OpenTelemetry)."""
    return on_error is not None or OTEL_MODULE in sys.modules


@contextmanager
def attempt(ctx: TaskContext, trace: Trace | None, on_error: Any = None) -> Iterator[Attempt]:
    """Handle one task request: its trace published, an OpenTelemetry span around it if used.

    The span (``taskhandler.otel``) is the child of the request's ``traceparent``; while it
    is open, the current trace names it, so records and tasks added carry the span's id.
    """
    current = Attempt(ctx, trace, on_error)
    token = _attempt.set(current)
    try:
        if _otel_loaded():
            from . import otel

            parent = trace.traceparent if trace is not None and trace.span_id else None
            with otel.attempt_span(ctx, parent) as span:
                ids = otel.span_ids(span)
                try:
                    with publish(Trace(*ids) if ids is not None else trace):
                        yield current
                finally:
                    otel.close_attempt(span, current.outcome, current.status)
        else:
            with publish(trace):
                yield current
    finally:
        _attempt.reset(token)


def outgoing_traceparent() -> str | None:
    """The ``traceparent`` a task added now carries: the current span's, else the request's."""
    if _otel_loaded():
        from . import otel

        value = otel.current_traceparent()
        if value is not None:
            return value
    trace = _trace.get()
    return None if trace is None else trace.traceparent


def note_outcome(outcome: str, status: int) -> None:
    """Record the attempt's outcome for its span (called by the per-task log record)."""
    current = _attempt.get()
    if current is not None:
        current.outcome = outcome
        current.status = status


def headers_trace(get: Any) -> Trace | None:
    """The trace from a header getter ``get(name) -> str | None`` (lower-case names)."""
    return trace_from_headers(get(TRACEPARENT), get(CLOUD_TRACE))
