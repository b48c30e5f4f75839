"""Where a trusted task request's time goes, and how low it could go.

Run: ``python bench/trusted_floor.py [--quick]`` (needs the ``bench`` extra, like
``bench/middleware.py``).

Part 1, the floor. ``TaskMiddleware`` spends its time on a trusted task request in steps the
request needs: find the task headers, check the peer, parse the values into a
``TaskContext``, arm and disarm the deadline, run the app with its response buffered, map
the outcome. ``inline`` below does the same steps with the same parts (the one task-header
parser ``TaskContext.from_headers``, the watchdog's ``arm``) but none of the middleware's
structure: no request view, no decision object, no request state, no access rules, no
failure handling, no log record. It is measured against ``TaskMiddleware`` and App Engine's
``wrap_wsgi_app`` in interleaved rounds, and once more with the watchdog replaced by a bare
registration (a lock, a dict, a context variable: the least any deadline needs).

Part 2, the steps. The middleware's own steps for the same request, each timed on its own
in interleaved rounds (``request_view``, ``decide`` and inside it ``who_is_asking`` and
``TaskContext.from_headers``, ``run_task``), next to the whole call: what to make faster.

It is an experiment, not a second implementation: ``inline`` skips everything a request
could do wrong, so its figure is a floor for the middleware, not a target it could reach
by restructuring alone.
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from _rounds import interleaved, median, per_round, seconds_per_call, spread
from middleware import bare, call, cases, timed

from taskhandler import TaskMiddleware, wsgi
from taskhandler._decision import LazyUser, decide, who_is_asking
from taskhandler._watchdog import arm
from taskhandler.context import TaskContext
from taskhandler.context import _current as current_task

QUEUE = frozenset(["0.1.0.2"])


class _Registration:
    """The least a deadline needs: when it is due, and that it was let go."""

    __slots__ = ("ended", "hard_at", "soft_at", "started", "thread")

    def disarm(self) -> None:
        with _LOCK:
            del _LIVE[self]
        self.ended = time.monotonic()

    def remaining(self) -> float:
        return self.soft_at - time.monotonic()


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


@functools.lru_cache(maxsize=64)
def _task_keys(keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(environ key, header name) of the task headers among an environ's keys."""
    return tuple(
        (key, key[5:].lower().replace("_", "-"))
        for key in keys
        if key.startswith(("HTTP_X_APPENGINE_", "HTTP_X_CLOUDTASKS_"))
    )


def inline(app: Callable[..., Any], start: Callable[[float, float], Any]) -> Callable[..., Any]:
    """A WSGI app doing a trusted task request's steps for ``app``, deadlines from ``start``."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        keys = _task_keys(tuple(environ))
        if not keys or environ.get("REMOTE_ADDR") not in QUEUE:
            raise RuntimeError("this experiment serves trusted task requests only")
        ctx = TaskContext.from_headers([(name, environ[key]) for key, name in keys])
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
        start_response(status, [*headers, ("X-Task-Outcome", declared or "success")])
        return body

    return serve


def _start_response(status: str, headers: Any, exc_info: Any = None) -> None:
    return None


def floor(environ: dict[str, Any], number: int, rounds: int) -> None:
    from google.appengine.api import wrap_wsgi_app

    apps = {
        "TaskMiddleware": TaskMiddleware(bare),
        "inline, watchdog": inline(bare, arm),
        "inline, bare registration": inline(bare, _register),
        "App Engine's wrap_wsgi_app": wrap_wsgi_app(bare),
    }
    runs = {label: timed(app, environ, number) for label, app in {"bare": bare, **apps}.items()}
    for run in runs.values():
        run()
    results = interleaved(runs, rounds)
    base, theirs = results["bare"], results["App Engine's wrap_wsgi_app"]
    print(f"Part 1: trusted task request, {rounds} interleaved rounds of {number} requests")
    print(f"{'':<30}{'added µs':>10}   {'/ App Engine, median (spread)'}")
    for label in apps:
        added = per_round(lambda b, x: x - b, base, results[label])
        ratios = per_round(lambda b, x, t: (x - b) / (t - b), base, results[label], theirs)
        print(f"{label:<30}{median(added) * 1e6:>10.2f}   {spread(ratios, 3)}")


def steps(environ: dict[str, Any], number: int, rounds: int) -> None:
    middleware = TaskMiddleware(bare)
    settings = middleware.settings
    view = wsgi.request_view(environ)
    user = LazyUser(None, lambda: None)  # type: ignore[arg-type,return-value]
    decision = decide(view, settings, user)
    assert decision.context is not None, "the request should be a trusted task"
    pairs = view.task_headers
    runs: dict[str, Callable[[], float]] = {
        "whole TaskMiddleware call": timed(middleware, environ, number),
        "bare app": timed(bare, environ, number),
        "request_view(environ)": lambda: seconds_per_call(
            lambda: wsgi.request_view(environ), number
        ),
        "decide(view, ...)": lambda: seconds_per_call(lambda: decide(view, settings, user), number),
        "  who_is_asking": lambda: seconds_per_call(
            lambda: who_is_asking(view, settings, user), number
        ),
        "  TaskContext.from_headers": lambda: seconds_per_call(
            lambda: TaskContext.from_headers(pairs), number
        ),
        "run_task(app, ...)": lambda: seconds_per_call(
            lambda: call(
                lambda e, s: wsgi.run_task(bare, e, s, decision.context, settings), environ
            ),
            number,
        ),
    }
    for run in runs.values():
        run()
    results = interleaved(runs, rounds)
    base = results["bare app"]
    whole = per_round(lambda b, x: x - b, base, results["whole TaskMiddleware call"])
    print(f"\nPart 2: the middleware's steps for the same request ({rounds} rounds)")
    print(f"{'':<30}{'µs median (spread)':>24}{'share of whole':>16}")
    for label, values in results.items():
        if label == "bare app":
            continue
        if label == "whole TaskMiddleware call":
            values = whole
        elif label == "run_task(app, ...)":
            values = per_round(lambda b, x: x - b, base, values)
        share = median(per_round(lambda x, w: x / w, values, whole))
        micro = [v * 1e6 for v in values]
        print(f"{label:<30}{spread(micro):>24}{share:>15.0%}")
    print("(run_task and the whole call less the bare app; decide's rows include its parts)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a smoke test)")
    args = parser.parse_args()
    number, rounds = (1000, 5) if args.quick else (4000, 15)
    try:
        import google.appengine.api  # noqa: F401
    except ImportError:
        print("App Engine's middleware is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    environ = cases()["trusted"]

    def measure() -> None:  # in a worker thread, as threaded servers run requests
        floor(environ, number, rounds)
        steps(environ, number, rounds)

    # App Engine's SDK patches threading so that join() never returns: wait on an event.
    done = threading.Event()
    threading.Thread(target=lambda: (measure(), done.set()), daemon=True).start()
    done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
