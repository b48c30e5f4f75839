"""The outbox table: its definition per database, every statement, and the row format.

One table holds the tasks written by committed (or still open) application transactions. A
row is a task on its way to the queue; it is deleted once the queue has accepted it.

Columns:

- ``id``: increasing, so the relay hands tasks off in the order they were written;
- ``task_name``: ``outbox-`` and 32 random hex digits, chosen when the row is written: the
  name the task gets in the queue, so a second hand-off of the same row is refused by the
  queue's named-task deduplication instead of creating a second task;
- ``queue_name``, ``task`` (JSON: method, url, headers, eta, target, retry, and when set a
  pull task's ``tag`` and a push task's ``dispatch_deadline`` in seconds) and ``payload``.
  New task fields go into this JSON, so the table never needs a migration: rows written
  before a field existed read as "not set";
- ``created``: seconds since the epoch when the row was written;
- ``not_before``: the row is not handed off before then (backoff after a refusal);
- ``attempts`` and ``last_error``: refusals so far, and the last one's message;
- ``lease_until``: on SQLite, a relay that claimed the row holds it until then (PostgreSQL
  relays hold a row lock instead, ``FOR UPDATE SKIP LOCKED``).

The statements are written for the DB-API's ``qmark`` style and turned into ``format`` style
(``%s``) for PostgreSQL drivers.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from ..exceptions import ConfigError
from ..taskqueue import NewTask, RetryParameters

__all__ = ["DIALECTS", "Row", "Statements", "new_task_name", "row_values", "to_task"]

DEFAULT_TABLE = "taskhandler_outbox"
TASK_NAME_PREFIX = "outbox-"
DIALECTS = ("sqlite", "postgresql")
_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

_COLUMNS = {
    "sqlite": {
        "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "payload": "BLOB NOT NULL",
        "real": "REAL",
    },
    "postgresql": {
        "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "payload": "BYTEA NOT NULL",
        "real": "DOUBLE PRECISION",
    },
}


def check_table(table: object) -> str:
    """``table`` if it is a plain SQL identifier; :class:`ConfigError` otherwise."""
    if not isinstance(table, str) or not _TABLE_RE.match(table):
        raise ConfigError(
            "Outbox table: a letter or underscore, then letters, digits or underscores "
            "(at most 63)",
            value=table,
        )
    return table


def check_dialect(dialect: object) -> str:
    """``dialect`` if the outbox supports it; :class:`ConfigError` otherwise."""
    if dialect not in DIALECTS:
        raise ConfigError(
            f"Outbox: database {dialect!r} is not supported (supported: {', '.join(DIALECTS)})",
            value=dialect,
        )
    return str(dialect)


def create_table_sql(dialect: str, table: str = DEFAULT_TABLE) -> list[str]:
    """The ``CREATE TABLE`` and ``CREATE INDEX`` statements of the outbox table."""
    kinds = _COLUMNS[check_dialect(dialect)]
    table = check_table(table)
    real = kinds["real"]
    return [
        f"CREATE TABLE IF NOT EXISTS {table} (\n"
        f"    id {kinds['id']},\n"
        f"    task_name VARCHAR(100) NOT NULL UNIQUE,\n"
        f"    queue_name VARCHAR(100) NOT NULL,\n"
        f"    task TEXT NOT NULL,\n"
        f"    payload {kinds['payload']},\n"
        f"    created {real} NOT NULL,\n"
        f"    not_before {real} NOT NULL DEFAULT 0,\n"
        f"    attempts INTEGER NOT NULL DEFAULT 0,\n"
        f"    last_error TEXT,\n"
        f"    lease_until {real}\n"
        f")",
        f"CREATE INDEX IF NOT EXISTS {table}_due ON {table} (not_before, id)",
    ]


@dataclass(frozen=True)
class Statements:
    """Every statement the outbox runs, for one database and table, in the driver's style."""

    dialect: str
    table: str

    def _sql(self, text: str) -> str:
        text = text.replace("{t}", self.table)
        return text.replace("?", "%s") if self.dialect == "postgresql" else text

    @property
    def insert(self) -> str:
        return self._sql(
            "INSERT INTO {t} (task_name, queue_name, task, payload, created, not_before)"
            " VALUES (?, ?, ?, ?, ?, 0)"
        )

    @property
    def claim(self) -> str:
        """Due rows; PostgreSQL locks them, skipping rows another relay holds."""
        if self.dialect == "postgresql":
            return self._sql(
                "SELECT id, task_name, queue_name, task, payload, attempts FROM {t}"
                " WHERE not_before <= ? ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED"
            )
        return self._sql(
            "SELECT id, task_name, queue_name, task, payload, attempts FROM {t}"
            " WHERE not_before <= ? AND (lease_until IS NULL OR lease_until <= ?)"
            " ORDER BY id LIMIT ?"
        )

    @property
    def lease(self) -> str:
        return self._sql("UPDATE {t} SET lease_until = ? WHERE id = ?")

    @property
    def delete(self) -> str:
        return self._sql("DELETE FROM {t} WHERE id = ?")

    @property
    def refused(self) -> str:
        return self._sql(
            "UPDATE {t} SET attempts = attempts + 1, not_before = ?, last_error = ?,"
            " lease_until = NULL WHERE id = ?"
        )

    @property
    def release(self) -> str:
        return self._sql("UPDATE {t} SET lease_until = NULL WHERE id = ?")

    @property
    def count(self) -> str:
        return self._sql("SELECT COUNT(*) FROM {t}")


@dataclass(frozen=True)
class Row:
    """One claimed outbox row."""

    id: int
    task_name: str
    queue_name: str
    task: str
    payload: bytes
    attempts: int


def new_task_name() -> str:
    """A fresh task name for a row: unique, and safe to hand off any number of times."""
    return TASK_NAME_PREFIX + uuid.uuid4().hex


def row_values(task_name: str, record: NewTask, now: float) -> tuple[Any, ...]:
    """The ``insert`` parameters that store ``record`` under ``task_name``."""
    spec = {
        "method": record.method,
        "url": record.url,
        "headers": [list(pair) for pair in record.headers],
        "eta": record.eta,
        "target": record.target,
        "retry": None if record.retry is None else dataclasses.asdict(record.retry),
    }
    # Written only when set, so rows of push tasks without a deadline stay as they were.
    if record.tag is not None:
        spec["tag"] = record.tag
    if record.dispatch_deadline is not None:
        spec["dispatch_deadline"] = record.dispatch_deadline
    return (
        task_name,
        record.queue_name,
        json.dumps(spec, separators=(",", ":")),
        record.payload,
        now,
    )


def to_task(row: Row) -> NewTask:
    """The task a row stores, named by the row."""
    spec = json.loads(row.task)
    retry = spec.get("retry")
    return NewTask(
        queue_name=row.queue_name,
        task_name=row.task_name,
        method=spec["method"],
        url=spec["url"],
        headers=tuple((str(k), str(v)) for k, v in spec["headers"]),
        payload=bytes(row.payload),
        eta=float(spec["eta"]),
        target=spec.get("target"),
        retry=None if retry is None else RetryParameters(**retry),
        tag=spec.get("tag"),
        dispatch_deadline=spec.get("dispatch_deadline"),
    )
