"""Transactional enqueue with the application's own database: a task is added iff it commits.

On App Engine, ``taskqueue.add(..., transactional=True)`` inside a Datastore transaction added
the task exactly when the transaction committed. :class:`Outbox` gives that guarantee with the
database the application already uses (SQLAlchemy, sqlite3, psycopg; SQLite or PostgreSQL)::

    from taskhandler import taskqueue
    from taskhandler.outbox import Outbox

    outbox = Outbox(engine)             # where the outbox table lives
    outbox.create_table()
    with outbox.transaction(session):   # or outbox.bind(session) once, then session.commit()
        session.add(order)
        taskqueue.add(url="/tasks/ship", params={"order": order.id}, transactional=True)
    outbox.start()                      # the relay; in production: taskhandler relay --db-url URL

The task is written into the outbox table in the same transaction; the relay hands committed
rows to the queue (``LocalTaskQueue``, ``CloudTasksBackend``) and deletes them once accepted.
"""

from __future__ import annotations

from ._outbox import Outbox as Outbox
from ._outbox import RelayError as RelayError
from ._outbox import dialect_of as dialect_of
from ._outbox import notify as notify
from ._schema import DEFAULT_TABLE as DEFAULT_TABLE
from ._schema import create_table_sql as create_table_sql

__all__ = ["DEFAULT_TABLE", "Outbox", "RelayError", "create_table_sql", "dialect_of", "notify"]
