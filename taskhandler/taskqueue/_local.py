"""``LocalTaskQueue``: an embedded push queue in SQLite that delivers tasks the way App Engine does.

It is three parts, each in a module of its own:

* ``_store``: the SQLite file, its schema and every statement (durability, crash safety,
  foreign files and storage errors are described there);
* ``_scheduler``: the pure rules -- ETA, token bucket, concurrency, retries and backoff;
* ``_dispatcher``: the pump and the delivery threads, in-process or over HTTP.

This module is the public face: it checks its arguments, stores what ``taskqueue.add()`` hands
it, answers questions about the queues, and runs the dispatcher on request.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import threading
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from ..exceptions import ConfigError
from ._backend import LeasedTask, NewTask
from ._dispatch import Dispatcher, make_dispatcher
from ._dispatcher import DispatchLoop
from ._errors import (
    Error,
    InvalidDispatchDeadlineError,
    InvalidQueueModeError,
    QueuePausedError,
    TaskLeaseExpiredError,
    TombstonedTaskError,
    UnknownQueueError,
)
from ._queue_yaml import QueueConfig, normalize_queues
from ._scheduler import Scheduler
from ._store import StoredTask, TaskStore, generated_name, process_host, utc

__all__ = ["TOMBSTONE_SECONDS", "LocalTaskQueue", "QueueFigures", "QueuedTask"]

logger = logging.getLogger("taskhandler.taskqueue")

TOMBSTONE_SECONDS = 9 * 24 * 3600.0
PREFETCH = 16  # tasks leased beyond one per worker: recorded and leased in batches


@dataclass(frozen=True)
class QueuedTask:
    """A task in a :class:`LocalTaskQueue`, as :meth:`LocalTaskQueue.tasks` shows it.

    Attributes:
        queue_name: its queue.
        task_name: its name (generated for unnamed tasks).
        method: HTTP method.
        url: relative URL, with the query string for non-POST methods.
        headers: the extra headers given when it was created.
        payload: the body.
        target: the service it goes to (the queue's ``target`` when the queue has one).
        eta: when it may run next (aware UTC).
        created: when it was added (aware UTC).
        retry_count: attempts made so far.
        execution_count: attempts that reached the app and failed.
        previous_response: the status of the last attempt, if it got one.
        retry_reason: why the last attempt failed.
        state: ``pending``, or ``leased`` while it is being delivered. A pull task is always
            ``pending``; while a worker holds its lease, ``eta`` is when the lease ends.
        tag: a pull task's tag, if any.
        dispatch_deadline: seconds one delivery of this push task may wait for the app's
            answer (its ``dispatch_deadline_usec``), or ``None``: the queue's
            ``dispatch_timeout``. Always ``None`` for a pull task.
    """

    queue_name: str
    task_name: str
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    payload: bytes
    target: str | None
    eta: datetime.datetime
    created: datetime.datetime
    retry_count: int
    execution_count: int
    previous_response: int | None
    retry_reason: str | None
    state: str
    tag: str | None = None
    dispatch_deadline: float | None = None

    def extract_params(self) -> dict[str, str | list[str]]:
        """The params: from the form body for POST, from the query string otherwise."""
        if self.method in ("POST", "PULL"):
            query = self.payload.decode("utf-8", "replace")
        else:
            query = urllib.parse.urlsplit(self.url).query
        result: dict[str, str | list[str]] = {}
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            existing = result.get(key)
            if existing is None:
                result[key] = value
            elif isinstance(existing, list):
                existing.append(value)
            else:
                result[key] = [existing, value]
        return result

    @classmethod
    def _of(cls, task: StoredTask) -> QueuedTask:
        return cls(
            queue_name=task.queue,
            task_name=task.name,
            method=task.method,
            url=task.url,
            headers=task.headers,
            payload=task.payload,
            target=task.target,
            eta=utc(task.eta),
            created=utc(task.created),
            retry_count=task.retry_count,
            execution_count=task.execution_count,
            previous_response=task.previous_response,
            retry_reason=task.retry_reason,
            state=task.state,
            tag=task.tag,
            dispatch_deadline=task.dispatch_deadline,
        )


def _valid_deadline(deadline: object) -> bool:
    """Whether ``deadline`` may be a push task's dispatch deadline: None, or seconds above 0."""
    if deadline is None:
        return True
    return (
        isinstance(deadline, (int, float))
        and not isinstance(deadline, bool)
        and math.isfinite(deadline)
        and deadline > 0
    )


STATISTICS_WINDOW = 60.0
"""Seconds ``executed_last_minute`` looks back."""


@dataclass(frozen=True)
class QueueFigures:
    """A queue's statistics as a backend reports them (``QueueStatistics`` adds the queue).

    Attributes:
        tasks: tasks not finished or deleted (pending, leased or being delivered).
        oldest_eta: the earliest ETA that has come among them (seconds since the epoch), or
            None when there is no backlog (no task, or only tasks whose ETA is to come).
        executed_last_minute: deliveries started (push) or tasks leased (pull) in the last
            minute.
        in_flight: push queues: tasks being delivered; None for pull queues.
        enforced_rate: push queues: tasks per second the queue may start (0 when paused);
            None for pull queues.
    """

    tasks: int
    oldest_eta: float | None
    executed_last_minute: int
    in_flight: int | None
    enforced_rate: float | None


class _RecentCounts:
    """Per queue, how many tasks started in the last :data:`STATISTICS_WINDOW` seconds.

    Entries older than the window are dropped as new ones come and on reading, so the memory
    held is what one minute of starts needs (one entry per lease batch).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, deque[tuple[float, int]]] = {}

    def _prune(self, events: deque[tuple[float, int]], now: float) -> None:
        while events and events[0][0] <= now - STATISTICS_WINDOW:
            events.popleft()

    def add(self, queue_name: str, now: float, count: int) -> None:
        if count <= 0:
            return
        with self._lock:
            events = self._events.setdefault(queue_name, deque())
            self._prune(events, now)
            events.append((now, count))

    def count(self, queue_name: str, now: float) -> int:
        with self._lock:
            events = self._events.get(queue_name)
            if not events:
                return 0
            self._prune(events, now)
            return sum(count for _, count in events)


class _CountingScheduler(Scheduler):
    """The dispatch scheduler, also noting when each queue's deliveries start."""

    def __init__(
        self,
        queues: Mapping[str, QueueConfig],
        *,
        slots: int,
        clock: Callable[[], float],
        started: _RecentCounts,
    ) -> None:
        super().__init__(queues, slots=slots)
        self._clock = clock
        self._started = started

    def took(self, queue_name: str, count: int) -> None:
        super().took(queue_name, count)
        self._started.add(queue_name, float(self._clock()), count)


class LocalTaskQueue:
    """An embedded push queue: SQLite storage and in-process or HTTP dispatch.

    Args:
        target: where tasks go: a WSGI app, an ASGI app (an ``async def`` callable or an object
            with ``async def __call__``), or a base URL such as ``"http://127.0.0.1:8080"``.
        db: ``":memory:"`` (default) or a SQLite file path; a file keeps tasks, retries and
            task-name tombstones across restarts and crashes.
        queues: queue definitions (:func:`load_queue_yaml`'s result, or ``QueueConfig``s);
            ``default`` is added when missing.
        clock: a zero-argument callable giving seconds since the epoch (default ``time.time``).
            With a clock that has ``advance(seconds)`` (:class:`ManualClock`),
            :meth:`run_until_idle` advances it to the next ETA/backoff/token instead of sleeping.
        targets: service name -> WSGI app, ASGI app or base URL, for tasks whose target (the
            queue's, else the task's) names a service; other tasks go to ``target``.
        tombstone_seconds: how long names of finished or deleted named tasks stay reserved.
        dispatch_timeout: seconds an HTTP or ASGI delivery of a task without its own dispatch
            deadline may wait for the app's answer before the attempt counts as failed (and is
            retried). A task's ``dispatch_deadline_usec`` is its own limit instead, as on Cloud
            Tasks. A WSGI app called in-process cannot be interrupted: neither applies to it.
        workers: threads delivering tasks, and so the most tasks in flight overall.
        poll_interval: the longest the dispatcher sleeps before looking at the database again
            (tasks added by other processes are seen within this time).
        busy_timeout: seconds a storage call waits for another connection's write lock on the
            database before it fails with :class:`TransientError`.

    Raises:
        ConfigError: a bad argument, or a database file that cannot be opened, is not a
            taskhandler queue database (then it is left unchanged), or fails while it is
            being opened; the message names the file and the SQLite reason.

    Storage calls (``add()``, :meth:`delete`, :meth:`tasks`, ...) raise
    :class:`TransientError` (disk full, locked past ``busy_timeout``, I/O error) or
    :class:`InternalError` (file read-only, moved or corrupt) naming the file and the reason,
    never a ``sqlite3`` error; nothing is half stored.

    Example:
        >>> queues = load_queue_yaml("queue.yaml")                       # doctest: +SKIP
        >>> q = LocalTaskQueue(app, db="tasks.sqlite3", queues=queues)   # doctest: +SKIP
        >>> with taskqueue.use(q):                                       # doctest: +SKIP
        ...     taskqueue.add(url="/tasks/count", params={"amount": "1"})
        ...     q.run_until_idle(timeout=30)
    """

    def __init__(
        self,
        target: object,
        *,
        db: str | os.PathLike[str] = ":memory:",
        queues: Mapping[str, QueueConfig] | Iterable[QueueConfig] | None = None,
        clock: Callable[[], float] | None = None,
        targets: Mapping[str, object] | None = None,
        tombstone_seconds: float = TOMBSTONE_SECONDS,
        dispatch_timeout: float = 600.0,
        workers: int = 8,
        poll_interval: float = 0.5,
        busy_timeout: float = 30.0,
    ) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError("workers must be an integer >= 1", value=workers)
        for label, number in (
            ("tombstone_seconds", tombstone_seconds),
            ("dispatch_timeout", dispatch_timeout),
            ("poll_interval", poll_interval),
            ("busy_timeout", busy_timeout),
        ):
            if not isinstance(number, (int, float)) or not math.isfinite(number) or number <= 0:
                raise ConfigError(f"{label} must be a number > 0", value=number)
        if clock is not None and not callable(clock):
            raise ConfigError(
                "clock must be a callable returning seconds since the epoch", value=clock
            )
        self._queues = normalize_queues(queues)
        self._clock: Callable[[], float] = clock or time.time
        self._transport = make_dispatcher(target)
        self._transports: dict[str, Dispatcher] = {
            str(name): make_dispatcher(dest) for name, dest in (targets or {}).items()
        }
        self._db_path = str(db)
        self._started = _RecentCounts()
        self._closed = False
        self._store = TaskStore(
            self._db_path, busy_timeout=float(busy_timeout), tombstone_seconds=tombstone_seconds
        )
        try:
            self._recover()
        except Error as exc:
            self._store.close()
            raise ConfigError(f"cannot open the queue database: {exc}", path=self._db_path) from exc
        self._loop = DispatchLoop(
            store=self._store,
            scheduler=_CountingScheduler(
                self._queues, slots=workers + PREFETCH, clock=self._clock, started=self._started
            ),
            clock=self._clock,
            transport=self._transport,
            transports=self._transports,
            workers=workers,
            dispatch_timeout=float(dispatch_timeout),
            poll_interval=float(poll_interval),
            lease_prefix=f"{process_host()}/{os.getpid()}/{uuid.uuid4().hex[:12]}",
        )

    def _recover(self) -> None:
        """Make tasks leased by dead processes of this host, or with expired leases, pending."""
        now = self.now()
        with self._store.transaction("recovering interrupted deliveries") as tx:
            stale = tx.recover(now)
            tx.sweep_tombstones(now)
        if stale:
            logger.warning("redelivering %d task(s) whose delivery was interrupted", stale)

    # -- the backend interface used by taskqueue.add() ---------------------------------------

    def now(self) -> float:
        """The queue's clock, in seconds since the epoch."""
        return float(self._clock())

    @property
    def queues(self) -> dict[str, QueueConfig]:
        """The queue definitions, name -> :class:`QueueConfig` (a copy)."""
        return dict(self._queues)

    def _config(self, queue_name: str) -> QueueConfig:
        """The queue's definition; UnknownQueueError for an undeclared queue."""
        config = self._queues.get(queue_name)
        if config is None:
            raise UnknownQueueError(
                f"queue {queue_name!r} is not declared (declared: {', '.join(self._queues)})"
            )
        return config

    def check_queue(self, queue_name: str) -> None:
        """UnknownQueueError for an undeclared queue, InvalidQueueModeError for a pull queue."""
        if self._config(queue_name).mode != "push":
            raise InvalidQueueModeError(
                f"queue {queue_name!r} is a pull queue: only pull tasks (method='PULL') join it"
            )

    def check_pull_queue(self, queue_name: str) -> None:
        """UnknownQueueError for an undeclared queue, InvalidQueueModeError for a push queue."""
        if self._config(queue_name).mode != "pull":
            raise InvalidQueueModeError(
                f"queue {queue_name!r} is a push queue: pull tasks and leases need a queue.yaml"
                " queue with mode: pull"
            )

    def _check_task(self, task: NewTask) -> QueueConfig:
        """The queue's definition, if the task may join it (a pull task only a pull queue).

        A push task's ``dispatch_deadline`` must be a number of seconds above 0 (``Task``
        allows 15 s to 24 h; a lower one given here is kept, for tests of slow handlers).
        """
        if task.method == "PULL":
            self.check_pull_queue(task.queue_name)
        else:
            self.check_queue(task.queue_name)
            if not _valid_deadline(task.dispatch_deadline):
                raise InvalidDispatchDeadlineError(
                    "a task's dispatch deadline must be a number of seconds above 0; found "
                    f"{task.dispatch_deadline!r}"
                )
        return self._queues[task.queue_name]

    def enqueue(self, tasks: Sequence[NewTask], *, atomic: bool = False) -> list[str | Error]:
        """Store tasks; for each, the stored task name or the error that refused it.

        With ``atomic=True`` all are stored or none, and the first error is raised.
        """
        now = self.now()
        if len(tasks) == 1 and tasks[0].queue_name in self._queues:
            task = tasks[0]
            name = task.task_name or generated_name()
            config = self._queues[task.queue_name]
            if (
                config.mode == "push"
                and task.method != "PULL"
                and _valid_deadline(task.dispatch_deadline)
                and self._store.insert_new(
                    task, name=name, target=config.target or task.target, now=now
                )
            ):
                self._loop.wake()
                return [name]
        results: list[str | Error] = []
        with self._store.transaction(f"storing {len(tasks)} task(s)") as tx:
            for task in tasks:
                try:
                    config = self._check_task(task)
                    name = task.task_name or generated_name()
                    tx.insert(task, name=name, target=config.target or task.target, now=now)
                except Error as exc:
                    if atomic:
                        raise
                    results.append(exc)
                else:
                    results.append(name)
        self._loop.wake()
        return results

    def delete(self, queue_name: str, task_name: str) -> bool:
        """Delete a pending or running task (a named one leaves a tombstone); True if found."""
        self._config(queue_name)
        with self._store.transaction(f"deleting task {task_name!r}") as tx:
            return tx.delete(queue_name, task_name, self.now()) > 0

    def purge(self, queue_name: str) -> int:
        """Delete every pending or running task of the queue; return how many."""
        self._config(queue_name)
        with self._store.transaction(f"purging queue {queue_name!r}") as tx:
            return tx.delete(queue_name, None, self.now())

    def run_now(self, queue_name: str, task_name: str) -> bool:
        """Make a pending task due now (ETA or backoff skipped). True if it was pending.

        For a pull task this ends its lease: it can be leased again at once.
        """
        self._config(queue_name)
        with self._store.transaction(f"running task {task_name!r} now") as tx:
            changed = tx.make_due(queue_name, task_name, self.now())
        self._loop.wake()
        return changed

    # -- pull queues ---------------------------------------------------------------------------

    def lease(
        self,
        queue_name: str,
        lease_seconds: float,
        max_tasks: int,
        *,
        group_by_tag: bool = False,
        tag: str | None = None,
    ) -> list[LeasedTask]:
        """Lease up to ``max_tasks`` tasks of a pull queue whose ETA has come.

        Each leased task's ETA becomes now + ``lease_seconds`` (so no one else leases it until
        then, and it can be leased again after if it was not deleted) and its retry count goes
        up by one. A task that has been leased its ``task_retry_limit`` times (the task's
        retry options, else the queue's ``retry_parameters``) is deleted instead, with a
        warning, as App Engine does. ``group_by_tag``: only tasks of ``tag``, or (``None``)
        of the oldest available task's tag. Arguments are checked by ``Queue.lease_tasks``.

        Raises:
            UnknownQueueError, InvalidQueueModeError: not a declared pull queue.
        """
        self.check_pull_queue(queue_name)
        now = self.now()
        config = self._queues[queue_name]

        def may_lease(task: StoredTask) -> bool:
            params = config.retry_parameters
            if task.retry is not None:
                params = params.overridden_by(task.retry)
            if params.task_age_limit is not None:
                return True  # App Engine asks "either limit not reached" at age 0
            limit = params.task_retry_limit
            return limit is None or limit >= task.retry_count + 1

        with self._store.transaction(f"leasing tasks of queue {queue_name!r}") as tx:
            leased, spent = tx.lease_pull(
                queue_name,
                now=now,
                expires=now + lease_seconds,
                max_tasks=max_tasks,
                group_by_tag=group_by_tag,
                tag=tag,
                may_lease=may_lease,
            )
        self._started.add(queue_name, now, len(leased))
        for task in spent:
            logger.warning(
                "task %s in queue %s cannot be leased again after %d leases; deleted",
                task.name,
                queue_name,
                task.retry_count,
            )
        return [
            LeasedTask(
                task_name=task.name,
                payload=task.payload,
                tag=task.tag,
                eta=task.eta,
                retry_count=task.retry_count,
            )
            for task in leased
        ]

    def modify_lease(
        self, queue_name: str, task_name: str, eta: float, lease_seconds: float
    ) -> float:
        """Make the lease of a task leased until ``eta`` end ``lease_seconds`` from now.

        ``0`` ends the lease: the task can be leased again at once. Returns the new ETA.

        Raises:
            TaskLeaseExpiredError: the lease ended, or the task was leased again since.
            TombstonedTaskError: the task was deleted.
            Error: no task of that name.
            QueuePausedError: the queue is paused.
        """
        self.check_pull_queue(queue_name)
        if self._queues[queue_name].paused:
            raise QueuePausedError(f"queue {queue_name!r} is paused")
        now = self.now()
        expires = now + lease_seconds
        with self._store.transaction(f"changing the lease of task {task_name!r}") as tx:
            result = tx.modify_pull_lease(queue_name, task_name, eta=eta, now=now, expires=expires)
        if result == "expired":
            raise TaskLeaseExpiredError(
                f"the lease of task {task_name!r} in queue {queue_name!r} has expired or was"
                " taken by another lease"
            )
        if result == "tombstoned":
            raise TombstonedTaskError(f"task {task_name!r} of queue {queue_name!r} was deleted")
        if result == "unknown":
            raise Error(f"no task {task_name!r} in queue {queue_name!r}")
        return expires

    def pause(self, queue_name: str) -> None:
        """Stop starting the queue's tasks until :meth:`resume` (they are kept, and may still be
        added). Deliveries in flight finish. Lasts while this object lives, like the console's
        *Pause*; a ``rate: 0`` in queue.yaml pauses a queue for good.
        """
        self.check_queue(queue_name)
        self._loop.pause(queue_name, True)

    def resume(self, queue_name: str) -> None:
        """Start the queue's tasks again after :meth:`pause`."""
        self.check_queue(queue_name)
        self._loop.pause(queue_name, False)

    def is_paused(self, queue_name: str) -> bool:
        """True when the queue is paused: by :meth:`pause`, or by ``rate: 0`` in queue.yaml."""
        self.check_queue(queue_name)
        return self._queues[queue_name].paused or self._loop.is_paused(queue_name)

    def tasks(self, queue_name: str = "default") -> list[QueuedTask]:
        """The tasks still to run in ``queue_name`` (pending or being delivered), in ETA order.

        For a pull queue: every task not deleted, leased or not.
        """
        self._config(queue_name)
        with self._store.reading("listing tasks") as tx:
            return [QueuedTask._of(task) for task in tx.live(queue_name)]

    def queue_statistics(self, queue_name: str) -> QueueFigures:
        """The queue's figures, for ``Queue.fetch_statistics()`` and ``QueueStatistics.fetch()``.

        ``tasks``, ``oldest_eta`` and ``in_flight`` are read from the database, so they include
        what other processes sharing the file added or are delivering;
        ``executed_last_minute`` counts the deliveries this object started and the tasks it
        leased in the last minute (of its clock).

        Raises:
            UnknownQueueError: the queue is not declared.
        """
        config = self._config(queue_name)
        now = self.now()
        with self._store.reading(f"reading statistics of queue {queue_name!r}") as tx:
            tasks, oldest, leased = tx.queue_figures(queue_name, now)
        push = config.mode == "push"
        paused = push and (config.paused or self._loop.is_paused(queue_name))
        return QueueFigures(
            tasks=tasks,
            oldest_eta=oldest,
            executed_last_minute=self._started.count(queue_name, now),
            in_flight=leased if push else None,
            enforced_rate=(0.0 if paused else float(config.rate)) if push else None,
        )

    def counts(self) -> dict[str, dict[str, int]]:
        """Per queue, the number of tasks in each state (pending, leased, done, deleted, failed)."""
        result = {
            name: dict.fromkeys(("pending", "leased", "done", "deleted", "failed"), 0)
            for name in self._queues
        }
        with self._store.reading("counting tasks") as tx:
            rows = tx.counts()
        for queue_name, state, count in rows:
            result.setdefault(queue_name, {})[state] = count
        return result

    # -- dispatch ----------------------------------------------------------------------------

    def run_until_idle(self, timeout: float = 30.0) -> int:
        """Deliver tasks until none is pending or in flight; return the attempts made.

        Tasks due later (ETA, countdown, backoff, an empty rate bucket) are waited for: with the
        system clock by sleeping, with a :class:`ManualClock` by advancing it, which is what tests
        should use. Paused (rate 0) and pull queues are not waited for.

        Args:
            timeout: real seconds after which :class:`TimeoutError` is raised if still busy.

        Raises:
            TimeoutError: not idle within ``timeout`` (e.g. a task retried forever).
            RuntimeError: the background dispatcher (:meth:`start`) is running.
        """
        return self._loop.run(timeout=timeout, due_only=False)

    def run_due(self, timeout: float = 30.0) -> int:
        """Deliver the tasks due now, wait for those deliveries, and return the attempts made.

        Unlike :meth:`run_until_idle`, nothing due later is waited for, and a
        :class:`ManualClock` is not advanced: a test can step through retries one at a time.
        A delivery that fails and is due again at once (zero backoff) is retried in the same call.

        Raises:
            TimeoutError: deliveries still in flight after ``timeout`` real seconds.
            RuntimeError: the background dispatcher (:meth:`start`) is running.
        """
        return self._loop.run(timeout=timeout, due_only=True)

    def start(self) -> LocalTaskQueue:
        """Start delivering tasks on a background thread (for servers); returns the queue.

        ``stop()`` (or leaving a ``with`` block over the queue) ends it. An ``add()`` in this
        process wakes the dispatcher at once; tasks added by other processes are seen within
        ``poll_interval``.
        """
        if self._closed:
            raise Error("the queue is closed")
        self._loop.start()
        return self

    @property
    def running(self) -> bool:
        """True while the background dispatcher runs."""
        return self._loop.running

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background dispatcher; deliveries in flight may finish (up to ``timeout``)."""
        self._loop.stop(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop dispatching, release this queue's leases, close connections and the database.

        Deliveries in flight get ``timeout`` seconds to end (stopping the dispatcher and
        recording their outcomes each wait up to it); the tasks of those still running then
        keep their leases (see "Leases" in the dispatcher's module docs).
        """
        if self._closed:
            return
        transports = {id(t): t for t in [self._transport, *self._transports.values()]}
        self._loop.close(list(transports.values()), timeout)
        self._closed = True
        self._store.close()

    def __enter__(self) -> LocalTaskQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalTaskQueue(db={self._db_path!r}, queues={list(self._queues)!r})"
