"""Crash safety: a dispatching process killed with SIGKILL loses no task, and dedup survives.

A real subprocess dispatches from a real SQLite file; its handler finishes the first tasks and
then hangs, so the kill lands while tasks are leased. A new queue on the same file then
delivers everything that was not finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from taskhandler import taskqueue
from taskhandler.taskqueue import LocalTaskQueue, QueueConfig, Task

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

ROOT = Path(__file__).resolve().parent.parent
QUEUES = [QueueConfig("default", rate=1000, bucket_size=100)]

CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from taskhandler import taskqueue
    from taskhandler.taskqueue import LocalTaskQueue, QueueConfig

    db, log_path = sys.argv[1], sys.argv[2]
    lock = threading.Lock()
    finished = 0

    def log(line):
        with lock, open(log_path, "a") as f:
            f.write(line + "\\n")

    def app(environ, start_response):
        global finished
        name = environ["HTTP_X_APPENGINE_TASKNAME"]
        with lock:
            finished += 1
            hang = finished > 3
        log(("start " if hang else "done ") + name)
        if hang:
            time.sleep(600)  # still running when the process is killed
        start_response("200 OK", [])
        return [b""]

    q = LocalTaskQueue(app, db=db, workers=4,
                       queues=[QueueConfig("default", rate=1000, bucket_size=100)])
    taskqueue.use(q)
    q.start()
    for i in range(5):
        taskqueue.add(url="/child", name=f"child-{i}", countdown=0.05 * i)
    log("added")
    time.sleep(600)
    """
)


def _read(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_sigkill_while_dispatching_loses_nothing(tmp_path: Path) -> None:
    """Tasks leased or pending when the dispatcher is SIGKILLed are all delivered after restart."""
    db = tmp_path / "queue.sqlite3"
    log = tmp_path / "deliveries.log"
    names = [f"task-{i}" for i in range(20)]
    with LocalTaskQueue(lambda e, s: [], db=db, queues=QUEUES) as q, taskqueue.use(q):
        taskqueue.Queue().add([Task(url="/parent", name=n) for n in names])

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(log)], env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = _read(log)
            if "added" in lines and sum(line.startswith("start ") for line in lines) >= 4:
                break
            assert child.poll() is None, "the dispatching process exited early"
            time.sleep(0.02)
        else:
            pytest.fail(f"the child did not start dispatching: {_read(log)}")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    lines = _read(log)
    done_in_child = {line.split()[1] for line in lines if line.startswith("done ")}
    hung_in_child = {line.split()[1] for line in lines if line.startswith("start ")}
    all_names = set(names) | {f"child-{i}" for i in range(5)}

    delivered: dict[str, list[int]] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        name = environ["HTTP_X_APPENGINE_TASKNAME"]
        delivered.setdefault(name, []).append(int(environ["HTTP_X_APPENGINE_TASKRETRYCOUNT"]))
        start_response("200 OK", [])
        return [b""]

    with LocalTaskQueue(app, db=db, queues=QUEUES) as q, taskqueue.use(q):
        q.run_until_idle(timeout=30)
        assert q.tasks() == []
        # Nothing lost: every task finished in the child or was delivered now.
        assert done_in_child | set(delivered) == all_names
        # The tasks hanging at the kill came back, counted as a retry.
        assert hung_in_child <= set(delivered)
        assert all(delivered[name] == [1] for name in hung_in_child)
        # Dedup survived: finished names are tombstoned.
        with pytest.raises(taskqueue.TombstonedTaskError):
            taskqueue.add(url="/again", name="task-0")
