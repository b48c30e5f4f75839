"""The example's state in one SQLite file: counters, an outbox, dead letters, a task ledger.

Every write a task makes goes through :func:`transaction`, which takes SQLite's write lock
first (``BEGIN IMMEDIATE``), so two deliveries of one task running at once are serialised
and the second sees what the first committed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS task_ledger (
    queue_name TEXT NOT NULL, task_name TEXT NOT NULL, done_at REAL NOT NULL,
    PRIMARY KEY (queue_name, task_name));
CREATE TABLE IF NOT EXISTS outbox (
    queue_name TEXT NOT NULL, task_name TEXT NOT NULL, recipient TEXT NOT NULL,
    message TEXT NOT NULL, sent_at REAL NOT NULL, PRIMARY KEY (queue_name, task_name));
CREATE TABLE IF NOT EXISTS dead_letters (
    queue_name TEXT NOT NULL, task_name TEXT NOT NULL, path TEXT NOT NULL,
    attempts INTEGER NOT NULL, reason TEXT NOT NULL, payload TEXT NOT NULL,
    failed_at REAL NOT NULL, PRIMARY KEY (queue_name, task_name));
"""
LOCK_TIMEOUT = 30.0  # seconds a writer waits for another transaction


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), schema in place."""
    conn = sqlite3.connect(path, timeout=LOCK_TIMEOUT, isolation_level=None)
    conn.executescript(SCHEMA)
    return conn


@contextmanager
def transaction(path: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed when the block ends, rolled back if it raises."""
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


def claim_task(conn: sqlite3.Connection, queue_name: str, task_name: str) -> bool:
    """Record the task in the ledger; False if an earlier delivery already did."""
    cursor = conn.execute(
        "INSERT OR IGNORE INTO task_ledger VALUES (?, ?, ?)", (queue_name, task_name, time.time())
    )
    return cursor.rowcount == 1


def add_to_counter(conn: sqlite3.Connection, name: str, amount: int) -> int:
    """Add ``amount`` to counter ``name``; returns the new value."""
    conn.execute(
        "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
        (name, amount, amount),
    )
    row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return int(row[0])


def add_to_outbox(
    conn: sqlite3.Connection, queue_name: str, task_name: str, recipient: str, message: str
) -> bool:
    """Record a sent message once per task; False if it was already sent."""
    cursor = conn.execute(
        "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, ?, ?)",
        (queue_name, task_name, recipient, message, time.time()),
    )
    return cursor.rowcount == 1


def add_dead_letter(
    conn: sqlite3.Connection,
    queue_name: str,
    task_name: str,
    path: str,
    attempts: int,
    reason: str,
    payload: Any,
) -> None:
    """Keep a task the app gave up on, with its payload, for a person to look at."""
    conn.execute(
        "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
        (queue_name, task_name, path, attempts, reason, json.dumps(payload), time.time()),
    )


def snapshot(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything the page shows (and tests compare), as plain data."""
    conn = connect(path)
    try:
        return {
            "counters": dict(conn.execute("SELECT name, value FROM counters ORDER BY name")),
            "outbox": [
                {"task_name": t, "recipient": r, "message": m}
                for t, r, m in conn.execute(
                    "SELECT task_name, recipient, message FROM outbox ORDER BY sent_at"
                )
            ],
            "dead_letters": [
                {
                    "queue_name": q,
                    "task_name": t,
                    "path": p,
                    "attempts": a,
                    "reason": r,
                    "payload": json.loads(d),
                }
                for q, t, p, a, r, d in conn.execute(
                    "SELECT queue_name, task_name, path, attempts, reason, payload "
                    "FROM dead_letters ORDER BY failed_at"
                )
            ],
        }
    finally:
        conn.close()
