"""Per-request cost the ASGI TaskMiddleware adds over a bare ASGI app, next to the WSGI one's.

Run: ``python bench/asgi.py [--number N] [--repeat R]``.

Three requests, each measured in the same run, on both protocols, against a bare app:
  (a) plain     - an ordinary request, no task headers
  (b) spoofed   - an untrusted peer sending five X-AppEngine-* headers (all stripped)
  (c) trusted   - a task request from 0.1.0.2 (context parsed, deadline armed, outcome mapped)

Added cost = (middleware + app) - (bare app), per request, best of R runs of N requests.
The figure that matters is ASGI added / WSGI added for the same case; target <= 1.5.
ASGI requests run one after another inside one coroutine on a running event loop, so the
loop's own scheduling is not counted against either side. Like App Engine's middleware,
the benchmark runs with INFO logging off (the per-request record is at INFO).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from collections.abc import Callable
from typing import Any

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


def time_wsgi(app: Any, environ: dict[str, Any], number: int, repeat: int) -> float:
    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            app(dict(environ), start_response)  # a fresh environ, as a server gives
        best = min(best, time.perf_counter() - started)
    return best / number


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


def time_asgi(app: Any, scope: dict[str, Any], number: int, repeat: int) -> float:
    async def run() -> float:
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            for _ in range(number):
                await app(dict(scope), receive, send)  # a fresh scope, as a server gives
            best = min(best, time.perf_counter() - started)
        return best / number

    return asyncio.run(run())


# -- the table -------------------------------------------------------------------------------


def measure(number: int, repeat: int) -> dict[str, dict[str, float]]:
    """Best per-request time of each of the twelve (case, protocol, bare/wrapped) runs.

    The runs are interleaved round by round, so that a busy moment on a shared machine
    hits all of them alike rather than one column.
    """
    wsgi_mw = wsgi.TaskMiddleware(wsgi_bare)
    asgi_mw = asgi.TaskMiddleware(asgi_bare)
    runs: dict[str, dict[str, Callable[[], float]]] = {}
    for case in CASES:
        environ, scope = wsgi_environ(case), asgi_scope(case)
        runs[case] = {
            "wsgi_bare": lambda e=environ: time_wsgi(wsgi_bare, e, number, 1),
            "wsgi_mw": lambda e=environ: time_wsgi(wsgi_mw, e, number, 1),
            "asgi_bare": lambda s=scope: time_asgi(asgi_bare, s, number, 1),
            "asgi_mw": lambda s=scope: time_asgi(asgi_mw, s, number, 1),
        }
    best = {case: dict.fromkeys(kinds, float("inf")) for case, kinds in runs.items()}
    for _ in range(repeat):
        for case, kinds in runs.items():
            for kind, run in kinds.items():
                best[case][kind] = min(best[case][kind], run())
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="requests per timing run")
    parser.add_argument("--repeat", type=int, default=25, help="timing runs; the best counts")
    args = parser.parse_args(argv)
    results = measure(args.number, args.repeat)
    print(f"ASGI vs WSGI TaskMiddleware, added cost per request (us), best of {args.repeat}")
    print(
        f"{'case':<9} {'WSGI bare':>10} {'+mw':>9} {'added':>8}   "
        f"{'ASGI bare':>10} {'+mw':>9} {'added':>8}   {'ASGI/WSGI':>9}  target"
    )
    ok = True
    for case, r in results.items():
        w_added = r["wsgi_mw"] - r["wsgi_bare"]
        a_added = r["asgi_mw"] - r["asgi_bare"]
        ratio = a_added / w_added if w_added > 0 else float("inf")
        passed = ratio <= TARGET
        ok = ok and passed
        print(
            f"{case:<9} {r['wsgi_bare'] * 1e6:>10.2f} {r['wsgi_mw'] * 1e6:>9.2f} "
            f"{w_added * 1e6:>8.2f}   {r['asgi_bare'] * 1e6:>10.2f} {r['asgi_mw'] * 1e6:>9.2f} "
            f"{a_added * 1e6:>8.2f}   {ratio:>9.2f}  <= {TARGET} {'ok' if passed else 'MISSED'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
