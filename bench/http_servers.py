"""Requests per second through real servers, bare app vs the same app under TaskMiddleware.

Run: ``python bench/http_servers.py [--quick] [--rounds N] [--seconds S]`` (needs ``wrk``:
``apt-get install -y wrk``).

What a user of the middleware feels is the throughput of their server, not microseconds
in a loop. This script starts six servers on 127.0.0.1 (free ports), each one process:

  uvicorn + Starlette   (one worker; the ASGI ``TaskMiddleware``)
  gunicorn + Flask      (one gthread worker, 4 threads; the WSGI ``TaskMiddleware``)

each serving ``bench/http_apps.py`` bare, wrapped and as the floor (below), and drives them
with ``wrk``
(one thread, 8 keep-alive connections) with two kinds of request:

  plain    ``POST /tasks/count`` with a small form body, no task headers
  trusted  the same with the five X-AppEngine-* headers of a push-queue task; the wrapped
           apps trust loopback as the queue (``TrustPolicy(queue_sources=["127.0.0.1"])``),
           so each such request is parsed, gets its context and deadline, and its outcome

Rounds interleave the three apps of a case: their order rotates each round and reverses
every other one, so six rounds (the default) run each of the six orders once; the cases'
order rotates too. The ratio wrapped/bare is taken within each round and its median and
spread (lowest-highest) printed. Targets: uvicorn+Starlette plain >= 0.97x, trusted
>= 0.85x; gunicorn+Flask plain and trusted >= 0.95x.

Each request is also sent to a third server per stack, the ``floor`` app of
``bench/http_apps.py``: the same app under only the work the request needs (a plain one:
look for task headers among its names, pass it on; a trusted one: check the peer,
``TaskContext.from_headers``, current task, deadline armed and disarmed, buffered response,
``X-Task-Outcome``), in the same rounds. Its ratio to bare is about the most any middleware
keeping the contract could reach on that server: a target above it asks for less work than
the request needs.

Before measuring, one request of each kind checks that the wrapped apps trust the task
requests (they answer ``task``) and the bare ones do not; a run whose ``wrk`` saw any
non-2xx answer or socket error stops. Servers stop when the script ends, and by themselves
(``timeout``) should it be killed.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from _rounds import median, spread, verdict

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TASK_HEADERS = {
    "X-AppEngine-QueueName": "default",
    "X-AppEngine-TaskName": "5367207459041289040",
    "X-AppEngine-TaskRetryCount": "0",
    "X-AppEngine-TaskExecutionCount": "0",
    "X-AppEngine-TaskETA": "1700000000.123456",
}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
BODY = "counter=default&amount=1"
CASES = {"plain": FORM, "trusted": {**FORM, **TASK_HEADERS}}
TARGETS = {
    ("uvicorn+Starlette", "plain"): 0.97,
    ("uvicorn+Starlette", "trusted"): 0.85,
    ("gunicorn+Flask", "plain"): 0.95,
    ("gunicorn+Flask", "trusted"): 0.95,
}


# bare, under TaskMiddleware, and under the floor of bench/http_apps.py
APPS = ("bare", "wrapped", "floor")


def server_command(stack: str, app: str, port: int) -> list[str]:
    if stack == "uvicorn+Starlette":
        return [
            str(BIN / "uvicorn"),
            f"bench.http_apps:starlette_{app}",
            "--host=127.0.0.1",
            f"--port={port}",
            "--workers=1",
            "--no-access-log",
            "--log-level=warning",
        ]
    return [
        str(BIN / "gunicorn"),
        f"bench.http_apps:flask_{app}",
        f"--bind=127.0.0.1:{port}",
        "--workers=1",
        "--worker-class=gthread",
        "--threads=4",
        "--log-level=warning",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def server(stack: str, app: str, lifetime: float) -> Iterator[int]:
    """One server on 127.0.0.1; yields its port once it answers; stops it afterwards."""
    port = free_port()
    # ``timeout`` ends the server by itself if this script dies without stopping it.
    command = ["timeout", "--kill-after=5", f"{int(lifetime)}", *server_command(stack, app, port)]
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{stack} ({app}) did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def answer(port: int, headers: dict[str, str]) -> tuple[int, str, str | None]:
    """One request by hand: status, body and ``X-Task-Outcome``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/tasks/count", BODY, headers)
        response = connection.getresponse()
        return response.status, response.read().decode(), response.getheader("X-Task-Outcome")
    finally:
        connection.close()


def check(port: int, app: str, case: str) -> None:
    """Refuse to measure unless the wrapped app trusts task requests and the bare one cannot."""
    status, body, outcome = answer(port, CASES[case])
    trusted = app != "bare" and case == "trusted"
    expected = ("task", "success") if trusted else ("ok", None)
    if (status, body, outcome) != (200, *expected):
        raise RuntimeError(f"{app}/{case}: got {status} {body!r} X-Task-Outcome={outcome}")


def lua_script(directory: Path, case: str) -> Path:
    lines = ['wrk.method = "POST"', f'wrk.body = "{BODY}"']
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in CASES[case].items()]
    path = directory / f"{case}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(port: int, script: Path, seconds: int) -> float:
    """Requests per second ``wrk`` saw in ``seconds``; raises on any error response."""
    out = subprocess.run(
        [
            "wrk",
            "--threads=1",
            "--connections=8",
            f"--duration={seconds}s",  # wrk takes whole seconds only
            "--timeout=5s",
            f"--script={script}",
            f"http://127.0.0.1:{port}/tasks/count",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    found = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    return float(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s (a smoke test)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 6)")
    parser.add_argument("--seconds", type=int, help="whole seconds per wrk run (default 2)")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 6)
    seconds = args.seconds or (1 if args.quick else 2)
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        return 2
    stacks = ("uvicorn+Starlette", "gunicorn+Flask")
    pairs = [(stack, case) for stack in stacks for case in CASES]
    lifetime = 60 + rounds * len(pairs) * len(APPS) * (seconds + 1) + 6 * len(pairs) * seconds

    with ExitStack() as stack_of, tempfile.TemporaryDirectory() as tmp:
        ports = {
            (stack, app): stack_of.enter_context(server(stack, app, lifetime))
            for stack in stacks
            for app in APPS
        }
        scripts = {case: lua_script(Path(tmp), case) for case in CASES}
        for (_stack, app), port in ports.items():
            for case in CASES:
                check(port, app, case)

        def run(stack: str, app: str, case: str) -> Callable[[], float]:
            return lambda: wrk(ports[stack, app], scripts[case], seconds)

        for stack, case in pairs:  # warm up every server and path
            for app in APPS:
                wrk(ports[stack, app], scripts[case], 1)

        rates: dict[tuple[str, str], dict[str, list[float]]] = {
            (stack, case): {app: [] for app in APPS} for stack, case in pairs
        }
        for index in range(rounds):
            shift = index % len(pairs)
            for stack, case in pairs[shift:] + pairs[:shift]:
                order = list(APPS)
                turn = index % len(order)
                order = order[turn:] + order[:turn]
                if index % 2:
                    order.reverse()
                for app in order:
                    rates[stack, case][app].append(run(stack, app, case)())

    print(
        f"requests/s through real servers, wrk 1 thread 8 connections; {rounds} interleaved "
        f"rounds of {seconds} s per run; {os.cpu_count()} cores"
    )
    print(
        f"{'server':<19}{'request':<9}{'bare req/s':>11}{'wrapped':>10}"
        f"   {'wrapped/bare median (spread)':<30}{'target':>8}  {'verdict':<16}"
        f"{'floor/bare median (spread)'}"
    )
    ok = True
    for (stack, case), sides in rates.items():
        ratios = [w / b for b, w in zip(sides["bare"], sides["wrapped"], strict=True)]
        target = TARGETS[stack, case]
        met = median(ratios) >= target
        ok &= met
        floors = [f / b for b, f in zip(sides["bare"], sides["floor"], strict=True)]
        print(
            f"{stack:<19}{case:<9}{median(sides['bare']):>11,.0f}{median(sides['wrapped']):>10,.0f}"
            f"   {spread(ratios, 3):<30}{'>= ' + format(target, '.2f'):>8}  "
            f"{verdict(met, median(ratios), target, at_most=False):<16}{spread(floors, 3)}"
        )
    print("\nfloor: the same app under only the work the request needs (bench/http_apps.py)")
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
