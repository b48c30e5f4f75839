"""How low the trusted task request can go: its steps written out in one function.

Run: ``python bench/trusted_floor.py`` (needs the ``bench`` extra, like ``bench/middleware.py``).

``TaskMiddleware`` spends its time on a trusted task request in steps that the request itself
needs: find the task headers, check the peer, parse the values, build the ``TaskContext``,
arm and disarm the deadline, run the app with its response buffered, map the outcome. This
script does the same steps with the same parts (the cached header-name plan, the value
parser, the context, the watchdog) but none of the middleware's structure: no
``RequestState``, no shared decision, no settings, no per-request closures beyond one. It
measures that against ``TaskMiddleware`` and App Engine's ``wrap_wsgi_app`` in the same run,
and once more with the watchdog replaced by a bare registration (a lock, a dict, a context
variable: what any deadline needs at the least, without the delivery handshake).

It is an experiment, not a second implementation: it skips access rules, other trust
modes, failures and the log record, so its figure is a floor for the middleware, not a
target it could reach by restructuring alone.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from middleware import bare, cases, per_request  # bench/middleware.py, next to this script

from taskhandler import TaskMiddleware
from taskhandler._watchdog import arm
from taskhandler.context import TaskContext
from taskhandler.context import _current as current_task
from taskhandler.wsgi import _plan

QUEUE = frozenset(["0.1.0.2"])
log = logging.getLogger("taskhandler")


class _Registration:
    """The least a deadline needs: when it is due, and that it was let go."""

    __slots__ = ("ended", "hard_at", "soft_at", "started", "thread")

    def disarm(self) -> None:
        with _LOCK:
            del _LIVE[self]
        self.ended = time.monotonic()


_LOCK = threading.Lock()
_LIVE: dict[_Registration, None] = {}
_DEADLINE: contextvars.ContextVar[Any] = contextvars.ContextVar("deadline")


def _register(deadline: float, grace: float) -> _Registration:
    now = time.monotonic()
    registration = _Registration()
    registration.started, registration.soft_at = now, now + deadline - grace
    registration.hard_at, registration.thread = now + deadline, threading.current_thread()
    with _LOCK:
        _LIVE[registration] = None
    return registration


def inline(app: Callable[..., Any], start: Callable[[float, float], Any]) -> Callable[..., Any]:
    """A WSGI app doing a trusted task request's steps for ``app``, deadlines from ``start``."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        environ["taskhandler.state"] = None
        plan = _plan(environ)
        if not plan.keys or environ.get("REMOTE_ADDR") not in QUEUE:
            raise RuntimeError("this experiment serves trusted task requests only")
        fields = plan.task_fields(environ)
        assert fields is not None
        ctx = TaskContext._from_parsed(fields, "queue")
        armed = start(600, 10)
        ctx._attach_deadline(armed)
        token = current_task.set(ctx)
        deadline_token = _DEADLINE.set(armed)
        response: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            response[:] = (status, headers)

        try:
            body = list(app(environ, capture))
        finally:
            armed.disarm()
            _DEADLINE.reset(deadline_token)
            current_task.reset(token)
        status, headers = response
        int(status[:3])
        declared = None
        for name, value in headers:
            if name.lower() == "x-task-outcome":
                declared = value
        if log.isEnabledFor(logging.INFO):
            log.info("task")
        start_response(status, [*headers, ("X-Task-Outcome", declared or "success")])
        return body

    return serve


def main() -> int:
    try:
        from google.appengine.api import wrap_wsgi_app
    except ImportError:
        print("App Engine's middleware is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    environ = cases()["trusted"]
    apps = {
        "TaskMiddleware": TaskMiddleware(bare),
        "inline, watchdog": inline(bare, arm),
        "inline, bare registration": inline(bare, _register),
        "App Engine's wrap_wsgi_app": wrap_wsgi_app(bare),
    }
    result: dict[str, float] = {}

    def measure() -> None:  # in a worker thread, as threaded servers run requests
        base = per_request(bare, environ, 20_000, 7)
        for label, app in apps.items():
            result[label] = per_request(app, environ, 20_000, 7) - base

    # App Engine's SDK patches threading so that join() never returns: wait on an event.
    done = threading.Event()
    threading.Thread(target=lambda: (measure(), done.set()), daemon=True).start()
    done.wait()
    theirs = result["App Engine's wrap_wsgi_app"]
    print(f"{'trusted task request':<30}{'added µs':>10}{'ratio':>8}")
    for label, added in result.items():
        print(f"{label:<30}{added * 1e6:>10.2f}{added / theirs:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
