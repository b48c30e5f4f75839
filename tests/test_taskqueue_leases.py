"""Leases of the local queue: a task is never handed to a second process while it runs, and a
task of a process that died runs again soon.

Real SQLite files, real processes (one killed with SIGKILL mid-delivery), real threads; time
is moved with ``ManualClock`` where a lease must run out.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
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
