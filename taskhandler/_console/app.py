"""``QueueConsole``: the ``/_ah/admin/queues`` pages of the development server (WSGI).

Pages (GET): the overview of queues (counts, throughput chart, pause/resume, purge), a queue's
tasks by state (paginated, searchable), one task (headers, payload, attempts with their
exceptions), the add-task form, the purge confirmation, and ``/live`` -- the JSON each page's
live part refreshes itself from. Actions (POST, administrators only, same-origin and carrying
the page's token): ``run``, ``delete``, ``retry`` (re-enqueue a failed task), ``pause``,
``resume``, ``purge``, ``add``. Each answers 303 back to the page it came from, with a message.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import secrets
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .._types import StartResponse
from ..auth import LOGOUT_PATH, SignedCookieAuth, same_origin
from ..taskqueue import (
    Error,
    InternalError,
    LocalTaskQueue,
    QueuedTask,
    Task,
    TransientError,
)
from ..taskqueue import Queue as ApiQueue
from ..taskqueue import use as use_queue
from ..wsgi import request_info
from . import pages
from .browse import LIVE_STATES, TaskBrowser
from .history import FinishedTask, History
from .pages import e

logger = logging.getLogger("taskhandler.devserver")

CONSOLE_PATH = "/_ah/admin/queues"
PAGE_SIZE = 50
_MAX_FORM = 200_000
_STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript"}
_METHODS = ("POST", "GET", "HEAD", "PUT", "DELETE")


@dataclass
class _Answer:
    status: str
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    location: str | None = None


class _ListSource:
    """The live tasks through the public API only (``:memory:`` databases): every task of the
    queue is read, then one page is kept."""

    def __init__(self, queue: LocalTaskQueue) -> None:
        self.queue = queue

    @staticmethod
    def kind(task: QueuedTask, now: float) -> str:
        if task.state == "leased":
            return "running"
        if task.retry_count > 0:
            return "retrying"
        return "scheduled" if task.eta.timestamp() > now else "pending"

    def counts(self) -> dict[str, dict[str, int]]:
        now = self.queue.now()
        result: dict[str, dict[str, int]] = {}
        for name, config in self.queue.queues.items():
            if config.mode != "push":
                continue
            bucket = result.setdefault(name, {})
            for task in self.queue.tasks(name):
                kind = self.kind(task, now)
                bucket[kind] = bucket.get(kind, 0) + 1
        return result

    def page(
        self, queue_name: str, state: str, *, search: str = "", offset: int = 0, limit: int = 50
    ) -> tuple[list[QueuedTask], int]:
        now = self.queue.now()
        found = [
            t
            for t in self.queue.tasks(queue_name)
            if self.kind(t, now) == state and (search in t.task_name or search in t.url)
        ]
        return found[offset : offset + limit], len(found)

    def task(self, queue_name: str, task_name: str) -> QueuedTask | None:
        return next((t for t in self.queue.tasks(queue_name) if t.task_name == task_name), None)

    def close(self) -> None:
        pass


class QueueConsole:
    """The ``/_ah/admin/queues`` pages (WSGI): administrators only.

    Args:
        queue: the queue to show and act on.
        auth: the authenticator telling who is signed in; non-admins get 403, nobody a
            redirect to its sign-in page.
        db: the queue's database file, read a page at a time (``None`` or ``":memory:"``:
            pages are cut from :meth:`LocalTaskQueue.tasks`).
        history: what the development server recorded of each attempt (attempts, failed and
            done tasks, the chart); ``None``: a history kept in memory.
        token: the token the console's forms carry (default: random per process).
    """

    def __init__(
        self,
        queue: LocalTaskQueue,
        auth: SignedCookieAuth,
        *,
        db: str | None = None,
        history: History | None = None,
        token: str | None = None,
    ) -> None:
        self.queue = queue
        self.auth = auth
        self.history = history or History(":memory:", clock=queue.now)
        self.source: TaskBrowser | _ListSource = (
            TaskBrowser(db, queue.now) if db and db != ":memory:" else _ListSource(queue)
        )
        # Forms carry this token: the cookie is SameSite=Strict, and the token also
        # stops a cross-site form from running or deleting tasks.
        self.token = token or secrets.token_urlsafe(24)
        self._request = threading.local()

    def close(self) -> None:
        """Close the console's read connection."""
        self.source.close()

    # -- the WSGI entry ----------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            answer = self._serve(environ)
        except (TransientError, InternalError) as exc:
            # The queue's storage failed (disk full, locked, deleted): say so, not a 500.
            status = "503 Service Unavailable" if isinstance(exc, TransientError) else "500 Error"
            answer = self._message_page(status, "The queue's storage failed", str(exc))
        headers = [
            ("Content-Type", answer.content_type),
            ("Content-Length", str(len(answer.body))),
            ("Cache-Control", "no-store"),
            ("X-Frame-Options", "DENY"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "same-origin"),
            (
                "Content-Security-Policy",
                "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                "connect-src 'self'; img-src 'self' data:; form-action 'self'; "
                "frame-ancestors 'none'; base-uri 'none'",
            ),
        ]
        if answer.location is not None:
            headers.append(("Location", answer.location))
        start_response(answer.status, headers)
        return [answer.body]

    def _serve(self, environ: dict[str, Any]) -> _Answer:
        request = request_info(environ)
        path = environ.get("PATH_INFO", "")
        sub = path[len(CONSOLE_PATH) :] if path.startswith(CONSOLE_PATH) else path
        if sub.startswith("/static/") and environ.get("REQUEST_METHOD") == "GET":
            return self._static(sub[len("/static/") :])
        user = self.auth(request)
        if user is None:
            here = path + (f"?{environ['QUERY_STRING']}" if environ.get("QUERY_STRING") else "")
            target = urllib.parse.quote(here if path.startswith(CONSOLE_PATH) else CONSOLE_PATH)
            return _Answer("302 Found", b"", location=f"{self.auth.login_url}?continue={target}")
        if not user.is_admin:
            return self._message_page("403 Forbidden", "Administrators only", "")
        self._request.user = user.email
        query = {
            k: v[0]
            for k, v in urllib.parse.parse_qs(
                environ.get("QUERY_STRING", ""), max_num_fields=20
            ).items()
        }
        if environ.get("REQUEST_METHOD") == "POST":
            # Every action changes state: it must come from the console's own page.
            if not same_origin(request):
                return self._message_page("403 Forbidden", "Cross-site request refused", "")
            return self._act(environ, sub.rstrip("/"))
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return self._message_page("405 Method Not Allowed", "Method not allowed", "")
        view = sub.rstrip("/")
        if view == "/live":
            return self._live(query)
        render = {
            "": self._overview_page,
            "/tasks": self._tasks_page,
            "/task": self._task_page,
            "/add": self._add_page,
            "/purge": self._purge_page,
        }.get(view)
        if render is None:
            return self._message_page("404 Not Found", "Not found", "")
        return render(query)

    # -- pages ----------------------------------------------------------------------------------

    def _document(self, title: str, body: str, live: str = "") -> bytes:
        logout = f"{LOGOUT_PATH}?{urllib.parse.urlencode({'continue': CONSOLE_PATH})}"
        return pages.document(
            title=title,
            body=body,
            base=CONSOLE_PATH,
            user=getattr(self._request, "user", None),
            logout=logout,
            live=live,
        ).encode()

    def _message_page(self, status: str, title: str, text: str) -> _Answer:
        body = f"<h1>{e(title)}</h1>" + (f"<p>{e(text)}</p>" if text else "")
        logout = f"{LOGOUT_PATH}?{urllib.parse.urlencode({'continue': CONSOLE_PATH})}"
        page = pages.document(
            title=title, body=body, base=CONSOLE_PATH, user=None, logout=logout
        ).encode()
        return _Answer(status, page)

    def _flash(self, query: dict[str, str]) -> str:
        message = query.get("msg", "")[:300]
        if not message:
            return ""
        cls = "message error" if query.get("err") else "message"
        return f'<div class="{cls}" role="status" id="message">{e(message)}</div>'

    def _with_live(
        self, title: str, head: str, view: str, query: dict[str, str], inner: str
    ) -> _Answer:
        src = pages.link(
            CONSOLE_PATH,
            "/live",
            view=view,
            **{k: v for k, v in query.items() if k in ("queue", "state", "q", "page", "name")},
        )
        body = (
            f"{head}<div id='live' data-src='{e(src)}'>{inner}</div>"
            "<p id='live-status' aria-live='polite'></p>"
        )
        return _Answer("200 OK", self._document(title, body, live=src))

    def _live(self, query: dict[str, str]) -> _Answer:
        view = query.get("view", "")
        inner = {
            "overview": self._overview,
            "tasks": self._tasks,
            "task": self._task,
        }.get(view)
        if inner is None:
            return _Answer("404 Not Found", b'{"error": "unknown view"}', "application/json")
        data = json.dumps({"html": inner(query)}).encode()
        return _Answer("200 OK", data, "application/json")

    def _overview_page(self, query: dict[str, str]) -> _Answer:
        head = "<h1>Task queues</h1>" + self._flash(query)
        return self._with_live("Queues", head, "overview", query, self._overview(query))

    def _overview(self, query: dict[str, str]) -> str:
        now = self.queue.now()
        live = self.source.counts()
        totals = self.history.totals()
        kept = self.history.kept()
        rows = []
        for name, config in self.queue.queues.items():
            counts = live.get(name, {})
            paused = config.mode == "push" and self.queue.is_paused(name)
            cells = "".join(
                pages.count_cell(
                    counts.get(state, 0),
                    pages.link(CONSOLE_PATH, "/tasks", queue=name, state=state),
                )
                for state in LIVE_STATES
            )
            cells += pages.count_cell(
                kept.get((name, "failed"), 0),
                pages.link(CONSOLE_PATH, "/tasks", queue=name, state="failed"),
            )
            cells += pages.count_cell(
                totals.get(name, {}).get("done", 0),
                pages.link(CONSOLE_PATH, "/tasks", queue=name, state="done"),
            )
            rate = "paused" if paused else f"{config.rate:g}/s"
            actions = ""
            if config.mode == "push":
                fields = {"token": self.token, "queue": name, "back": CONSOLE_PATH}
                action = "resume" if paused else "pause"
                actions += pages.button(
                    f"{CONSOLE_PATH}/{action}", action, action.title(), fields, task=name
                )
                purge = pages.link(CONSOLE_PATH, "/purge", queue=name)
                actions += (
                    f' <a class="button danger" data-action="purge" href="{e(purge)}">Purge…</a>'
                )
            state = pages.badge("paused") if paused else ""
            rows.append(
                f'<tr data-queue="{e(name)}"><td><a href="'
                f'{e(pages.link(CONSOLE_PATH, "/tasks", queue=name))}"><b>{e(name)}</b></a> '
                f"{state}</td><td>{e(config.mode)}</td><td>{e(rate)}</td>"
                f"<td class='num'>{config.bucket_size}</td>"
                f"<td class='num'>{config.max_concurrent_requests or '-'}</td>"
                f"{cells}<td>{actions}</td></tr>"
            )
        header = "".join(f"<th class='num'>{s}</th>" for s in pages.STATES)
        table = (
            "<table class='queues'><tr><th>queue</th><th>mode</th><th>rate</th>"
            f"<th class='num'>bucket</th><th class='num'>max concurrent</th>{header}<th></th></tr>"
            f"{''.join(rows)}</table>"
        )
        chart = pages.chart(self.history.per_minute(), now)
        return (
            f"<div class='card'>{table}</div>"
            f"<div class='card'><h2>Attempts per minute, last hour</h2>{chart}</div>"
        )

    def _queue_name(self, query: dict[str, str]) -> str | None:
        name = query.get("queue", "default")
        return name if name in self.queue.queues else None

    def _tasks_page(self, query: dict[str, str]) -> _Answer:
        name = self._queue_name(query)
        if name is None:
            return self._message_page("404 Not Found", "Unknown queue", query.get("queue", ""))
        state = query.get("state", "pending")
        if state not in pages.STATES:
            return self._message_page("400 Bad Request", "Unknown state", state)
        tabs = "".join(
            f'<a class="{"active" if s == state else ""}" data-state="{s}" '
            f'href="{e(pages.link(CONSOLE_PATH, "/tasks", queue=name, state=s))}">{s}</a>'
            for s in pages.STATES
        )
        search = (
            f'<form class="search" method="get" action="{CONSOLE_PATH}/tasks">'
            f"{pages.hidden(queue=name, state=state)}"
            f'<input type="search" name="q" id="search" value="{e(query.get("q", ""))}" '
            'placeholder="task name or URL contains…"> <button type="submit">Search</button></form>'
        )
        head = (
            f"<h1>Queue {e(name)}</h1>{self._flash(query)}<div class='tabs'>{tabs}</div>"
            f"<p class='muted'>{e(pages.STATE_WORDS[state])}</p>{search}"
        )
        return self._with_live(f"{name}: {state}", head, "tasks", query, self._tasks(query))

    def _tasks(self, query: dict[str, str]) -> str:
        name = self._queue_name(query) or "default"
        state = query.get("state", "pending")
        search = query.get("q", "")[:200]
        try:
            page = max(1, int(query.get("page", "1")))
        except ValueError:
            page = 1
        offset = (page - 1) * PAGE_SIZE
        now = self.queue.now()
        here = pages.link(CONSOLE_PATH, "/tasks", queue=name, state=state, q=search, page=page)
        fields = {"token": self.token, "queue": name, "back": here}
        rows: list[str] = []
        if state in LIVE_STATES:
            tasks: list[QueuedTask] = []
            total = 0
            if self.queue.queues[name].mode == "push":
                tasks, total = self.source.page(
                    name, state, search=search, offset=offset, limit=PAGE_SIZE
                )
            for t in tasks:
                actions = ""
                if t.state == "pending":
                    actions = pages.button(
                        f"{CONSOLE_PATH}/run", "run", "Run now",
                        {**fields, "name": t.task_name}, task=t.task_name,
                    )  # fmt: skip
                actions += pages.button(
                    f"{CONSOLE_PATH}/delete", "delete", "Delete",
                    {**fields, "name": t.task_name}, task=t.task_name, cls="danger",
                )  # fmt: skip
                href = pages.link(CONSOLE_PATH, "/task", queue=name, name=t.task_name)
                last = "" if t.previous_response is None else str(t.previous_response)
                rows.append(
                    f'<tr data-task="{e(t.task_name)}"><td class="name"><a href="{e(href)}">'
                    f"{e(t.task_name)}</a></td><td>{e(t.method)}</td>"
                    f'<td class="url">{e(t.url)}</td>'
                    f"<td>{pages.when(t.eta.timestamp(), now)}</td>"
                    f"<td class='num'>{t.retry_count}</td><td>{e(last)}</td>"
                    f"<td>{e(t.retry_reason or '')}</td><td>{actions}</td></tr>"
                )
            header = (
                "<tr><th>task</th><th>method</th><th>url</th><th>ETA</th>"
                "<th class='num'>retries</th><th>last status</th><th>reason</th><th></th></tr>"
            )
        else:
            done, total = self.history.finished(
                name, state, search=search, offset=offset, limit=PAGE_SIZE
            )
            for f in done:
                href = pages.link(CONSOLE_PATH, "/task", queue=name, name=f.task_name)
                task_fields = {**fields, "name": f.task_name}
                actions = pages.button(
                    f"{CONSOLE_PATH}/retry", "retry", "Retry", task_fields, task=f.task_name
                ) + pages.button(
                    f"{CONSOLE_PATH}/delete", "delete", "Delete", {**task_fields, "finished": "1"},
                    task=f.task_name, cls="danger",
                )  # fmt: skip
                rows.append(
                    f'<tr data-task="{e(f.task_name)}"><td class="name"><a href="{e(href)}">'
                    f"{e(f.task_name)}</a></td><td>{e(f.method)}</td>"
                    f'<td class="url">{e(f.url)}</td>'
                    f"<td>{pages.when(f.finished, now)}</td><td class='num'>{f.attempts}</td>"
                    f"<td>{'' if f.status is None else f.status}</td>"
                    f'<td class="error">{e(f.error or "")}</td><td>{actions}</td></tr>'
                )
            header = (
                "<tr><th>task</th><th>method</th><th>url</th><th>finished</th>"
                "<th class='num'>attempts</th><th>last status</th><th>exception</th><th></th></tr>"
            )
        pages_count = max(1, math.ceil(total / PAGE_SIZE))
        pager = (
            f"<div class='pager'><span id='page-info'>page {page} of {pages_count} "
            f"({total:,} tasks)</span>"
        )
        if page > 1:
            prev = pages.link(
                CONSOLE_PATH, "/tasks", queue=name, state=state, q=search, page=page - 1
            )
            pager += f'<a id="prev" href="{e(prev)}">← previous</a>'
        if page < pages_count:
            nxt = pages.link(
                CONSOLE_PATH, "/tasks", queue=name, state=state, q=search, page=page + 1
            )
            pager += f'<a id="next" href="{e(nxt)}">next →</a>'
        pager += "</div>"
        if not rows:
            return f"{pager}<p class='muted' id='empty'>No {e(state)} tasks.</p>"
        return f"{pager}<table class='tasks'>{header}{''.join(rows)}</table>{pager}"

    def _task_page(self, query: dict[str, str]) -> _Answer:
        name = self._queue_name(query)
        task_name = query.get("name", "")
        if name is None:
            return self._message_page("404 Not Found", "Unknown queue", query.get("queue", ""))
        head = f"<h1>Task <span class='name'>{e(task_name)}</span></h1>{self._flash(query)}"
        return self._with_live(f"task {task_name}", head, "task", query, self._task(query))

    def _task(self, query: dict[str, str]) -> str:
        name = self._queue_name(query) or "default"
        task_name = query.get("name", "")
        now = self.queue.now()
        here = pages.link(CONSOLE_PATH, "/task", queue=name, name=task_name)
        fields = {"token": self.token, "queue": name, "name": task_name, "back": here}
        live = self.source.task(name, task_name)
        attempts = self.history.attempts(name, task_name)
        finished = None if live is not None else self.history.finished_task(name, task_name)
        facts: list[tuple[str, str]] = [("queue", e(name))]
        actions = ""
        headers: tuple[tuple[str, str], ...] = ()
        payload = b""
        if live is not None:
            state = _ListSource.kind(live, now)
            facts += [
                ("state", pages.badge(state)),
                ("method", e(live.method)),
                ("url", f"<span class='url'>{e(live.url)}</span>"),
                ("ETA", pages.when(live.eta.timestamp(), now)),
                ("created", pages.when(live.created.timestamp(), now)),
                ("retries", str(live.retry_count)),
                ("executions", str(live.execution_count)),
                ("last status", e(str(live.previous_response or "-"))),
                ("last reason", e(live.retry_reason or "-")),
                ("target", e(live.target or "-")),
            ]
            headers, payload = live.headers, live.payload
            if live.state == "pending":
                actions += pages.button(
                    f"{CONSOLE_PATH}/run", "run", "Run now", fields, task=task_name
                )
            actions += pages.button(
                f"{CONSOLE_PATH}/delete", "delete", "Delete", fields, task=task_name, cls="danger"
            )
        elif finished is not None:
            facts += [
                ("state", pages.badge(finished.state)),
                ("method", e(finished.method)),
                ("url", f"<span class='url'>{e(finished.url)}</span>"),
                ("finished", pages.when(finished.finished, now)),
                ("attempts", str(finished.attempts)),
                ("last status", e(str(finished.status or "-"))),
            ]
            headers, payload = _own_headers(finished.headers), finished.payload
            actions += pages.button(
                f"{CONSOLE_PATH}/retry", "retry", "Retry", fields, task=task_name
            )
            actions += pages.button(
                f"{CONSOLE_PATH}/delete", "delete", "Delete", {**fields, "finished": "1"},
                task=task_name, cls="danger",
            )  # fmt: skip
        else:
            return (
                "<p id='empty' class='muted'>No such task: it ran and is no longer kept, "
                "or was deleted.</p>"
            )
        facts_html = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
        attempts_html = "".join(_attempt(a, now) for a in reversed(attempts)) or (
            "<p class='muted'>No attempt yet.</p>"
        )
        return (
            f"<div class='card'><dl class='fields'>{facts_html}</dl><p>{actions}</p></div>"
            f"<div class='card'><h2>Payload</h2>{pages.pretty_payload(payload, headers)}</div>"
            f"<div class='card'><h2>Headers</h2>{pages.headers_table(headers)}</div>"
            f"<div class='card'><h2>Attempts ({len(attempts)})</h2>{attempts_html}</div>"
        )

    def _add_page(self, query: dict[str, str]) -> _Answer:
        options = "".join(
            f'<option value="{e(n)}"{" selected" if n == query.get("queue") else ""}>'
            f"{e(n)}</option>"
            for n, c in self.queue.queues.items()
            if c.mode == "push"
        )
        methods = "".join(f"<option>{m}</option>" for m in _METHODS)
        body = (
            f"<h1>Add a task</h1>{self._flash(query)}<div class='card'>"
            f'<form class="stack" method="post" action="{CONSOLE_PATH}/add">'
            f"{pages.hidden(token=self.token, back=CONSOLE_PATH + '/add')}"
            f'<label for="queue">Queue</label><select name="queue" id="queue">{options}</select>'
            '<label for="url">URL</label><input type="text" name="url" id="url" required '
            'placeholder="/tasks/count">'
            '<label for="method">Method</label>'
            f'<select name="method" id="method">{methods}</select>'
            '<label for="params">Params (one <code>name=value</code> a line)</label>'
            '<textarea name="params" id="params" rows="4"></textarea>'
            '<label for="payload">or a payload (sent as the body; JSON is sent as '
            "application/json)</label>"
            '<textarea name="payload" id="payload" rows="5"></textarea>'
            '<label for="name">Name (optional: named tasks are added once)</label>'
            '<input type="text" name="name" id="name">'
            '<label for="countdown">Countdown (seconds)</label>'
            '<input type="number" name="countdown" id="countdown" min="0" step="any" value="0">'
            '<p><button type="submit" class="primary" id="add-task">Add task</button></p>'
            "</form></div>"
        )
        return _Answer("200 OK", self._document("Add a task", body))

    def _purge_page(self, query: dict[str, str]) -> _Answer:
        name = self._queue_name(query)
        if name is None:
            return self._message_page("404 Not Found", "Unknown queue", query.get("queue", ""))
        counts = self.source.counts().get(name, {})
        total = sum(counts.values())
        fields = {"token": self.token, "queue": name, "back": CONSOLE_PATH}
        body = (
            f"<h1>Purge queue {e(name)}?</h1><div class='card'><p>This deletes the "
            f"<b>{total:,}</b> task(s) waiting or running in <b>{e(name)}</b>. Named tasks' "
            "names stay reserved. This cannot be undone.</p><p>"
            + pages.button(
                f"{CONSOLE_PATH}/purge", "purge", f"Purge {total:,} task(s)", fields, cls="danger"
            )
            + f' <a class="button" id="cancel" href="{CONSOLE_PATH}">Cancel</a></p></div>'
        )
        return _Answer("200 OK", self._document(f"Purge {name}", body))

    def _static(self, name: str) -> _Answer:
        content_type = _STATIC.get(name)
        if content_type is None:
            return _Answer("404 Not Found", b"not found", "text/plain; charset=utf-8")
        data = resources.files(__package__).joinpath("static").joinpath(name).read_bytes()
        return _Answer("200 OK", data, content_type)

    # -- actions ------------------------------------------------------------------------------

    def _act(self, environ: dict[str, Any], action: str) -> _Answer:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        raw = environ["wsgi.input"].read(min(max(length, 0), _MAX_FORM))
        form = {
            k: v[0]
            for k, v in urllib.parse.parse_qs(
                raw.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=20
            ).items()
        }
        if not hmac.compare_digest(form.get("token", ""), self.token):
            return self._message_page(
                "403 Forbidden", "Stale form", "Reload the page and try again."
            )
        back = form.get("back", "")
        if not (
            back == CONSOLE_PATH
            or back.startswith(CONSOLE_PATH + "/")
            or back.startswith(CONSOLE_PATH + "?")
        ):
            back = CONSOLE_PATH
        queue_name = form.get("queue", "")
        if queue_name not in self.queue.queues:
            return self._message_page("400 Bad Request", "Unknown queue", queue_name)
        name = form.get("name", "")
        handlers: dict[str, Callable[[str, str, dict[str, str]], tuple[str, bool]]] = {
            "/run": self._run,
            "/delete": self._delete,
            "/purge": lambda q, n, f: (f"Purged {self.queue.purge(q):,} task(s) from {q}.", False),
            "/retry": self._retry,
            "/pause": lambda q, n, f: self._set_paused(q, True),
            "/resume": lambda q, n, f: self._set_paused(q, False),
            "/add": self._add,
        }
        handler = handlers.get(action)
        if handler is None:
            return self._message_page("404 Not Found", "Not found", "")
        if isinstance(self.source, TaskBrowser):
            self.source.changed()
        try:
            message, failed = handler(queue_name, name, form)
        except (TransientError, InternalError):
            raise
        except Error as exc:
            message, failed = f"{type(exc).__name__}: {exc}", True
        separator = "&" if "?" in back else "?"
        target = (
            back
            + separator
            + urllib.parse.urlencode({"msg": message, **({"err": "1"} if failed else {})})
        )
        if action == "/add" and not failed:
            target = pages.link(
                CONSOLE_PATH, "/task", queue=queue_name, name=message.split()[1], msg=message
            )
        return _Answer("303 See Other", b"", location=target)

    def _run(self, queue_name: str, name: str, form: dict[str, str]) -> tuple[str, bool]:
        if self.queue.is_paused(queue_name):
            return f"Queue {queue_name} is paused: resume it to run {name}.", True
        if self.queue.run_now(queue_name, name):
            return f"Task {name} runs now.", False
        return f"Task {name} is not waiting (it is running, finished or deleted).", True

    def _delete(self, queue_name: str, name: str, form: dict[str, str]) -> tuple[str, bool]:
        if form.get("finished"):
            if self.history.forget(queue_name, name):
                return f"Deleted finished task {name}.", False
            return f"Task {name} is not kept.", True
        if self.queue.delete(queue_name, name):
            return f"Deleted task {name}.", False
        return f"Task {name} is no longer waiting (it ran or was deleted).", True

    def _set_paused(self, queue_name: str, paused: bool) -> tuple[str, bool]:
        if paused:
            self.queue.pause(queue_name)
        elif self.queue.queues[queue_name].paused:
            return f"Queue {queue_name} has rate 0 in queue.yaml: change it there.", True
        else:
            self.queue.resume(queue_name)
        return f"Queue {queue_name} {'paused' if paused else 'resumed'}.", False

    def _retry(self, queue_name: str, name: str, form: dict[str, str]) -> tuple[str, bool]:
        """Re-enqueue a failed (or done) task with its request, as a new unnamed task (a named
        task's name stays reserved by its tombstone)."""
        finished = self.history.finished_task(queue_name, name)
        if finished is None:
            return self._run(queue_name, name, form)
        headers = dict(_own_headers(finished.headers))
        method = finished.method
        url = finished.url
        task = Task(
            url=url if method in ("POST", "PUT") else url.partition("?")[0],
            method=method,
            headers=headers,
            payload=finished.payload if method in ("POST", "PUT") else None,
            params=None
            if method in ("POST", "PUT")
            else dict(urllib.parse.parse_qsl(url.partition("?")[2])) or None,
        )
        with use_queue(self.queue):
            added = ApiQueue(queue_name).add(task)
        self.history.forget(queue_name, name)
        return f"Task {name} was enqueued again as {added.name}.", False

    def _add(self, queue_name: str, name: str, form: dict[str, str]) -> tuple[str, bool]:
        method = form.get("method", "POST").upper()
        if method not in _METHODS:
            return f"Unknown method {method}.", True
        params: dict[str, str] = {}
        for line in form.get("params", "").splitlines():
            if line.strip():
                key, sep, value = line.partition("=")
                if not sep:
                    return f"A param line must be name=value: {line[:80]!r}.", True
                params[key.strip()] = value.strip()
        payload = form.get("payload", "")
        headers: dict[str, str] = {}
        if payload.strip():
            try:
                json.loads(payload)
            except ValueError:
                pass
            else:
                headers["Content-Type"] = "application/json"
        try:
            countdown = float(form.get("countdown") or 0)
        except ValueError:
            return "The countdown must be a number of seconds.", True
        if not math.isfinite(countdown) or countdown < 0:
            return "The countdown must be a number of seconds >= 0.", True
        task = Task(
            url=form.get("url", "").strip(),
            method=method,
            params=params or None,
            payload=payload.encode() if payload.strip() else None,
            headers=headers or None,
            name=name.strip() or None,
            countdown=countdown or None,
        )
        with use_queue(self.queue):
            added = ApiQueue(queue_name).add(task)
        return f"Task {added.name} added to {queue_name}.", False


def _own_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The task's own headers among those a delivery carried (the queue's, the server's and
    the ones every request has are left out)."""
    skipped = ("x-appengine-", "x-cloudtasks-", "traceparent")
    common = {"host", "content-length", "user-agent", "accept", "accept-encoding", "connection"}
    return tuple(
        (k, v) for k, v in headers if not k.lower().startswith(skipped) and k.lower() not in common
    )


def _attempt(a: Any, now: float) -> str:
    cls = "done" if a.outcome == "done" else ("failed" if a.outcome == "failed" else "retry")
    status = "no response" if a.status is None else str(a.status)
    words = {"done": "done", "retry": "retried", "failed": "failed: given up"}[a.outcome]
    trace = (
        "<details><summary>traceback</summary>"
        f"<pre class='traceback'>{e(a.traceback)}</pre></details>"
        if a.traceback
        else ""
    )
    error = f"<p class='error'><b>{e(a.error)}</b></p>" if a.error else ""
    return (
        f"<div class='attempt {cls}' data-retry='{a.retry_count}'><p>"
        f"<b>attempt {a.retry_count + 1}</b> · {pages.when(a.started, now)} · status "
        f"<b class='status'>{e(status)}</b> · {a.duration * 1000:.0f} ms · {e(words)}</p>"
        f"{error}{trace}</div>"
    )


__all__ = ["CONSOLE_PATH", "FinishedTask", "QueueConsole"]
