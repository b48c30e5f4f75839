"""Deadlines (SPEC §5). SEAM: the full watchdog is being built; this is the contract.

Contract used by the adapters:

    armed = arm(deadline_s, grace_s)     # current thread; O(log n); starts no thread per call
    try:
        ... run the handler ...
    finally:
        armed.disarm()                   # race-free: nothing is delivered after this returns
    armed.fired       -> bool            # the soft deadline passed while armed
    armed.overran()   -> bool            # the hard deadline has passed (answer 500)
    armed.remaining() -> float           # seconds until the soft deadline (may be < 0)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar

from .exceptions import ConfigError

AUTOMATIC_SCALING_DEADLINE = 600.0
BASIC_SCALING_DEADLINE = 86_400.0
DEFAULT_GRACE = 10.0


class DeadlineExceededError(BaseException):
    """Raised inside a task handler shortly before its deadline, so it can save its work.

    Derives from ``BaseException``: ``except Exception`` does not swallow it.
    """


def resolve_deadline(deadline: float | None, grace: float | None) -> tuple[float, float]:
    """Validate ``deadline``/``grace`` (seconds) and fill in the defaults."""
    d = AUTOMATIC_SCALING_DEADLINE if deadline is None else float(deadline)
    g = DEFAULT_GRACE if grace is None else float(grace)
    if not d > 0:
        raise ConfigError("deadline must be a positive number of seconds", value=deadline)
    if g < 0:
        raise ConfigError("grace must not be negative", value=grace)
    if g >= d:
        raise ConfigError(f"grace ({g:g}s) must be smaller than the deadline ({d:g}s)", value=grace)
    return d, g


class Armed:
    """One armed deadline (placeholder: no interruption yet)."""

    __slots__ = ("clock", "fired", "hard_at", "soft_at")

    def __init__(self, soft_at: float, hard_at: float, clock: Callable[[], float]) -> None:
        self.soft_at = soft_at
        self.hard_at = hard_at
        self.clock = clock
        self.fired = False

    def disarm(self) -> None:
        _current.set(None)

    def overran(self) -> bool:
        return self.clock() >= self.hard_at

    def remaining(self) -> float:
        return self.soft_at - self.clock()


_current: ContextVar[Armed | None] = ContextVar("taskhandler_deadline", default=None)


def arm(deadline: float, grace: float, clock: Callable[[], float] = time.monotonic) -> Armed:
    now = clock()
    armed = Armed(now + deadline - grace, now + deadline, clock)
    _current.set(armed)
    return armed


def check_deadline() -> None:
    """Raise ``DeadlineExceededError`` if the current task's soft deadline has passed."""
    armed = _current.get()
    if armed is not None and armed.remaining() <= 0:
        armed.fired = True
        raise DeadlineExceededError("the task's soft deadline has passed")
