"""Per-request cost TaskMiddleware adds over a bare WSGI app, next to App Engine's own middleware.

Run: ``python bench/middleware.py [--quick]`` (needs the ``bench`` extra: App Engine's
``appengine-python-standard``; ``pip install -e '.[bench]'``).

Three requests, each sent to the same bare app three ways (bare, under ``TaskMiddleware``,
under App Engine's ``wrap_wsgi_app``):
  (a) plain     - an ordinary request, no task headers
  (b) spoofed   - an untrusted peer sending five X-AppEngine-* headers (all stripped)
  (c) trusted   - a task request from 0.1.0.2 (context parsed, deadline armed, outcome mapped)

The figure that matters is the ratio of added costs, (ours - bare) / (App Engine's - bare),
computed within each round; rounds interleave all nine runs (see ``bench/_rounds.py``) and
the median ratio is held to its target: (a) <= 0.10, (b) <= 0.25, (c) <= 0.75.

Requests run in a worker thread, as threaded servers (gunicorn gthread, waitress, werkzeug)
run them; ``--main-thread`` measures the main thread, where arming a deadline also sets a
SIGALRM timer (a sync-worker setup). The per-request log record is at INFO; like App
Engine's middleware, the benchmark runs with INFO logging off.

Two more rows, without targets, send a header name never seen before with every request,
so nothing kept per set of header names is reused: the cost for a client that varies its
header names.
"""

from __future__ import annotations

import argparse
import gc
import io
import itertools
import sys
import threading
from collections.abc import Callable
from typing import Any

from _rounds import clock, interleaved, median, per_round, seconds_per_call, spread, verdict

from taskhandler import TaskMiddleware

TARGETS = {"plain": 0.10, "spoofed": 0.25, "trusted": 0.75}


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
        "SERVER_SOFTWARE": "gunicorn/23.0.0",
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


def call(app: Any, environ: dict[str, Any]) -> None:
    """One request as a server makes it: a fresh environ, the body read, closed."""
    body = app(dict(environ), _start_response)
    for _ in body:
        pass
    close = getattr(body, "close", None)
    if close is not None:
        close()


def timed(app: Any, environ: dict[str, Any], number: int) -> Callable[[], float]:
    """A run for :func:`interleaved`: seconds per request over ``number`` requests."""
    return lambda: seconds_per_call(lambda: call(app, environ), number)


_fresh = itertools.count()


def timed_new_names(app: Any, environ: dict[str, Any], number: int) -> Callable[[], float]:
    """As :func:`timed`, but each request carries a header name no request had before."""

    def run() -> float:
        environs = [{**environ, f"HTTP_X_NEW_{next(_fresh)}": "1"} for _ in range(number)]
        gc.collect()
        started = clock()
        for env in environs:
            body = app(env, _start_response)
            for _ in body:
                pass
        return (clock() - started) / number

    return run


def added_ratio(bare_s: float, ours_s: float, theirs_s: float) -> float:
    return (ours_s - bare_s) / (theirs_s - bare_s)


def measure(args: argparse.Namespace) -> int:
    try:
        from google.appengine.api import wrap_wsgi_app
    except ImportError:
        print("App Engine's middleware is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 2

    apps = {"bare": bare, "ours": TaskMiddleware(bare), "theirs": wrap_wsgi_app(bare)}
    environs = cases()
    runs = {
        f"{case}/{label}": timed(app, environ, args.number)
        for case, environ in environs.items()
        for label, app in apps.items()
    }
    for case in ("spoofed", "trusted"):
        for label, app in apps.items():
            runs[f"{case}, new names/{label}"] = timed_new_names(
                app, environs[case], max(1, args.number // 4)
            )
    for run in runs.values():  # warm up: caches, the watchdog thread, lazy imports
        run()
    results = interleaved(runs, args.rounds)

    thread = "main thread" if args.main_thread else "worker thread"
    print(
        f"TaskMiddleware vs App Engine's wrap_wsgi_app, added cost per request ({thread}); "
        f"{args.rounds} interleaved rounds of {args.number} requests"
    )
    print(
        f"{'request':<22}{'bare µs':>9}{'+ours µs':>10}{'+AE µs':>9}"
        f"   {'ours/AE median (spread)':<26}{'target':>8}  verdict"
    )
    ok = True
    for case in [*environs, "spoofed, new names", "trusted, new names"]:
        b, o, t = (results[f"{case}/{label}"] for label in ("bare", "ours", "theirs"))
        ratios = per_round(added_ratio, b, o, t)
        ours = median(per_round(lambda x, y: y - x, b, o))
        theirs = median(per_round(lambda x, y: y - x, b, t))
        target = TARGETS.get(case)
        if target is None:
            judged = "-"
            target_text = "-"
        else:
            met = median(ratios) <= target
            ok &= met
            judged = verdict(met, median(ratios), target)
            target_text = f"<= {target:.2f}"
        print(
            f"{case:<22}{median(b) * 1e6:>9.2f}{ours * 1e6:>10.2f}{theirs * 1e6:>9.2f}"
            f"   {spread(ratios, 3):<26}{target_text:>8}  {judged}"
        )
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a smoke test)")
    parser.add_argument("--number", type=int, help="requests per run (default 4000; quick 1000)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 15; quick 5)")
    parser.add_argument("--main-thread", action="store_true", help="measure on the main thread")
    args = parser.parse_args()
    args.number = args.number or (1000 if args.quick else 4000)
    args.rounds = args.rounds or (5 if args.quick else 15)
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


if __name__ == "__main__":
    sys.exit(main())
