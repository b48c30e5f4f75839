"""Reading the local queue's tasks a page at a time, for the console.

:meth:`LocalTaskQueue.tasks` returns every live task of a queue: right for a test, too much for a
page at 100,000 tasks. The console reads the queue file through a read-only connection of its
own (WAL lets it read while the dispatcher writes, without taking the queue's lock), with
``LIMIT``/``OFFSET`` queries that the ``tasks_by_state (state, queue, eta)`` index serves.
It only ever reads; every change goes through :class:`LocalTaskQueue`.
"""

from __future__ import annotations

import datetime
import re
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from ..taskqueue import QueuedTask

# The console's states of a live task, as conditions on the queue's rows.
LIVE_STATES: dict[str, str] = {
    "pending": "state='pending' AND retry_count=0 AND eta<=:now",
    "scheduled": "state='pending' AND retry_count=0 AND eta>:now",
    "retrying": "state='pending' AND retry_count>0",
    "running": "state='leased'",
}
_ORDER = {
    "pending": "eta, id",
    "scheduled": "eta, id",
    "retrying": "eta, id",
    "running": "id",
}
_GENERATED = re.compile(r"[0-9a-f]{32}\Z")
_COLUMNS = (
    "queue, name, method, url, headers, payload, target, eta, created, retry_count, "
    "execution_count, previous_response, retry_reason, state"
)


def _task(row: sqlite3.Row) -> QueuedTask:
    import json

    def utc(seconds: float) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)

    return QueuedTask(
        queue_name=row["queue"],
        task_name=row["name"],
        method=row["method"],
        url=row["url"],
        headers=tuple((str(k), str(v)) for k, v in json.loads(row["headers"] or "[]")),
        payload=bytes(row["payload"] or b""),
        target=row["target"],
        eta=utc(row["eta"]),
        created=utc(row["created"]),
        retry_count=row["retry_count"],
        execution_count=row["execution_count"],
        previous_response=row["previous_response"],
        retry_reason=row["retry_reason"],
        state=row["state"],
    )


class TaskBrowser:
    """Read-only, paginated views of a queue database file.

    Args:
        path: the queue's SQLite file (not ``:memory:``).
        clock: the queue's clock, which decides what is due.
    """

    def __init__(self, path: str, clock: Callable[[], float]) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.cache_seconds = 1.0
        self._counts: dict[str, dict[str, int]] | None = None
        self._counted = 0.0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            uri = "file:" + self.path.replace("?", "%3f").replace("#", "%23") + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=5)
            conn.row_factory = sqlite3.Row
            self._conn = conn
        return self._conn

    def _query(self, sql: str, args: dict[str, Any]) -> list[sqlite3.Row]:
        with self._lock:
            return self._connection().execute(sql, args).fetchall()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def counts(self) -> dict[str, dict[str, int]]:
        """Per queue, how many live tasks are pending, scheduled, retrying and running.

        One pass over the table (a scan reads the rows in order, which at 100,000 tasks is
        faster than visiting each through the state index); the answer is reused for
        ``cache_seconds``, so a page and its refreshes do not scan again and again.
        """
        now = self.clock()
        with self._lock:
            if self._counts is not None and now - self._counted < self.cache_seconds:
                return self._counts
        rows = self._query(
            "SELECT queue, SUM(state='pending' AND retry_count=0 AND eta<=:now), "
            "SUM(state='pending' AND retry_count=0 AND eta>:now), "
            "SUM(state='leased'), SUM(state='pending' AND retry_count>0) "
            "FROM tasks NOT INDEXED GROUP BY queue",
            {"now": now},
        )
        result = {
            row[0]: dict(zip(LIVE_STATES, (int(v or 0) for v in row[1:]), strict=True))
            for row in rows
        }
        with self._lock:
            self._counts, self._counted = result, now
        return result

    def changed(self) -> None:
        """Forget the cached counts (the console changed the queue)."""
        with self._lock:
            self._counts = None

    def page(
        self, queue_name: str, state: str, *, search: str = "", offset: int = 0, limit: int = 50
    ) -> tuple[list[QueuedTask], int]:
        """A page of the queue's live tasks in ``state`` (see :data:`LIVE_STATES`), and the
        number of tasks that match; ``search`` keeps tasks whose name or URL contains it."""
        where = f"queue=:queue AND {LIVE_STATES[state]}"
        args: dict[str, Any] = {"queue": queue_name, "now": self.clock()}
        if search:
            where += " AND (instr(name, :search) > 0 OR instr(url, :search) > 0)"
            args["search"] = search
        # A search reads every row's name and URL anyway: in table order, not through the index.
        table = "tasks NOT INDEXED" if search else "tasks"
        if search:
            total = self._query(f"SELECT COUNT(*) FROM {table} WHERE {where}", args)[0][0]  # noqa: S608
        else:
            total = self.counts().get(queue_name, {}).get(state, 0)
        rows = self._query(
            f"SELECT {_COLUMNS} FROM {table} WHERE {where} "  # noqa: S608 - fixed text
            f"ORDER BY {_ORDER[state]} LIMIT :limit OFFSET :offset",
            {**args, "limit": limit, "offset": offset},
        )
        return [_task(row) for row in rows], int(total)

    def task(self, queue_name: str, task_name: str) -> QueuedTask | None:
        """The live task of that name, or None.

        Named tasks are found through the name index; unnamed ones (outside it) are looked
        for only when the name has the shape of a generated one.
        """
        for named in (1, 0):
            if not named and not _GENERATED.match(task_name):
                break
            rows = self._query(
                f"SELECT {_COLUMNS} FROM tasks WHERE queue=:queue AND name=:name "  # noqa: S608
                "AND named=:named AND state IN ('pending', 'leased') LIMIT 1",
                {"queue": queue_name, "name": task_name, "named": named},
            )
            if rows:
                return _task(rows[0])
        return None
