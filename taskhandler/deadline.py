"""Deadlines: ``DeadlineExceededError`` shortly before a task's deadline (SPEC §5).

A push task has a fixed deadline: 600 s on automatic scaling, 86 400 s on basic and manual
scaling. App Engine raised ``DeadlineExceededError`` inside the handler a little before it,
so the handler could save its progress; taskhandler gives every handler that warning, in any
WSGI or ASGI server. The warning comes ``grace`` seconds (default 10) before the deadline --
the *soft* deadline. If the handler is still running at the deadline itself (the *hard*
deadline, e.g. because it swallowed the first error) the error is raised once more, and the
request is answered as a failure either way.

This module is the policy, plain data in and plain data out: the deadline lengths,
:func:`resolve_deadline` (validation and defaults) and :func:`check_deadline`. It imports
no thread, signal or event loop and starts nothing. The machinery that delivers the error
lives beside it and is loaded by the adapters that use it:

- :mod:`taskhandler._watchdog` -- sync handlers: one watchdog thread per process (started
  by the first ``arm()``), ``PyThreadState_SetAsyncExc`` and a ``SIGALRM`` timer;
- :mod:`taskhandler._async_deadline` -- async handlers: the handler's coroutine driven on
  the event loop, the error thrown in at the ``await`` where it waits.

Both record the current request's armed deadline in a context variable read here, so
cooperative code calls :func:`check_deadline` (raises once the soft deadline has passed, for
the current thread's or asyncio task's deadline) or reads ``TaskContext.time_remaining()``.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from typing import Protocol

from .exceptions import ConfigError, DeadlineExceededError

__all__ = [
    "AUTOMATIC_SCALING_DEADLINE",
    "BASIC_SCALING_DEADLINE",
    "DEFAULT_GRACE",
    "DeadlineExceededError",
    "check_deadline",
    "resolve_deadline",
]

#: The deadline of a push task on automatic scaling (seconds), and the default.
AUTOMATIC_SCALING_DEADLINE = 600.0
#: The deadline on basic and manual scaling (24 hours): also the longest any task may run.
BASIC_SCALING_DEADLINE = 86_400.0
#: How long before the deadline ``DeadlineExceededError`` is raised, by default (seconds).
DEFAULT_GRACE = 10.0


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}", value=value)
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ConfigError(f"{name} must be a finite number of seconds, got {value!r}", value=value)
    return seconds


def resolve_deadline(deadline: float | None, grace: float | None) -> tuple[float, float]:
    """Validate a task deadline and its grace (seconds) and fill in the defaults.

    Args:
        deadline: seconds a task request may run; ``None`` means automatic scaling (600 s).
        grace: how long before the deadline the error is raised; ``None`` means 10 s.

    Returns:
        ``(deadline_s, grace_s)``.

    Raises:
        ConfigError: the deadline is not a positive finite number of at most 24 hours, the
            grace is negative, or the grace is not smaller than the deadline.

    Example::

        resolve_deadline(None, None)    # (600.0, 10.0)
        resolve_deadline(60, 5)         # (60.0, 5.0)
    """
    d = AUTOMATIC_SCALING_DEADLINE if deadline is None else _seconds("deadline", deadline)
    g = DEFAULT_GRACE if grace is None else _seconds("grace", grace)
    if not d > 0:
        raise ConfigError(
            f"deadline must be a positive number of seconds, got {d:g}", value=deadline
        )
    if d > BASIC_SCALING_DEADLINE:
        raise ConfigError(
            f"deadline must be at most {BASIC_SCALING_DEADLINE:g} s (24 hours, the longest a "
            f"push task may run), got {d:g}",
            value=deadline,
        )
    if g < 0:
        raise ConfigError(f"grace must not be negative, got {g:g}", value=grace)
    if g >= d:
        raise ConfigError(f"grace ({g:g}s) must be smaller than the deadline ({d:g}s)", value=grace)
    return d, g


class _Checkable(Protocol):
    def _check(self) -> None: ...


# The deadline of the request running in this thread or asyncio task: set by the machinery
# when it arms one, read by check_deadline().
_current: ContextVar[_Checkable | None] = ContextVar("taskhandler_deadline", default=None)

# The phases an armed deadline goes through, in both drivers: the soft error is still to
# come, then the hard one, then nothing.
_SOFT, _HARD, _DONE = 0, 1, 2


def check_deadline() -> None:
    """Raise ``DeadlineExceededError`` if the current task's soft deadline has passed.

    Works for the deadline of the current thread (sync handlers) and of the current
    asyncio task (async handlers); does nothing outside a task request. For loops that
    want to stop cleanly at a point of their choosing::

        for row in rows:
            check_deadline()
            process(row)
    """
    current = _current.get()
    if current is not None:
        current._check()
