"""OpenTelemetry spans for task attempts (the ``otel`` extra; SPEC §16).

Nothing to call: when the application has imported ``opentelemetry``, each task request
the adapters handle is a span of kind ``SERVER`` named ``task <queue>``, whose parent is the
request that added the task (its ``traceparent``), with the attributes ``taskhandler.queue``,
``taskhandler.task``, ``taskhandler.retry_count``, ``taskhandler.execution_count``,
``taskhandler.outcome`` and ``http.response.status_code``. A task added while the span is
open carries the span's ``traceparent``, so a chain of tasks is one trace.

Spans go to the tracer provider the application set up (``trace.set_tracer_provider``);
without one, OpenTelemetry's default makes them no-ops.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from .context import TaskContext

__all__ = ["attempt_span", "close_attempt", "current_traceparent", "span_ids"]

_propagator = TraceContextTextMapPropagator()


@contextmanager
def attempt_span(ctx: TaskContext, traceparent: str | None) -> Iterator[trace.Span]:
    """The span of one task attempt, current for the block; its parent is ``traceparent``."""
    parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
    tracer = trace.get_tracer("taskhandler")
    with tracer.start_as_current_span(
        f"task {ctx.queue_name}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={
            "taskhandler.queue": ctx.queue_name,
            "taskhandler.task": ctx.task_name,
            "taskhandler.retry_count": ctx.retry_count,
            "taskhandler.execution_count": ctx.execution_count,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def span_ids(span: trace.Span) -> tuple[str, str, bool] | None:
    """``(trace id, span id, sampled)`` of ``span`` in hex, or ``None`` for an invalid span."""
    own = span.get_span_context()
    if not own.is_valid:
        return None
    return f"{own.trace_id:032x}", f"{own.span_id:016x}", own.trace_flags.sampled


def close_attempt(span: trace.Span, outcome: str | None, status: int | None) -> None:
    """Set the attempt's outcome and status on its span (an error status unless 2xx)."""
    if outcome is not None:
        span.set_attribute("taskhandler.outcome", outcome)
    if status is not None:
        span.set_attribute("http.response.status_code", status)
        if not 200 <= status < 300:
            span.set_status(trace.Status(trace.StatusCode.ERROR, outcome))


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current OpenTelemetry span, or ``None`` when there is none."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")
