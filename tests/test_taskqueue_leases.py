"""Leases of the local queue: a task is never handed to a second process while it runs, and a
task of a process that died runs again soon.

Real SQLite files, real processes (one killed with SIGKILL mid-delivery), real threads; time
is moved with ``ManualClock`` where a lease must run out.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from taskhandler import taskqueue
from taskhandler.taskqueue import LocalTaskQueue, ManualClock, QueueConfig, Task
from tests.servers import ROOT

NOW = 1_700_000_000.0
FAST = [QueueConfig("default", rate=200, bucket_size=50)]
DAY_USEC = 86_400_000_000


class SlowWsgi:
    """A WSGI app whose first delivery "runs" ``runs_for`` seconds (it moves the clock), while
    another queue on the same file dispatches what it may."""

    def __init__(self, db: Path, clock: ManualClock, runs_for: float) -> None:
        self.db, self.clock, self.runs_for = db, clock, runs_for
        self.delivered: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.delivered.append(environ["PATH_INFO"])
        if len(self.delivered) == 1:
            self.clock.advance(self.runs_for)
            with LocalTaskQueue(self, db=self.db, queues=FAST, clock=self.clock) as other:
                other.run_due(timeout=20)
        start_response("200 OK", [])
        return [b"ok"]


@pytest.mark.parametrize(
    "deadline_usec",
    [
        pytest.param(None, id="no dispatch deadline"),
        pytest.param(15_000_000, id="15 s dispatch deadline"),
    ],
)
def test_a_long_wsgi_delivery_is_not_taken_by_another_queue(
    tmp_path: Path, deadline_usec: int | None
) -> None:
    """An in-process WSGI delivery (no timeout interrupts it) running two minutes is not
    delivered again by another queue on the file, whatever the task's dispatch deadline."""
    db = tmp_path / "q.sqlite3"
    clock = ManualClock(NOW)
    app = SlowWsgi(db, clock, runs_for=120)
    with LocalTaskQueue(app, db=db, queues=FAST, clock=clock, workers=1) as q, taskqueue.use(q):
        Task(url="/slow", name="slow", dispatch_deadline_usec=deadline_usec).add()
        q.run_due(timeout=20)
    assert app.delivered == ["/slow"]


DIES_MID_DELIVERY = """
import os, signal, sys
from taskhandler import taskqueue
from taskhandler.taskqueue import LocalTaskQueue, QueueConfig, Task

def app(environ, start_response):
    os.kill(os.getpid(), signal.SIGKILL)

queues = [QueueConfig("default", rate=200, bucket_size=50)]
with LocalTaskQueue(app, db=sys.argv[1], queues=queues) as q, taskqueue.use(q):
    usec = None if sys.argv[2] == "none" else int(sys.argv[2])
    Task(url="/t", name="t", dispatch_deadline_usec=usec).add()
    q.run_due(timeout=20)
"""


@pytest.mark.parametrize(
    "deadline", [pytest.param("none", id="no deadline"), pytest.param(str(DAY_USEC), id="24 h")]
)
def test_a_running_queue_takes_over_the_task_of_a_process_that_died(
    tmp_path: Path, deadline: str
) -> None:
    """A process killed mid-delivery: a queue already running on this host delivers its task
    at its next look, without waiting for the lease (up to two days for a 24 h deadline)."""
    db = tmp_path / "q.sqlite3"
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"ok"]

    with LocalTaskQueue(app, db=db, queues=FAST) as survivor:
        child = subprocess.run(
            [sys.executable, "-c", DIES_MID_DELIVERY, str(db), deadline],
            cwd=ROOT,
            check=False,
            timeout=60,
        )
        assert child.returncode == -signal.SIGKILL
        survivor.run_due(timeout=10)
        assert survivor.tasks("default") == []
    assert seen == ["/t"]


def test_closing_keeps_the_lease_of_a_delivery_still_running(tmp_path: Path) -> None:
    """``close()`` gives back what it did not start, but a delivery still running keeps its
    task's lease: another queue on the file does not deliver it a second time meanwhile."""
    db = tmp_path / "q.sqlite3"
    running, release = threading.Event(), threading.Event()
    delivered: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        delivered.append(environ["PATH_INFO"])
        if len(delivered) == 1:
            running.set()
            release.wait(30)
        start_response("200 OK", [])
        return [b"ok"]

    q = LocalTaskQueue(app, db=db, queues=FAST)
    try:
        with taskqueue.use(q):
            Task(url="/long", name="long", dispatch_deadline_usec=DAY_USEC).add()
        q.start()
        assert running.wait(10)
        q.close(timeout=0.2)
        with LocalTaskQueue(app, db=db, queues=FAST) as other:
            assert other.run_due(timeout=5) == 0
            assert [t.task_name for t in other.tasks("default")] == ["long"]  # still leased
        assert delivered == ["/long"]
    finally:
        release.set()
        q.close()


def test_closing_while_a_worker_takes_its_next_task_delivers_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that has taken a task and not yet begun it when ``close()`` looks at what
    runs: either it delivers the task (keeping its lease) or another queue does, never both.
    The pause stands for the worker being descheduled at that moment."""
    from taskhandler.taskqueue._dispatcher import DispatchLoop

    db = tmp_path / "q.sqlite3"
    delivered: list[tuple[str, str]] = []
    taking, go, first_done = threading.Event(), threading.Event(), threading.Event()
    hold_lease = DispatchLoop._hold_lease
    closing: list[DispatchLoop] = []

    def paused(self: DispatchLoop, task: Any, timeout: float) -> bool:
        if task.name == "b" and self in closing:
            taking.set()
            go.wait(10)
        return hold_lease(self, task, timeout)

    monkeypatch.setattr(DispatchLoop, "_hold_lease", paused)

    def app_of(who: str) -> Any:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            delivered.append((who, environ["PATH_INFO"]))
            if who == "closing" and environ["PATH_INFO"] == "/b":
                first_done.set()
            start_response("200 OK", [])
            return [b"ok"]

        return app

    q = LocalTaskQueue(app_of("closing"), db=db, queues=FAST, workers=1)
    closing.append(q._loop)
    try:
        with taskqueue.use(q):
            Task(url="/a", name="a").add()
            Task(url="/b", name="b").add()
        q.start()
        assert taking.wait(10)
        q.close(timeout=0.2)
        with LocalTaskQueue(app_of("other"), db=db, queues=FAST) as other:
            other.run_due(timeout=5)
    finally:
        go.set()
    first_done.wait(5)
    assert [path for _, path in delivered].count("/b") == 1, delivered


def _recording(
    delivered: list[tuple[str, str]], who: str, gate: threading.Event | None = None
) -> Any:
    """A WSGI app recording ``(who, path)``; a delivery of ``/b`` waits for ``gate``."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        delivered.append((who, environ["PATH_INFO"]))
        if gate is not None and environ["PATH_INFO"] == "/b":
            gate.wait(10)
        start_response("200 OK", [])
        return [b"ok"]

    return app


def test_a_task_a_worker_skips_while_closing_is_given_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that takes a task after ``close()`` looked at what runs does not start it;
    ``close()`` gives its lease back and the next queue delivers it, once."""
    from taskhandler.taskqueue._dispatcher import DispatchLoop

    db = tmp_path / "q.sqlite3"
    delivered: list[tuple[str, str]] = []
    taking, go, skipped = threading.Event(), threading.Event(), threading.Event()
    transport_of, deliver = DispatchLoop._transport_of, DispatchLoop._deliver
    closing: list[DispatchLoop] = []

    def paused(self: DispatchLoop, task: Any) -> Any:
        # In the worker only (the pump asks too, for the lease's length).
        worker = threading.current_thread().name == "taskhandler-queue-0"
        if task.name == "b" and self in closing and worker:
            taking.set()
            go.wait(10)
        return transport_of(self, task)

    def delivering(self: DispatchLoop, task: Any) -> None:
        deliver(self, task)
        if task.name == "b" and self in closing:
            skipped.set()

    monkeypatch.setattr(DispatchLoop, "_transport_of", paused)
    monkeypatch.setattr(DispatchLoop, "_deliver", delivering)
    q = LocalTaskQueue(_recording(delivered, "closing"), db=db, queues=FAST, workers=1)
    closing.append(q._loop)
    with taskqueue.use(q):
        Task(url="/a", name="a").add()
        Task(url="/b", name="b").add()
    q.start()
    assert taking.wait(10)
    closer = threading.Thread(target=q.close, kwargs={"timeout": 0.2})
    closer.start()
    closer.join(10)
    go.set()
    assert skipped.wait(10)
    with LocalTaskQueue(_recording(delivered, "other"), db=db, queues=FAST) as other:
        other.run_due(timeout=5)
    assert [path for _, path in delivered].count("/b") == 1, delivered
    assert ("other", "/b") in delivered


def test_a_delivery_ending_as_close_looks_is_recorded_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery that answers after ``close()``'s wait but before it looks at what runs has
    its outcome recorded: the task is done, not given back to run a second time."""
    from taskhandler.taskqueue._dispatcher import DispatchLoop

    db = tmp_path / "q.sqlite3"
    delivered: list[tuple[str, str]] = []
    gate = threading.Event()
    settle = DispatchLoop._settle
    closing: list[DispatchLoop] = []

    def settled(self: DispatchLoop, timeout: float) -> None:
        settle(self, timeout)
        if self in closing and self._pump_lock.locked():  # close()'s wait, not stop()'s
            gate.set()  # the delivery ends now
            while True:
                with self._running_lock:
                    if not self._running:
                        break
                time.sleep(0.01)

    monkeypatch.setattr(DispatchLoop, "_settle", settled)
    q = LocalTaskQueue(_recording(delivered, "closing", gate), db=db, queues=FAST, workers=1)
    closing.append(q._loop)
    with taskqueue.use(q):
        Task(url="/b", name="b").add()
    q.start()
    for _ in range(500):
        if delivered:
            break
        time.sleep(0.01)
    q.close(timeout=0.2)
    with LocalTaskQueue(_recording(delivered, "other"), db=db, queues=FAST) as other:
        other.run_due(timeout=5)
        assert other.tasks("default") == []
    assert delivered == [("closing", "/b")]


NEW_PID_NAMESPACE = """
import os, sys, time
free_outside = {int(p) for p in sys.argv[3].split(",")}
while True:  # become a process whose pid is free in the parent's namespace
    pid = os.fork()
    if pid == 0:
        if os.getpid() not in free_outside:
            os._exit(0)
        break
    os.waitpid(pid, 0)
    if pid in free_outside:
        sys.exit(0)
from taskhandler import taskqueue
from taskhandler.taskqueue import LocalTaskQueue, QueueConfig, Task

def app(environ, start_response):
    with open(sys.argv[2], "a") as log:
        log.write("other namespace\\n")
    time.sleep(3)
    start_response("200 OK", [])
    return [b"ok"]

queues = [QueueConfig("default", rate=200, bucket_size=50)]
with LocalTaskQueue(app, db=sys.argv[1], queues=queues) as q, taskqueue.use(q):
    Task(url="/t", name="t").add()
    q.run_due(timeout=20)
"""


@pytest.mark.skipif(
    not Path("/proc/self/ns/pid").exists() or shutil.which("unshare") is None,
    reason="needs Linux PID namespaces and unshare(1)",
)
def test_a_live_process_in_another_pid_namespace_keeps_its_lease(tmp_path: Path) -> None:
    """Containers that share a host name and the queue file do not see each other's pids: a
    running queue does not take a live process's task for a dead one's and run it twice."""
    db, log = tmp_path / "q.sqlite3", tmp_path / "delivered.log"
    log.touch()
    free_outside = [p for p in range(9, 400) if not Path(f"/proc/{p}").exists()]
    if not free_outside:
        pytest.skip("no low pid free here to stand for the other namespace's")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with log.open("a") as out:
            out.write("this namespace\n")
        start_response("200 OK", [])
        return [b"ok"]

    with LocalTaskQueue(app, db=db, queues=FAST) as survivor:
        child = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
             NEW_PID_NAMESPACE, str(db), str(log), ",".join(map(str, free_outside))],
            cwd=ROOT,
        )  # fmt: skip
        try:
            for _ in range(200):
                if log.read_text():
                    break
                time.sleep(0.05)
            if not log.read_text():
                pytest.skip("unshare cannot make a PID namespace here")
            survivor.run_due(timeout=10)
        finally:
            child.wait(30)
    assert log.read_text().splitlines() == ["other namespace"]
