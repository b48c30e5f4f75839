"""assert_idempotent catches what it should: a naive counter, a ledger with a race, and passes
the transactional handler, sequentially and with overlapping deliveries from real threads."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhandler import task_handler
from taskhandler.context import TaskContext
from taskhandler.exceptions import PermanentTaskFailure, RetryTask
from taskhandler.testing import Delivery, IdempotencyError, TaskTestApp, assert_idempotent
from taskhandler.wsgi import TaskMiddleware

pytest_plugins = ("pytester",)


class Store:
    """A counter table and a ledger of finished task names in a real SQLite file.

    ``window`` is test scaffolding for the non-atomic handler: once ``hold(parties)`` is
    called, every delivery waits inside its check-then-act window until ``parties``
    deliveries are in it, so the race shows on every run instead of by luck.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with self.connect() as conn:
            conn.executescript(
                "CREATE TABLE counters (name TEXT PRIMARY KEY, count INTEGER NOT NULL);"
                "CREATE TABLE ledger (task_name TEXT PRIMARY KEY);"
            )
        self._cond = threading.Condition()
        self._parties = 0
        self._inside = 0

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def snapshot(self) -> dict[str, int]:
        with self.connect() as conn:
            return dict(conn.execute("SELECT name, count FROM counters ORDER BY name"))

    def reset(self) -> None:
        with self.connect() as conn:
            conn.executescript("DELETE FROM counters; DELETE FROM ledger;")

    def hold(self, parties: int) -> None:
        with self._cond:
            self._parties, self._inside = parties, 0

    def window(self) -> None:
        with self._cond:
            if not self._parties:
                return
            self._inside += 1
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._inside >= self._parties, timeout=20):
                raise RuntimeError("the other deliveries never reached the window")


def naive_counter(store: Store) -> Any:
    """Read-modify-write of the counter, no ledger: every delivery counts again."""

    @task_handler
    def count(task: TaskContext) -> None:
        with store.connect() as conn:
            row = conn.execute("SELECT count FROM counters WHERE name='a'").fetchone()
            value = (row[0] if row else 0) + 1
            conn.execute("INSERT OR REPLACE INTO counters VALUES ('a', ?)", (value,))

    return count


def ledger_not_atomic(store: Store) -> Any:
    """Checks the ledger, then counts, then writes the ledger: three separate transactions."""

    @task_handler
    def count(task: TaskContext) -> None:
        with store.connect() as conn:
            done = conn.execute(
                "SELECT 1 FROM ledger WHERE task_name=?", (task.task_name,)
            ).fetchone()
        if done:
            return
        store.window()  # another delivery can be anywhere between the check and the write
        with store.connect() as conn:
            conn.execute(
                "INSERT INTO counters VALUES ('a', 1) "
                "ON CONFLICT(name) DO UPDATE SET count = count + 1"
            )
        with store.connect() as conn:
            conn.execute("INSERT OR IGNORE INTO ledger VALUES (?)", (task.task_name,))

    return count


def transactional(store: Store) -> Any:
    """Ledger check, count and ledger write in one SQLite transaction (BEGIN IMMEDIATE)."""

    @task_handler
    def count(task: TaskContext) -> None:
        conn = store.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")  # takes the write lock before reading the ledger
            done = conn.execute(
                "SELECT 1 FROM ledger WHERE task_name=?", (task.task_name,)
            ).fetchone()
            if not done:
                conn.execute(
                    "INSERT INTO counters VALUES ('a', 1) "
                    "ON CONFLICT(name) DO UPDATE SET count = count + 1"
                )
                conn.execute("INSERT INTO ledger VALUES (?)", (task.task_name,))
            conn.execute("COMMIT")
        finally:
            conn.close()

    return count


HANDLERS: dict[str, Callable[[Store], Any]] = {
    "naive": naive_counter,
    "ledger, not atomic": ledger_not_atomic,
    "transactional": transactional,
}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "counters.sqlite3")


def run(store: Store, handler: str, concurrent: bool) -> dict[str, int]:
    app = HANDLERS[handler](store)

    def reset() -> None:
        store.reset()
        store.hold(3)  # only the overlapping round waits in the window

    result: dict[str, int] = assert_idempotent(
        app,
        "/tasks/count",
        params={"name": "a"},
        snapshot=store.snapshot,
        deliveries=3,
        concurrent=concurrent,
        reset=reset if concurrent else None,
    )
    return result


@pytest.mark.parametrize(
    ("handler", "concurrent", "caught"),
    [
        pytest.param(
            "naive",
            False,
            "delivery 2 of the same task changed the state",
            id="naive counter fails sequentially",
        ),
        pytest.param(
            "naive",
            True,
            "delivery 2 of the same task changed the state",
            id="naive counter fails before any overlap",
        ),
        pytest.param("ledger, not atomic", False, None, id="ledger passes sequentially"),
        pytest.param(
            "ledger, not atomic",
            True,
            "3 overlapping deliveries of the same task left a different state",
            id="ledger without a transaction fails when deliveries overlap",
        ),
        pytest.param("transactional", False, None, id="transactional passes sequentially"),
        pytest.param("transactional", True, None, id="transactional passes overlapping"),
    ],
)
def test_catches_what_it_should(
    store: Store, handler: str, concurrent: bool, caught: str | None
) -> None:
    """Each handler passes or fails assert_idempotent exactly as its design deserves."""
    if caught is None:
        assert run(store, handler, concurrent) == {"a": 1}
        return
    with pytest.raises(IdempotencyError, match=caught) as info:
        run(store, handler, concurrent)
    assert info.value.expected == {"a": 1}
    assert info.value.actual in ({"a": 2}, {"a": 3})
    assert "-{'a': 1}" in str(info.value)
    assert f"+{info.value.actual!r}" in str(info.value)


@pytest.fixture
def example(tmp_path: Path) -> Iterator[tuple[Any, Callable[[], Any], Callable[[], None]]]:
    """The webapp2-style example (the seed's counter, unchanged), its state and a reset."""
    from examples.webapp2_style import main, ndb_sqlite, worker

    path = tmp_path / "ndb.sqlite3"
    previous = ndb_sqlite.configure(path)
    app = main.create_app(database=path)

    def rows(sql: str) -> list[Any]:
        with sqlite3.connect(path, isolation_level=None) as conn:
            return conn.execute(sql).fetchall()

    def snapshot() -> int | None:
        counter = worker.Counter.get_by_id(worker.COUNTER_KEY)
        return None if counter is None else int(counter.count)

    def reset() -> None:
        rows("DELETE FROM entities")
        rows("DELETE FROM task_ledger")

    yield app, snapshot, reset
    ndb_sqlite.configure(previous)


@pytest.mark.parametrize(
    "concurrent",
    [pytest.param(False, id="sequential"), pytest.param(True, id="overlapping")],
)
def test_the_webapp2_example_is_idempotent(
    example: tuple[Any, Callable[[], Any], Callable[[], None]], concurrent: bool
) -> None:
    """The seed's counter, run with its transactional task ledger, passes both ways."""
    app, snapshot, reset = example
    state = assert_idempotent(
        app,
        "/update_counter",
        params={"amount": "5"},
        snapshot=snapshot,
        concurrent=concurrent,
        reset=reset,
        deliveries=4,
    )
    assert state == 5


def test_overlap_really_overlaps(store: Store) -> None:
    """Overlapping deliveries run at the same time: three are inside the handler at once."""
    inside: list[int] = []
    lock = threading.Lock()
    busy = [0]

    @task_handler
    def handler(task: TaskContext) -> None:
        with lock:
            busy[0] += 1
            inside.append(busy[0])
        store.window()
        with lock:
            busy[0] -= 1

    def reset() -> None:
        store.hold(3)
        inside.clear()

    assert_idempotent(
        handler, "/t", snapshot=store.snapshot, concurrent=True, reset=reset, deliveries=3
    )
    assert max(inside) == 3


# -- what it reports ---------------------------------------------------------------------


def answers(*statuses: int) -> Any:
    """A handler answering these statuses in turn (then the last one forever)."""
    calls = iter(statuses)
    last = [statuses[-1]]

    @task_handler
    def handler(task: TaskContext) -> int:
        last[0] = next(calls, last[0])
        if last[0] == 599:
            raise PermanentTaskFailure("cannot")
        if last[0] >= 500:
            raise RetryTask("busy", status=last[0])
        return last[0]

    return handler


@pytest.mark.parametrize(
    ("statuses", "message"),
    [
        pytest.param(
            (500,),
            r"the first delivery of the task failed.*\n  delivery 1 \(retry_count=0, first "
            r"delivery\): status 500, outcome retry",
            id="first delivery fails",
        ),
        pytest.param(
            (200, 503),
            r"a redelivery of a task that had already succeeded failed:\n  delivery 2 "
            r"\(retry_count=1, redelivery after a success whose answer was lost\): status 503,"
            r" outcome retry",
            id="redelivery after success answers a retry",
        ),
        pytest.param(
            (200, 200, 599),
            r"delivery 3 \(retry_count=2, .*\): status 200, outcome permanent-failure",
            id="third delivery acknowledged as a permanent failure",
        ),
    ],
)
def test_names_the_delivery_that_failed(statuses: tuple[int, ...], message: str) -> None:
    """A failed delivery is named with its retry count, status and outcome."""
    with pytest.raises(IdempotencyError, match=message) as info:
        assert_idempotent(answers(*statuses), "/t", snapshot=lambda: None)
    failed = info.value.deliveries[-1]
    assert isinstance(failed, Delivery)
    assert not failed.succeeded
    assert len(info.value.deliveries) == len(statuses)


def test_lease_holder_may_ask_overlapping_copies_to_retry(store: Store) -> None:
    """An overlapping copy may answer 503 (lease held); it is redelivered once and must succeed."""
    lease = threading.Lock()
    bounced = threading.Semaphore(0)
    overlapping = threading.Event()

    @task_handler
    def handler(task: TaskContext) -> None:
        if not lease.acquire(blocking=False):
            bounced.release()
            raise RetryTask("another delivery holds the lease", status=503)
        try:
            if overlapping.is_set():  # hold the lease until both other copies bounced
                for _ in range(2):
                    assert bounced.acquire(timeout=20)
                overlapping.clear()
            with store.connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                if not conn.execute(
                    "SELECT 1 FROM ledger WHERE task_name=?", (task.task_name,)
                ).fetchone():
                    conn.execute("INSERT INTO counters VALUES ('a', 1)")
                    conn.execute("INSERT INTO ledger VALUES (?)", (task.task_name,))
                conn.execute("COMMIT")
        finally:
            lease.release()

    def reset() -> None:
        store.reset()
        overlapping.set()

    state = assert_idempotent(
        handler, "/t", snapshot=store.snapshot, concurrent=True, reset=reset, deliveries=3
    )
    assert state == {"a": 1}


def test_every_delivery_is_the_same_task() -> None:
    """All deliveries carry one task name, queue and ETA, and retry counts 0, 1, 2."""
    seen: list[TaskContext] = []

    @task_handler
    def handler(task: TaskContext) -> None:
        seen.append(task)

    assert_idempotent(handler, "/t", snapshot=lambda: 0, queue_name="mail", task_name="send-1")
    assert [t.retry_count for t in seen] == [0, 1, 2]
    assert [t.execution_count for t in seen] == [0, 1, 2]
    assert {(t.queue_name, t.task_name, t.eta) for t in seen} == {("mail", "send-1", seen[0].eta)}
    assert seen[0].eta is not None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"deliveries": 1}, ValueError, "at least 2", id="one delivery"),
        pytest.param({"deliveries": True}, ValueError, "at least 2", id="bool deliveries"),
        pytest.param({"concurrent": True}, ValueError, "needs reset=", id="concurrent, no reset"),
    ],
)
def test_refuses_an_assertion_that_cannot_fail(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Arguments that would make the check meaningless are refused up front."""
    with pytest.raises(error, match=match):
        assert_idempotent(answers(200), "/t", snapshot=lambda: 0, **kwargs)


def test_reset_that_does_not_restore_is_reported(store: Store) -> None:
    """A reset() that leaves state behind fails loudly instead of comparing wrong things."""
    with pytest.raises(AssertionError, match=r"reset\(\) did not put the state back") as info:
        assert_idempotent(
            transactional(store),
            "/t",
            snapshot=store.snapshot,
            concurrent=True,
            reset=lambda: None,
        )
    assert not isinstance(info.value, IdempotencyError)
    assert "+{'a': 1}" in str(info.value)


def test_exception_in_a_delivery_thread_reaches_the_test() -> None:
    """An app that raises (no middleware to catch it) fails the test in the test's thread."""

    def broken(environ: dict[str, Any], start_response: Any) -> Any:
        if threading.current_thread().name.startswith("delivery-"):
            raise LookupError("boom in a delivery thread")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    with pytest.raises(LookupError, match="boom in a delivery thread"):
        assert_idempotent(broken, "/t", snapshot=lambda: 0, concurrent=True, reset=lambda: None)


def test_accepts_a_task_test_app_and_its_settings() -> None:
    """Given a TaskTestApp, its queue address is used for every delivery."""
    from taskhandler.trust import TrustPolicy

    @task_handler(trust=TrustPolicy(queue_sources=["10.9.8.7"]))
    def handler(task: TaskContext) -> None:
        return None

    with pytest.raises(IdempotencyError, match="status 403, outcome rejected"):
        assert_idempotent(handler, "/t", snapshot=lambda: 0)
    assert_idempotent(TaskTestApp(handler, queue_address="10.9.8.7"), "/t", snapshot=lambda: 0)


def test_wrapped_in_middleware() -> None:
    """A plain WSGI app behind TaskMiddleware is checked the same way."""
    count = [0]

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        count[0] += 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    with pytest.raises(IdempotencyError, match=r"-\[1\]\n\+\[2\]"):
        assert_idempotent(TaskMiddleware(app), "/t", snapshot=lambda: list(count))


def test_failure_message_in_a_pytest_run(pytester: pytest.Pytester) -> None:
    """What a developer sees when a naive handler fails its idempotency test."""
    pytester.makepyfile(
        """
        from taskhandler import task_handler
        from taskhandler.testing import assert_idempotent

        counters = {"a": 0}

        @task_handler
        def count(task):
            counters["a"] += 1

        def test_count_is_idempotent():
            assert_idempotent(count, "/tasks/count", snapshot=lambda: dict(counters))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*IdempotencyError: delivery 2 of the same task changed the state*",
            "*--- after 1 delivery",
            "*+++ after 2 deliveries",
            "*-{'a': 1}",
            "*+{'a': 2}",
        ]
    )


def test_slow_handler_within_timeout() -> None:
    """Overlapping deliveries that take a moment are waited for, not reported as stuck."""

    @task_handler
    def handler(task: TaskContext) -> None:
        time.sleep(0.01)

    state = assert_idempotent(
        handler, "/t", snapshot=lambda: "same", concurrent=True, reset=lambda: None
    )
    assert state == "same"
