"""Outcomes: what a handler did, the status the queue sees, and the log record (SPEC §6).

The queue looks only at the status code: 2xx means done, anything else means retry.
Every task response also carries ``X-Task-Outcome`` so tests and logs can tell apart a
success from a permanent failure (both 200) or a retry from a deadline (both 500).

Pure: standard library only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ._response import OUTCOME_HEADER, Response, plain_response
from ._trace import current_attempt, note_outcome
from .exceptions import DeadlineExceededError, PermanentTaskFailure, RetryTask

if TYPE_CHECKING:
    from .context import TaskContext

__all__ = [
    "OUTCOME_HEADER",
    "AttemptsCount",
    "ErrorHook",
    "Outcome",
    "Result",
    "give_up",
    "log_task",
    "outcome_for_status",
    "report_failure",
    "result_for_exception",
]

log = logging.getLogger("taskhandler")

Outcome = Literal[
    "success", "retry", "permanent-failure", "deadline-exceeded", "given-up", "rejected"
]
_FAILURES = frozenset(("retry", "deadline-exceeded"))

ErrorHook = Callable[["TaskContext", BaseException, bool], Any]
"""``on_error(task, exc, final)``: told of every exception a handler raised (an error reporter)."""

AttemptsCount = Literal["retries", "executions"]
"""What ``max_attempts`` counts: every delivery (``retry_count``, the default) or only the
deliveries that reached the app (``execution_count``), for queues where attempts fail before."""


@dataclass(frozen=True, slots=True)
class Result:
    """The answer to one task request: status, outcome word and a one-line reason."""

    status: int
    outcome: Outcome
    reason: str = ""


def outcome_for_status(status: int) -> Outcome:
    """2xx is a success; anything else makes the queue retry."""
    return "success" if 200 <= status < 300 else "retry"


def result_for_exception(exc: BaseException) -> Result:
    """Map what a handler raised to the status the queue should see."""
    if isinstance(exc, RetryTask):
        return Result(exc.status, "retry", exc.reason or "RetryTask")
    if isinstance(exc, PermanentTaskFailure):
        return Result(200, "permanent-failure", exc.reason or "PermanentTaskFailure")
    if isinstance(exc, DeadlineExceededError):
        return Result(500, "deadline-exceeded", "the task deadline was exceeded")
    return Result(500, "retry", f"unhandled {type(exc).__name__}")


def attempt_number(ctx: TaskContext, counts: AttemptsCount = "retries") -> int:
    """This attempt's number, from 1: deliveries (``retry_count``) or executions."""
    return (ctx.execution_count if counts == "executions" else ctx.retry_count) + 1


def give_up(
    result: Result,
    ctx: TaskContext,
    max_attempts: int | None,
    counts: AttemptsCount = "retries",
) -> Result:
    """On the last allowed attempt, turn a failure into an acknowledged ``given-up`` (200).

    ``max_attempts`` counts deliveries by default: attempt ``n`` carries
    ``retry_count == n - 1``; with ``counts="executions"``, ``execution_count == n - 1``.
    """
    if max_attempts is None or result.outcome not in _FAILURES:
        return result
    number = attempt_number(ctx, counts)
    if number < max_attempts:
        return result
    return Result(200, "given-up", f"{result.reason}; attempt {number} of {max_attempts}")


def report_failure(
    ctx: TaskContext, exc: BaseException, final: bool, on_error: ErrorHook | None, reason: str
) -> None:
    """Log an exception a task request raised, and tell ``on_error`` (SPEC §16).

    An attempt the queue will retry is one WARNING line with the reason. The final attempt
    (the last ``max_attempts`` allows, or a fail-fast task) is an ERROR, with the traceback
    when no ``on_error`` hook takes the exception (an error reporter records it then).
    A hook that fails is logged with its own traceback; the answer stays the same.
    """
    if not final:
        log.warning(
            "task %s/%s raised %s; it will be retried: %s",
            ctx.queue_name,
            ctx.task_name,
            type(exc).__name__,
            _first_line(exc) or reason,
        )
    else:
        log.error(
            "task %s/%s raised %s on its final attempt: %s",
            ctx.queue_name,
            ctx.task_name,
            type(exc).__name__,
            _first_line(exc) or reason,
            exc_info=exc if on_error is None else None,
        )
    if on_error is None:
        return
    try:
        on_error(ctx, exc, final)
    except Exception as hook_exc:
        log.error(
            "task %s/%s: on_error hook failed", ctx.queue_name, ctx.task_name, exc_info=hook_exc
        )


def _first_line(exc: BaseException) -> str:
    """The exception's message, first line only, at most 200 characters."""
    try:
        text = str(exc)
    except Exception:
        return ""
    line = text.splitlines()[0] if text else ""
    return line[:200]


RequestPath = str | Callable[[], str]
"""The request path, or a callable giving it (called only when a record is written)."""


def log_task(
    ctx: TaskContext,
    status: int,
    outcome: str,
    duration: float,
    path: RequestPath,
    reason: str = "",
) -> None:
    """The one structured INFO record per task request (ERROR for a permanent failure)."""
    note_outcome(outcome, status)
    level = logging.ERROR if outcome == "permanent-failure" else logging.INFO
    if not log.isEnabledFor(level):
        return
    if callable(path):
        path = path()
    fields = {
        "queue_name": ctx.queue_name,
        "task_name": ctx.task_name,
        "retry_count": ctx.retry_count,
        "execution_count": ctx.execution_count,
        "outcome": outcome,
        "status": status,
        "duration": round(duration, 6),
        "duration_ms": round(duration * 1000, 3),
        "path": path,
        "trusted_by": ctx.trusted_by,
    }
    log.log(
        level,
        "task queue_name=%s task_name=%s retry_count=%d execution_count=%d outcome=%s "
        "status=%d duration=%.3fs path=%s%s",
        ctx.queue_name,
        ctx.task_name,
        ctx.retry_count,
        ctx.execution_count,
        outcome,
        status,
        duration,
        path,
        f" reason={reason}" if reason else "",
        extra={"taskhandler": fields},
    )


def failure_result(
    ctx: TaskContext, exc: BaseException, on_error: ErrorHook | None = None
) -> Result:
    """The result for an exception that escaped a task request's app, logged (SPEC §16).

    ``on_error`` defaults to the middleware's (published for the attempt). The attempt is
    final only for a fail-fast task: the middleware knows no ``max_attempts``.
    """
    result = result_for_exception(exc)
    if not isinstance(exc, RetryTask | PermanentTaskFailure):
        if on_error is None:
            current = current_attempt()
            on_error = None if current is None else current.on_error
        report_failure(ctx, exc, ctx.fail_fast, on_error, result.reason)
    return result


def failure_response(result: Result) -> Response:
    """The answer to a failed task request: the outcome word, never a traceback."""
    return plain_response(result.status, result.outcome, outcome=result.outcome)


class ArmedDeadline(Protocol):
    """A task request's deadline, as the adapters armed it (``Armed``, ``AsyncArmed``)."""

    def overran(self) -> bool: ...

    def elapsed(self) -> float: ...


def failed_or_overran(
    ctx: TaskContext, result: Result | None, deadline: ArmedDeadline, path: RequestPath
) -> Result | None:
    """End a task request that failed or overran: the result to answer with, logged once.

    ``None`` means the app's own answer stands; :func:`outcome_of_answer` then logs it.
    """
    if result is None:
        if not deadline.overran():
            return None
        result = Result(500, "deadline-exceeded", "the handler ran past its deadline")
        log.log(
            logging.ERROR if ctx.fail_fast else logging.WARNING,
            "task %s/%s ran past its deadline",
            ctx.queue_name,
            ctx.task_name,
        )
    log_task(ctx, result.status, result.outcome, deadline.elapsed(), path, result.reason)
    return result


def outcome_of_answer(
    ctx: TaskContext, status: int, declared: str | None, deadline: ArmedDeadline, path: RequestPath
) -> str:
    """The outcome of the app's own answer (its ``X-Task-Outcome``, else by status), logged."""
    outcome = declared if declared is not None else outcome_for_status(status)
    log_task(ctx, status, outcome, deadline.elapsed(), path)
    return outcome
