"""``LocalTaskQueue``: an embedded push queue in SQLite that delivers tasks the way App Engine does.

Storage. One table; a task row is *pending*, *leased* (being delivered), or a tombstone
(*done*, *deleted*, *failed*) kept for named tasks so their names are not reused for
``tombstone_seconds`` (9 days). SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed
add survives the process being killed at any point (a power cut may lose the last commits).

Crash safety. A task is leased before it is delivered, under a lease id naming this host and
process, with an expiry. When a queue opens a file, rows leased by a process of this host that
no longer exists, and rows whose lease expired, become pending again with their retry count
raised; so a task being delivered when its process died is delivered again, and nothing is lost.

Dispatch. Per queue: pending tasks whose ETA has come, in ETA order, as the token bucket
(``rate``, ``bucket_size``) and ``max_concurrent_requests`` allow, on a pool of worker threads.
A 2xx answer finishes the task; anything else schedules a retry with backoff until every limit of
the retry parameters is exceeded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import queue
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ..exceptions import ConfigError
from ._api import NewTask
from ._backoff import RetryPolicy
from ._dispatch import Dispatcher, Outcome, Request, clean_reason, make_dispatcher
from ._errors import (
    Error,
    InvalidQueueModeError,
    TaskAlreadyExistsError,
    TombstonedTaskError,
    UnknownQueueError,
)
from ._queue_yaml import QueueConfig, RetryParameters, normalize_queues

logger = logging.getLogger("taskhandler.taskqueue")

TOMBSTONE_SECONDS = 9 * 24 * 3600.0
_SCHEMA_VERSION = 1
_LIVE = ("pending", "leased")
_ETA_SLACK = 1e-6  # float error when a virtual clock is advanced exactly to an ETA
_LEASE_MARGIN = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    named INTEGER NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    headers TEXT,
    payload BLOB,
    target TEXT,
    retry TEXT,
    eta REAL NOT NULL,
    created REAL NOT NULL,
    first_run REAL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    execution_count INTEGER NOT NULL DEFAULT 0,
    previous_response INTEGER,
    retry_reason TEXT,
    state TEXT NOT NULL,
    lease_id TEXT,
    lease_expires REAL,
    finished REAL,
    UNIQUE (queue, name)
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, queue, eta);
"""

_COLUMNS = (
    "id, queue, name, named, method, url, headers, payload, target, retry, eta, created, "
    "first_run, retry_count, execution_count, previous_response, retry_reason, state"
)


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


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
        state: ``pending``, or ``leased`` while it is being delivered.
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

    def extract_params(self) -> dict[str, str | list[str]]:
        """The params: from the form body for POST, from the query string otherwise."""
        import urllib.parse

        if self.method == "POST":
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


@dataclass
class _Leased:
    id: int
    lease_id: str
    queue: str
    name: str
    named: bool
    method: str
    url: str
    headers: list[tuple[str, str]]
    payload: bytes
    target: str | None
    retry: str | None
    eta: float
    created: float
    first_run: float
    retry_count: int
    execution_count: int
    previous_response: int | None
    retry_reason: str | None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


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
        dispatch_timeout: seconds an HTTP or ASGI delivery may take before it counts as failed.
        workers: threads delivering tasks, and so the most tasks in flight overall.
        poll_interval: the longest the dispatcher sleeps before looking at the database again
            (tasks added by other processes are seen within this time).

    Raises:
        ConfigError: a bad argument, or a database file that cannot be opened or is not a
            taskhandler queue.

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
    ) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError("workers must be an integer >= 1", value=workers)
        for label, number in (
            ("tombstone_seconds", tombstone_seconds),
            ("dispatch_timeout", dispatch_timeout),
            ("poll_interval", poll_interval),
        ):
            if not isinstance(number, (int, float)) or not math.isfinite(number) or number <= 0:
                raise ConfigError(f"{label} must be a number > 0", value=number)
        if clock is not None and not callable(clock):
            raise ConfigError(
                "clock must be a callable returning seconds since the epoch", value=clock
            )
        self._queues = normalize_queues(queues)
        self._clock: Callable[[], float] = clock or time.time
        self._tombstone_seconds = float(tombstone_seconds)
        self._dispatch_timeout = float(dispatch_timeout)
        self._workers = workers
        self._poll_interval = float(poll_interval)
        self._default_dispatcher = make_dispatcher(target, timeout=self._dispatch_timeout)
        self._dispatchers: dict[str, Dispatcher] = {
            str(name): make_dispatcher(dest, timeout=self._dispatch_timeout)
            for name, dest in (targets or {}).items()
        }
        self._db_path = str(db)
        self._lease_prefix = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        self._lease_seq = 0
        self._db_lock = threading.RLock()
        self._conn = self._open(self._db_path)
        self._policies: dict[tuple[str, str | None], RetryPolicy] = {}
        # Dispatch state: touched only by the thread running the pump.
        self._pump_lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._results: queue.SimpleQueue[tuple[_Leased, Outcome]] = queue.SimpleQueue()
        self._in_flight: dict[str, int] = dict.fromkeys(self._queues, 0)
        self._tokens: dict[str, float] = {n: float(c.bucket_size) for n, c in self._queues.items()}
        self._token_time: dict[str, float | None] = dict.fromkeys(self._queues)
        self._rotation = 0
        self._attempts = 0
        self._last_sweep = -math.inf
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._recover()

    # -- storage ---------------------------------------------------------------------------

    def _open(self, path: str) -> sqlite3.Connection:
        if path != ":memory:" and not Path(path).parent.is_dir():
            raise ConfigError("the directory of the queue database does not exist", path=path)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            if path != ":memory:":
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise ConfigError(f"cannot switch the database to WAL mode ({mode})", path=path)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if tables and (version != _SCHEMA_VERSION or "tasks" not in tables):
                raise ConfigError(
                    "the file is not a taskhandler queue database (or has another schema version)",
                    path=path,
                    value=version,
                )
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the queue database: {exc}", path=path) from None
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._db_lock:
            if self._closed:
                raise Error("the queue is closed")
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _recover(self) -> None:
        """Make tasks leased by dead processes of this host, or with expired leases, pending."""
        now = self.now()
        host = socket.gethostname()
        me = os.getpid()
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT id, lease_id, lease_expires FROM tasks WHERE state='leased'"
            ).fetchall()
            stale: list[int] = []
            for row_id, lease_id, expires in rows:
                lease_host, _, rest = str(lease_id or "").partition("/")
                pid_text = rest.partition("/")[0]
                dead = (
                    lease_host == host
                    and pid_text.isdigit()
                    and int(pid_text) != me
                    and not _pid_alive(int(pid_text))
                )
                if dead or expires is None or expires < now:
                    stale.append(row_id)
            self._release(conn, stale, now, "dispatcher stopped")
            conn.execute(
                "DELETE FROM tasks WHERE state IN ('done', 'deleted', 'failed') AND finished < ?",
                (now - self._tombstone_seconds,),
            )
        if stale:
            logger.warning("redelivering %d task(s) whose delivery was interrupted", len(stale))

    @staticmethod
    def _release(conn: sqlite3.Connection, ids: Sequence[int], now: float, reason: str) -> None:
        conn.executemany(
            "UPDATE tasks SET state='pending', lease_id=NULL, lease_expires=NULL, eta=?, "
            "retry_count=retry_count+1, previous_response=NULL, retry_reason=? "
            "WHERE id=? AND state='leased'",
            [(now, reason, row_id) for row_id in ids],
        )

    # -- the backend interface used by taskqueue.add() ---------------------------------------

    def now(self) -> float:
        """The queue's clock, in seconds since the epoch."""
        return float(self._clock())

    @property
    def queues(self) -> dict[str, QueueConfig]:
        """The queue definitions, name -> :class:`QueueConfig` (a copy)."""
        return dict(self._queues)

    def check_queue(self, queue_name: str) -> None:
        """UnknownQueueError for an undeclared queue, InvalidQueueModeError for a pull queue."""
        config = self._queues.get(queue_name)
        if config is None:
            raise UnknownQueueError(
                f"queue {queue_name!r} is not declared (declared: {', '.join(self._queues)})"
            )
        if config.mode != "push":
            raise InvalidQueueModeError(f"queue {queue_name!r} is a pull queue")

    def enqueue(self, tasks: Sequence[NewTask], *, atomic: bool = False) -> list[str | Error]:
        """Store tasks; for each, the stored task name or the error that refused it.

        With ``atomic=True`` all are stored or none, and the first error is raised.
        """
        now = self.now()
        results: list[str | Error] = []
        with self._tx() as conn:
            for task in tasks:
                try:
                    results.append(self._insert(conn, task, now))
                except Error as exc:
                    if atomic:
                        raise
                    results.append(exc)
        self._wake.set()
        return results

    def _insert(self, conn: sqlite3.Connection, task: NewTask, now: float) -> str:
        self.check_queue(task.queue_name)
        config = self._queues[task.queue_name]
        name = task.task_name or uuid.uuid4().hex
        retry = None if task.retry is None else json.dumps(dataclasses.asdict(task.retry))
        row = (
            task.queue_name,
            name,
            1 if task.task_name else 0,
            task.method,
            task.url,
            json.dumps(task.headers),
            task.payload,
            config.target or task.target,
            retry,
            task.eta,
            now,
        )
        sql = (
            "INSERT INTO tasks (queue, name, named, method, url, headers, payload, target, retry,"
            " eta, created, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')"
            " ON CONFLICT (queue, name) DO NOTHING"
        )
        if conn.execute(sql, row).rowcount == 1:
            return name
        state, finished = conn.execute(
            "SELECT state, finished FROM tasks WHERE queue=? AND name=?", (task.queue_name, name)
        ).fetchone()
        if state in _LIVE:
            raise TaskAlreadyExistsError(
                f"task {name!r} already exists in queue {task.queue_name!r}"
            )
        if finished is not None and finished + self._tombstone_seconds > now:
            raise TombstonedTaskError(
                f"task {name!r} of queue {task.queue_name!r} finished or was deleted at "
                f"{_utc(finished).isoformat()}; its name is reserved for "
                f"{self._tombstone_seconds:g} s"
            )
        conn.execute("DELETE FROM tasks WHERE queue=? AND name=?", (task.queue_name, name))
        conn.execute(sql, row)
        return name

    def delete(self, queue_name: str, task_name: str) -> bool:
        """Delete a pending or running task (a named one leaves a tombstone); True if found."""
        self.check_queue(queue_name)
        with self._tx() as conn:
            return self._tombstone(conn, "queue=? AND name=?", (queue_name, task_name)) > 0

    def purge(self, queue_name: str) -> int:
        """Delete every pending or running task of the queue; return how many."""
        self.check_queue(queue_name)
        with self._tx() as conn:
            return self._tombstone(conn, "queue=?", (queue_name,))

    def _tombstone(self, conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> int:
        now = self.now()
        live = "state IN ('pending', 'leased')"
        deleted = conn.execute(
            f"DELETE FROM tasks WHERE {where} AND named=0 AND {live}",  # noqa: S608 - fixed text
            args,
        ).rowcount
        deleted += conn.execute(
            "UPDATE tasks SET state='deleted', finished=?, payload=NULL, headers=NULL, "  # noqa: S608
            f"lease_id=NULL WHERE {where} AND named=1 AND {live}",
            (now, *args),
        ).rowcount
        return int(deleted)

    def run_now(self, queue_name: str, task_name: str) -> bool:
        """Make a pending task due now (ETA or backoff skipped). True if it was pending."""
        self.check_queue(queue_name)
        with self._tx() as conn:
            changed = conn.execute(
                "UPDATE tasks SET eta=? WHERE queue=? AND name=? AND state='pending'",
                (self.now(), queue_name, task_name),
            ).rowcount
        self._wake.set()
        return bool(changed)

    def tasks(self, queue_name: str = "default") -> list[QueuedTask]:
        """The tasks still to run in ``queue_name`` (pending or being delivered), in ETA order."""
        self.check_queue(queue_name)
        with self._db_lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE queue=? AND state IN ('pending', 'leased') "  # noqa: S608
                "ORDER BY eta, id",
                (queue_name,),
            ).fetchall()
        return [
            QueuedTask(
                queue_name=row[1],
                task_name=row[2],
                method=row[4],
                url=row[5],
                headers=tuple(tuple(pair) for pair in json.loads(row[6] or "[]")),
                payload=bytes(row[7] or b""),
                target=row[8],
                eta=_utc(row[10]),
                created=_utc(row[11]),
                retry_count=row[13],
                execution_count=row[14],
                previous_response=row[15],
                retry_reason=row[16],
                state=row[17],
            )
            for row in rows
        ]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per queue, the number of tasks in each state (pending, leased, done, deleted, failed)."""
        result = {
            name: dict.fromkeys(("pending", "leased", "done", "deleted", "failed"), 0)
            for name in self._queues
        }
        with self._db_lock:
            rows = self._conn.execute(
                "SELECT queue, state, COUNT(*) FROM tasks GROUP BY queue, state"
            ).fetchall()
        for queue_name, state, count in rows:
            result.setdefault(queue_name, {})[state] = count
        return result

    # -- dispatch ----------------------------------------------------------------------------

    def _policy(self, queue_name: str, retry: str | None) -> RetryPolicy:
        key = (queue_name, retry)
        policy = self._policies.get(key)
        if policy is None:
            params = self._queues[queue_name].retry_parameters
            if retry is not None:
                params = params.overridden_by(RetryParameters(**json.loads(retry)))
            policy = self._policies[key] = params.policy()
        return policy

    def _refill(self, name: str, config: QueueConfig, now: float) -> float:
        last = self._token_time[name]
        tokens = self._tokens[name]
        if last is not None and now > last:
            tokens = min(float(config.bucket_size), tokens + (now - last) * config.rate)
        self._tokens[name] = tokens
        self._token_time[name] = now
        return tokens

    def _dispatchable(self) -> list[tuple[str, QueueConfig]]:
        items = [(n, c) for n, c in self._queues.items() if c.mode == "push" and not c.paused]
        if items:
            k = self._rotation % len(items)
            items = items[k:] + items[:k]
        return items

    def _lease(self, now: float) -> list[_Leased]:
        free = self._workers - sum(self._in_flight.values())
        if free <= 0:
            return []
        self._rotation += 1
        out: list[_Leased] = []
        with self._tx() as conn:
            expired = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM tasks WHERE state='leased' AND lease_expires <= ?", (now,)
                )
            ]
            if expired:
                self._release(conn, expired, now, "lease expired")
            for name, config in self._dispatchable():
                cap = free - len(out)
                if cap <= 0:
                    break
                if config.max_concurrent_requests is not None:
                    cap = min(cap, config.max_concurrent_requests - self._in_flight[name])
                tokens = self._refill(name, config, now)
                cap = min(cap, math.floor(tokens + 1e-9))
                if cap <= 0:
                    continue
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM tasks WHERE queue=? AND state='pending' AND eta<=? "  # noqa: S608
                    "ORDER BY eta, id LIMIT ?",
                    (name, now + _ETA_SLACK, cap),
                ).fetchall()
                if not rows:
                    continue
                expires = now + self._dispatch_timeout + _LEASE_MARGIN
                updates = []
                for row in rows:
                    self._lease_seq += 1
                    lease_id = f"{self._lease_prefix}/{self._lease_seq}"
                    first_run = now if row[12] is None else row[12]
                    updates.append((lease_id, expires, first_run, row[0]))
                    out.append(
                        _Leased(
                            id=row[0],
                            lease_id=lease_id,
                            queue=row[1],
                            name=row[2],
                            named=bool(row[3]),
                            method=row[4],
                            url=row[5],
                            headers=[(str(k), str(v)) for k, v in json.loads(row[6] or "[]")],
                            payload=bytes(row[7] or b""),
                            target=row[8],
                            retry=row[9],
                            eta=row[10],
                            created=row[11],
                            first_run=first_run,
                            retry_count=row[13],
                            execution_count=row[14],
                            previous_response=row[15],
                            retry_reason=row[16],
                        )
                    )
                conn.executemany(
                    "UPDATE tasks SET state='leased', lease_id=?, lease_expires=?, first_run=? "
                    "WHERE id=?",
                    updates,
                )
                self._tokens[name] -= len(rows)
        return out

    def _next_due(self, now: float) -> float | None:
        """The earliest time a task could be leased, or None when no dispatchable task waits."""
        best: float | None = None
        with self._db_lock:
            for name, config in self._dispatchable():
                if (
                    config.max_concurrent_requests is not None
                    and self._in_flight[name] >= config.max_concurrent_requests
                ):
                    continue  # a completion will wake the pump
                row = self._conn.execute(
                    "SELECT MIN(eta) FROM tasks WHERE queue=? AND state='pending'", (name,)
                ).fetchone()
                if row[0] is None:
                    continue
                when = float(row[0])
                tokens = self._refill(name, config, now)
                if tokens < 1 - 1e-9:
                    when = max(when, now + (1 - tokens) / config.rate)
                best = when if best is None else min(best, when)
            leased = self._conn.execute(
                "SELECT MIN(lease_expires) FROM tasks WHERE state='leased'"
            ).fetchone()[0]
        if leased is not None and sum(self._in_flight.values()) == 0:
            best = float(leased) if best is None else min(best, float(leased))
        return best

    def _request(self, task: _Leased) -> Request:
        headers = list(task.headers)
        if task.payload and not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", "text/plain"))
        headers += [
            ("X-AppEngine-QueueName", task.queue),
            ("X-AppEngine-TaskName", task.name),
            ("X-AppEngine-TaskRetryCount", str(task.retry_count)),
            ("X-AppEngine-TaskExecutionCount", str(task.execution_count)),
            ("X-AppEngine-TaskETA", f"{max(task.eta, 0.0):.6f}"),
        ]
        if task.retry_count > 0:
            if task.previous_response is not None:
                headers.append(("X-AppEngine-TaskPreviousResponse", str(task.previous_response)))
            if task.retry_reason:
                headers.append(("X-AppEngine-TaskRetryReason", clean_reason(task.retry_reason)))
        return Request(method=task.method, url=task.url, headers=headers, body=task.payload)

    def _deliver(self, task: _Leased) -> None:
        dispatcher = self._dispatchers.get(task.target or "", self._default_dispatcher)
        try:
            outcome = dispatcher(self._request(task))
        except Exception as exc:  # a dispatcher bug must not lose the task
            logger.exception("delivering task %s failed", task.name)
            outcome = Outcome(
                status=None,
                reason=clean_reason(f"dispatch error {type(exc).__name__}"),
                executed=False,
            )
        self._results.put((task, outcome))
        self._wake.set()

    def _complete(self) -> int:
        batch: list[tuple[_Leased, Outcome]] = []
        while True:
            try:
                batch.append(self._results.get_nowait())
            except queue.Empty:
                break
        if not batch:
            return 0
        now = self.now()
        done_named: list[tuple[Any, ...]] = []
        done_unnamed: list[tuple[Any, ...]] = []
        retries: list[tuple[Any, ...]] = []
        given_up: list[_Leased] = []
        for task, outcome in batch:
            self._in_flight[task.queue] = self._in_flight.get(task.queue, 1) - 1
            if outcome.ok:
                if task.named:
                    done_named.append((now, task.id, task.lease_id))
                else:
                    done_unnamed.append((task.id, task.lease_id))
                continue
            policy = self._policy(task.queue, task.retry)
            next_retry = task.retry_count + 1
            executions = task.execution_count + (1 if outcome.executed else 0)
            if policy.gives_up(next_retry, now - task.first_run):
                given_up.append(task)
                logger.warning(
                    "task %s of queue %s failed after %d attempt(s) (%s); giving up",
                    task.name,
                    task.queue,
                    next_retry,
                    outcome.reason,
                )
                continue
            retries.append(
                (
                    now + policy.backoff(next_retry),
                    next_retry,
                    executions,
                    outcome.status,
                    outcome.reason,
                    task.id,
                    task.lease_id,
                )
            )
        with self._tx() as conn:
            conn.executemany(
                "UPDATE tasks SET state='done', finished=?, payload=NULL, headers=NULL, "
                "lease_id=NULL WHERE id=? AND lease_id=?",
                done_named,
            )
            conn.executemany("DELETE FROM tasks WHERE id=? AND lease_id=?", done_unnamed)
            conn.executemany(
                "UPDATE tasks SET state='pending', eta=?, retry_count=?, execution_count=?, "
                "previous_response=?, retry_reason=?, lease_id=NULL, lease_expires=NULL "
                "WHERE id=? AND lease_id=?",
                retries,
            )
            conn.executemany(
                "UPDATE tasks SET state='failed', finished=?, payload=NULL, headers=NULL, "
                "lease_id=NULL WHERE id=? AND lease_id=? AND named=1",
                [(now, t.id, t.lease_id) for t in given_up],
            )
            conn.executemany(
                "DELETE FROM tasks WHERE id=? AND lease_id=? AND named=0",
                [(t.id, t.lease_id) for t in given_up],
            )
            if now - self._last_sweep > 3600:
                self._last_sweep = now
                conn.execute(
                    "DELETE FROM tasks WHERE state IN ('done', 'deleted', 'failed') "
                    "AND finished < ?",
                    (now - self._tombstone_seconds,),
                )
        return len(batch)

    def _pump(self, *, until_idle: bool, deadline: float | None, due_only: bool = False) -> None:
        advance = getattr(self._clock, "advance", None) if until_idle and not due_only else None
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix="taskhandler-queue"
            )
        executor = self._executor
        while True:
            self._wake.clear()
            self._complete()
            now = self.now()
            leased = self._lease(now)
            for task in leased:
                self._in_flight[task.queue] = self._in_flight.get(task.queue, 0) + 1
                self._attempts += 1
                executor.submit(self._deliver, task)
            if self._stop.is_set():
                return
            in_flight = sum(self._in_flight.values())
            if leased and in_flight < self._workers:
                continue
            due = None if leased else self._next_due(now)
            if until_idle and in_flight == 0 and (due is None or (due_only and due > now)):
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"the queue was not idle in time ({in_flight} in flight, next ETA "
                    f"{'none' if due is None else _utc(due).isoformat()})"
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
        if not self._pump_lock.acquire(blocking=False):
            raise RuntimeError("the background dispatcher is running; stop() it first")
        try:
            before = self._attempts
            self._stop.clear()
            self._pump(until_idle=True, deadline=time.monotonic() + timeout)
            return self._attempts - before
        finally:
            self._pump_lock.release()

    def run_due(self, timeout: float = 30.0) -> int:
        """Deliver the tasks due now, wait for those deliveries, and return the attempts made.

        Unlike :meth:`run_until_idle`, nothing due later is waited for, and a
        :class:`ManualClock` is not advanced: a test can step through retries one at a time.
        A delivery that fails and is due again at once (zero backoff) is retried in the same call.

        Raises:
            TimeoutError: deliveries still in flight after ``timeout`` real seconds.
            RuntimeError: the background dispatcher (:meth:`start`) is running.
        """
        if not self._pump_lock.acquire(blocking=False):
            raise RuntimeError("the background dispatcher is running; stop() it first")
        try:
            before = self._attempts
            self._stop.clear()
            self._pump(until_idle=True, deadline=time.monotonic() + timeout, due_only=True)
            return self._attempts - before
        finally:
            self._pump_lock.release()

    def start(self) -> LocalTaskQueue:
        """Start delivering tasks on a background thread (for servers); returns the queue.

        ``stop()`` (or leaving a ``with`` block over the queue) ends it.
        """
        if self._closed:
            raise Error("the queue is closed")
        if not self._pump_lock.acquire(blocking=False):
            raise RuntimeError("the queue is already dispatching")
        self._stop.clear()

        def run() -> None:
            try:
                self._pump(until_idle=False, deadline=None)
            except Exception:
                logger.exception("the task dispatcher stopped on an error")
            finally:
                self._pump_lock.release()

        self._thread = threading.Thread(
            target=run, name="taskhandler-queue-dispatcher", daemon=True
        )
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """True while the background dispatcher runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background dispatcher; deliveries in flight may finish (up to ``timeout``)."""
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
        while sum(self._in_flight.values()) > 0 and time.monotonic() < end:
            self._wake.clear()
            if not self._complete():
                self._wake.wait(min(0.05, max(end - time.monotonic(), 0.0)))

    def close(self) -> None:
        """Stop dispatching, release this queue's leases, close connections and the database."""
        if self._closed:
            return
        self.stop()
        if self._pump_lock.acquire(timeout=10):
            try:
                self._settle(10.0)
            finally:
                self._pump_lock.release()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        with self._tx() as conn:
            mine = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM tasks WHERE state='leased' AND lease_id LIKE ?",
                    (f"{self._lease_prefix}/%",),
                )
            ]
            self._release(conn, mine, self.now(), "queue closed")
        for dispatcher in {
            id(d): d for d in [self._default_dispatcher, *self._dispatchers.values()]
        }.values():
            dispatcher.close()
        with self._db_lock:
            self._closed = True
            self._conn.close()

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
