"""The small part of App Engine's ``ndb`` that the counter example uses, stored in SQLite.

``Model``, ``IntegerProperty``, ``StringProperty``, ``Model.get_or_insert``, ``Model.get_by_id``,
``Model.put`` and ``@transactional`` -- enough for the seed's handler to run unchanged, so the
example can show a task handler, not a database port. Not a datastore: no queries, no
indexes, no keys beyond ``kind + id``.

One thing real ndb does not do, and the reason this module exists: **a transaction that
runs in a task request is done at most once per task.** Delivery is at least once, so the
queue may deliver the same task again (a lost response, a retry after a later failure, two
deliveries at once). Inside a task request, ``@transactional`` writes a ledger row --
``(queue_name, task_name, step)`` -- in the same SQLite transaction as the data. If that row
already exists, the step committed on an earlier delivery, and the body is skipped (the call
returns None). ``step`` is the transactional function's qualified name and how many times it
ran before in this request, so a handler with two transactions keeps both.

SQLite gives the isolation: ``BEGIN IMMEDIATE`` takes the write lock before the ledger is read,
so two deliveries running at once are serialised and the second sees the first's ledger row.

Where the data lives: :func:`configure` (or the ``EXAMPLE_DB`` environment variable; default
``taskhandler-webapp2-example.sqlite3`` in the temporary directory).
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from taskhandler.context import TaskContext, current_task

__all__ = [
    "BadValueError",
    "IntegerProperty",
    "Model",
    "StringProperty",
    "configure",
    "transactional",
]

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound="Model")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    kind TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS task_ledger (
    queue_name TEXT NOT NULL, task_name TEXT NOT NULL, step TEXT NOT NULL,
    done_at REAL NOT NULL, PRIMARY KEY (queue_name, task_name, step));
"""
_LOCK_TIMEOUT = 30.0  # seconds a writer waits for another transaction to finish

_database = os.environ.get(
    "EXAMPLE_DB", os.path.join(tempfile.gettempdir(), "taskhandler-webapp2-example.sqlite3")
)
_connection: ContextVar[sqlite3.Connection | None] = ContextVar("ndb_sqlite_txn", default=None)
_steps: ContextVar[tuple[TaskContext, dict[str, int]] | None] = ContextVar(
    "ndb_sqlite_steps", default=None
)


class BadValueError(ValueError):
    """A property was given a value of the wrong type (``datastore_errors.BadValueError``)."""


def configure(path: str | os.PathLike[str]) -> str:
    """Store data in the SQLite file ``path`` from now on; returns the previous path."""
    global _database
    previous, _database = _database, os.fspath(path)
    return previous


def _connect() -> sqlite3.Connection:
    conn = sqlite3.connect(_database, timeout=_LOCK_TIMEOUT, isolation_level=None)
    conn.executescript(_SCHEMA)
    return conn


@contextmanager
def _transaction() -> Iterator[sqlite3.Connection]:
    """The enclosing transaction's connection, or a new ``BEGIN IMMEDIATE`` transaction."""
    joined = _connection.get()
    if joined is not None:
        yield joined
        return
    conn = _connect()
    token = _connection.set(conn)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        _connection.reset(token)
        conn.close()


def _step(func: Callable[..., Any]) -> tuple[str, str, str] | None:
    """The ledger key for this call of ``func`` in the current task, or None outside tasks."""
    task = current_task()
    if task is None:
        return None
    state = _steps.get()
    if state is None or state[0] is not task:  # a new request: count from zero again
        state = (task, {})
        _steps.set(state)
    name = f"{func.__module__}.{func.__qualname__}"
    seen = state[1].get(name, 0)
    state[1][name] = seen + 1
    return task.queue_name, task.task_name, f"{name}#{seen}"


def transactional(func: F | None = None, *, retries: int = 3) -> Any:
    """Run ``func`` in one SQLite transaction; in a task request, at most once per task.

    Bare (``@transactional``) or with ``retries`` (how often to try again when the
    database stays locked past the wait). Inside another transaction it joins that one.
    """

    def decorate(inner: F) -> F:
        @functools.wraps(inner)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _connection.get() is not None:
                return inner(*args, **kwargs)
            step = _step(inner)
            for attempt in range(retries + 1):
                try:
                    with _transaction() as conn:
                        if step is not None:
                            if conn.execute(
                                "SELECT 1 FROM task_ledger "
                                "WHERE queue_name = ? AND task_name = ? AND step = ?",
                                step,
                            ).fetchone():
                                return None  # done on an earlier delivery of this task
                            conn.execute(
                                "INSERT INTO task_ledger VALUES (?, ?, ?, ?)", (*step, time.time())
                            )
                        return inner(*args, **kwargs)
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == retries:
                        raise
            raise AssertionError("unreachable")

        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate


class Property:
    """A model attribute stored with the entity; ``indexed`` is accepted and ignored."""

    python_type: tuple[type, ...] = (object,)

    def __init__(self, default: Any = None, indexed: bool = True) -> None:
        self.default = default
        self.indexed = indexed
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Model | None, owner: type) -> Any:
        if instance is None:
            return self
        return instance._values.get(self.name, self.default)

    def __set__(self, instance: Model, value: Any) -> None:
        self.validate(value)
        instance._values[self.name] = value

    def validate(self, value: Any) -> None:
        if value is not None and (
            not isinstance(value, self.python_type) or isinstance(value, bool)
        ):
            raise BadValueError(
                f"{self.name}: expected {self.python_type[0].__name__}, got {value!r}"
            )


class IntegerProperty(Property):
    """An integer (booleans are refused, as ndb does)."""

    python_type = (int,)


class StringProperty(Property):
    """A text string."""

    python_type = (str,)


class Model:
    """An entity of kind ``type(self).__name__`` with string id ``id``."""

    def __init__(self, id: str | None = None, **values: Any) -> None:
        self._id = id
        self._values: dict[str, Any] = {}
        for name, value in values.items():
            if not isinstance(getattr(type(self), name, None), Property):
                raise TypeError(f"{type(self).__name__} has no property {name!r}")
            setattr(self, name, value)

    @property
    def id(self) -> str | None:
        """The entity's id (``key.id()`` in ndb)."""
        return self._id

    @classmethod
    def get_by_id(cls: type[M], id: str) -> M | None:
        """The stored entity with this id, or None."""
        with _transaction() as conn:
            row = conn.execute(
                "SELECT data FROM entities WHERE kind = ? AND id = ?", (cls.__name__, id)
            ).fetchone()
        if row is None:
            return None
        entity = cls(id=id)
        entity._values = json.loads(row[0])
        return entity

    @classmethod
    def get_or_insert(cls: type[M], name: str, **values: Any) -> M:
        """The entity with id ``name``, created with ``values`` first if it does not exist."""
        with _transaction():
            entity = cls.get_by_id(name)
            if entity is None:
                entity = cls(id=name, **values)
                entity.put()
            return entity

    def put(self) -> str:
        """Store the entity (in the enclosing transaction, if any); returns its id."""
        if self._id is None:
            raise BadValueError("this example's entities need an explicit id")
        with _transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO entities VALUES (?, ?, ?)",
                (type(self).__name__, self._id, json.dumps(self._values)),
            )
        return self._id
