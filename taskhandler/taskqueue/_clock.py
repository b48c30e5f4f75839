"""A clock that moves only when told to, so ETAs, backoff and rates are tested without sleeping."""

from __future__ import annotations

import threading


class ManualClock:
    """A callable clock (seconds since the epoch) that tests advance by hand.

    Give it to ``LocalTaskQueue(clock=...)``: ``run_until_idle()`` then *advances* it to the next
    ETA, backoff or rate token instead of sleeping, so an hour of retries runs in milliseconds.

    Args:
        start: the initial time, in seconds since the epoch.

    Example:
        >>> clock = ManualClock(1_700_000_000.0)
        >>> clock.advance(1.5)
        >>> clock()
        1700000001.5
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (negative values are refused)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        with self._lock:
            self._now += seconds

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"
