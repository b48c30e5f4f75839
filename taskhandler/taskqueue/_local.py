"""``LocalTaskQueue``: an embedded push queue in SQLite that delivers tasks the way App Engine does.

Storage. One table; a task row is *pending*, *leased* (being delivered), or a tombstone
(*done*, *deleted*, *failed*) kept for named tasks so their names are not reused for
``tombstone_seconds`` (9 days). SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed
add survives the process being killed at any point (a power cut may lose the last commits).

Opening. The file is inspected and, when new (missing or zero-length), initialised in one
``BEGIN IMMEDIATE`` transaction with the busy timeout already set, so processes opening the same
new file at once wait for each other. A file that is not ours (another application's SQLite
database, or not SQLite at all) is refused with ``ConfigError`` before anything is written: it
is left byte for byte as it was. Only then is the file switched to WAL.

Storage failures. An SQLite error while storing or reading becomes a taskqueue error naming
the file and the reason: :class:`TransientError` for conditions that pass (disk full, locked past
the busy timeout, I/O errors), :class:`InternalError` for the others (read-only, moved,
corrupt). Each transaction is all or nothing. The background dispatcher logs such an error
(one WARNING line), backs off and tries again, so it resumes by itself once the condition
clears; an outcome it could not record is kept and recorded then, and the task is not
delivered again.

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
from ._backend import NewTask
from ._backoff import RetryPolicy
from ._dispatch import Dispatcher, Outcome, Request, clean_reason, make_dispatcher
from ._errors import (
    Error,
    InternalError,
    InvalidQueueModeError,
    TaskAlreadyExistsError,
    TombstonedTaskError,
    TransientError,
    UnknownQueueError,
)
from ._queue_yaml import QueueConfig, RetryParameters, normalize_queues

logger = logging.getLogger("taskhandler.taskqueue")

TOMBSTONE_SECONDS = 9 * 24 * 3600.0
_SCHEMA_VERSION = 1
_LIVE = ("pending", "leased")
_ETA_SLACK = 1e-6  # float error when a virtual clock is advanced exactly to an ETA
_LEASE_MARGIN = 60.0
_BACKOFF_FIRST = 0.05  # seconds the dispatcher waits after its first storage error
_BACKOFF_MAX = 5.0  # ... doubling up to this, or the poll interval if that is longer
# Primary SQLite result codes (stable across SQLite versions), with sqlite3_errstr()'s text:
# Python 3.10's exceptions carry only the text, 3.11's carry the code too.
_SQLITE_CODES = {
    5: ("SQLITE_BUSY", "database is locked"),
    6: ("SQLITE_LOCKED", "database table is locked"),
    7: ("SQLITE_NOMEM", "out of memory"),
    8: ("SQLITE_READONLY", "attempt to write a readonly database"),
    10: ("SQLITE_IOERR", "disk I/O error"),
    11: ("SQLITE_CORRUPT", "database disk image is malformed"),
    13: ("SQLITE_FULL", "database or disk is full"),
    14: ("SQLITE_CANTOPEN", "unable to open database file"),
    15: ("SQLITE_PROTOCOL", "locking protocol"),
    26: ("SQLITE_NOTADB", "file is not a database"),
}
_SQLITE_BUSY = 5
_SQLITE_NOTADB = 26
# Conditions that pass by themselves (lock released, space freed, I/O back): TransientError.
# Any other SQLite error is an InternalError.
_TRANSIENT_CODES = frozenset({5, 6, 7, 10, 13, 14, 15})

_SCHEMA = (
    """
CREATE TABLE tasks (
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
)
""",
    "CREATE INDEX tasks_by_state ON tasks (state, queue, eta)",
)

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


def _sqlite_code(exc: sqlite3.Error) -> int | None:
    """The primary SQLite result code of ``exc``, or None when it has none (a misuse)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(exc)
    for primary, (_, errstr) in _SQLITE_CODES.items():
        if text == errstr:
            return primary
    return None


def _sqlite_reason(exc: sqlite3.Error) -> str:
    """SQLite's error code name and message, e.g. ``SQLITE_FULL: database or disk is full``."""
    name = getattr(exc, "sqlite_errorname", None)
    if not isinstance(name, str):
        code = _sqlite_code(exc)
        name = _SQLITE_CODES[code][0] if code in _SQLITE_CODES else type(exc).__name__
    return f"{name}: {exc}"


def _is_transient(exc: sqlite3.Error) -> bool:
    return _sqlite_code(exc) in _TRANSIENT_CODES


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
        self._tombstone_seconds = float(tombstone_seconds)
        self._dispatch_timeout = float(dispatch_timeout)
        self._workers = workers
        self._poll_interval = float(poll_interval)
        self._busy_timeout = float(busy_timeout)
        self._default_dispatcher = make_dispatcher(target, timeout=self._dispatch_timeout)
        self._dispatchers: dict[str, Dispatcher] = {
            str(name): make_dispatcher(dest, timeout=self._dispatch_timeout)
            for name, dest in (targets or {}).items()
        }
        self._db_path = str(db)
        self._lease_prefix = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        self._lease_seq = 0
        self._db_lock = threading.RLock()
        self._closed = False
        self._db_identity: tuple[str, int, int] | None = None  # set by _open for a file
        self._conn = self._open(self._db_path)
        self._policies: dict[tuple[str, str | None], RetryPolicy] = {}
        # Dispatch state: touched only by the thread running the pump.
        self._pump_lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._results: queue.SimpleQueue[tuple[_Leased, Outcome]] = queue.SimpleQueue()
        # Outcomes taken from _results whose recording failed; kept until it succeeds.
        self._unrecorded: list[tuple[_Leased, Outcome]] = []
        self._storage_trouble: str | None = None  # the storage error the dispatcher last logged
        self._storage_failures = 0  # storage errors in a row, for the dispatcher's backoff
        self._in_flight: dict[str, int] = dict.fromkeys(self._queues, 0)
        self._tokens: dict[str, float] = {n: float(c.bucket_size) for n, c in self._queues.items()}
        self._token_time: dict[str, float | None] = dict.fromkeys(self._queues)
        self._rotation = 0
        self._attempts = 0
        self._last_sweep = -math.inf
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self._recover()
        except Error as exc:
            self._conn.close()
            raise ConfigError(f"cannot open the queue database: {exc}", path=self._db_path) from exc

    # -- storage ---------------------------------------------------------------------------

    def _open(self, path: str) -> sqlite3.Connection:
        """Connect, check the file is ours (or new) and create the schema, then switch to WAL.

        The busy timeout is set at connect, before the first statement; inspection and creation
        are one ``BEGIN IMMEDIATE`` transaction, so a concurrent opener either finds the file
        still empty or finds it complete. Until the file is known to be ours nothing is written.
        """
        if path != ":memory:" and not Path(path).parent.is_dir():
            raise ConfigError("the directory of the queue database does not exist", path=path)
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout
            )
        except sqlite3.Error as exc:
            raise ConfigError(
                f"cannot open the queue database ({_sqlite_reason(exc)})", path=path
            ) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={round(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._check_or_create(conn, path)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            if path != ":memory:":
                mode = self._switch_to_wal(conn)
                if mode != "wal":
                    raise ConfigError(f"cannot switch the database to WAL mode ({mode})", path=path)
                absolute = os.path.abspath(path)
                stat = os.stat(absolute)
                self._db_identity = (absolute, stat.st_dev, stat.st_ino)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error) and _sqlite_code(exc) == _SQLITE_NOTADB:
                raise ConfigError(
                    "the file is not a SQLite database, so not a taskhandler queue database "
                    f"({_sqlite_reason(exc)}); it was left unchanged",
                    path=path,
                ) from exc
            if isinstance(exc, sqlite3.Error):
                raise ConfigError(
                    f"cannot open the queue database ({_sqlite_reason(exc)})", path=path
                ) from exc
            raise
        return conn

    def _switch_to_wal(self, conn: sqlite3.Connection) -> str:
        """Put the (checked) file in WAL mode; the journal mode it ends up in.

        When several connections switch a new file at the same moment, each can hold a lock
        the other needs; SQLite then answers ``SQLITE_BUSY`` at once instead of waiting, and
        its documented cure is to try again. So: again, for up to the busy timeout.
        """
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.001
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            except sqlite3.OperationalError as exc:
                if _sqlite_code(exc) != _SQLITE_BUSY or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    @staticmethod
    def _check_or_create(conn: sqlite3.Connection, path: str) -> None:
        """Inside the opening transaction: refuse a foreign database, create an empty one's schema.

        A zero-length or missing file is a new database. A SQLite database with no schema and
        ``user_version`` 0 (freshly created by another tool) is adopted too.
        """
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        objects = {
            (row[0], row[1])
            for row in conn.execute("SELECT type, name FROM sqlite_master")
            if not str(row[1]).startswith("sqlite_")
        }
        if not objects and version == 0:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            return
        if version != _SCHEMA_VERSION or ("table", "tasks") not in objects:
            tables = sorted(name for kind, name in objects if kind == "table")
            raise ConfigError(
                "the file is not a taskhandler queue database (or has another schema version:"
                f" user_version {version}, tables {', '.join(tables) or 'none'}); it was left"
                " unchanged",
                path=path,
                value=version,
            )

    def _storage_error(self, exc: sqlite3.Error, doing: str) -> TransientError | InternalError:
        """The taskqueue error for an SQLite failure while ``doing``, naming the file."""
        reason = _sqlite_reason(exc)
        message = f"{doing} in {self._db_path} failed ({reason})"
        if _is_transient(exc):
            return TransientError(message, path=self._db_path, reason=reason)
        return InternalError(message, path=self._db_path, reason=reason)

    @contextlib.contextmanager
    def _tx(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed whole or rolled back whole.

        An SQLite error becomes :class:`TransientError` or :class:`InternalError`. SQLite may
        already have rolled back after ``SQLITE_FULL``, ``SQLITE_IOERR`` or a failed ``COMMIT``;
        the rollback is issued only while a transaction is still open.
        """
        with self._db_lock:
            if self._closed:
                raise Error("the queue is closed")
            self._check_file(doing)
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._storage_error(exc, doing) from exc

    def _check_file(self, doing: str) -> None:
        """InternalError if the database file was deleted or replaced since it was opened.

        In WAL mode SQLite goes on committing into the ``-wal`` file of a deleted database, so
        those tasks would be lost at close; one ``stat`` per transaction refuses them instead.
        """
        if self._db_identity is None:
            return
        absolute, device, inode = self._db_identity
        try:
            stat = os.stat(absolute)
        except OSError:
            stat = None
        if stat is None or (stat.st_dev, stat.st_ino) != (device, inode):
            reason = (
                "SQLITE_READONLY_DBMOVED: the database file was deleted or replaced since the "
                "queue opened it"
            )
            raise InternalError(
                f"{doing} in {self._db_path} failed ({reason})", path=self._db_path, reason=reason
            )

    @contextlib.contextmanager
    def _read(self, doing: str) -> Iterator[sqlite3.Connection]:
        """The connection for reads outside a transaction; SQLite errors become taskqueue errors."""
        with self._db_lock:
            if self._closed:
                raise Error("the queue is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise self._storage_error(exc, doing) from exc

    def _recover(self) -> None:
        """Make tasks leased by dead processes of this host, or with expired leases, pending."""
        now = self.now()
        host = socket.gethostname()
        me = os.getpid()
        with self._tx("recovering interrupted deliveries") as conn:
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
        with self._tx(f"storing {len(tasks)} task(s)") as conn:
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
        with self._tx(f"deleting task {task_name!r}") as conn:
            return self._tombstone(conn, "queue=? AND name=?", (queue_name, task_name)) > 0

    def purge(self, queue_name: str) -> int:
        """Delete every pending or running task of the queue; return how many."""
        self.check_queue(queue_name)
        with self._tx(f"purging queue {queue_name!r}") as conn:
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
        with self._tx(f"running task {task_name!r} now") as conn:
            changed = conn.execute(
                "UPDATE tasks SET eta=? WHERE queue=? AND name=? AND state='pending'",
                (self.now(), queue_name, task_name),
            ).rowcount
        self._wake.set()
        return bool(changed)

    def tasks(self, queue_name: str = "default") -> list[QueuedTask]:
        """The tasks still to run in ``queue_name`` (pending or being delivered), in ETA order."""
        self.check_queue(queue_name)
        with self._read("listing tasks") as conn:
            rows = conn.execute(
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
        with self._read("counting tasks") as conn:
            rows = conn.execute(
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
        taken: dict[str, int] = {}
        with self._tx("leasing tasks") as conn:
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
                taken[name] = len(rows)
        # Only a committed lease spends tokens; the refill above is idempotent.
        for name, count in taken.items():
            self._tokens[name] -= count
        return out

    def _next_due(self, now: float) -> float | None:
        """The earliest time a task could be leased, or None when no dispatchable task waits."""
        best: float | None = None
        with self._read("looking for due tasks") as conn:
            for name, config in self._dispatchable():
                if (
                    config.max_concurrent_requests is not None
                    and self._in_flight[name] >= config.max_concurrent_requests
                ):
                    continue  # a completion will wake the pump
                row = conn.execute(
                    "SELECT MIN(eta) FROM tasks WHERE queue=? AND state='pending'", (name,)
                ).fetchone()
                if row[0] is None:
                    continue
                when = float(row[0])
                tokens = self._refill(name, config, now)
                if tokens < 1 - 1e-9:
                    when = max(when, now + (1 - tokens) / config.rate)
                best = when if best is None else min(best, when)
            leased = conn.execute(
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
        """Record the outcomes of finished deliveries in one transaction; return how many.

        If the transaction fails the outcomes are kept (the tasks stay leased, and in flight
        for the concurrency limits) and recorded by a later call; the error is raised. Every
        update names the task's lease, so an outcome is recorded once.
        """
        while True:
            try:
                self._unrecorded.append(self._results.get_nowait())
            except queue.Empty:
                break
        batch = self._unrecorded
        if not batch:
            return 0
        now = self.now()
        done_named: list[tuple[Any, ...]] = []
        done_unnamed: list[tuple[Any, ...]] = []
        retries: list[tuple[Any, ...]] = []
        given_up: list[tuple[_Leased, Outcome, int]] = []
        for task, outcome in batch:
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
                given_up.append((task, outcome, next_retry))
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
        with self._tx(f"recording the outcome of {len(batch)} delivery(ies)") as conn:
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
                [(now, t.id, t.lease_id) for t, _, _ in given_up],
            )
            conn.executemany(
                "DELETE FROM tasks WHERE id=? AND lease_id=? AND named=0",
                [(t.id, t.lease_id) for t, _, _ in given_up],
            )
            if now - self._last_sweep > 3600:
                conn.execute(
                    "DELETE FROM tasks WHERE state IN ('done', 'deleted', 'failed') "
                    "AND finished < ?",
                    (now - self._tombstone_seconds,),
                )
                sweep = now
            else:
                sweep = self._last_sweep
        self._last_sweep = sweep
        self._unrecorded = []
        for task, _ in batch:
            self._in_flight[task.queue] = self._in_flight.get(task.queue, 1) - 1
        for task, outcome, attempts in given_up:
            logger.warning(
                "task %s of queue %s failed after %d attempt(s) (%s); giving up",
                task.name,
                task.queue,
                attempts,
                outcome.reason,
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
            if self._storage_trouble is not None:
                self._storage_trouble = None
                self._storage_failures = 0
                logger.info("the task dispatcher can use %s again", self._db_path)
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
        return self

    def _storage_backoff(self, exc: TransientError | InternalError) -> float:
        """Log a storage error of the background dispatcher; return how long to wait.

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
            try:
                recorded = self._complete()
            except (TransientError, InternalError):
                if len(self._unrecorded) >= sum(self._in_flight.values()):
                    return  # every delivery has ended; only the recording fails
                recorded = 0
            if not recorded:
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
        if self._unrecorded:
            logger.warning(
                "closing %s with the outcome of %d delivery(ies) unrecorded; those tasks will "
                "be delivered again",
                self._db_path,
                len(self._unrecorded),
            )
        try:
            with self._tx("releasing this queue's leases") as conn:
                mine = [
                    row[0]
                    for row in conn.execute(
                        "SELECT id FROM tasks WHERE state='leased' AND lease_id LIKE ?",
                        (f"{self._lease_prefix}/%",),
                    )
                ]
                self._release(conn, mine, self.now(), "queue closed")
        except (TransientError, InternalError) as exc:
            # The leases name this process: the next queue to open the file after it has
            # ended (or once they expire) delivers those tasks again.
            logger.warning("%s; leased tasks are released when the file is next opened", exc)
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
