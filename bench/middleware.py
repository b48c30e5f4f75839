"""Per-request cost TaskMiddleware adds over a bare WSGI app, next to App Engine's own middleware.

Run: ``python bench/middleware.py`` (needs the ``bench`` extra: ``pip install -e '.[bench]'``).

Three requests, each measured in the same run against the same bare app:
  (a) plain     - an ordinary request, no task headers
  (b) spoofed   - an untrusted peer sending five X-AppEngine-* headers (all stripped)
  (c) trusted   - a task request from 0.1.0.2 (context parsed, deadline armed, outcome mapped)

The figure that matters is the ratio of added costs: (ours - bare) / (App Engine's - bare).
Requests run in a worker thread, as threaded servers (gunicorn gthread, waitress, werkzeug)
run them; ``--main-thread`` measures the main thread, where arming a deadline also sets a
SIGALRM timer so that blocking calls are interrupted (a sync-worker setup).
Targets: (a) <= 0.10, (b) <= 0.20, (c) <= 0.35. The per-request log record is at INFO; like
App Engine's middleware, the benchmark runs with INFO logging off.

The middleware keeps what a request's header *names* say (which are task headers, how to
parse them) per set of names, as a server sends the same names request after request; the
three rows above reuse one set. Two more rows, without targets, send a header name never
seen before with every request, so nothing is reused: the cost for a client that varies its
header names.
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import timeit
from collections.abc import Callable
from typing import Any

from taskhandler import TaskMiddleware

TARGETS = {"plain": 0.10, "spoofed": 0.20, "trusted": 0.35}


def bare(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def base_environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/tasks/update",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "REMOTE_ADDR": "203.0.113.9",
        "REMOTE_PORT": "51234",
        "HTTP_HOST": "localhost:8080",
        "HTTP_USER_AGENT": "AppEngine-Google; (+http://code.google.com/appengine)",
        "HTTP_ACCEPT": "*/*",
        "HTTP_ACCEPT_ENCODING": "gzip",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": "0",
    }


TASK_HEADERS = {
    "HTTP_X_APPENGINE_QUEUENAME": "default",
    "HTTP_X_APPENGINE_TASKNAME": "5367207459041289040",
    "HTTP_X_APPENGINE_TASKRETRYCOUNT": "0",
    "HTTP_X_APPENGINE_TASKEXECUTIONCOUNT": "0",
    "HTTP_X_APPENGINE_TASKETA": "1700000000.123456",
}


def cases() -> dict[str, dict[str, Any]]:
    plain = base_environ()
    spoofed = {**base_environ(), **TASK_HEADERS}
    trusted = {**base_environ(), **TASK_HEADERS, "REMOTE_ADDR": "0.1.0.2"}
    return {"plain": plain, "spoofed": spoofed, "trusted": trusted}


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def per_request(app: Any, environ: dict[str, Any], number: int, repeat: int) -> float:
    """Best-of-``repeat`` seconds per request (a fresh environ copy each call, as servers do)."""

    def once() -> None:
        body = app(dict(environ), _start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    timer = timeit.Timer(once)
    return min(timer.repeat(repeat=repeat, number=number)) / number


def per_request_new_names(app: Any, environ: dict[str, Any], number: int, repeat: int) -> float:
    """As per_request, but every request carries a header name no request had before."""
    best = float("inf")
    for run in range(repeat):
        environs = [{**environ, f"HTTP_X_NEW_{run}_{i}": "1"} for i in range(number)]
        start = timeit.default_timer()
        for env in environs:
            body = app(env, _start_response)
            for _ in body:
                pass
        best = min(best, timeit.default_timer() - start)
    return best / number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--main-thread", action="store_true", help="measure on the main thread")
    args = parser.parse_args()
    if args.main_thread:
        return measure(args)
    # App Engine's SDK patches threading, after which join() on this thread never returns:
    # wait on an event instead, and let the daemon thread end with the process.
    result: list[int] = []
    done = threading.Event()

    def run() -> None:
        try:
            result.append(measure(args))
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    done.wait()
    return result[0] if result else 1


def measure(args: argparse.Namespace) -> int:
    try:
        from google.appengine.api import wrap_wsgi_app
    except ImportError:
        print("App Engine's middleware is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 2

    apps = {"bare": bare, "taskhandler": TaskMiddleware(bare), "app engine": wrap_wsgi_app(bare)}
    print(
        f"{'request':<10}{'bare µs':>10}{'+taskhandler µs':>17}{'+app engine µs':>16}"
        f"{'ratio':>8}{'target':>8}"
    )
    ok = True
    for name, environ in cases().items():
        t = {
            label: per_request(app, environ, args.number, args.repeat)
            for label, app in apps.items()
        }
        ours = t["taskhandler"] - t["bare"]
        theirs = t["app engine"] - t["bare"]
        ratio = ours / theirs
        ok &= ratio <= TARGETS[name]
        print(
            f"{name:<10}{t['bare'] * 1e6:>10.2f}{ours * 1e6:>17.2f}{theirs * 1e6:>16.2f}"
            f"{ratio:>8.3f}{TARGETS[name]:>8.2f}"
        )
    print("\nevery request with a header name never seen before (nothing reused; no target)")
    print(f"{'request':<10}{'+taskhandler µs':>27}{'+app engine µs':>16}{'ratio':>8}")
    for name in ("spoofed", "trusted"):
        environ = cases()[name]
        t = {
            label: per_request_new_names(app, environ, args.number // 4, args.repeat)
            for label, app in apps.items()
        }
        ours = t["taskhandler"] - t["bare"]
        theirs = t["app engine"] - t["bare"]
        print(f"{name:<10}{ours * 1e6:>27.2f}{theirs * 1e6:>16.2f}{ours / theirs:>8.3f}")
    print("\nall targets met" if ok else "\nsome targets missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
