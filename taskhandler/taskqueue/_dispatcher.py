"""The local queue's dispatcher: the pump that leases due tasks, worker threads that deliver them.

One *pump* (the caller's thread in ``run_until_idle()``, a background thread after ``start()``)
loops: it records the outcomes of finished deliveries and leases the next due tasks in **one**
transaction, hands the leased tasks to ``workers`` delivery threads, and sleeps until a delivery
ends, an ``add()`` in this process wakes it, the next ETA comes, or ``poll_interval`` passes
(tasks added by other processes are seen then). What may be leased is the
:class:`~taskhandler.taskqueue._scheduler.Scheduler`'s call (ETA, rate, concurrency limits).

Prefetch. Up to the scheduler's ``slots`` tasks are leased at once (``LocalTaskQueue`` makes
that ``workers + 16``), so a worker finds its next task waiting while the pump records the last
ones, and one transaction records and leases a batch. A queue's ``max_concurrent_requests``
still bounds its leased tasks.

Leases. A delivery waits for the app's answer at most the task's *timeout*: its own dispatch
deadline (``dispatch_deadline_usec``) when it has one, else the queue's ``dispatch_timeout``.
A lease lasts twice the time one delivery may take (one delivery before its own on its
worker, then its own) plus :data:`LEASE_MARGIN`: the task's timeout, or for an app called
in-process (WSGI, which no timeout interrupts) at least ``dispatch_timeout``. So another
process does not take a task whose delivery is still running, and a 20-second HTTP task of a
process that died on another host is free again two minutes later. A task that waited for
longer deliveries than that before its own starts has its lease extended first (one write,
only then); if another process released it meanwhile, it is not delivered on that lease. A
process that dies is seen by its pid on its own host: at once by the next queue opened
there, and within :data:`DEAD_CHECK` seconds by a queue already running there.

Delivery goes through the transports of ``_dispatch`` (WSGI or ASGI in-process, HTTP to a base
URL), with the headers of :meth:`TaskContext.to_headers`.

Storage trouble. The background pump logs a storage error once (one WARNING line), backs off
and tries again, so it resumes by itself once the condition clears; an outcome it could not
record is kept and recorded then, and the task is not delivered again. ``run_until_idle()``
raises the error instead.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence

from ..context import TaskContext
from ._dispatch import MAX_TIMEOUT, Dispatcher, Outcome, Request, WsgiDispatcher, clean_reason
from ._errors import Error, InternalError, TransientError
from ._scheduler import Attempt, Finish, GiveUp, Retry, Scheduler
from ._store import StoredTask, TaskStore, utc

__all__ = ["DEAD_CHECK", "LEASE_MARGIN", "DispatchLoop", "request_for"]

logger = logging.getLogger("taskhandler.taskqueue")

LEASE_MARGIN = 60.0  # seconds a lease outlives the longest a delivery may take
TOMBSTONE_SWEEP = 3600.0  # seconds between sweeps of expired tombstones
DEAD_CHECK = 30.0  # seconds between looks for leases of dead processes of this host
_BACKOFF_FIRST = 0.05  # seconds the background pump waits after its first storage error
_BACKOFF_MAX = 5.0  # ... doubling up to this, or the poll interval if that is longer


def request_for(task: StoredTask) -> Request:
    """The request App Engine sends for ``task``: its own headers, then the queue's."""
    headers = list(task.headers)
    if task.payload and not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("Content-Type", "text/plain"))
    retried = task.retry_count > 0
    context = TaskContext(
        queue_name=task.queue,
        task_name=task.name,
        retry_count=task.retry_count,
        execution_count=task.execution_count,
        eta=utc(max(task.eta, 0.0)),
        previous_response=task.previous_response if retried else None,
        retry_reason=clean_reason(task.retry_reason) if retried and task.retry_reason else None,
    )
    headers.extend(context.to_headers().items())
    return Request(method=task.method, url=task.url, headers=headers, body=task.payload)


class DispatchLoop:
    """Leases, delivers and records the tasks of one :class:`TaskStore`.

    Args:
        store: the storage.
        scheduler: the dispatch rules; its ``slots`` bound the tasks leased at once.
        clock: seconds since the epoch; one with ``advance(seconds)`` is advanced by
            ``run_until_idle()`` instead of sleeping.
        transport: delivers a task with no listed target; ``transports`` by target name.
        workers: delivery threads.
        dispatch_timeout: the longest a delivery of a task without its own dispatch deadline
            may wait for the app's answer; a task's ``dispatch_deadline`` overrides it. Both
            set the task's lease length (see the module docstring).
        poll_interval: the longest the pump sleeps before looking at the database again.
        lease_prefix: the start of every lease id this loop takes (host/pid/instance).
    """

    def __init__(
        self,
        *,
        store: TaskStore,
        scheduler: Scheduler,
        clock: Callable[[], float],
        transport: Dispatcher,
        transports: dict[str, Dispatcher],
        workers: int,
        dispatch_timeout: float,
        poll_interval: float,
        lease_prefix: str,
    ) -> None:
        self._store = store
        self._scheduler = scheduler
        self._clock = clock
        self._transport = transport
        self._transports = transports
        self._workers = workers
        self._dispatch_timeout = dispatch_timeout
        self._poll_interval = poll_interval
        self.lease_prefix = lease_prefix
        self._lease_ids = (f"{lease_prefix}/{n}" for n in itertools.count(1))
        self._pump_lock = threading.Lock()
        self._inbox: queue.SimpleQueue[StoredTask | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        # An outcome of None: the task's lease was lost before its delivery; nothing to record.
        self._results: queue.SimpleQueue[tuple[StoredTask, Outcome | None]] = queue.SimpleQueue()
        # Outcomes taken from _results whose recording failed; kept until it succeeds.
        self._unrecorded: list[tuple[StoredTask, Outcome | None]] = []
        self._storage_trouble: str | None = None  # the storage error the pump last logged
        self._storage_failures = 0  # storage errors in a row, for the background backoff
        self._attempts = 0
        self._last_sweep = -math.inf
        self._last_dead_check = -math.inf
        # Lease ids of the deliveries running now: close() leaves their leases alone. Once
        # close() has taken them (``_closing``), no delivery starts.
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self._closing = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pause(self, queue_name: str, paused: bool) -> None:
        """Pause or resume a queue; the pump looks again at once."""
        if paused:
            self._scheduler.paused.add(queue_name)
        else:
            self._scheduler.paused.discard(queue_name)
        self.wake()

    def is_paused(self, queue_name: str) -> bool:
        """Whether :meth:`pause` paused the queue."""
        return queue_name in self._scheduler.paused

    def wake(self) -> None:
        """Tell the pump to look again (a task was added or made due)."""
        if not self._wake.is_set():  # the common case while the pump is busy: no lock taken
            self._wake.set()

    # -- delivering --------------------------------------------------------------------------

    def _start_workers(self) -> None:
        while len(self._threads) < self._workers:
            thread = threading.Thread(
                target=self._work, name=f"taskhandler-queue-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while (task := self._inbox.get()) is not None:
            self._deliver(task)

    def _transport_of(self, task: StoredTask) -> Dispatcher:
        return self._transports.get(task.target or "", self._transport)

    def _timeout_of(self, task: StoredTask) -> float:
        """How long a delivery of ``task`` may wait: its dispatch deadline, else the queue's
        (24 hours at most, as a delivery waits)."""
        deadline = task.dispatch_deadline
        return min(self._dispatch_timeout if deadline is None else deadline, MAX_TIMEOUT)

    def _lease_timeout(self, task: StoredTask) -> float:
        """The delivery time ``task``'s lease must cover.

        Its timeout -- except for an app called in-process (WSGI), which no timeout
        interrupts: there at least the queue's ``dispatch_timeout``, so that a short dispatch
        deadline does not let another process take a task whose delivery is still running.
        """
        timeout = self._timeout_of(task)
        if isinstance(self._transport_of(task), WsgiDispatcher):
            return max(timeout, self._dispatch_timeout)
        return timeout

    def _hold_lease(self, task: StoredTask, timeout: float) -> bool:
        """Whether ``task``'s lease outlasts the delivery about to start, extended if need be.

        A prefetched task that waited behind longer deliveries may have little of its lease
        left: it is extended to outlast this delivery. False when the lease was lost (it
        expired and another process released it) or the queue was closed: the task is then
        not delivered by this loop.
        """
        expires = task.lease_expires
        now = float(self._clock())
        if expires is None or expires - now >= timeout + LEASE_MARGIN:
            return True
        try:
            with self._store.transaction(f"extending the lease of task {task.name!r}") as tx:
                held = tx.extend_lease(task, now + timeout + LEASE_MARGIN)
        except (TransientError, InternalError) as exc:
            # No other process can release it either while the file fails: deliver.
            logger.warning("%s; delivering task %s on its current lease", exc, task.name)
            return True
        except Error:
            return False  # the queue was closed: its leases were released
        if not held:
            logger.warning(
                "task %s of queue %s was not delivered on this lease: it expired while the task "
                "waited for a worker, and another process released it",
                task.name,
                task.queue,
            )
        return held

    def _deliver(self, task: StoredTask) -> None:
        transport = self._transport_of(task)
        timeout = self._timeout_of(task)
        outcome: Outcome | None = None
        lease = str(task.lease_id)
        with self._running_lock:  # one step with close()'s look at what runs
            starts = not self._closing
            if starts:
                self._running.add(lease)
        try:
            if starts and self._hold_lease(task, self._lease_timeout(task)):
                try:
                    outcome = transport(request_for(task), timeout=timeout)
                except Exception as exc:  # a transport bug must not lose the task
                    logger.exception("delivering task %s failed", task.name)
                    outcome = Outcome(
                        status=None,
                        reason=clean_reason(f"dispatch error {type(exc).__name__}"),
                        executed=False,
                    )
        finally:
            with self._running_lock:  # its outcome is there before close() may look
                self._results.put((task, outcome))
                self._running.discard(lease)
        self._wake.set()

    # -- one pump step: record what ended, lease what is due -----------------------------------

    def _exchange(self, now: float, *, lease: bool) -> list[StoredTask]:
        """Record finished deliveries and lease due tasks in one transaction; the leased tasks.

        If the transaction fails the outcomes are kept (their tasks stay leased, and count for
        the limits) and recorded by a later call; nothing is leased; the error is raised.
        Every update names the task's lease, so an outcome is recorded once.
        """
        while True:
            try:
                self._unrecorded.append(self._results.get_nowait())
            except queue.Empty:
                break
        batch = self._unrecorded
        scheduler = self._scheduler
        ending = collections.Counter(task.queue for task, _ in batch)
        free = scheduler.slots - scheduler.in_flight + len(batch) if lease else 0
        if not batch and free <= 0:
            return []
        done: list[StoredTask] = []
        failed: list[tuple[StoredTask, Outcome, int]] = []
        retries: list[tuple[StoredTask, float, int, int | None, str]] = []
        for task, outcome in batch:
            if outcome is None:
                continue  # the lease was lost: the task is another process's now
            attempt = Attempt(
                queue_name=task.queue,
                retry=task.retry,
                retry_count=task.retry_count,
                execution_count=task.execution_count,
                first_run=now if task.first_run is None else task.first_run,
            )
            decision = scheduler.decide(attempt, ok=outcome.ok, executed=outcome.executed, now=now)
            if isinstance(decision, Finish):
                done.append(task)
            elif isinstance(decision, GiveUp):
                failed.append((task, outcome, decision.attempts))
            elif isinstance(decision, Retry):
                reason = outcome.reason or "unknown"
                retries.append(
                    (task, decision.eta, decision.execution_count, outcome.status, reason)
                )
        sweep = now - self._last_sweep > TOMBSTONE_SWEEP
        doing = "leasing tasks"
        if batch:
            doing = f"recording the outcome of {len(batch)} delivery(ies)"
            doing += " and leasing tasks" if free > 0 else ""
        leased: list[StoredTask] = []
        taken: dict[str, int] = {}

        def lease_end(task: StoredTask) -> float:
            # A prefetched task may wait for one delivery before its own starts.
            return now + 2 * self._lease_timeout(task) + LEASE_MARGIN

        look_for_dead = free > 0 and now - self._last_dead_check > DEAD_CHECK

        with self._store.transaction(doing) as tx:
            tx.finish(done, "done", now)
            tx.finish([task for task, _, _ in failed], "failed", now)
            tx.reschedule(retries)
            if sweep:
                tx.sweep_tombstones(now)
            if look_for_dead:
                # A process of this host that died mid-delivery: its tasks need not wait
                # for their leases (up to two dispatch deadlines) to run again.
                tx.release_dead(now)
            if free > 0:
                tx.release_expired(now, except_prefix=self.lease_prefix)
                for name in scheduler.dispatchable():
                    count = scheduler.quota(
                        name, now, free - len(leased), ending=ending.get(name, 0)
                    )
                    if count <= 0:
                        continue
                    got = tx.lease(name, now, count, self._lease_ids, lease_end)
                    if got:
                        leased += got
                        taken[name] = len(got)
                    if len(leased) >= free:
                        break
        if sweep:
            self._last_sweep = now
        if look_for_dead:
            self._last_dead_check = now
        self._unrecorded = []
        for name, count in ending.items():
            scheduler.ended(name, count)
        for name, count in taken.items():
            scheduler.took(name, count)
        for task, outcome, attempts in failed:
            logger.warning(
                "task %s of queue %s failed after %d attempt(s) (%s); giving up",
                task.name,
                task.queue,
                attempts,
                outcome.reason,
            )
        return leased

    def _next_due(self, now: float) -> float | None:
        """The earliest time a task could be leased, or None when no dispatchable task waits."""
        scheduler = self._scheduler
        with self._store.reading("looking for due tasks") as tx:
            earliest = {}
            for name in scheduler.startable():
                eta = tx.earliest_eta(name)
                if eta is not None:
                    earliest[name] = eta
            expiry = tx.earliest_lease_expiry()
        best = scheduler.next_start(now, earliest)
        if expiry is not None and scheduler.in_flight == 0:
            # Another process's lease: its task is ours to deliver once the lease expires.
            best = expiry if best is None else min(best, expiry)
        return best

    # -- the pump ------------------------------------------------------------------------------

    def _pump(self, *, until_idle: bool, deadline: float | None, due_only: bool = False) -> None:
        advance = getattr(self._clock, "advance", None) if until_idle and not due_only else None
        self._start_workers()
        scheduler = self._scheduler
        while True:
            self._wake.clear()
            now = float(self._clock())
            leased = self._exchange(now, lease=not self._stop.is_set())
            if self._storage_trouble is not None:
                self._storage_trouble = None
                self._storage_failures = 0
                logger.info("the task dispatcher can use %s again", self._store.path)
            for task in leased:
                self._attempts += 1
                self._inbox.put(task)
            if self._stop.is_set():
                return
            in_flight = scheduler.in_flight
            if leased and in_flight < scheduler.slots:
                continue
            due = None if leased else self._next_due(now)
            if until_idle and in_flight == 0 and (due is None or (due_only and due > now)):
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"the queue was not idle in time ({in_flight} in flight, next ETA "
                    f"{'none' if due is None else utc(due).isoformat()})"
                )
            if advance is not None and in_flight == 0 and due is not None:
                advance(max(due - now, 0.0))
                continue
            wait = (
                self._poll_interval
                if due is None
                else min(max(due - now, 0.0), self._poll_interval)
            )
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0.0))
            self._wake.wait(wait)

    def run(self, *, timeout: float, due_only: bool) -> int:
        """Pump in this thread until idle (see ``LocalTaskQueue.run_until_idle``); the attempts.

        Raises:
            RuntimeError: the background pump is running.
        """
        if not self._pump_lock.acquire(blocking=False):
            raise RuntimeError("the background dispatcher is running; stop() it first")
        try:
            before = self._attempts
            self._stop.clear()
            self._pump(until_idle=True, deadline=time.monotonic() + timeout, due_only=due_only)
            return self._attempts - before
        finally:
            self._pump_lock.release()

    def start(self) -> None:
        """Pump on a background thread until :meth:`stop`.

        Raises:
            RuntimeError: a pump is already running.
        """
        if not self._pump_lock.acquire(blocking=False):
            raise RuntimeError("the queue is already dispatching")
        self._stop.clear()

        def run() -> None:
            try:
                while not self._stop.is_set():
                    try:
                        self._pump(until_idle=False, deadline=None)
                    except (TransientError, InternalError) as exc:
                        self._wake.wait(self._storage_backoff(exc))
            except Exception:
                logger.exception("the task dispatcher stopped on an error")
            finally:
                self._pump_lock.release()

        self._thread = threading.Thread(
            target=run, name="taskhandler-queue-dispatcher", daemon=True
        )
        self._thread.start()

    def _storage_backoff(self, exc: TransientError | InternalError) -> float:
        """Log a storage error of the background pump; return how long to wait.

        One WARNING line when the trouble starts or its reason changes (DEBUG while it lasts);
        the wait doubles from 50 ms up to 5 s (or ``poll_interval`` if longer). An ``add()``
        that succeeds, or a delivery that ends, cuts the wait short.
        """
        self._storage_failures += 1
        delay = min(
            _BACKOFF_FIRST * 2.0 ** min(self._storage_failures - 1, 30),
            max(_BACKOFF_MAX, self._poll_interval),
        )
        reason = exc.reason or str(exc)
        level = logging.DEBUG if reason == self._storage_trouble else logging.WARNING
        self._storage_trouble = reason
        logger.log(level, "the task dispatcher is waiting: %s; retrying in %.2f s", exc, delay)
        return delay

    @property
    def running(self) -> bool:
        """True while the background pump runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float) -> None:
        """Stop the background pump; deliveries in flight may finish (up to ``timeout``)."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout)
        self._thread = None
        self._settle(timeout)

    def _settle(self, timeout: float) -> None:
        """Record the outcome of deliveries still in flight, waiting up to ``timeout``."""
        end = time.monotonic() + timeout
        while self._scheduler.in_flight > 0 and time.monotonic() < end:
            self._wake.clear()
            try:
                recorded = bool(self._unrecorded) or not self._results.empty()
                self._exchange(float(self._clock()), lease=False)
            except (TransientError, InternalError):
                if len(self._unrecorded) >= self._scheduler.in_flight:
                    return  # every delivery has ended; only the recording fails
                recorded = False
            if not recorded:
                self._wake.wait(min(0.05, max(end - time.monotonic(), 0.0)))

    def close(self, transports: Sequence[Dispatcher], timeout: float = 10.0) -> None:
        """Stop, let deliveries end (``timeout`` s at most), release this loop's leases but
        those of deliveries still running, close transports."""
        self.stop(timeout)
        if self._pump_lock.acquire(timeout=10):
            try:
                self._settle(timeout)
                with self._running_lock:
                    self._closing = True  # what has not started by now never will
                    running = frozenset(self._running)
                # Deliveries that ended since the wait: their outcomes (on a storage error
                # they stay unrecorded, as said below, and their tasks run again).
                with contextlib.suppress(TransientError, InternalError):
                    self._exchange(float(self._clock()), lease=False)
            finally:
                self._pump_lock.release()
        else:  # the pump is stuck: record nothing, start nothing
            with self._running_lock:
                self._closing = True
                running = frozenset(self._running)
        # Tasks leased but not started stay leased: released below, delivered again later.
        while True:
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._inbox.put(None)
        self._threads = []
        if self._unrecorded:
            logger.warning(
                "closing %s with the outcome of %d delivery(ies) unrecorded; those tasks will "
                "be delivered again",
                self._store.path,
                len(self._unrecorded),
            )
        if running:
            logger.warning(
                "closing %s with %d delivery(ies) still running: their tasks stay leased, and "
                "run again once their lease ends (or at once, when this process has ended and "
                "a queue opens the file on this host)",
                self._store.path,
                len(running),
            )
        try:
            with self._store.transaction("releasing this queue's leases") as tx:
                # Not the leases of deliveries still running: another process would deliver
                # those tasks a second time while they run.
                tx.release_mine(
                    self.lease_prefix, float(self._clock()), "queue closed", keep=running
                )
        except (TransientError, InternalError) as exc:
            # The leases name this process: the next queue to open the file after it has
            # ended (or once they expire) delivers those tasks again.
            logger.warning("%s; leased tasks are released when the file is next opened", exc)
        except Error:
            pass  # already closed
        for transport in transports:
            transport.close()
