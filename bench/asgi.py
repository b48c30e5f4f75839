"""Per-request cost the ASGI TaskMiddleware adds over a bare ASGI app, next to the WSGI one's.

Run: ``python bench/asgi.py [--quick] [--number N] [--rounds R]``.

Three requests, each measured in the same run, on both protocols, against a bare app:
  (a) plain     - an ordinary request, no task headers
  (b) spoofed   - an untrusted peer sending five X-AppEngine-* headers (all stripped)
  (c) trusted   - a task request from 0.1.0.2 (context parsed, deadline armed, outcome mapped)

Added cost = (middleware + app) - (bare app), per request, in CPU time of the measuring
thread. All twelve runs are interleaved round by round; the figure that matters is ASGI
added / WSGI added for the same case within a round, median over rounds; target <= 1.5.
ASGI requests run one after another inside one coroutine on a running event loop, so the
loop's own scheduling is not counted against either side. Like App Engine's middleware,
the benchmark runs with INFO logging off (the per-request record is at INFO).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from collections.abc import Callable
from typing import Any

from _rounds import clock, interleaved, median, per_round, seconds_per_call, spread, verdict

from taskhandler import asgi, wsgi

TARGET = 1.5
CASES = ("plain", "spoofed", "trusted")
QUEUE, STRANGER = "0.1.0.2", "203.0.113.9"

TASK = [
    ("X-AppEngine-QueueName", "default"),
    ("X-AppEngine-TaskName", "5367207459041289040"),
    ("X-AppEngine-TaskRetryCount", "0"),
    ("X-AppEngine-TaskExecutionCount", "0"),
    ("X-AppEngine-TaskETA", "1700000000.123456"),
]
COMMON = [
    ("Host", "localhost:8080"),
    ("User-Agent", "AppEngine-Google; (+http://code.google.com/appengine)"),
    ("Accept", "*/*"),
    ("Accept-Encoding", "gzip"),
    ("Content-Type", "application/x-www-form-urlencoded"),
    ("Content-Length", "0"),
]


def request(case: str) -> tuple[str, list[tuple[str, str]]]:
    if case == "plain":
        return STRANGER, COMMON
    return (QUEUE if case == "trusted" else STRANGER), [*COMMON, *TASK]


# -- WSGI ------------------------------------------------------------------------------------


def wsgi_bare(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def wsgi_environ(case: str) -> dict[str, Any]:
    peer, headers = request(case)
    environ: dict[str, Any] = {
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
        "REMOTE_ADDR": peer,
        "REMOTE_PORT": "51234",
    }
    for name, value in headers:
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
    return environ


def time_wsgi(app: Any, environ: dict[str, Any], number: int) -> float:
    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    # A fresh environ each request, as a server gives.
    return seconds_per_call(lambda: app(dict(environ), start_response), number)


# -- ASGI ------------------------------------------------------------------------------------


_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}
_BODY = {"type": "http.response.body", "body": b"ok"}
_REQUEST = {"type": "http.request", "body": b"", "more_body": False}


async def asgi_bare(scope: Any, receive: Any, send: Any) -> None:
    await send(_START)
    await send(_BODY)


async def receive() -> dict[str, Any]:
    return _REQUEST


async def send(message: Any) -> None:
    return None


def asgi_scope(case: str) -> dict[str, Any]:
    peer, headers = request(case)
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/tasks/update",
        "raw_path": b"/tasks/update",
        "root_path": "",
        "query_string": b"",
        "headers": [(n.lower().encode(), v.encode()) for n, v in headers],
        "client": (peer, 51234),
        "server": ("localhost", 8080),
        "state": {},
    }


def time_asgi(app: Any, scope: dict[str, Any], number: int) -> float:
    async def run() -> float:
        started = clock()
        for _ in range(number):
            await app(dict(scope), receive, send)  # a fresh scope, as a server gives
        return (clock() - started) / number

    return asyncio.run(run())


# -- the table -------------------------------------------------------------------------------


def measure(number: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Per-request times of the twelve (case, protocol, bare/wrapped) runs, round by round.

    The runs are interleaved round by round (``bench/_rounds.py``), so that a busy moment
    on a shared machine hits all of them alike rather than one column.
    """
    wsgi_mw = wsgi.TaskMiddleware(wsgi_bare)
    asgi_mw = asgi.TaskMiddleware(asgi_bare)
    runs: dict[str, Callable[[], float]] = {}
    for case in CASES:
        environ, scope = wsgi_environ(case), asgi_scope(case)
        runs[f"{case}/wsgi_bare"] = lambda e=environ: time_wsgi(wsgi_bare, e, number)
        runs[f"{case}/wsgi_mw"] = lambda e=environ: time_wsgi(wsgi_mw, e, number)
        runs[f"{case}/asgi_bare"] = lambda s=scope: time_asgi(asgi_bare, s, number)
        runs[f"{case}/asgi_mw"] = lambda s=scope: time_asgi(asgi_mw, s, number)
    for run in runs.values():  # warm up
        run()
    results = interleaved(runs, rounds)
    return {
        case: {
            kind: results[f"{case}/{kind}"]
            for kind in ("wsgi_bare", "wsgi_mw", "asgi_bare", "asgi_mw")
        }
        for case in CASES
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a smoke test)")
    parser.add_argument("--number", type=int, help="requests per run (default 2000; quick 500)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 15; quick 5)")
    args = parser.parse_args(argv)
    number = args.number or (500 if args.quick else 2000)
    rounds = args.rounds or (5 if args.quick else 15)
    results = measure(number, rounds)
    print(
        f"ASGI vs WSGI TaskMiddleware, added cost per request (µs, medians); "
        f"{rounds} interleaved rounds of {number} requests"
    )
    print(
        f"{'case':<9} {'WSGI bare':>10} {'added':>8}   {'ASGI bare':>10} {'added':>8}   "
        f"{'ASGI/WSGI median (spread)':<26} target"
    )
    ok = True
    for case, r in results.items():
        w_added = per_round(lambda b, m: m - b, r["wsgi_bare"], r["wsgi_mw"])
        a_added = per_round(lambda b, m: m - b, r["asgi_bare"], r["asgi_mw"])
        ratios = per_round(lambda a, w: a / w, a_added, w_added)
        met = median(ratios) <= TARGET
        ok = ok and met
        print(
            f"{case:<9} {median(r['wsgi_bare']) * 1e6:>10.2f} {median(w_added) * 1e6:>8.2f}   "
            f"{median(r['asgi_bare']) * 1e6:>10.2f} {median(a_added) * 1e6:>8.2f}   "
            f"{spread(ratios):<26} <= {TARGET} {verdict(met, median(ratios), TARGET)}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
