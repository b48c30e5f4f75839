"""The relay under failure: SIGKILL at every step, two relays at once, the queue down then up.

The relay runs as a real process (``python -c`` calling :func:`child_relay`) against a real
SQLite file or PostgreSQL database and a real LocalTaskQueue file. It kills itself with SIGKILL
at the chosen step; another relay then finishes the job. Afterwards every committed task is in
the queue exactly once and is delivered exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

from taskhandler import taskqueue
from taskhandler.outbox import Outbox
from taskhandler.taskqueue import Error, LocalTaskQueue, NewTask
from tests.postgres import postgres_server  # noqa: F401
from tests.servers import ROOT
from tests.test_outbox import Database, make_database

TASKS = 4
BATCH = 2


class Recording:
    """A LocalTaskQueue that logs each hand-off and can die (SIGKILL) at a chosen step."""

    def __init__(self, inner: LocalTaskQueue, log: Path, die: str | None = None) -> None:
        self.inner, self.log, self.die, self.calls = inner, log, die, 0

    def now(self) -> float:
        return self.inner.now()

    def check_queue(self, queue_name: str) -> None:
        self.inner.check_queue(queue_name)

    def delete(self, queue_name: str, task_name: str) -> bool:
        return self.inner.delete(queue_name, task_name)

    def purge(self, queue_name: str) -> int:
        return self.inner.purge(queue_name)

    def enqueue(self, tasks: Sequence[NewTask], *, atomic: bool = False) -> list[str | Error]:
        self.calls += 1
        if (self.die, self.calls) in (("before-hand-off", 1), ("after-delete", 2)):
            os.kill(os.getpid(), signal.SIGKILL)
        results = self.inner.enqueue(tasks, atomic=atomic)
        with self.log.open("a") as log:
            log.write("".join(f"{task.task_name}\n" for task in tasks))
        if self.die == "after-hand-off":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.005)  # a network queue takes a while: lets two relays overlap
        return results


def child_relay(db_url: str, queue_db: str, log: str, die: str) -> None:
    """The relay process: relay until idle, dying at ``die`` (``""``: not at all)."""
    queue = LocalTaskQueue("http://127.0.0.1:9", db=queue_db)
    backend = Recording(queue, Path(log), die or None)
    Outbox(db_url, backend=backend, batch_size=BATCH, lease_seconds=600).relay_until_idle()


def _spawn(db: Database, queue_db: Path, log: Path, die: str = "") -> subprocess.Popen[bytes]:
    code = (
        "from tests.test_outbox_crash import child_relay; "
        f"child_relay({db.url!r}, {str(queue_db)!r}, {str(log)!r}, {die!r})"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A fresh database of each kind: a SQLite file, and a database on the PostgreSQL server."""
    return make_database(request, tmp_path)


@pytest.fixture
def setup(database: Database, tmp_path: Path) -> Iterator[tuple[Outbox, LocalTaskQueue, list[str]]]:
    """The outbox table in the database, a queue file delivering to a counting app."""
    delivered: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        delivered.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b""]

    outbox = Outbox(database.url)
    outbox.create_table()
    queue = LocalTaskQueue(app, db=tmp_path / "queue.sqlite3")
    yield outbox, queue, delivered
    queue.close()
    outbox.close()


def _commit(outbox: Outbox, db: Database, count: int) -> list[str]:
    """Commit ``count`` transactions of one task each; return their URLs."""
    urls = [f"/ship/{n}" for n in range(count)]
    for url in urls:
        conn = db.connect()
        try:
            with outbox.transaction(conn):
                taskqueue.add(url=url, transactional=True)
        finally:
            conn.close()
    return urls


@pytest.mark.parametrize(
    ("step", "left_in_outbox", "in_queue"),
    [
        pytest.param("before-hand-off", TASKS, 0, id="killed before the hand-off"),
        pytest.param("after-hand-off", TASKS, BATCH, id="killed after the hand-off, before delete"),
        pytest.param("after-delete", TASKS - BATCH, BATCH, id="killed after the delete"),
    ],
)
def test_sigkill_at_every_step_loses_nothing_and_doubles_nothing(
    setup: tuple[Outbox, LocalTaskQueue, list[str]],
    database: Database,
    tmp_path: Path,
    step: str,
    left_in_outbox: int,
    in_queue: int,
) -> None:
    """A relay killed at any step leaves every task to be delivered once by the next relay."""
    outbox, queue, delivered = setup
    urls = _commit(outbox, database, TASKS)
    child = _spawn(database, tmp_path / "queue.sqlite3", tmp_path / "handoffs.log", step)
    assert child.wait(timeout=60) == -signal.SIGKILL
    assert outbox.pending() == left_in_outbox
    assert len(queue.tasks("default")) == in_queue
    # The next relay: on SQLite the dead relay's leases must have run out (time moved on).
    later = Outbox(database.url, backend=queue, clock=lambda: time.time() + 3600)
    try:
        later.relay_until_idle()
    finally:
        later.close()
    assert outbox.pending() == 0
    assert sorted(t.url for t in queue.tasks("default")) == urls
    queue.run_until_idle(timeout=30)
    assert sorted(delivered) == urls


def test_two_relays_at_once_never_hand_a_row_off_twice(
    setup: tuple[Outbox, LocalTaskQueue, list[str]], database: Database, tmp_path: Path
) -> None:
    """Two relay processes share the rows: each row is handed off by exactly one of them."""
    outbox, queue, _ = setup
    urls = _commit(outbox, database, 40)
    logs = [tmp_path / "relay-1.log", tmp_path / "relay-2.log"]
    children = [_spawn(database, tmp_path / "queue.sqlite3", log) for log in logs]
    assert [child.wait(timeout=120) for child in children] == [0, 0]
    handed = [name for log in logs if log.exists() for name in log.read_text().split()]
    assert len(handed) == len(set(handed)) == len(urls)
    assert outbox.pending() == 0
    assert sorted(t.url for t in queue.tasks("default")) == sorted(urls)


class Outage(Recording):
    """A queue that fails every hand-off while ``down`` is set, counting the failures."""

    def __init__(self, inner: LocalTaskQueue, log: Path) -> None:
        super().__init__(inner, log)
        self.down = threading.Event()
        self.failures = 0

    def enqueue(self, tasks: Sequence[NewTask], *, atomic: bool = False) -> list[str | Error]:
        if self.down.is_set():
            self.failures += 1
            raise ConnectionError("queue unreachable")
        return super().enqueue(tasks, atomic=atomic)


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true within 30 s"
        time.sleep(0.01)


def test_the_queue_down_then_up(
    setup: tuple[Outbox, LocalTaskQueue, list[str]], database: Database, tmp_path: Path
) -> None:
    """While the queue is down the rows stay and the relay retries; once up, all go, once."""
    outbox, queue, delivered = setup
    backend = Outage(queue, tmp_path / "handoffs.log")
    backend.down.set()
    relay = Outbox(
        database.url, backend=backend, poll_interval=0.05, min_backoff=0.01, max_backoff=0.05
    )
    relay.start()
    try:
        urls = _commit(outbox, database, 3)
        _wait_for(lambda: backend.failures >= 3)
        assert outbox.pending() == 3
        assert queue.tasks("default") == []
        backend.down.clear()
        _wait_for(lambda: outbox.pending() == 0)
    finally:
        relay.close()
    queue.run_until_idle(timeout=30)
    assert sorted(delivered) == urls
