"""When the local queue may start a task, and what happens to one that failed.

Pure: plain classes over plain data, no thread, no I/O. Every method takes the time (``now``,
seconds since the epoch) as an argument, so the rules are tested by moving a number.

* **Token bucket** (queue.yaml ``rate``, ``bucket_size``): a queue starts a task only with a
  token; the bucket starts full and refills at ``rate`` tokens per second up to ``bucket_size``.
* **Concurrency**: at most ``max_concurrent_requests`` tasks of a queue leased at once, and at
  most ``slots`` over all queues.
* **Fairness**: queues take turns being served first.
* **Retries** (queue.yaml ``retry_parameters`` overridden by the task's ``retry_options``): a 2xx
  answer finishes the task; anything else retries it after the backoff of
  :class:`~taskhandler.taskqueue.RetryPolicy`, until every limit that is set is exceeded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ._backoff import RetryPolicy
from ._queue_yaml import QueueConfig, RetryParameters

__all__ = ["Attempt", "Finish", "GiveUp", "Retry", "Scheduler", "TokenBucket"]

_EPSILON = 1e-9  # float error in token arithmetic


class TokenBucket:
    """``rate`` tokens per second, at most ``size`` held; starts full.

    Example:
        >>> bucket = TokenBucket(rate=2.0, size=3)
        >>> bucket.available(100.0), bucket.take(3), bucket.available(100.5)
        (3, None, 1)
    """

    def __init__(self, rate: float, size: int) -> None:
        self.rate = float(rate)
        self.size = int(size)
        self._tokens = float(size)
        self._at: float | None = None

    def _refill(self, now: float) -> float:
        if self._at is not None and now > self._at:
            self._tokens = min(float(self.size), self._tokens + (now - self._at) * self.rate)
        if self._at is None or now > self._at:
            self._at = now
        return self._tokens

    def available(self, now: float) -> int:
        """Whole tokens available at ``now``."""
        return max(0, math.floor(self._refill(now) + _EPSILON))

    def take(self, count: int) -> None:
        """Spend ``count`` tokens (after :meth:`available` said they are there)."""
        self._tokens -= count

    def next_token(self, now: float) -> float:
        """When the next whole token is there: ``now`` if one is, ``inf`` at rate 0."""
        tokens = self._refill(now)
        if tokens >= 1 - _EPSILON:
            return now
        if self.rate <= 0:
            return math.inf
        return now + (1 - tokens) / self.rate


@dataclass(frozen=True)
class Attempt:
    """What the retry rules need of a task whose attempt ended.

    Attributes:
        queue_name: its queue.
        retry: the task's own retry parameters, if any.
        retry_count: the ``X-AppEngine-TaskRetryCount`` the attempt carried.
        execution_count: the ``X-AppEngine-TaskExecutionCount`` the attempt carried.
        first_run: when its first attempt started.
    """

    queue_name: str
    retry: RetryParameters | None
    retry_count: int
    execution_count: int
    first_run: float


@dataclass(frozen=True)
class Finish:
    """The task succeeded: it is done."""


@dataclass(frozen=True)
class Retry:
    """The task failed and runs again at ``eta`` with ``execution_count``."""

    eta: float
    execution_count: int


@dataclass(frozen=True)
class GiveUp:
    """The task failed and every retry limit is exceeded after ``attempts`` attempts."""

    attempts: int


Decision = Finish | Retry | GiveUp


class Scheduler:
    """The dispatch rules of a set of queues, with the state they need (buckets, leases held).

    Args:
        queues: the queue definitions by name.
        slots: how many tasks may be leased at once over all queues.
    """

    def __init__(self, queues: Mapping[str, QueueConfig], *, slots: int) -> None:
        self.queues = dict(queues)
        self.slots = slots
        self.leased: dict[str, int] = dict.fromkeys(self.queues, 0)
        self._buckets = {
            name: TokenBucket(config.rate, config.bucket_size)
            for name, config in self.queues.items()
        }
        self.paused: set[str] = set()  # paused while running (pause()), beside rate 0
        self._turn = 0
        self._policies: dict[tuple[str, RetryParameters | None], RetryPolicy] = {}

    @property
    def in_flight(self) -> int:
        """Tasks leased and not yet finished, over all queues."""
        return sum(self.leased.values())

    def dispatchable(self) -> list[str]:
        """The push queues that are not paused, starting with the one whose turn it is.

        Each call moves the turn on by one, so no queue is always served first.
        """
        names = [
            n
            for n, c in self.queues.items()
            if c.mode == "push" and not c.paused and n not in self.paused
        ]
        self._turn += 1
        if names:
            k = self._turn % len(names)
            names = names[k:] + names[:k]
        return names

    def startable(self) -> list[str]:
        """The push queues that are not paused and below their concurrency limit."""
        return [
            name
            for name, config in self.queues.items()
            if config.mode == "push"
            and not config.paused
            and name not in self.paused
            and (
                config.max_concurrent_requests is None
                or self.leased[name] < config.max_concurrent_requests
            )
        ]

    def quota(self, queue_name: str, now: float, free: int, *, ending: int = 0) -> int:
        """How many due tasks of the queue may be leased now, with ``free`` slots left.

        ``ending`` of its leased tasks are being recorded as ended along with this lease.
        """
        config = self.queues[queue_name]
        cap = free
        if config.max_concurrent_requests is not None:
            held = self.leased[queue_name] - ending
            cap = min(cap, config.max_concurrent_requests - held)
        if cap <= 0:
            return 0
        return min(cap, self._buckets[queue_name].available(now))

    def took(self, queue_name: str, count: int) -> None:
        """``count`` tasks of the queue were leased: spend their tokens, count them in flight."""
        self._buckets[queue_name].take(count)
        self.leased[queue_name] += count

    def ended(self, queue_name: str, count: int = 1) -> None:
        """``count`` leased tasks of the queue are no longer in flight."""
        self.leased[queue_name] = max(0, self.leased.get(queue_name, 0) - count)

    def next_start(self, now: float, earliest: Mapping[str, float]) -> float | None:
        """The earliest time a task could be leased, given each queue's earliest pending ETA.

        Queues at their concurrency limit are left out (an ending delivery is what frees
        them); an empty bucket delays a queue to its next token. None when nothing can start.
        """
        best: float | None = None
        for name, eta in earliest.items():
            config = self.queues.get(name)
            if config is None or config.mode != "push" or config.paused or name in self.paused:
                continue
            limit = config.max_concurrent_requests
            if limit is not None and self.leased[name] >= limit:
                continue
            when = max(eta, self._buckets[name].next_token(now))
            best = when if best is None else min(best, when)
        return best

    def policy(self, queue_name: str, retry: RetryParameters | None) -> RetryPolicy:
        """The retry policy of a task: the queue's parameters overridden by the task's."""
        key = (queue_name, retry)
        policy = self._policies.get(key)
        if policy is None:
            params = self.queues[queue_name].retry_parameters
            if retry is not None:
                params = params.overridden_by(retry)
            policy = self._policies[key] = params.policy()
        return policy

    def decide(self, attempt: Attempt, *, ok: bool, executed: bool, now: float) -> Decision:
        """What follows an attempt that ended at ``now``: finish, retry (when), or give up."""
        if ok:
            return Finish()
        policy = self.policy(attempt.queue_name, attempt.retry)
        next_retry = attempt.retry_count + 1
        if policy.gives_up(next_retry, now - attempt.first_run):
            return GiveUp(attempts=next_retry)
        return Retry(
            eta=now + policy.backoff(next_retry),
            execution_count=attempt.execution_count + (1 if executed else 0),
        )
