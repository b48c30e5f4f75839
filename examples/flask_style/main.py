"""A small Flask app with two push-task handlers, behind ``TaskMiddleware``.

- ``POST /tasks/count`` adds a typed payload's ``amount`` to a counter -- once per task, however
  often the queue delivers it (a task ledger in the same SQLite transaction).
- ``POST /tasks/notify`` "sends" a message (writes it to an outbox, standing in for a mail or
  webhook service). Recipients at ``*.invalid`` domains cannot be reached, so those tasks fail,
  are retried, and after ``max_attempts`` are given up: ``on_give_up`` writes a dead letter.
- ``GET /`` shows the state; its forms ``POST /count`` and ``POST /notify`` enqueue tasks
  through :func:`enqueue`, the one place the app talks to the queue.

app.yaml makes ``/tasks/.*`` ``login: admin``, so only the queue and administrators reach the
handlers. Serve from the repository root with any of::

    taskhandler serve examples.flask_style.main:app --app-yaml examples/flask_style/app.yaml \\
        --queue-yaml examples/flask_style/queue.yaml
    gunicorn examples.flask_style.main:app
    flask --app examples.flask_style.main run

Environment: ``EXAMPLE_DB`` (SQLite file; default
``taskhandler-flask-example.sqlite3`` in the temporary directory),
``EXAMPLE_QUEUE_SOURCES`` (comma-separated addresses the queue calls from; default App
Engine's ``0.1.0.2``), ``EXAMPLE_SECRET_KEY`` (32+ bytes: turns on the development sign-in).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from flask import Flask, abort, g, redirect, render_template_string, request
from pydantic import BaseModel, Field
from werkzeug.wrappers import Response

from taskhandler import task_handler
from taskhandler.config import load_app_yaml
from taskhandler.context import TaskContext
from taskhandler.trust import Authenticator, TrustPolicy
from taskhandler.wsgi import TaskMiddleware

from . import store

HERE = Path(__file__).resolve().parent
DEFAULT_DB = os.path.join(tempfile.gettempdir(), "taskhandler-flask-example.sqlite3")
NOTIFY_MAX_ATTEMPTS = 3


class CountParams(BaseModel):
    """The count task's payload: which counter, and how much to add."""

    counter: str = Field(default="default", pattern=r"^[a-z0-9-]{1,40}$")
    amount: int = Field(ge=1, le=1000)


class NotifyParams(BaseModel):
    """The notify task's payload: who gets which message."""

    recipient: str = Field(pattern=r"^[^@\s]{1,64}@[A-Za-z0-9.-]{1,190}$")
    message: str = Field(min_length=1, max_length=500)


class Unreachable(ConnectionError):
    """The recipient's service cannot be reached (this attempt fails; the queue retries)."""


def trust_from_env() -> TrustPolicy:
    """The strict policy, with the queue's addresses from ``EXAMPLE_QUEUE_SOURCES`` if set."""
    sources = [s.strip() for s in os.environ.get("EXAMPLE_QUEUE_SOURCES", "").split(",")]
    sources = [s for s in sources if s]
    return TrustPolicy(queue_sources=sources) if sources else TrustPolicy()


def authenticator_from_env() -> Authenticator | None:
    """Signed-cookie sign-in when ``EXAMPLE_SECRET_KEY`` is set, else nobody can sign in."""
    key = os.environ.get("EXAMPLE_SECRET_KEY")
    if not key:
        return None
    from taskhandler.auth import SignedCookieAuth

    return SignedCookieAuth(key)


def enqueue(url: str, params: dict[str, str], *, queue_name: str = "default") -> str:
    """Add a push task (App Engine's ``taskqueue.add``); returns the task's name.

    The queue is whatever backend is installed (``taskqueue.use(...)``; ``taskhandler serve``
    installs its local queue). Raises :class:`LookupError` when none is.
    """
    from taskhandler import taskqueue

    try:
        taskqueue.current_backend()
    except taskqueue.Error as exc:
        raise LookupError(str(exc)) from None
    task = taskqueue.add(url=url, params=params, queue_name=queue_name)
    return str(task.name)


def send(recipient: str, message: str) -> None:
    """Stand-in for a mail or webhook call: ``.invalid`` domains never answer (RFC 2606)."""
    domain = recipient.rsplit("@", 1)[1].lower()
    if domain == "invalid" or domain.endswith(".invalid"):
        raise Unreachable(f"cannot reach {domain}")


PAGE = """<!doctype html>
<meta charset="utf-8">
<title>taskhandler Flask example</title>
<h1>Counters</h1>
<table>{% for name, value in state.counters.items() %}
<tr><td>{{ name }}</td><td>{{ value }}</td></tr>{% else %}<tr><td>none yet</td></tr>{% endfor %}
</table>
<form method="post" action="/count">
  <input name="counter" value="default" pattern="[a-z0-9-]{1,40}">
  <input name="amount" type="number" value="1" min="1" max="1000">
  <button>Count (enqueues a task)</button>
</form>
<h1>Outbox</h1>
<ul>{% for row in state.outbox %}<li>{{ row.recipient }}: {{ row.message }}</li>{% endfor %}</ul>
<form method="post" action="/notify">
  <input name="recipient" value="ada@example.com">
  <input name="message" value="hello">
  <button>Notify (enqueues a task; *.invalid fails)</button>
</form>
<h1>Dead letters</h1>
<ul>{% for row in state.dead_letters %}
<li>{{ row.path }} {{ row.task_name }} after {{ row.attempts }} attempts: {{ row.reason }}</li>
{% endfor %}</ul>
"""


def create_app(
    database: str | os.PathLike[str] | None = None,
    *,
    trust: TrustPolicy | None = None,
    authenticator: Authenticator | None = None,
) -> Flask:
    """The example app, its WSGI side wrapped in ``TaskMiddleware`` with app.yaml's rules.

    Args:
        database: the SQLite file (default: ``EXAMPLE_DB`` or :data:`DEFAULT_DB`).
        trust: who may send task headers (default: from ``EXAMPLE_QUEUE_SOURCES``).
        authenticator: who the user is (default: signed cookies if ``EXAMPLE_SECRET_KEY``).
    """
    app = Flask(__name__)
    db = os.fspath(database or os.environ.get("EXAMPLE_DB", DEFAULT_DB))

    @app.post("/tasks/count")
    @task_handler(payload=CountParams)
    def count(task: TaskContext, payload: CountParams) -> dict[str, Any]:
        with store.transaction(db) as conn:
            if not store.claim_task(conn, task.queue_name, task.task_name):
                return {"counted": False}  # an earlier delivery of this task did it
            value = store.add_to_counter(conn, payload.counter, payload.amount)
        return {"counted": True, "value": value}

    def dead_letter(task: TaskContext, exc: BaseException) -> None:
        with store.transaction(db) as conn:
            store.add_dead_letter(
                conn,
                task.queue_name,
                task.task_name,
                request.path,
                task.retry_count + 1,
                f"{type(exc).__name__}: {exc}",
                g.get("payload"),
            )

    @app.post("/tasks/notify")
    @task_handler(payload=NotifyParams, max_attempts=NOTIFY_MAX_ATTEMPTS, on_give_up=dead_letter)
    def notify(task: TaskContext, payload: NotifyParams) -> None:
        g.payload = payload.model_dump()  # for the dead letter, should this be the last try
        send(payload.recipient, payload.message)
        with store.transaction(db) as conn:
            store.add_to_outbox(
                conn, task.queue_name, task.task_name, payload.recipient, payload.message
            )

    @app.get("/")
    def page() -> str:
        return render_template_string(PAGE, state=store.snapshot(db))

    @app.get("/state")
    def state() -> dict[str, Any]:
        return store.snapshot(db)

    @app.before_request
    def same_site_posts_only() -> None:
        # The forms change state; a browser marks requests another site made it send.
        if request.method == "POST" and not request.path.startswith("/tasks/"):
            site = request.headers.get("Sec-Fetch-Site")
            if site is not None and site not in ("same-origin", "none"):
                abort(403)

    @app.post("/count")
    def enqueue_count() -> Response | tuple[str, int]:
        params = {
            "counter": request.form.get("counter", "default"),
            "amount": request.form.get("amount", "1"),
        }
        return _enqueued(lambda: enqueue("/tasks/count", params))

    @app.post("/notify")
    def enqueue_notify() -> Response | tuple[str, int]:
        params = {
            "recipient": request.form.get("recipient", ""),
            "message": request.form.get("message", ""),
        }
        return _enqueued(lambda: enqueue("/tasks/notify", params, queue_name="notify"))

    app.wsgi_app = TaskMiddleware(  # type: ignore[method-assign,assignment]
        app.wsgi_app,
        trust=trust if trust is not None else trust_from_env(),
        config=load_app_yaml(HERE / "app.yaml"),
        authenticator=authenticator if authenticator is not None else authenticator_from_env(),
    )
    return app


def _enqueued(add: Any) -> Response | tuple[str, int]:
    try:
        add()
    except LookupError:
        return "no task queue is running here: serve the app with `taskhandler serve`\n", 503
    return redirect("/", code=303)


app = create_app()
