"""What the development server saw of each task attempt: the console's history.

The queue keeps a task only while it is to run (and a named one's tombstone, without its
payload). The console needs more: every attempt's status, duration and exception with its
traceback, and failed and done tasks with their payloads, so that they can be inspected and
run again. Only the development server sees all of it -- the exception is logged inside the
app while the queue sees a status -- so it records it here, in ``<db>.console.sqlite3`` beside
the queue database:

- ``attempts``: one row per delivery (request headers and body, status, duration, outcome
  ``done``/``retry``/``failed``, exception and traceback); the newest ``limit`` are kept;
- ``finished``: one row per task that ended (``done`` or ``failed``, i.e. given up), with the
  request it was delivered with; the newest ``limit`` are kept;
- ``minutes``: per queue and minute, how many attempts were done, retried and failed (the
  throughput chart; an hour is kept, plus the totals in ``totals``).

:class:`Recorder` is the WSGI/ASGI middleware that writes it; a logging handler tells it the
exception the app logged during the attempt, and which attempt the queue gave up after.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._types import ASGIApplication, Message, Receive, Scope, Send, StartResponse, WSGIApplication
from ..asgi import _read_all, _replay

logger = logging.getLogger("taskhandler.devserver")

QUEUE_PEER = "0.1.0.2"
DEFAULT_LIMIT = 10_000
NOT_FOUND_WARN_AT = 2  # the retry count at which a task still answered 404 is reported
_MAX_BODY = 1 << 20
_MAX_TRACEBACK = 20_000

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS attempts (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        task_name TEXT NOT NULL,
        retry_count INTEGER NOT NULL,
        method TEXT NOT NULL,
        url TEXT NOT NULL,
        headers TEXT NOT NULL,
        payload BLOB NOT NULL,
        started REAL NOT NULL,
        duration REAL NOT NULL,
        status INTEGER,
        outcome TEXT NOT NULL,
        error TEXT,
        traceback TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS attempts_by_task ON attempts (queue, task_name, id)",
    """CREATE TABLE IF NOT EXISTS finished (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        task_name TEXT NOT NULL,
        state TEXT NOT NULL,
        finished REAL NOT NULL,
        attempts INTEGER NOT NULL,
        method TEXT NOT NULL,
        url TEXT NOT NULL,
        headers TEXT NOT NULL,
        payload BLOB NOT NULL,
        status INTEGER,
        error TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS finished_by_state ON finished (queue, state, id)",
    "CREATE INDEX IF NOT EXISTS finished_by_task ON finished (queue, task_name)",
    """CREATE TABLE IF NOT EXISTS minutes (
        queue TEXT NOT NULL,
        minute INTEGER NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        retried INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (queue, minute)
    )""",
    """CREATE TABLE IF NOT EXISTS totals (
        queue TEXT PRIMARY KEY,
        done INTEGER NOT NULL DEFAULT 0,
        retried INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0
    )""",
)
_BUMP = {
    outcome: (
        f"INSERT INTO minutes (queue, minute, {outcome}) VALUES (?, ?, 1) "  # noqa: S608 - fixed
        f"ON CONFLICT (queue, minute) DO UPDATE SET {outcome} = {outcome} + 1",
        f"INSERT INTO totals (queue, {outcome}) VALUES (?, 1) "  # noqa: S608 - fixed
        f"ON CONFLICT (queue) DO UPDATE SET {outcome} = {outcome} + 1",
    )
    for outcome in ("done", "retried", "failed")
}


def history_path(db: str) -> str:
    """The history file beside a queue database: ``q.sqlite3`` -> ``q.console.sqlite3``."""
    if db == ":memory:":
        return ":memory:"
    path = Path(db)
    return str(path.with_name(f"{path.stem}.console.sqlite3"))


@dataclass(frozen=True)
class AttemptRecord:
    """One delivery of a task, as the development server saw it."""

    id: int
    queue_name: str
    task_name: str
    retry_count: int
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    payload: bytes
    started: float
    duration: float
    status: int | None
    outcome: str
    error: str | None
    traceback: str | None


@dataclass(frozen=True)
class FinishedTask:
    """A task that ended: ``done``, or ``failed`` (the queue gave up), with its request."""

    id: int
    queue_name: str
    task_name: str
    state: str
    finished: float
    attempts: int
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    payload: bytes
    status: int | None
    error: str | None


def _headers(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in json.loads(text))


class History:
    """The history file: attempts, finished tasks and per-minute counts.

    Args:
        path: the SQLite file (``history_path(db)``), or ``":memory:"``.
        limit: how many attempts, and how many finished tasks, are kept (the newest).
        clock: seconds since the epoch (the queue's clock).
    """

    def __init__(
        self, path: str, *, limit: int = DEFAULT_LIMIT, clock: Callable[[], float] = time.time
    ) -> None:
        if limit < 1:
            raise ValueError("the history limit must be at least 1")
        self.path = path
        self.limit = limit
        self.clock = clock
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=10
        )
        self._conn.row_factory = sqlite3.Row
        self._writes = 0
        with self._lock:
            if path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                self._conn.execute(statement)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._conn.close()

    # -- writing -------------------------------------------------------------------------------

    def record(
        self,
        *,
        queue_name: str,
        task_name: str,
        retry_count: int,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        payload: bytes,
        started: float,
        duration: float,
        status: int | None,
        error: str | None,
        trace: str | None,
    ) -> None:
        """Store one attempt; a 2xx one also ends the task as ``done``."""
        ok = status is not None and 200 <= status < 300
        outcome = "done" if ok else "retry"
        header_text = json.dumps(list(headers))
        minute = int(started // 60)
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO attempts (queue, task_name, retry_count, method, url, headers,"
                " payload, started, duration, status, outcome, error, traceback)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (queue_name, task_name, retry_count, method, url, header_text, payload, started,
                 duration, status, outcome, error, trace),
            )  # fmt: skip
            if ok:
                self._finish(conn, queue_name, task_name, "done", started + duration)
            for statement, args in zip(
                _BUMP["done" if ok else "retried"],
                ((queue_name, minute), (queue_name,)),
                strict=True,
            ):
                conn.execute(statement, args)
            self._writes += 1
            if self._writes % 100 == 0:
                self._prune(conn)

    def gave_up(self, queue_name: str, task_name: str) -> None:
        """The queue gave up on the task: its last attempt failed for good."""
        now = self.clock()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT id, started FROM attempts WHERE queue=? AND task_name=? "
                "ORDER BY id DESC LIMIT 1",
                (queue_name, task_name),
            ).fetchone()
            if row is None:
                return
            conn.execute("UPDATE attempts SET outcome='failed' WHERE id=?", (row["id"],))
            self._finish(conn, queue_name, task_name, "failed", now)
            minute = int(row["started"] // 60)
            conn.execute(
                "UPDATE minutes SET retried = MAX(retried - 1, 0), failed = failed + 1 "
                "WHERE queue=? AND minute=?",
                (queue_name, minute),
            )
            conn.execute(
                "UPDATE totals SET retried = MAX(retried - 1, 0), failed = failed + 1 "
                "WHERE queue=?",
                (queue_name,),
            )

    def _finish(
        self, conn: sqlite3.Connection, queue_name: str, task_name: str, state: str, at: float
    ) -> None:
        last = conn.execute(
            "SELECT method, url, headers, payload, status, error FROM attempts "
            "WHERE queue=? AND task_name=? ORDER BY id DESC LIMIT 1",
            (queue_name, task_name),
        ).fetchone()
        count = conn.execute(
            "SELECT COUNT(*) FROM attempts WHERE queue=? AND task_name=?", (queue_name, task_name)
        ).fetchone()[0]
        conn.execute("DELETE FROM finished WHERE queue=? AND task_name=?", (queue_name, task_name))
        conn.execute(
            "INSERT INTO finished (queue, task_name, state, finished, attempts, method, url,"
            " headers, payload, status, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (queue_name, task_name, state, at, count, last["method"], last["url"],
             last["headers"], last["payload"], last["status"], last["error"]),
        )  # fmt: skip

    def _prune(self, conn: sqlite3.Connection) -> None:
        for table in ("attempts", "finished"):
            conn.execute(
                f"DELETE FROM {table} WHERE id <= (SELECT MAX(id) FROM {table}) - ?",  # noqa: S608
                (self.limit,),
            )
        conn.execute("DELETE FROM minutes WHERE minute < ?", (int(self.clock() // 60) - 60,))

    def forget(self, queue_name: str, task_name: str) -> bool:
        """Remove a finished task (the console's *delete* on a failed or done task)."""
        with self._tx() as conn:
            return (
                conn.execute(
                    "DELETE FROM finished WHERE queue=? AND task_name=?", (queue_name, task_name)
                ).rowcount
                > 0
            )

    # -- reading -------------------------------------------------------------------------------

    def attempts(self, queue_name: str, task_name: str) -> list[AttemptRecord]:
        """The task's attempts, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM attempts WHERE queue=? AND task_name=? ORDER BY id",
                (queue_name, task_name),
            ).fetchall()
        return [
            AttemptRecord(
                id=r["id"], queue_name=r["queue"], task_name=r["task_name"],
                retry_count=r["retry_count"], method=r["method"], url=r["url"],
                headers=_headers(r["headers"]), payload=bytes(r["payload"]),
                started=r["started"], duration=r["duration"], status=r["status"],
                outcome=r["outcome"], error=r["error"], traceback=r["traceback"],
            )
            for r in rows
        ]  # fmt: skip

    def finished(
        self, queue_name: str, state: str, *, search: str = "", offset: int = 0, limit: int = 50
    ) -> tuple[list[FinishedTask], int]:
        """A page of the queue's ``done`` or ``failed`` tasks, newest first, and how many match."""
        where = "queue=? AND state=?"
        args: list[Any] = [queue_name, state]
        if search:
            where += " AND (instr(task_name, ?) > 0 OR instr(url, ?) > 0)"
            args += [search, search]
        with self._lock:
            total = self._conn.execute(
                f"SELECT COUNT(*) FROM finished WHERE {where}",  # noqa: S608 - fixed text
                args,
            ).fetchone()[0]
            rows = self._conn.execute(
                f"SELECT * FROM finished WHERE {where} ORDER BY id DESC LIMIT ? OFFSET ?",  # noqa: S608
                [*args, limit, offset],
            ).fetchall()
        return [_finished(r) for r in rows], int(total)

    def finished_task(self, queue_name: str, task_name: str) -> FinishedTask | None:
        """The finished task of that name, if it is kept."""
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM finished WHERE queue=? AND task_name=? ORDER BY id DESC LIMIT 1",
                (queue_name, task_name),
            ).fetchone()
        return None if row is None else _finished(row)

    def totals(self) -> dict[str, dict[str, int]]:
        """Per queue: tasks done, attempts retried, tasks failed, since the file was made."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM totals").fetchall()
        return {
            r["queue"]: {"done": r["done"], "retried": r["retried"], "failed": r["failed"]}
            for r in rows
        }

    def kept(self) -> dict[tuple[str, str], int]:
        """(queue, state) -> finished tasks kept (what the failed and done lists hold)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT queue, state, COUNT(*) FROM finished GROUP BY queue, state"
            ).fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def per_minute(self, minutes: int = 60) -> dict[int, dict[str, int]]:
        """Minute (since the epoch) -> attempts done, retried and failed, over every queue."""
        since = int(self.clock() // 60) - minutes + 1
        with self._lock:
            rows = self._conn.execute(
                "SELECT minute, SUM(done), SUM(retried), SUM(failed) FROM minutes "
                "WHERE minute >= ? GROUP BY minute",
                (since,),
            ).fetchall()
        return {int(r[0]): {"done": r[1], "retried": r[2], "failed": r[3]} for r in rows}


def _finished(r: sqlite3.Row) -> FinishedTask:
    return FinishedTask(
        id=r["id"], queue_name=r["queue"], task_name=r["task_name"], state=r["state"],
        finished=r["finished"], attempts=r["attempts"], method=r["method"], url=r["url"],
        headers=_headers(r["headers"]), payload=bytes(r["payload"]), status=r["status"],
        error=r["error"],
    )  # fmt: skip


# -- capturing what the app logged during an attempt ---------------------------------------------

_current: contextvars.ContextVar[list[logging.LogRecord] | None] = contextvars.ContextVar(
    "taskhandler_console_attempt", default=None
)
# The queue's message when it gives up on a task: its arguments are (task, queue, attempts, why).
GIVE_UP_MESSAGE = "task %s of queue %s failed after %d attempt(s) (%s); giving up"


class _Capture(logging.Handler):
    """Keeps, for the attempt running in this context, the records that carry an exception;
    and tells the history when the queue gives up on a task."""

    def __init__(self, history: History) -> None:
        super().__init__(logging.DEBUG)
        self.history = history

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == GIVE_UP_MESSAGE and isinstance(record.args, tuple):
            task_name, queue_name = str(record.args[0]), str(record.args[1])
            try:
                self.history.gave_up(queue_name, task_name)
            except sqlite3.Error:
                logger.warning("could not record that task %s failed", task_name)
            return
        records = _current.get()
        if records is not None and record.exc_info and record.exc_info[1] is not None:
            records.append(record)


def _error_of(records: list[logging.LogRecord]) -> tuple[str | None, str | None]:
    """The last exception logged during an attempt: ``"ValueError: msg"`` and its traceback."""
    for record in reversed(records):
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            line = f"{type(exc).__name__}: {exc}".strip()
            return line[:500], text[-_MAX_TRACEBACK:]
    return None, None


# -- the middleware ------------------------------------------------------------------------------


class Recorder:
    """Records each task delivery the queue makes to ``app`` into ``history`` (WSGI; see
    :class:`AsgiRecorder`).

    Only deliveries from the local queue (peer ``0.1.0.2`` with ``X-AppEngine-QueueName`` and
    ``X-AppEngine-TaskName``) are recorded; other requests pass through untouched.
    """

    def __init__(self, app: Any, history: History) -> None:
        self.app = app
        self.history = history
        self._capture = _Capture(history)
        self._warned: set[tuple[str, str]] = set()

    def install(self) -> None:
        """Start capturing logged exceptions (on the root logger)."""
        logging.getLogger().addHandler(self._capture)

    def uninstall(self) -> None:
        """Stop capturing."""
        logging.getLogger().removeHandler(self._capture)

    def _save(
        self,
        headers: dict[str, str],
        method: str,
        url: str,
        body: bytes,
        started: float,
        elapsed: float,
        status: int | None,
        records: list[logging.LogRecord],
        raised: BaseException | None,
    ) -> None:
        queue_name = headers.get("x-appengine-queuename", "")
        task_name = headers.get("x-appengine-taskname", "")
        try:
            retry_count = int(headers.get("x-appengine-taskretrycount", "0"))
        except ValueError:
            retry_count = 0
        if raised is not None:
            error: str | None = f"{type(raised).__name__}: {raised}"
            trace: str | None = "".join(
                traceback.format_exception(type(raised), raised, raised.__traceback__)
            )
        else:
            error, trace = _error_of(records)
        kept = [
            ("-".join(word.capitalize() for word in k.split("-")), v)
            for k, v in headers.items()
            if k not in ("cookie", "authorization")
        ]
        try:
            self.history.record(
                queue_name=queue_name, task_name=task_name, retry_count=retry_count,
                method=method, url=url, headers=kept, payload=body[:_MAX_BODY],
                started=started, duration=elapsed, status=status, error=error, trace=trace,
            )  # fmt: skip
        except sqlite3.Error as exc:
            logger.warning("could not record an attempt of task %s: %s", task_name, exc)
        if status == 404 and retry_count >= NOT_FOUND_WARN_AT:
            path = url.partition("?")[0]
            if (queue_name, path) not in self._warned:
                self._warned.add((queue_name, path))
                logger.warning(
                    "task %s of queue %s got 404 Not Found from %s %s %d times: no route of "
                    "the app answers this URL (is the task's url= right?); it is retried "
                    "until the queue's retry limits give up",
                    task_name, queue_name, method, path, retry_count + 1,
                )  # fmt: skip

    # -- WSGI ----------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REMOTE_ADDR") != QUEUE_PEER or "HTTP_X_APPENGINE_TASKNAME" not in environ:
            app: WSGIApplication = self.app
            return app(environ, start_response)
        headers = {
            key[5:].lower().replace("_", "-"): str(value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = str(environ["CONTENT_TYPE"])
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        import io

        body = environ["wsgi.input"].read(length) if length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(body)
        query = environ.get("QUERY_STRING", "")
        url = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        url += f"?{query}" if query else ""
        status: list[int] = []

        def recording(status_line: str, response_headers: Any, exc_info: Any = None) -> Any:
            status[:] = [int(status_line.split()[0])]
            return start_response(status_line, response_headers, exc_info)

        records: list[logging.LogRecord] = []
        token = _current.set(records)
        started = self.history.clock()
        clock = time.perf_counter()
        raised: BaseException | None = None
        try:
            chunks = list(self.app(environ, recording))
        except BaseException as exc:
            raised = exc
            raise
        finally:
            _current.reset(token)
            self._save(
                headers, environ.get("REQUEST_METHOD", "POST"), url, body, started,
                time.perf_counter() - clock, status[0] if status and raised is None else None,
                records, raised,
            )  # fmt: skip
        return chunks


class AsgiRecorder(Recorder):
    """:class:`Recorder` for an ASGI app."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        app: ASGIApplication = self.app
        client = scope.get("client") or ("", 0)
        if scope["type"] != "http" or client[0] != QUEUE_PEER:
            await app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        if "x-appengine-taskname" not in headers:
            await app(scope, receive, send)
            return
        body = await _read_all(receive, sys.maxsize)  # the local queue's own request
        assert body is not None
        replay = _replay(body, receive)
        status: list[int] = []

        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[:] = [int(message["status"])]
            await send(message)

        query = scope.get("query_string", b"").decode("latin-1")
        url = scope.get("root_path", "") + scope.get("path", "")
        url += f"?{query}" if query else ""
        records: list[logging.LogRecord] = []
        token = _current.set(records)
        started = self.history.clock()
        clock = time.perf_counter()
        raised: BaseException | None = None
        try:
            await app(scope, replay, recording)
        except BaseException as exc:
            raised = exc
            raise
        finally:
            _current.reset(token)
            self._save(
                headers, scope.get("method", "POST"), url, body, started,
                time.perf_counter() - clock, status[0] if status and raised is None else None,
                records, raised,
            )  # fmt: skip
