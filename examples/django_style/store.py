"""The example's data: word counts in a SQLite file, each task counted once."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30)
    conn.execute("CREATE TABLE IF NOT EXISTS counts (word TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    conn.execute("CREATE TABLE IF NOT EXISTS done (task_name TEXT PRIMARY KEY)")
    return conn


def count(path: str | Path, word: str, task_name: str, amount: int = 1) -> bool:
    """Add ``amount`` to ``word`` once per task name (a redelivered task changes nothing)."""
    conn = connect(path)
    try:
        with conn:
            seen = conn.execute("INSERT OR IGNORE INTO done VALUES (?)", (task_name,)).rowcount
            if not seen:
                return False
            conn.execute(
                "INSERT INTO counts VALUES (?, ?) ON CONFLICT(word) DO UPDATE SET n = n + ?",
                (word, amount, amount),
            )
        return True
    finally:
        conn.close()


def counts(path: str | Path) -> dict[str, int]:
    conn = connect(path)
    try:
        return dict(conn.execute("SELECT word, n FROM counts ORDER BY word").fetchall())
    finally:
        conn.close()
