"""Benchmark the local push queue: add() rate (single and batched) and in-process dispatch rate.

Run:  python bench/local_queue.py [--tasks 10000]

Every figure is printed next to a baseline measured in the same run on the same machine:
- add(): a bare SQLite INSERT + COMMIT per task, same kind of file (WAL, synchronous=NORMAL);
- dispatch: the same WSGI app called directly in a loop, with no queue at all.
The dispatch target is >= 3,000 tasks/s with a SQLite file.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    n = args.tasks
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
