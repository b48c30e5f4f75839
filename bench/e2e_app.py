"""A minimal task app for the end-to-end benchmark: counts each task once, in memory.

``POST /tasks/count`` (form ``counter``, ``amount``) adds to a counter once per queue and task
name; ``GET /state`` returns ``{"counters": {...}}`` like the Flask example. Behind
``TaskMiddleware`` trusting task headers from 127.0.0.1, so only the queue's requests count.
Serve it with one gunicorn worker (the counts live in that process)::

    gunicorn --workers 1 --threads 8 bench.e2e_app:app
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterable
from typing import Any

from taskhandler.context import current_task
from taskhandler.trust import TrustPolicy
from taskhandler.wsgi import TaskMiddleware

_lock = threading.Lock()
_counters: dict[str, int] = {}
_seen: set[tuple[str, str]] = set()


def _reply(start_response: Any, status: str, body: bytes) -> list[bytes]:
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def counter_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Count tasks on ``POST /tasks/count``; report the counters on ``GET /state``."""
    path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
    if path == "/state" and method == "GET":
        with _lock:
            body = json.dumps({"counters": _counters}).encode()
        return _reply(start_response, "200 OK", body)
    if path == "/tasks/count" and method == "POST":
        task = current_task()
        if task is None:  # not from the queue: the middleware already refused most of these
            return _reply(start_response, "403 Forbidden", b'{"error": "not a task"}')
        length = int(environ.get("CONTENT_LENGTH") or 0)
        form = urllib.parse.parse_qs(environ["wsgi.input"].read(length).decode())
        name, amount = form.get("counter", ["default"])[0], int(form.get("amount", ["1"])[0])
        with _lock:
            key = (task.queue_name, task.task_name)
            if key not in _seen:  # a queue may deliver a task twice: count it once
                _seen.add(key)
                _counters[name] = _counters.get(name, 0) + amount
        return _reply(start_response, "200 OK", b'{"counted": true}')
    return _reply(start_response, "404 Not Found", b'{"error": "not found"}')


app = TaskMiddleware(counter_app, trust=TrustPolicy(queue_sources=["127.0.0.1"]))
