"""An async worker service: a Starlette app whose task handler has a typed payload.

Serve it from the repository root::

    uvicorn examples.starlette_style.main:app

``POST /tasks/update_counter`` adds ``amount`` to the counter named ``key``. It is a task
handler (only the queue and administrators may run it; app.yaml says ``login: admin``) and
it is idempotent: a task delivered twice -- delivery is at least once -- is counted once,
because the task's name is recorded in the same SQLite transaction as the addition.
``GET /`` shows the counters to anyone.

Settings come from the environment:

- ``EXAMPLE_DB``: the SQLite file (default ``counters.sqlite3`` in the working directory).
- ``EXAMPLE_QUEUE_SOURCES``: comma-separated addresses or CIDRs the queue calls from
  (default: App Engine's ``0.1.0.2``); e.g. ``127.0.0.1`` behind a local queue.
- ``EXAMPLE_SECRET_KEY``: at least 32 bytes; turns on the development sign-in page at
  ``/_ah/login`` so an administrator can run the handler from a browser.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from taskhandler import task_handler
from taskhandler.asgi import TaskMiddleware
from taskhandler.auth import SignedCookieAuth
from taskhandler.config import load_app_yaml
from taskhandler.context import TaskContext
from taskhandler.trust import TrustPolicy

HERE = Path(__file__).resolve().parent


class CounterParams(BaseModel):
    """What a counter task carries (JSON body, form params or query string)."""

    key: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    amount: int = Field(ge=1, le=1000)


class Store:
    """Counters and the ledger of tasks already counted, in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS counter (key TEXT PRIMARY KEY, count INTEGER)")
            db.execute("CREATE TABLE IF NOT EXISTS ledger (task TEXT PRIMARY KEY)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=5, isolation_level=None)

    def add_once(self, task: TaskContext, key: str, amount: int) -> bool:
        """Add ``amount`` unless this task was counted before; True when it added."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            ledger_key = f"{task.queue_name}/{task.task_name}"
            if db.execute("SELECT 1 FROM ledger WHERE task = ?", (ledger_key,)).fetchone():
                db.execute("ROLLBACK")
                return False
            db.execute("INSERT INTO ledger (task) VALUES (?)", (ledger_key,))
            db.execute(
                "INSERT INTO counter (key, count) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET count = count + excluded.count",
                (key, amount),
            )
            db.execute("COMMIT")
            return True
        finally:
            db.close()

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            return dict(db.execute("SELECT key, count FROM counter ORDER BY key").fetchall())


def make_app(
    db: str | Path,
    *,
    queue_sources: list[str] | None = None,
    secret_key: str | None = None,
    deadline: float | None = None,
) -> Any:
    """The ASGI app: Starlette routes behind TaskMiddleware with app.yaml's rules."""
    store = Store(db)

    @task_handler(payload=CounterParams, max_attempts=5)
    async def update_counter(task: TaskContext, payload: CounterParams) -> dict[str, Any]:
        # SQLite is quick and local; a worker thread keeps even a slow disk off the loop.
        added = await asyncio.to_thread(store.add_once, task, payload.key, payload.amount)
        return {"task_name": task.task_name, "added": added}

    async def home(request: Request) -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(store.counts))

    starlette = Starlette(
        routes=[
            Route("/", home),
            Route("/tasks/update_counter", update_counter, methods=["POST"]),
        ]
    )
    return TaskMiddleware(
        starlette,
        trust=TrustPolicy(queue_sources=queue_sources or ["0.1.0.2"]),
        config=load_app_yaml(HERE / "app.yaml"),
        authenticator=SignedCookieAuth(secret_key) if secret_key else None,
        deadline=deadline,
    )


def _from_env() -> Any:
    sources = os.environ.get("EXAMPLE_QUEUE_SOURCES", "")
    return make_app(
        os.environ.get("EXAMPLE_DB", "counters.sqlite3"),
        queue_sources=[s.strip() for s in sources.split(",") if s.strip()] or None,
        secret_key=os.environ.get("EXAMPLE_SECRET_KEY") or None,
    )


class _FromEnvironment:
    """The app built from the environment on first use, so importing creates no file."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            self._app = _from_env()
        await self._app(scope, receive, send)


app = _FromEnvironment()
