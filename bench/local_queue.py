"""Benchmark the local push queue: add() rate, in-process dispatch, end to end over HTTP.

Run:  python bench/local_queue.py [--tasks 10000] [--e2e-tasks 2000] [--part all|inprocess|e2e]

Every figure is printed next to a baseline measured in the same run on the same machine:
- add(): a bare SQLite INSERT + COMMIT per task, same kind of file (WAL, synchronous=NORMAL);
- dispatch: the same WSGI app called directly in a loop, with no queue at all.
The dispatch target is >= 3,000 tasks/s with a SQLite file.

End to end (``--part e2e``): the Flask example (``examples.flask_style.main:app``) is served by
gunicorn on 127.0.0.1, and the same App Engine tasks (``POST /tasks/count``, one
``taskqueue.add()`` each) reach it two ways, one after the other:
- the local queue: ``LocalTaskQueue(base_url, db=<SQLite file>)``, dispatching while tasks are
  added, every task committed to the file before ``add()`` returns;
- ``gcloud-tasks-emulator`` (the ``cloudtasks`` extra plus the emulator package): the tasks are
  created through ``CloudTasksBackend`` and the official client over gRPC; the emulator keeps
  them in memory only and delivers them to the app as App Engine requests (one queue's tasks one
  at a time, a new connection for each, as the emulator 0.6 does).
Each is timed from the first add() until the app's ``/state`` counts every task (a task ledger
in the app counts each task once). The target is a local rate >= 2x the emulator's. A plain
keep-alive HTTP client posting the same requests to the app is the baseline for both. The run is
repeated with ``bench/e2e_app.py``, which counts in memory: there the queues' own cost shows;
with the example, whose every task is a SQLite transaction, the app's cost bounds both.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# This file is named like the standard library's `queue`: take its directory off the path so
# `import queue` elsewhere finds the real one, and put the repository root on it instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from taskhandler import taskqueue  # noqa: E402
from taskhandler.taskqueue import LocalTaskQueue, QueueConfig, Task  # noqa: E402
from taskhandler.taskqueue._dispatch import Request, WsgiDispatcher  # noqa: E402

QUEUES = [QueueConfig("default", rate=1_000_000, bucket_size=500)]


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def baseline_insert(path: Path, n: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, body BLOB)")
    start = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (name, body) VALUES (?, ?)", (f"t{i}", b"amount=1"))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def add_single(path: Path, n: int) -> float:
    with LocalTaskQueue(app, db=path, queues=QUEUES) as q, taskqueue.use(q):
        start = time.perf_counter()
        for _ in range(n):
            taskqueue.add(url="/tasks/count", params={"amount": "1"})
        return n / (time.perf_counter() - start)


def add_batched(path: Path, n: int) -> float:
    with LocalTaskQueue(app, db=path, queues=QUEUES) as q, taskqueue.use(q):
        queue = taskqueue.Queue()
        start = time.perf_counter()
        for _ in range(n // 100):
            queue.add([Task(url="/tasks/count", params={"amount": "1"}) for _ in range(100)])
        return (n // 100 * 100) / (time.perf_counter() - start)


def baseline_app(n: int) -> float:
    dispatcher = WsgiDispatcher(app)
    request = Request("POST", "/tasks/count", [("X-AppEngine-QueueName", "default")], b"amount=1")
    start = time.perf_counter()
    for _ in range(n):
        dispatcher(request)
    return n / (time.perf_counter() - start)


def dispatch(path: Path, n: int, workers: int) -> float:
    with LocalTaskQueue(app, db=path, queues=QUEUES, workers=workers) as q, taskqueue.use(q):
        queue = taskqueue.Queue()
        for _ in range(n // 100):
            queue.add([Task(url="/tasks/count", params={"amount": "1"}) for _ in range(100)])
        start = time.perf_counter()
        attempts = q.run_until_idle(timeout=300)
        elapsed = time.perf_counter() - start
        assert attempts == n // 100 * 100
        assert q.tasks() == []
        return attempts / elapsed


# -- end to end over HTTP: the local queue and gcloud-tasks-emulator, same app, same tasks -----

ROOT = _HERE.parent
APPS = {
    "counter": "bench.e2e_app:app",  # counts in memory: the queues' own cost shows
    "example": "examples.flask_style.main:app",  # a SQLite write per task: the app's cost shows
}
PROJECT = "bench-project"
LOCATION = "us-central1"
STARTUP_TIMEOUT = 20.0

# gcloud-tasks-emulator on 127.0.0.1 only (its own run() binds every interface).
EMULATOR_LAUNCHER = str(Path(__file__).resolve().parents[1] / "tests" / "emulator_on_loopback.py")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def subprocess_on_port(
    command: list[str], port: int, log: Path, env: dict[str, str]
) -> Iterator[None]:
    """Run ``command`` until it listens on 127.0.0.1:port (bounded); always stop it."""
    with open(log, "wb") as output:
        proc = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{command[:3]} exited:\n{log.read_text(errors='replace')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listened on 127.0.0.1:{port} in {STARTUP_TIMEOUT}s")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def gunicorn_app(workdir: Path, target: str, threads: int) -> Iterator[str]:
    """``target`` under gunicorn on 127.0.0.1 (one worker), trusting tasks from 127.0.0.1."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
        "--threads", str(threads), "--log-level", "warning", target,
    ]  # fmt: skip
    env = {
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "EXAMPLE_DB": str(workdir / "example.sqlite3"),
        "EXAMPLE_QUEUE_SOURCES": "127.0.0.1",
    }
    with subprocess_on_port(command, port, workdir / "gunicorn.log", env):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def emulator(workdir: Path, app_port: int) -> Iterator[Any]:
    """gcloud-tasks-emulator on 127.0.0.1 delivering App Engine tasks to ``app_port``.

    Yields a ``CloudTasksClient`` talking to it.
    """
    import grpc
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    port = free_port()
    command = [sys.executable, EMULATOR_LAUNCHER, str(port), str(app_port), "5"]
    with subprocess_on_port(command, port, workdir / "emulator.log", {}):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            yield tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        finally:
            channel.close()


def counted(base_url: str, counter: str) -> int:
    with urllib.request.urlopen(f"{base_url}/state", timeout=10) as response:
        return int(json.loads(response.read())["counters"].get(counter, 0))


def add_and_wait(base_url: str, counter: str, queue_name: str, n: int, limit: float) -> Result:
    """add() n count tasks to the installed backend; wait until the app counted them all."""
    start = time.perf_counter()
    for _ in range(n):
        taskqueue.add(
            url="/tasks/count", params={"counter": counter, "amount": "1"}, queue_name=queue_name
        )
    added = time.perf_counter() - start
    while True:
        seen = counted(base_url, counter)
        elapsed = time.perf_counter() - start
        if seen >= n or elapsed >= limit:
            return Result(seen / elapsed, n / added, seen, n)
        time.sleep(0.05)


class Result:
    """One end-to-end run: tasks/s delivered (add to last delivery), tasks/s added, counts."""

    def __init__(self, rate: float, add_rate: float, seen: int, n: int) -> None:
        self.rate, self.add_rate, self.seen, self.n = rate, add_rate, seen, n

    @property
    def complete(self) -> bool:
        return self.seen >= self.n


def e2e_local(base_url: str, workdir: Path, n: int, concurrency: int, limit: float) -> Result:
    db = workdir / "local-queue.sqlite3"
    config = QueueConfig(
        "bench-local", rate=1_000_000, bucket_size=500, max_concurrent_requests=concurrency
    )
    with LocalTaskQueue(base_url, db=db, queues=[config], workers=concurrency) as q:
        with taskqueue.use(q):
            q.start()
            result = add_and_wait(base_url, "local", "bench-local", n, limit)
        q.stop()
        left = len(q.tasks("bench-local"))
    # Every task was a committed row of the file before its add() returned; none is left.
    if result.complete and left:
        raise AssertionError(f"{left} tasks still stored after all were counted")
    return result


def e2e_emulator(base_url: str, workdir: Path, n: int, limit: float) -> Result:
    from google.cloud import tasks_v2

    from taskhandler.taskqueue.cloudtasks import CloudTasksBackend

    app_port = int(base_url.rsplit(":", 1)[1])
    with emulator(workdir, app_port) as client:
        parent = f"projects/{PROJECT}/locations/{LOCATION}"
        client.create_queue(
            parent=parent, queue=tasks_v2.Queue(name=f"{parent}/queues/bench-emulator")
        )
        backend = CloudTasksBackend(PROJECT, LOCATION, client=client)
        with backend, taskqueue.use(backend):
            return add_and_wait(base_url, "emulator", "bench-emulator", n, limit)


def e2e_direct(base_url: str, n: int) -> float:
    """Baseline: the same task requests posted straight to the app on one keep-alive connection."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    start = time.perf_counter()
    for i in range(n):
        conn.request(
            "POST",
            "/tasks/count",
            body=b"counter=direct&amount=1",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-AppEngine-QueueName": "direct",
                "X-AppEngine-TaskName": f"direct-{i}",
                "X-AppEngine-TaskRetryCount": "0",
                "X-AppEngine-TaskExecutionCount": "0",
            },
        )
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise AssertionError(f"the app answered {response.status} to a direct task request")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def run_e2e(app: str, n: int, concurrency: int, threads: int, limit: float) -> None:
    print(
        f"\nend to end: {n} App Engine tasks to {APPS[app]} under gunicorn "
        f"(1 worker, {threads} threads) on 127.0.0.1; give up after {limit:.0f} s each"
    )
    with (
        tempfile.TemporaryDirectory() as tmp,
        gunicorn_app(Path(tmp), APPS[app], threads) as base_url,
    ):
        workdir = Path(tmp)
        direct = e2e_direct(base_url, n)
        local = e2e_local(base_url, workdir, n, concurrency, limit)
        try:
            import gcloud_tasks_emulator  # noqa: F401
            import google.cloud.tasks_v2  # noqa: F401
        except ImportError as exc:
            emulated: Result | None = None
            missing = f"not measured: {exc} (pip install gcloud-tasks-emulator google-cloud-tasks)"
        else:
            emulated = e2e_emulator(base_url, workdir, n, limit)
    rows: list[tuple[str, str, Result | None]] = [
        ("local", f"LocalTaskQueue, SQLite file, {concurrency} in flight", local),
        ("emulator", "gcloud-tasks-emulator, in memory", emulated),
    ]
    print(f"baseline  {'app called directly, 1 keep-alive connection':<46} {direct:8,.0f} /s")
    for kind, what, result in rows:
        if result is None:
            print(f"{kind:<9} {what:<46} {missing}")
            continue
        status = (
            ""
            if result.complete
            else (f"  GAVE UP after {limit:.0f} s: {result.seen} of {result.n} received")
        )
        print(
            f"{kind:<9} {what:<46} {result.rate:8,.0f} /s  ({result.rate / direct:.2f}x baseline;"
            f" add() {result.add_rate:,.0f} /s){status}"
        )
    if emulated is None:
        return
    if not (local.complete and emulated.complete):
        print("ratio     not computed: a run did not deliver every task in time")
        return
    ratio = local.rate / emulated.rate
    print(f"ratio     local / emulator: {ratio:.2f}x")
    if direct < 2 * emulated.rate:
        # No queue can deliver faster than the app answers: here the app is the bottleneck.
        print(
            f"note      the app itself answers only {direct / emulated.rate:.2f}x the emulator's"
            " rate when called directly, so this run measures the app more than the queues"
        )
    print(
        f"target    local >= 2x the emulator, persisting every task: {'met' if ratio >= 2 else 'NOT met'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per in-process run")
    parser.add_argument("--e2e-tasks", type=int, default=2_000, help="tasks per end-to-end run")
    parser.add_argument("--part", choices=["all", "inprocess", "e2e"], default="all")
    parser.add_argument("--app", choices=["both", *APPS], default="both", help="end-to-end app")
    parser.add_argument("--concurrency", type=int, default=8, help="local max_concurrent_requests")
    parser.add_argument("--app-threads", type=int, default=8, help="gunicorn threads for the app")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per end-to-end run")
    args = parser.parse_args()
    if args.part in ("all", "inprocess"):
        run_inprocess(args.tasks)
    if args.part in ("all", "e2e"):
        for app in APPS if args.app == "both" else [args.app]:
            run_e2e(app, args.e2e_tasks, args.concurrency, args.app_threads, args.timeout)
    return 0


def run_inprocess(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        insert = baseline_insert(d / "baseline.sqlite3", n)
        single = add_single(d / "single.sqlite3", n)
        batched = add_batched(d / "batched.sqlite3", n)
        direct = baseline_app(n)
        one = dispatch(d / "dispatch1.sqlite3", n, workers=1)
        eight = dispatch(d / "dispatch8.sqlite3", n, workers=8)
    rows = [
        ("baseline", "bare SQLite insert+commit", insert, None),
        ("add()", "one task per call", single, insert),
        ("add()", "100 tasks per call", batched, insert),
        ("baseline", "WSGI app called directly", direct, None),
        ("dispatch", "in-process, 1 worker", one, direct),
        ("dispatch", "in-process, 8 workers", eight, direct),
    ]
    print(f"tasks per measurement: {n}")
    for kind, what, rate, base in rows:
        ratio = "" if base is None else f"  ({rate / base:.2f}x baseline)"
        print(f"{kind:<9} {what:<28} {rate:10,.0f} /s{ratio}")
    best = max(one, eight)
    print(f"target    >= 3,000 tasks/s dispatched: {'met' if best >= 3000 else 'NOT met'}")


if __name__ == "__main__":
    raise SystemExit(main())
