"""Benchmark the local push queue side by side with Huey's SQLite queue (``huey.SqliteHuey``).

Run:  python bench/local_queue.py [--quick] [--rounds 5] [--part huey|e2e|all]

What is compared. ``LocalTaskQueue`` (a WSGI handler called in-process, with every App Engine
header) and Huey's ``SqliteHuey`` consumer (thread workers calling a Python function), in one
process, on the same disk (a temporary directory), at the same durability: both SQLite files in
WAL mode with ``synchronous=NORMAL`` -- a commit survives the process being killed, a power cut
may lose the last ones. (Huey's own ``fsync`` switch offers only OFF or FULL, so its storage is
subclassed to set NORMAL.) Huey's workers poll the database every 1 ms (its default is 100 ms,
growing when idle); the local queue's dispatcher is woken by ``add()`` in the same process.

Four measurements, each taken in every round, the two queues' turns interleaved (the order
alternates between rounds); each row prints the medians over the rounds, their ratio (local /
Huey, time ratios inverted so that > 1 means the local queue is better) and the spread of that
ratio over the rounds (min-max):

(a) ``add()`` one task per call, tasks/s (Huey: calling the task, which enqueues it);
(b) latency from the call that enqueues a task to its handler running, with 1 and with 4
    workers; as many producer threads as workers, each adding a task and waiting for it to run;
(c) drain: N tasks queued before the dispatcher (consumer) starts, time until all have run,
    with 1 and with 4 workers;
(d) ``add()`` of 100 tasks per call (Huey has no batch add: 100 calls).

Targets: >= 1.0x Huey on (a), (b) and (c).

End to end (``--part e2e``): the Flask example (``examples.flask_style.main:app``) is served by
gunicorn on 127.0.0.1, and the same App Engine tasks (``POST /tasks/count``, one
``taskqueue.add()`` each) reach it two ways, one after the other: the local queue over HTTP,
and ``gcloud-tasks-emulator`` (the ``cloudtasks`` extra plus the emulator package) through
``CloudTasksBackend``. Each is timed from the first add() until the app's ``/state`` counts every
task. A plain keep-alive HTTP client posting the same requests to the app is the baseline. The
run is repeated with ``bench/e2e_app.py``, which counts in memory.

Figures: ``bench/README.md`` (measured on a quiet machine and under load; (a) is not met).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# This file is named like the standard library's `queue`: take its directory off the path so
# `import queue` elsewhere finds the real one, and put the repository root on it instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from taskhandler import taskqueue  # noqa: E402
from taskhandler.taskqueue import LocalTaskQueue, QueueConfig, Task  # noqa: E402

QUEUES = [QueueConfig("default", rate=1_000_000, bucket_size=500)]
HUEY_POLL = 0.001  # seconds between a Huey worker's polls of an empty queue


# -- the two queues, behind one small interface ----------------------------------------------


class Signals:
    """What handlers report to the benchmark: a count, and one event per awaited task."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.target = -1
        self.all_done = threading.Event()
        self.events: dict[str, threading.Event] = {}

    def ran(self, key: str) -> None:
        with self.lock:
            self.count += 1
            if self.count == self.target:
                self.all_done.set()
        event = self.events.get(key)
        if event is not None:
            event.set()


class Side:
    """One queue under test: ``add(key)``, ``add_many(keys)``, ``start(workers)``, ``close()``."""

    label = ""

    def __init__(self, db: Path, signals: Signals) -> None:
        self.db = db
        self.signals = signals

    def add(self, key: str) -> None:
        raise NotImplementedError

    def add_many(self, keys: list[str]) -> None:
        raise NotImplementedError

    def start(self, workers: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Local(Side):
    """LocalTaskQueue on a SQLite file, delivering to a WSGI app in this process."""

    label = "LocalTaskQueue"

    def __init__(self, db: Path, signals: Signals, workers: int = 1) -> None:
        super().__init__(db, signals)

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            body = environ["wsgi.input"].read()
            signals.ran(body.partition(b"=")[2].decode())
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        self.queue = LocalTaskQueue(app, db=db, queues=QUEUES, workers=workers)
        self.installed = taskqueue.use(self.queue)
        self.default = taskqueue.Queue()

    def add(self, key: str) -> None:
        taskqueue.add(url="/tasks/count", params={"key": key})

    def add_many(self, keys: list[str]) -> None:
        self.default.add([Task(url="/tasks/count", params={"key": key}) for key in keys])

    def start(self, workers: int) -> None:
        self.queue.start()

    def close(self) -> None:
        self.installed.__exit__(None, None, None)
        self.queue.close()


class Huey(Side):
    """huey.SqliteHuey (WAL, synchronous=NORMAL) with a thread-worker consumer in this process."""

    label = "SqliteHuey"

    def __init__(self, db: Path, signals: Signals, workers: int = 1) -> None:
        super().__init__(db, signals)
        from huey import SqliteHuey
        from huey.storage import SqliteStorage

        class NormalSync(SqliteStorage):  # type: ignore[misc]
            def _create_connection(self) -> sqlite3.Connection:
                conn = super()._create_connection()
                conn.execute("PRAGMA synchronous=NORMAL")
                return conn

        self.huey = SqliteHuey("bench", filename=str(db), results=False)
        self.huey.storage = NormalSync("bench", filename=str(db))

        @self.huey.task()
        def count(key: str) -> None:
            signals.ran(key)

        self.task = count
        self.consumer: Any = None

    def add(self, key: str) -> None:
        self.task(key)

    def add_many(self, keys: list[str]) -> None:
        for key in keys:
            self.task(key)

    def start(self, workers: int) -> None:
        # The consumer's own start() also installs signal handlers; its threads are enough.
        self.consumer = self.huey.create_consumer(
            workers=workers,
            worker_type="thread",
            periodic=False,
            initial_delay=HUEY_POLL,
            backoff=1.0,
            max_delay=HUEY_POLL,
        )
        self.consumer.scheduler.start()
        for _, worker in self.consumer.worker_threads:
            worker.start()

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.stop(graceful=True)
        self.huey.storage.close()


SIDES: list[type[Side]] = [Local, Huey]


# -- the measurements --------------------------------------------------------------------------


def single_adds(side: Side, n: int) -> float:
    """(a) tasks/s added one per call."""
    start = time.perf_counter()
    for i in range(n):
        side.add(str(i))
    return n / (time.perf_counter() - start)


def batched_adds(side: Side, n: int) -> float:
    """(d) tasks/s added 100 per call."""
    keys = [str(i) for i in range(100)]
    start = time.perf_counter()
    for _ in range(n // 100):
        side.add_many(keys)
    return (n // 100 * 100) / (time.perf_counter() - start)


def latency(side: Side, workers: int, per_producer: int) -> float:
    """(b) median seconds from the add() call to the handler running, ``workers`` producers."""
    side.start(workers)
    samples: list[float] = []
    lock = threading.Lock()

    def produce(p: int) -> None:
        mine = []
        for i in range(per_producer):
            key = f"{p}-{i}"
            event = side.signals.events[key] = threading.Event()
            start = time.perf_counter()
            side.add(key)
            if not event.wait(30):
                raise RuntimeError(f"{side.label}: task {key} did not run in 30 s")
            mine.append(time.perf_counter() - start)
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statistics.median(samples)


def drain(side: Side, workers: int, n: int) -> float:
    """(c) seconds to run ``n`` tasks queued before the dispatcher starts."""
    keys = [str(i) for i in range(100)]
    for _ in range(n // 100):
        side.add_many(keys)
    side.signals.target = n // 100 * 100
    start = time.perf_counter()
    side.start(workers)
    if not side.signals.all_done.wait(120):
        raise RuntimeError(f"{side.label}: drain not done in 120 s ({side.signals.count} ran)")
    return time.perf_counter() - start


@dataclass(frozen=True)
class Metric:
    """One row: how to measure it once, and whether higher is better."""

    name: str
    unit: str
    run: Callable[[Side], float]
    workers: int = 1
    higher_is_better: bool = True
    target: bool = True


def metrics(n: int, per_producer: int) -> list[Metric]:
    return [
        Metric("(a) add(), 1 task per call", "tasks/s", lambda s: single_adds(s, n)),
        Metric(
            "(b) enqueue -> ran, 1 worker",
            "ms",
            lambda s: latency(s, 1, per_producer) * 1000,
            higher_is_better=False,
        ),
        Metric(
            "(b) enqueue -> ran, 4 workers",
            "ms",
            lambda s: latency(s, 4, per_producer) * 1000,
            workers=4,
            higher_is_better=False,
        ),
        Metric("(c) drain, 1 worker", "tasks/s", lambda s: n / drain(s, 1, n)),
        Metric("(c) drain, 4 workers", "tasks/s", lambda s: n / drain(s, 4, n), workers=4),
        Metric(
            "(d) add(), 100 tasks per call",
            "tasks/s",
            lambda s: batched_adds(s, n),
            target=False,
        ),
    ]


@dataclass
class Row:
    metric: Metric
    values: dict[str, list[float]] = field(default_factory=lambda: {"local": [], "huey": []})

    def ratios(self) -> list[float]:
        pairs = zip(self.values["local"], self.values["huey"], strict=True)
        if self.metric.higher_is_better:
            return [local / huey for local, huey in pairs]
        return [huey / local for local, huey in pairs]


def measure_once(kind: type[Side], metric: Metric, workdir: Path, seq: int) -> float:
    """A fresh file and a fresh queue for one measurement."""
    db = workdir / f"{kind.__name__.lower()}-{seq}.sqlite3"
    side = kind(db, Signals(), workers=metric.workers)
    try:
        gc.collect()
        return metric.run(side)
    finally:
        side.close()


def run_huey(rounds: int, n: int, per_producer: int) -> list[Row]:
    rows = [Row(m) for m in metrics(n, per_producer)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        seq = 0
        for r in range(rounds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            for row in rows:
                for kind in order:
                    seq += 1
                    value = measure_once(kind, row.metric, workdir, seq)
                    row.values["local" if kind is Local else "huey"].append(value)
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return rows


def report(rows: list[Row], rounds: int, n: int, per_producer: int) -> None:
    print(
        f"\nLocalTaskQueue vs huey.SqliteHuey: {rounds} interleaved rounds, {n} tasks for (a),"
        f" (c), (d); {per_producer} tasks per producer for (b); WAL + synchronous=NORMAL on both"
    )
    header = (
        f"{'metric':<32} {'LocalTaskQueue':>15} {'SqliteHuey':>12} {'ratio':>7}"
        f" {'spread':>13}  target"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        local = statistics.median(row.values["local"])
        huey = statistics.median(row.values["huey"])
        ratios = row.ratios()
        ratio = statistics.median(ratios)
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        unit = row.metric.unit
        fmt = "{:,.0f} " if unit == "tasks/s" else "{:.3f} "
        met = ("met" if ratio >= 1.0 else "MISSED") if row.metric.target else "-"
        print(
            f"{row.metric.name:<32} {(fmt.format(local) + unit):>15} "
            f"{(fmt.format(huey) + unit):>12} {ratio:>6.2f}x {spread:>13}  {met}"
        )
    print("ratio: local / Huey (for latency, Huey / local): above 1.0 the local queue is better")


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
    parser.add_argument("--part", choices=["huey", "e2e", "all"], default="huey")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and tasks (~20 s)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 7, quick 3)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks for (a), (c), (d)")
    parser.add_argument("--per-producer", type=int, default=None, help="tasks per producer (b)")
    parser.add_argument("--e2e-tasks", type=int, default=2_000, help="tasks per end-to-end run")
    parser.add_argument("--app", choices=["both", *APPS], default="both", help="end-to-end app")
    parser.add_argument("--concurrency", type=int, default=8, help="local max_concurrent_requests")
    parser.add_argument("--app-threads", type=int, default=8, help="gunicorn threads for the app")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per end-to-end run")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    n = args.tasks or (2_000 if args.quick else 5_000)
    per_producer = args.per_producer or (100 if args.quick else 300)
    if args.part in ("huey", "all"):
        report(run_huey(rounds, n, per_producer), rounds, n, per_producer)
    if args.part in ("e2e", "all"):
        for app in APPS if args.app == "both" else [args.app]:
            run_e2e(app, args.e2e_tasks, args.concurrency, args.app_threads, args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
