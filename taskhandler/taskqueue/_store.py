"""The local queue's storage: one SQLite table of tasks, and every statement that touches it.

Rows. A task row is *pending*, *leased* (being delivered), or a tombstone (*done*, *deleted*,
*failed*) kept for named tasks so their names are not reused for ``tombstone_seconds``
(9 days). Rows are read by column name into :class:`StoredTask`; the schema is :data:`SCHEMA`.

Durability. The file runs in WAL mode with ``synchronous=NORMAL`` (the setting Huey's SQLite
storage is measured with in ``bench/local_queue.py``): a transaction is in the write-ahead log,
handed to the operating system, before its ``COMMIT`` returns, so a committed ``add()`` survives
the process being killed at any point; a power cut or kernel crash may lose the last commits,
never corrupt the file. A task is leased before it is delivered, so a task being delivered when
the process died is pending again after a restart (:meth:`Transaction.recover`).

Opening. The file is inspected and, when new (missing or zero-length), initialised in one
``BEGIN IMMEDIATE`` transaction with the busy timeout already set, so processes opening the same
new file at once wait for each other. A file that is not ours (another application's SQLite
database, or not SQLite at all) is refused with ``ConfigError`` before anything is written: it
is left byte for byte as it was. Only then is the file switched to WAL.

Failures. An SQLite error becomes a taskqueue error naming the file and the reason:
:class:`TransientError` for conditions that pass (disk full, locked past the busy timeout, I/O
errors), :class:`InternalError` for the others (read-only, moved, corrupt). Each transaction is
all or nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import itertools
import json
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from ._backend import NewTask
from ._errors import (
    Error,
    InternalError,
    TaskAlreadyExistsError,
    TombstonedTaskError,
    TransientError,
)
from ._queue_yaml import RetryParameters

__all__ = [
    "SCHEMA",
    "StoredTask",
    "TaskStore",
    "Transaction",
    "generated_name",
    "process_host",
    "utc",
]

SCHEMA_VERSION = 4
_V2_TABLE = """
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
    finished REAL
)
"""
# Version 3 adds the pull tasks' tag as the last column, where ALTER TABLE ADD COLUMN puts it,
# so a migrated file and a new one have the same columns in the same order. Version 4 adds a
# push task's own dispatch deadline (seconds; NULL: the queue's dispatch_timeout) after it.
_V3_TABLE = _V2_TABLE.replace("    finished REAL\n", "    finished REAL,\n    tag TEXT\n")
_TABLE = _V3_TABLE.replace("    tag TEXT\n", "    tag TEXT,\n    dispatch_deadline REAL\n")
_BY_NAME = "CREATE UNIQUE INDEX tasks_by_name ON tasks (queue, name) WHERE named = 1"
_BY_STATE = "CREATE INDEX tasks_by_state ON tasks (state, queue, eta)"
_BY_TAG = "CREATE INDEX tasks_by_tag ON tasks (queue, tag, eta) WHERE tag IS NOT NULL"
SCHEMA = (_TABLE, _BY_NAME, _BY_STATE, _BY_TAG)
"""The whole schema (``user_version`` :data:`SCHEMA_VERSION`).

Only named tasks are in the name index: they are the ones deduplicated and kept as tombstones.
An unnamed task's generated name (:func:`generated_name`) is unique by construction, so its row
goes into two B-trees (the rows and ``tasks_by_state``) instead of three. Only tagged (pull)
tasks are in the tag index, which ``lease_tasks_by_tag`` reads.

Pull tasks (``method = 'PULL'``, only in pull queues) are always ``pending``: a lease is their
``eta`` moved to the lease's end, as on App Engine, so the dispatcher's leases (state
``leased``) never touch them. A push task's ``dispatch_deadline`` is how long one delivery may
take (``NULL``: the queue's ``dispatch_timeout``); a pull task's is always ``NULL``.
"""

# The objects of a current file, and of a version-3 file (releases before dispatch deadlines).
_V4_SCHEMA = {
    ("table", "tasks"): _TABLE,
    ("index", "tasks_by_name"): _BY_NAME,
    ("index", "tasks_by_state"): _BY_STATE,
    ("index", "tasks_by_tag"): _BY_TAG,
}
_V3_SCHEMA = {**_V4_SCHEMA, ("table", "tasks"): _V3_TABLE}
# Version 2 (releases before pull queues): no tag column, no tag index.
_V2_SCHEMA = {
    ("table", "tasks"): _V2_TABLE,
    ("index", "tasks_by_name"): _BY_NAME,
    ("index", "tasks_by_state"): _BY_STATE,
}
# Version 1 (releases before the partial name index): every name in a table-level UNIQUE index.
# A file is migrated only when its schema is exactly one of these, text for text (spacing
# aside: see _normal_sql).
_V1_TABLE = _V2_TABLE.replace(
    "    finished REAL\n", "    finished REAL,\n    UNIQUE (queue, name)\n"
)
_V1_SCHEMA = {("table", "tasks"): _V1_TABLE, ("index", "tasks_by_state"): _BY_STATE}

_V1_COLUMNS = (
    "id, queue, name, named, method, url, headers, payload, target, retry, eta, created, "
    "first_run, retry_count, execution_count, previous_response, retry_reason, state, lease_id, "
    "lease_expires, finished"
)
_TASK_COLUMNS = (
    "id, queue, name, named, method, url, headers, payload, target, retry, eta, created, "
    "first_run, retry_count, execution_count, previous_response, retry_reason, state, lease_id, "
    "lease_expires, tag, dispatch_deadline"
)
# One statement for named and unnamed tasks: an unnamed row (named = 0) is outside the partial
# index, so it never conflicts.
_INSERT = (
    "INSERT INTO tasks (queue, name, named, method, url, headers, payload, target, retry, eta,"
    " created, tag, dispatch_deadline, state)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')"
    " ON CONFLICT (queue, name) WHERE named = 1 DO NOTHING"
)
_LIVE = "state IN ('pending', 'leased')"
_GENERATED_NAME = re.compile(r"[0-9a-f]{32}\Z")
_TOMBSTONES = "state IN ('done', 'deleted', 'failed')"
_ETA_SLACK = 1e-6  # float error when a virtual clock is advanced exactly to an ETA

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


def utc(seconds: float) -> datetime.datetime:
    """Seconds since the epoch as an aware UTC datetime."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


class _NameSource:
    """Names for unnamed tasks: 16 random hex digits per process, then a 16-digit counter.

    Unique by construction, which is why unnamed tasks stay out of the name index: the random
    prefix is drawn anew in every process (and in the child of a ``fork``, which would otherwise
    go on counting from its parent's state), so two processes -- at the same time or one after
    the other, on one file -- collide only if they draw the same 64 random bits. Within a
    process the counter never repeats (``next`` on a counter is atomic) and the names increase.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._numbers = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._numbers):016x}"


generated_name = _NameSource()
"""A new name for an unnamed task: ``generated_name()``."""
os.register_at_fork(after_in_child=generated_name.reseed)


def _may_be_generated(task_name: str) -> bool:
    """Whether ``task_name`` has the shape of a generated name (unnamed rows are looked up)."""
    return _GENERATED_NAME.match(task_name) is not None


# Most tasks carry one of a few header lists and no retry options: encode and decode each once.
@functools.lru_cache(maxsize=1024)
def _dump_headers(headers: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(headers)


@functools.lru_cache(maxsize=1024)
def _load_headers(text: str | None) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in json.loads(text or "[]"))


@functools.lru_cache(maxsize=256)
def _dump_retry(retry: RetryParameters) -> str:
    return json.dumps(dataclasses.asdict(retry))


@functools.lru_cache(maxsize=256)
def _load_retry(text: str) -> RetryParameters:
    return RetryParameters(**json.loads(text))


@dataclass(frozen=True, slots=True)
class StoredTask:
    """One live row of the ``tasks`` table, read by column name.

    Attributes:
        id: the row id.
        queue: the queue name.
        name: the task name (generated for unnamed tasks).
        named: the caller named it (its name is kept as a tombstone once it finishes).
        method, url, headers, payload: the request, without the queue's headers.
        target: the service it goes to.
        retry: the task's own retry parameters, if any.
        eta: when it may run next, seconds since the epoch.
        created: when it was added.
        first_run: when its first attempt started (``None`` before).
        retry_count: attempts made so far.
        execution_count: attempts that reached the app and failed.
        previous_response: the status of the last attempt, if it got one.
        retry_reason: why the last attempt failed.
        state: ``pending`` or ``leased``.
        lease_id: the lease it is being delivered under, when leased.
        tag: a pull task's tag, if any.
        dispatch_deadline: seconds a delivery of this push task may take (its
            ``dispatch_deadline_usec``), or ``None`` for the queue's ``dispatch_timeout``.
        lease_expires: when the lease it is being delivered under ends, when leased.
    """

    id: int
    queue: str
    name: str
    named: bool
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    payload: bytes
    target: str | None
    retry: RetryParameters | None
    eta: float
    created: float
    first_run: float | None
    retry_count: int
    execution_count: int
    previous_response: int | None
    retry_reason: str | None
    state: str
    lease_id: str | None
    tag: str | None = None
    dispatch_deadline: float | None = None
    lease_expires: float | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> StoredTask:
        """The task in a row selected with every column of :class:`StoredTask`."""
        retry = row["retry"]
        return cls(
            id=row["id"],
            queue=row["queue"],
            name=row["name"],
            named=bool(row["named"]),
            method=row["method"],
            url=row["url"],
            headers=_load_headers(row["headers"]),
            payload=bytes(row["payload"] or b""),
            target=row["target"],
            retry=None if retry is None else _load_retry(retry),
            eta=float(row["eta"]),
            created=float(row["created"]),
            first_run=row["first_run"],
            retry_count=row["retry_count"],
            execution_count=row["execution_count"],
            previous_response=row["previous_response"],
            retry_reason=row["retry_reason"],
            state=row["state"],
            lease_id=row["lease_id"],
            tag=row["tag"],
            dispatch_deadline=row["dispatch_deadline"],
            lease_expires=row["lease_expires"],
        )


def _insert_row(task: NewTask, name: str, target: str | None, now: float) -> tuple[Any, ...]:
    return (
        task.queue_name,
        name,
        1 if task.task_name else 0,
        task.method,
        task.url,
        _dump_headers(task.headers),
        task.payload,
        target,
        None if task.retry is None else _dump_retry(task.retry),
        task.eta,
        now,
        task.tag,
        # A pull task is leased by workers, never delivered: it has no dispatch deadline.
        None if task.method == "PULL" else task.dispatch_deadline,
    )


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


def sqlite_reason(exc: sqlite3.Error) -> str:
    """SQLite's error code name and message, e.g. ``SQLITE_FULL: database or disk is full``."""
    name = getattr(exc, "sqlite_errorname", None)
    if not isinstance(name, str):
        code = _sqlite_code(exc)
        name = _SQLITE_CODES[code][0] if code in _SQLITE_CODES else type(exc).__name__
    return f"{name}: {exc}"


_SPACE_AROUND_PUNCTUATION = re.compile(r"\s*([(),])\s*")


def _normal_sql(sql: str) -> str:
    """``sql`` with runs of whitespace made one space and none around ``(``, ``)`` and ``,``.

    ``ALTER TABLE ... ADD COLUMN`` appends ``, tag TEXT`` to the table's stored text after a
    line break: the same table as one created with the column, spaced differently.
    """
    return _SPACE_AROUND_PUNCTUATION.sub(r"\1", " ".join(sql.split()))


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction on ``conn``: committed whole or rolled back whole."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (a full disk, ...)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _same_schema(
    found: dict[tuple[str, str], str | None],
    expected: dict[tuple[str, str], str],
    *,
    allow_others: bool = False,
) -> bool:
    """Whether the schema objects ``found`` are ``expected``, whitespace aside.

    With ``allow_others``, tables and indexes of the user's beside ours are allowed (a
    migration that only adds a column leaves them as they are); a trigger or a view never
    is: one on our table could drop or change tasks behind the queue's back.
    """
    others = found.keys() - expected.keys()
    if others and not (allow_others and all(kind in ("table", "index") for kind, _ in others)):
        return False
    return all(
        key in found and _normal_sql(str(found[key])) == _normal_sql(sql)
        for key, sql in expected.items()
    )


def _migrate_from_v1(conn: sqlite3.Connection) -> None:
    """Rewrite a version-1 file as version 2, inside the caller's transaction.

    Version 1 kept every name in a table-level ``UNIQUE`` index, which SQLite cannot drop, so
    the table is copied (row ids, states, tombstones and all) into one of the version-2 schema.
    """
    conn.execute("ALTER TABLE tasks RENAME TO tasks_v1")
    conn.execute(_V2_TABLE)
    conn.execute(
        f"INSERT INTO tasks ({_V1_COLUMNS}) SELECT {_V1_COLUMNS} FROM tasks_v1"  # noqa: S608
    )
    conn.execute("DROP TABLE tasks_v1")
    conn.execute(_BY_NAME)
    conn.execute(_BY_STATE)
    conn.execute("PRAGMA user_version=2")


def _migrate_from_v2(conn: sqlite3.Connection) -> None:
    """Make a version-2 file version 3 (pull tasks' tags), inside the caller's transaction.

    Adding a nullable column rewrites no row: every task of the old file is a push task, whose
    tag is ``NULL``, and none of them enters the partial tag index.
    """
    conn.execute("ALTER TABLE tasks ADD COLUMN tag TEXT")
    conn.execute(_BY_TAG)
    conn.execute("PRAGMA user_version=3")


def _migrate_from_v3(conn: sqlite3.Connection) -> None:
    """Make a version-3 file version 4 (dispatch deadlines), inside the caller's transaction.

    Adding a nullable column rewrites no row: every task of the old file was added without a
    dispatch deadline the queue honoured, so each keeps ``NULL`` (the queue's
    ``dispatch_timeout``), as before the migration.
    """
    conn.execute("ALTER TABLE tasks ADD COLUMN dispatch_deadline REAL")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def process_host() -> str:
    """Where this process's pid means something: the host name and, on Linux, its pid
    namespace (containers may share a host name and a queue file, not their pids).

    The first part of every lease id; a lease whose process is found dead by its pid is
    released at once only when its lease id names this same host key.
    """
    host = socket.gethostname()
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # e.g. pid:[4026531836]
    except OSError:
        return host
    return f"{host}+{namespace}"


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


class Transaction:
    """The statements of the queue, run on one connection inside one transaction (or read).

    Made by :meth:`TaskStore.transaction` and :meth:`TaskStore.reading`; never kept.
    """

    def __init__(self, conn: sqlite3.Connection, tombstone_seconds: float) -> None:
        self._conn = conn
        self._tombstone_seconds = tombstone_seconds

    # -- adding and removing ---------------------------------------------------------------

    def insert(self, task: NewTask, *, name: str, target: str | None, now: float) -> None:
        """Store ``task`` as ``name``; raise if that name is live or a recent tombstone.

        Raises:
            TaskAlreadyExistsError: a pending or leased task has the name.
            TombstonedTaskError: a task of that name finished less than the tombstone time ago.
        """
        row = _insert_row(task, name, target, now)
        conn = self._conn
        if conn.execute(_INSERT, row).rowcount == 1:
            return
        # Only a named task conflicts: its name is in the name index, live or a tombstone.
        found = conn.execute(
            "SELECT state, finished FROM tasks WHERE queue=? AND name=? AND named=1",
            (task.queue_name, name),
        ).fetchone()
        if found["state"] in ("pending", "leased"):
            raise TaskAlreadyExistsError(
                f"task {name!r} already exists in queue {task.queue_name!r}"
            )
        finished = found["finished"]
        if finished is not None and finished + self._tombstone_seconds > now:
            raise TombstonedTaskError(
                f"task {name!r} of queue {task.queue_name!r} finished or was deleted at "
                f"{utc(finished).isoformat()}; its name is reserved for "
                f"{self._tombstone_seconds:g} s"
            )
        conn.execute(
            "DELETE FROM tasks WHERE queue=? AND name=? AND named=1", (task.queue_name, name)
        )
        conn.execute(_INSERT, row)

    def delete(self, queue_name: str, task_name: str | None, now: float) -> int:
        """Delete the live task ``task_name`` (every live task when None); return how many.

        Named tasks leave a tombstone; unnamed ones are removed. A named task is found through
        the name index; unnamed rows are searched only for a name shaped like a generated one.
        """
        where, args = (
            ("queue=?", (queue_name,))
            if task_name is None
            else ("queue=? AND name=?", (queue_name, task_name))
        )
        conn = self._conn
        deleted = conn.execute(
            "UPDATE tasks SET state='deleted', finished=?, payload=NULL, headers=NULL, "  # noqa: S608
            f"lease_id=NULL WHERE {where} AND named=1 AND {_LIVE}",
            (now, *args),
        ).rowcount
        if task_name is None or (not deleted and _may_be_generated(task_name)):
            deleted += conn.execute(
                f"DELETE FROM tasks WHERE {where} AND named=0 AND {_LIVE}",  # noqa: S608
                args,
            ).rowcount
        return int(deleted)

    def make_due(self, queue_name: str, task_name: str, now: float) -> bool:
        """Set a pending task's ETA to ``now``; True if it was pending."""
        args = (now, queue_name, task_name)
        changed = self._conn.execute(
            "UPDATE tasks SET eta=? WHERE queue=? AND name=? AND named=1 AND state='pending'", args
        ).rowcount
        if not changed and _may_be_generated(task_name):
            changed = self._conn.execute(
                "UPDATE tasks SET eta=? WHERE queue=? AND name=? AND named=0 AND state='pending'",
                args,
            ).rowcount
        return bool(changed)

    # -- leasing and finishing ---------------------------------------------------------------

    def lease(
        self,
        queue_name: str,
        now: float,
        limit: int,
        lease_ids: Iterator[str],
        expires: Callable[[StoredTask], float],
    ) -> list[StoredTask]:
        """Lease up to ``limit`` due pending tasks of the queue, in ETA order.

        Each lease ends at ``expires(task)``: a task's lease lasts as long as its own delivery
        may take.
        """
        rows = self._conn.execute(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE state='pending' AND queue=? AND eta<=? "  # noqa: S608
            "ORDER BY eta, id LIMIT ?",
            (queue_name, now + _ETA_SLACK, limit),
        ).fetchall()
        if not rows:
            return []
        leased = []
        for row in rows:
            task = StoredTask.from_row(row)
            first_run = now if task.first_run is None else task.first_run
            leased.append(
                dataclasses.replace(
                    task,
                    state="leased",
                    lease_id=next(lease_ids),
                    lease_expires=expires(task),
                    first_run=first_run,
                )
            )
        self._conn.executemany(
            "UPDATE tasks SET state='leased', lease_id=?, lease_expires=?, first_run=? WHERE id=?",
            [(t.lease_id, t.lease_expires, t.first_run, t.id) for t in leased],
        )
        return leased

    def extend_lease(self, task: StoredTask, expires: float) -> bool:
        """Make the lease ``task`` holds end at ``expires``; False if it no longer holds it."""
        return (
            self._conn.execute(
                "UPDATE tasks SET lease_expires=? WHERE id=? AND lease_id=? AND state='leased'",
                (expires, task.id, task.lease_id),
            ).rowcount
            == 1
        )

    # -- pull queues: a lease is the task's ETA moved to the lease's end ----------------------

    def lease_pull(
        self,
        queue_name: str,
        *,
        now: float,
        expires: float,
        max_tasks: int,
        group_by_tag: bool,
        tag: str | None,
        may_lease: Callable[[StoredTask], bool],
    ) -> tuple[list[StoredTask], list[StoredTask]]:
        """Lease up to ``max_tasks`` pull tasks whose ETA has come, until ``expires``.

        Each leased task's ETA becomes ``expires`` and its retry count goes up by one, as App
        Engine's lease does. With ``group_by_tag`` only tasks of one tag are leased: ``tag``,
        or (``None``) the tag of the oldest task available, untagged tasks if it has none.
        A task ``may_lease`` refuses (its ``task_retry_limit`` of leases is used up) is
        deleted instead. Returns (leased tasks, deleted tasks), each in ETA order.
        """
        conn = self._conn
        due = now + _ETA_SLACK
        where = "queue=? AND state='pending' AND eta<=?"
        args: tuple[Any, ...] = (queue_name, due)
        if group_by_tag and tag is None:
            oldest = conn.execute(
                f"SELECT tag FROM tasks WHERE {where} ORDER BY eta, id LIMIT 1",  # noqa: S608
                args,
            ).fetchone()
            if oldest is None:
                return [], []
            tag = oldest["tag"]
            if tag is None:
                where += " AND tag IS NULL"
        if group_by_tag and tag is not None:
            where, args = "queue=? AND tag=? AND state='pending' AND eta<=?", (queue_name, tag, due)
        rows = conn.execute(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE {where} ORDER BY eta, id LIMIT ?",  # noqa: S608
            (*args, max_tasks),
        ).fetchall()
        leased: list[StoredTask] = []
        spent: list[StoredTask] = []
        for row in rows:
            task = StoredTask.from_row(row)
            if not may_lease(task):
                spent.append(task)
                continue
            leased.append(
                dataclasses.replace(
                    task,
                    eta=expires,
                    retry_count=task.retry_count + 1,
                    first_run=now if task.first_run is None else task.first_run,
                )
            )
        conn.executemany(
            "UPDATE tasks SET eta=?, retry_count=?, first_run=? WHERE id=? AND state='pending'",
            [(t.eta, t.retry_count, t.first_run, t.id) for t in leased],
        )
        for task in spent:
            self.delete(queue_name, task.name, now)
        return leased, spent

    def modify_pull_lease(
        self, queue_name: str, task_name: str, *, eta: float, now: float, expires: float
    ) -> str:
        """Move the lease of the pull task ``task_name``, leased until ``eta``, to ``expires``.

        Returns ``"ok"``, ``"expired"`` (the task's ETA is no longer ``eta``, or that time
        has passed: another worker may hold it now), ``"tombstoned"`` or ``"unknown"``.
        """
        args = (queue_name, task_name)
        row = self._conn.execute(
            "SELECT id, eta, state FROM tasks WHERE queue=? AND name=? AND named=1", args
        ).fetchone()
        if row is None and _may_be_generated(task_name):
            row = self._conn.execute(
                "SELECT id, eta, state FROM tasks WHERE queue=? AND name=? AND named=0", args
            ).fetchone()
        if row is None:
            return "unknown"
        if row["state"] != "pending":
            return "tombstoned"
        # App Engine compares leases in whole microseconds; so does this.
        held = round(float(row["eta"]) * 1e6)
        if held != round(eta * 1e6) or held < round(now * 1e6):
            return "expired"
        self._conn.execute("UPDATE tasks SET eta=? WHERE id=?", (expires, row["id"]))
        return "ok"

    def finish(self, tasks: Sequence[StoredTask], state: str, now: float) -> None:
        """End leased tasks for good (``done`` or ``failed``): named ones stay as tombstones."""
        self._conn.executemany(
            "UPDATE tasks SET state=?, finished=?, payload=NULL, headers=NULL, lease_id=NULL "
            "WHERE id=? AND lease_id=? AND named=1",
            [(state, now, t.id, t.lease_id) for t in tasks if t.named],
        )
        self._conn.executemany(
            "DELETE FROM tasks WHERE id=? AND lease_id=? AND named=0",
            [(t.id, t.lease_id) for t in tasks if not t.named],
        )

    def reschedule(self, retries: Sequence[tuple[StoredTask, float, int, int | None, str]]) -> None:
        """Make leased tasks pending again: (task, eta, execution count, status, reason) each."""
        self._conn.executemany(
            "UPDATE tasks SET state='pending', eta=?, retry_count=retry_count+1, "
            "execution_count=?, previous_response=?, retry_reason=?, lease_id=NULL, "
            "lease_expires=NULL WHERE id=? AND lease_id=?",
            [
                (eta, executions, status, reason, task.id, task.lease_id)
                for task, eta, executions, status, reason in retries
            ],
        )

    def release(self, where: str, args: tuple[Any, ...], now: float, reason: str) -> int:
        """Make the leased tasks matching ``where`` pending again, their retry count raised."""
        return int(
            self._conn.execute(
                "UPDATE tasks SET state='pending', lease_id=NULL, lease_expires=NULL, eta=?, "  # noqa: S608
                "retry_count=retry_count+1, previous_response=NULL, retry_reason=? "
                f"WHERE state='leased' AND {where}",
                (now, reason, *args),
            ).rowcount
        )

    def release_expired(self, now: float, *, except_prefix: str) -> int:
        """Release leases that expired, except this queue's own (it still tracks those)."""
        return self.release(
            "lease_expires <= ? AND lease_id NOT LIKE ?",
            (now, f"{except_prefix}/%"),
            now,
            "lease expired",
        )

    def release_mine(
        self, prefix: str, now: float, reason: str, *, keep: Collection[str] = ()
    ) -> int:
        """Release the leases this queue holds (lease ids starting with ``prefix``) but ``keep``."""
        kept = tuple(keep)
        where = "lease_id LIKE ?"
        if kept:
            where += f" AND lease_id NOT IN ({', '.join('?' * len(kept))})"
        return self.release(where, (f"{prefix}/%", *kept), now, reason)

    def recover(self, now: float) -> int:
        """Release tasks leased by dead processes of this host or with expired leases."""
        return self._release_stale(now, expired=True)

    def release_dead(self, now: float) -> int:
        """Release tasks leased by processes of this host that have died (seen by their pid)."""
        return self._release_stale(now, expired=False)

    def _release_stale(self, now: float, *, expired: bool) -> int:
        host = process_host()
        me = os.getpid()
        stale: list[int] = []
        for row in self._conn.execute(
            "SELECT id, lease_id, lease_expires FROM tasks WHERE state='leased'"
        ):
            lease_host, _, rest = str(row["lease_id"] or "").partition("/")
            pid_text = rest.partition("/")[0]
            dead = (
                lease_host == host
                and pid_text.isdigit()
                and int(pid_text) != me
                and not _pid_alive(int(pid_text))
            )
            expires = row["lease_expires"]
            if dead or (expired and (expires is None or expires < now)):
                stale.append(row["id"])
        for row_id in stale:
            self.release("id=?", (row_id,), now, "dispatcher stopped")
        return len(stale)

    def sweep_tombstones(self, now: float) -> None:
        """Forget tombstones older than the tombstone time."""
        self._conn.execute(
            f"DELETE FROM tasks WHERE {_TOMBSTONES} AND finished < ?",  # noqa: S608 - fixed text
            (now - self._tombstone_seconds,),
        )

    # -- reading ---------------------------------------------------------------------------

    def live(self, queue_name: str) -> list[StoredTask]:
        """The queue's pending and leased tasks, in ETA order."""
        rows = self._conn.execute(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE queue=? AND {_LIVE} ORDER BY eta, id",  # noqa: S608
            (queue_name,),
        ).fetchall()
        return [StoredTask.from_row(row) for row in rows]

    def counts(self) -> list[tuple[str, str, int]]:
        """(queue, state, number of rows) for every queue and state present."""
        rows = self._conn.execute("SELECT queue, state, COUNT(*) FROM tasks GROUP BY queue, state")
        return [(row[0], row[1], int(row[2])) for row in rows]

    def queue_figures(self, queue_name: str, now: float) -> tuple[int, float | None, int]:
        """(live tasks, earliest ETA that has come among them or None, tasks leased) of a queue.

        One read of the ``tasks_by_state`` index (state, queue, eta), which covers it.
        """
        row = self._conn.execute(
            "SELECT COUNT(*), MIN(CASE WHEN eta <= ? THEN eta END), "
            "COALESCE(SUM(state = 'leased'), 0) "
            "FROM tasks WHERE state IN ('pending', 'leased') AND queue = ?",
            (now + _ETA_SLACK, queue_name),
        ).fetchone()
        oldest = row[1]
        return int(row[0]), None if oldest is None else float(oldest), int(row[2])

    def earliest_eta(self, queue_name: str) -> float | None:
        """The earliest ETA of the queue's pending tasks, or None when it has none."""
        value = self._conn.execute(
            "SELECT MIN(eta) FROM tasks WHERE state='pending' AND queue=?", (queue_name,)
        ).fetchone()[0]
        return None if value is None else float(value)

    def earliest_lease_expiry(self) -> float | None:
        """When the first lease held by anyone expires, or None when nothing is leased."""
        value = self._conn.execute(
            "SELECT MIN(lease_expires) FROM tasks WHERE state='leased'"
        ).fetchone()[0]
        return None if value is None else float(value)


class TaskStore:
    """The SQLite file (or ``:memory:`` database) of a local queue, on one connection.

    Args:
        path: the file, or ``":memory:"``.
        busy_timeout: seconds a statement waits for another connection's write lock.
        tombstone_seconds: how long names of finished named tasks stay reserved.

    Raises:
        ConfigError: the file cannot be opened, is not a queue database (it is left
            unchanged), or fails while it is being opened.
    """

    def __init__(self, path: str, *, busy_timeout: float, tombstone_seconds: float) -> None:
        self.path = path
        self.lock = threading.RLock()
        self._busy_timeout = busy_timeout
        self._tombstone_seconds = tombstone_seconds
        self._closed = False
        self._identity: tuple[str, int, int] | None = None  # set by _open for a file
        self.connection = self._open(path)

    # -- opening -----------------------------------------------------------------------------

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
                f"cannot open the queue database ({sqlite_reason(exc)})", path=path
            ) from exc
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout={round(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            with _immediate(conn):
                self._check_or_create(conn, path)
            if path != ":memory:":
                mode = self._switch_to_wal(conn)
                if mode != "wal":
                    raise ConfigError(f"cannot switch the database to WAL mode ({mode})", path=path)
                absolute = os.path.abspath(path)
                stat = os.stat(absolute)
                self._identity = (absolute, stat.st_dev, stat.st_ino)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error) and _sqlite_code(exc) == _SQLITE_NOTADB:
                raise ConfigError(
                    "the file is not a SQLite database, so not a taskhandler queue database "
                    f"({sqlite_reason(exc)}); it was left unchanged",
                    path=path,
                ) from exc
            if isinstance(exc, sqlite3.Error):
                raise ConfigError(
                    f"cannot open the queue database ({sqlite_reason(exc)})", path=path
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
        """Inside the opening transaction: refuse a foreign database, create or migrate ours.

        A zero-length or missing file is a new database. A SQLite database with no schema and
        ``user_version`` 0 (freshly created by another tool) is adopted too. A file of schema
        version 1, 2 or 3 (written by an earlier release) is migrated to version 4 in this same
        transaction, and only when its schema is exactly that version's; concurrent openers
        wait for the transaction and then find version 4. A file of version 4 is used only when
        its table and indexes are exactly version 4's. In a file of version 3 or 4, tables of the
        user's and their indexes are kept as they are (a trigger, a view, or anything on our
        table is refused; a version-1 or -2 file, whose table is rebuilt, must hold nothing
        else). Any other file (a later version's too) is refused.
        """
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        rows = [
            row
            for row in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")
            if not str(row["name"]).startswith("sqlite_")
        ]
        objects = {(row["type"], row["name"]): row["sql"] for row in rows}
        # Tables and indexes of the user's may sit beside ours, but nothing of theirs on
        # our table: an index there can refuse adds, a trigger drop tasks.
        theirs_on_ours = [
            f"{row['type']} {row['name']}"
            for row in rows
            if (row["type"], row["name"]) not in _V4_SCHEMA and row["tbl_name"] == "tasks"
        ]
        if not objects and version == 0:
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return
        if version == SCHEMA_VERSION and _same_schema(
            objects, _V4_SCHEMA, allow_others=not theirs_on_ours
        ):
            return
        if version == 1 and _same_schema(objects, _V1_SCHEMA):
            _migrate_from_v1(conn)
            _migrate_from_v2(conn)
            _migrate_from_v3(conn)
            return
        if version == 2 and _same_schema(objects, _V2_SCHEMA):
            _migrate_from_v2(conn)
            _migrate_from_v3(conn)
            return
        if version == 3 and _same_schema(objects, _V3_SCHEMA, allow_others=not theirs_on_ours):
            _migrate_from_v3(conn)
            return
        if theirs_on_ours and version in (3, SCHEMA_VERSION):
            raise ConfigError(
                "the queue's tasks table holds objects taskhandler does not know "
                f"({', '.join(sorted(theirs_on_ours))}): drop them (an index or trigger there "
                "can refuse adds or lose tasks); the file was left unchanged",
                path=path,
                value=theirs_on_ours,
            )
        tables = sorted(name for kind, name in objects if kind == "table")
        raise ConfigError(
            "the file is not a taskhandler queue database (or has another schema version:"
            f" user_version {version}, tables {', '.join(tables) or 'none'}); it was left"
            " unchanged",
            path=path,
            value=version,
        )

    # -- transactions --------------------------------------------------------------------------

    def error(self, exc: sqlite3.Error, doing: str) -> TransientError | InternalError:
        """The taskqueue error for an SQLite failure while ``doing``, naming the file."""
        reason = sqlite_reason(exc)
        message = f"{doing} in {self.path} failed ({reason})"
        if _sqlite_code(exc) in _TRANSIENT_CODES:
            return TransientError(message, path=self.path, reason=reason)
        return InternalError(message, path=self.path, reason=reason)

    @contextlib.contextmanager
    def transaction(self, doing: str) -> Iterator[Transaction]:
        """One ``BEGIN IMMEDIATE`` transaction: committed whole or rolled back whole.

        An SQLite error becomes :class:`TransientError` or :class:`InternalError` whose message
        says what was being done (``doing``). SQLite may already have rolled back after
        ``SQLITE_FULL``, ``SQLITE_IOERR`` or a failed ``COMMIT``; the rollback is issued only
        while a transaction is still open.
        """
        with self.lock:
            if self._closed:
                raise Error("the queue is closed")
            self._check_file(doing)
            conn = self.connection
            try:
                with _immediate(conn):
                    yield Transaction(conn, self._tombstone_seconds)
            except sqlite3.Error as exc:
                raise self.error(exc, doing) from exc

    @contextlib.contextmanager
    def reading(self, doing: str) -> Iterator[Transaction]:
        """Reads outside a transaction; SQLite errors become taskqueue errors."""
        with self.lock:
            if self._closed:
                raise Error("the queue is closed")
            try:
                yield Transaction(self.connection, self._tombstone_seconds)
            except sqlite3.Error as exc:
                raise self.error(exc, doing) from exc

    def insert_new(self, task: NewTask, *, name: str, target: str | None, now: float) -> bool:
        """Store one task whose name is free, as a single statement; False if the name is taken.

        The fast path of a one-task ``add()``: one autocommit ``INSERT`` instead of
        ``BEGIN``/``INSERT``/``COMMIT`` (a single statement is a transaction of its own). When
        the name is taken nothing is written, and :meth:`Transaction.insert` tells why.
        """
        doing = "storing 1 task(s)"
        with self.lock:
            if self._closed:
                raise Error("the queue is closed")
            self._check_file(doing)
            try:
                inserted = self.connection.execute(_INSERT, _insert_row(task, name, target, now))
            except sqlite3.Error as exc:
                raise self.error(exc, doing) from exc
            return inserted.rowcount == 1

    def _check_file(self, doing: str) -> None:
        """InternalError if the database file was deleted or replaced since it was opened.

        In WAL mode SQLite goes on committing into the ``-wal`` file of a deleted database, so
        those tasks would be lost at close; one ``stat`` per transaction refuses them instead.
        """
        if self._identity is None:
            return
        absolute, device, inode = self._identity
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
                f"{doing} in {self.path} failed ({reason})", path=self.path, reason=reason
            )

    def close(self) -> None:
        """Close the connection; later calls raise ``Error("the queue is closed")``."""
        with self.lock:
            self._closed = True
            self.connection.close()
