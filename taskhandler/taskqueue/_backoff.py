"""Retry policy: when a failed push task is tried again, and when it is given up.

App Engine's rules, as queue.yaml documents them:

* the first retry waits ``min_backoff_seconds``; the wait doubles ``max_doublings`` times, then
  grows linearly by ``2**max_doublings * min_backoff_seconds`` per retry, and never exceeds
  ``max_backoff_seconds`` (min 10 s, 3 doublings, max 300 s gives 10, 20, 40, 80, 160, 240, 300);
* a task stops being retried only when *every* limit that is set is exceeded: more than
  ``task_retry_limit`` retries, and more than ``task_age_limit`` seconds since its first attempt.
  ``task_retry_limit: 0`` therefore means one attempt. With no limit set, it is retried forever.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MIN_BACKOFF_SECONDS = 0.1
DEFAULT_MAX_BACKOFF_SECONDS = 3600.0
DEFAULT_MAX_DOUBLINGS = 16


@dataclass(frozen=True)
class RetryPolicy:
    """The effective retry parameters of one task (queue values overridden by the task's).

    Attributes:
        task_retry_limit: retries allowed after the first attempt; ``None`` = no limit.
        task_age_limit: seconds after the first attempt during which retries happen;
            ``None`` = no limit.
        min_backoff_seconds: the wait before the first retry.
        max_backoff_seconds: the longest wait between two attempts.
        max_doublings: how many times the wait doubles before it grows linearly.
    """

    task_retry_limit: int | None = None
    task_age_limit: float | None = None
    min_backoff_seconds: float = DEFAULT_MIN_BACKOFF_SECONDS
    max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS
    max_doublings: int = DEFAULT_MAX_DOUBLINGS

    def backoff(self, retry_count: int) -> float:
        """Seconds to wait before the attempt with ``X-AppEngine-TaskRetryCount: retry_count``.

        >>> [RetryPolicy(min_backoff_seconds=10, max_backoff_seconds=300,
        ...              max_doublings=3).backoff(n) for n in range(1, 8)]
        [10.0, 20.0, 40.0, 80.0, 160.0, 240.0, 300.0]
        """
        if retry_count < 1:
            return 0.0
        base = float(self.min_backoff_seconds)
        doublings = retry_count - 1
        if doublings <= self.max_doublings:
            delay = base * 2.0**doublings
        else:
            # After the doublings the wait grows by a constant step (App Engine's queue.yaml
            # reference: 10 s, 3 doublings -> 10, 20, 40, 80, 160, 240, ...).
            delay = base * 2.0**self.max_doublings * (retry_count - self.max_doublings)
        return min(delay, float(self.max_backoff_seconds))

    def gives_up(self, next_retry_count: int, age: float) -> bool:
        """True when a task that just failed must not be tried again.

        Args:
            next_retry_count: the retry count the next attempt would carry.
            age: seconds since the task's first attempt.
        """
        limits: list[bool] = []
        if self.task_retry_limit is not None:
            limits.append(next_retry_count > self.task_retry_limit)
        if self.task_age_limit is not None:
            limits.append(age > self.task_age_limit)
        return bool(limits) and all(limits)
