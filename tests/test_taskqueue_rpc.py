"""taskqueue.create_rpc() and the rpc= argument of every *_async call, as App Engine's UserRPC.

The local cases run on a ``LocalTaskQueue`` over a real SQLite file. The story at the end runs
the same steps on App Engine's own library (``google.appengine.api.taskqueue`` on its service
stub) and compares both with a recorded column. The Cloud Tasks cases run the official client
over real gRPC: against ``FakeCloudTasks`` from ``test_cloudtasks.py`` (a server on 127.0.0.1
that can hold a CreateTask call and reports the deadline each call carried), and end to end
against gcloud-tasks-emulator, which delivers the tasks to a Flask app under gunicorn.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from taskhandler import taskqueue
from taskhandler.taskqueue import (
    AddResult,
    LocalTaskQueue,
    ManualClock,
    Queue,
    QueueConfig,
    QueueStatistics,
    Task,
)
from tests.test_taskqueue_parity import app_engine_stub  # noqa: F401  (App Engine's side)

try:  # the emulator's module fixtures (gunicorn app, emulator, client) and its delivery log
    from tests.test_cloudtasks_emulator import (  # noqa: F401
        LOCATION,
        PARENT,
        PROJECT,
        app_url,
        client,
        deliveries,
        emulator,
        workdir,
    )
except pytest.skip.Exception:  # the cloudtasks extra is missing: the emulator tests skip
    deliveries = None

NOW = 1_700_000_000.0
WAIT = 10.0  # bound on every wait; a passing run is done long before it


def _ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalTaskQueue]:
    queues = [QueueConfig("default"), QueueConfig("mail"), QueueConfig("pull-queue", mode="pull")]
    q = LocalTaskQueue(_ok_app, db=tmp_path / "q.sqlite3", clock=ManualClock(NOW), queues=queues)
    with q, taskqueue.use(q):
        yield q


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# -- every *_async call, with and without rpc= ------------------------------------------------
#
# Each call takes the rpc as App Engine's signature places it (positionally where App Engine
# took it so, by keyword for taskqueue.add_async, which App Engine did not have); called with no
# rpc it is called exactly as before rpc= existed.


def _kw(rpc: tuple[AddResult[Any], ...]) -> dict[str, Any]:
    return {"rpc": rpc[0]} if rpc else {}


def _two_mail_tasks() -> None:
    Queue("mail").add([Task(url="/a", name="a1"), Task(url="/b", name="a2")])


def _two_pull_tasks() -> None:
    Queue("pull-queue").add(
        [
            Task(payload="1", method="PULL", name="p1", tag="a"),
            Task(payload="2", method="PULL", name="p2", tag="b"),
        ]
    )


ADDED = lambda v: [(t.name, t.queue_name, t.was_enqueued) for t in _listed(v)]  # noqa: E731
DELETED = lambda v: [(t.name, t.was_deleted) for t in _listed(v)]  # noqa: E731
LEASED = lambda v: [(t.name, t.retry_count) for t in v]  # noqa: E731
COUNTED = lambda v: [(s.queue.name, s.tasks) for s in _listed(v)]  # noqa: E731

CALLS = [
    pytest.param(
        None,
        lambda *r: taskqueue.add_async(url="/a", name="a1", queue_name="mail", **_kw(r)),
        ADDED,
        [("a1", "mail", True)],
        id="taskqueue.add_async",
    ),
    pytest.param(
        None,
        lambda *r: Task(url="/a", name="a1").add_async("mail", False, *r),
        ADDED,
        [("a1", "mail", True)],
        id="Task.add_async",
    ),
    pytest.param(
        None,
        lambda *r: Queue("mail").add_async(Task(url="/a", name="a1"), False, *r),
        ADDED,
        [("a1", "mail", True)],
        id="Queue.add_async(task)",
    ),
    pytest.param(
        None,
        lambda *r: Queue("mail").add_async([Task(url="/a", name="a1"), Task(url="/b")], False, *r),
        lambda v: [(t.queue_name, t.was_enqueued) for t in v] + [v[0].name],
        [("mail", True), ("mail", True), "a1"],
        id="Queue.add_async([tasks])",
    ),
    pytest.param(
        None,
        lambda *r: Queue("pull-queue").add_async(Task(payload="x", method="PULL"), False, *r),
        lambda v: (v.queue_name, v.was_enqueued),
        ("pull-queue", True),
        id="Queue.add_async(pull task)",
    ),
    pytest.param(
        _two_mail_tasks,
        lambda *r: Queue("mail").delete_tasks_async(Task(name="a1"), *r),
        DELETED,
        [("a1", True)],
        id="Queue.delete_tasks_async(task)",
    ),
    pytest.param(
        _two_mail_tasks,
        lambda *r: Queue("mail").delete_tasks_async([Task(name="a2"), Task(name="zz")], *r),
        DELETED,
        [("a2", True), ("zz", False)],
        id="Queue.delete_tasks_async([tasks])",
    ),
    pytest.param(
        _two_mail_tasks,
        lambda *r: Queue("mail").delete_tasks_by_name_async("a2", *r),
        DELETED,
        [("a2", True)],
        id="Queue.delete_tasks_by_name_async(name)",
    ),
    pytest.param(
        _two_mail_tasks,
        lambda *r: Queue("mail").delete_tasks_by_name_async(["a1", "zz"], *r),
        DELETED,
        [("a1", True), ("zz", False)],
        id="Queue.delete_tasks_by_name_async([names])",
    ),
    pytest.param(
        _two_pull_tasks,
        lambda *r: Queue("pull-queue").lease_tasks_async(60, 10, *r),
        LEASED,
        [("p1", 1), ("p2", 1)],
        id="Queue.lease_tasks_async",
    ),
    pytest.param(
        _two_pull_tasks,
        lambda *r: Queue("pull-queue").lease_tasks_by_tag_async(60, 10, "b", *r),
        LEASED,
        [("p2", 1)],
        id="Queue.lease_tasks_by_tag_async",
    ),
    pytest.param(
        _two_mail_tasks,
        lambda *r: Queue("mail").fetch_statistics_async(*r),
        COUNTED,
        [("mail", 2)],
        id="Queue.fetch_statistics_async",
    ),
    pytest.param(
        _two_mail_tasks,
        lambda *r: QueueStatistics.fetch_async("mail", *r),
        COUNTED,
        [("mail", 2)],
        id="QueueStatistics.fetch_async(name)",
    ),
    pytest.param(
        _two_mail_tasks,
        lambda *r: QueueStatistics.fetch_async([Queue("mail"), Queue("pull-queue")], *r),
        COUNTED,
        [("mail", 2), ("pull-queue", 0)],
        id="QueueStatistics.fetch_async([queues])",
    ),
]

# The same calls where the queue refuses them: the error comes from get_result().
FAILING = [
    pytest.param(
        None,
        lambda *r: taskqueue.add_async(url="/a", queue_name="nope", **_kw(r)),
        taskqueue.UnknownQueueError,
        id="taskqueue.add_async: unknown queue",
    ),
    pytest.param(
        None,
        lambda *r: Task(url="/a").add_async("nope", False, *r),
        taskqueue.UnknownQueueError,
        id="Task.add_async: unknown queue",
    ),
    pytest.param(
        _two_mail_tasks,
        lambda *r: Queue("mail").add_async(Task(url="/a", name="a1"), False, *r),
        taskqueue.TaskAlreadyExistsError,
        id="Queue.add_async: name taken",
    ),
    pytest.param(
        None,
        lambda *r: Queue("nope").delete_tasks_async(Task(name="x"), *r),
        taskqueue.UnknownQueueError,
        id="Queue.delete_tasks_async: unknown queue",
    ),
    pytest.param(
        None,
        lambda *r: Queue("nope").delete_tasks_by_name_async("x", *r),
        taskqueue.UnknownQueueError,
        id="Queue.delete_tasks_by_name_async: unknown queue",
    ),
    pytest.param(
        None,
        lambda *r: Queue("mail").lease_tasks_async(60, 1, *r),
        taskqueue.InvalidQueueModeError,
        id="Queue.lease_tasks_async: push queue",
    ),
    pytest.param(
        None,
        lambda *r: Queue("mail").lease_tasks_by_tag_async(60, 1, None, *r),
        taskqueue.InvalidQueueModeError,
        id="Queue.lease_tasks_by_tag_async: push queue",
    ),
    pytest.param(
        None,
        lambda *r: Queue("nope").fetch_statistics_async(*r),
        taskqueue.UnknownQueueError,
        id="Queue.fetch_statistics_async: unknown queue",
    ),
    pytest.param(
        None,
        lambda *r: QueueStatistics.fetch_async(["mail", "nope"], *r),
        taskqueue.UnknownQueueError,
        id="QueueStatistics.fetch_async: unknown queue",
    ),
]

Call = Callable[..., AddResult[Any]]


@pytest.mark.parametrize("with_rpc", [False, True], ids=["without rpc", "with rpc="])
@pytest.mark.parametrize(("prepare", "call", "probe", "expected"), CALLS)
def test_every_async_call(
    local: LocalTaskQueue,
    with_rpc: bool,
    prepare: Callable[[], None] | None,
    call: Call,
    probe: Callable[[Any], Any],
    expected: Any,
) -> None:
    """With rpc= the call fills that object and returns it; without, its own; same result."""
    if prepare is not None:
        prepare()
    if with_rpc:
        rpc = taskqueue.create_rpc(deadline=3)
        assert (rpc.state, rpc.done()) == (AddResult.IDLE, False)
        result = call(rpc)
        assert result is rpc
        assert rpc.deadline == 3.0
    else:
        result = call()
        assert isinstance(result, AddResult)
        assert (result.deadline, result.callback) == (None, None)
    assert (result.state, result.done()) == (AddResult.FINISHING, True)
    assert probe(result.get_result()) == expected
    result.check_success()


@pytest.mark.parametrize("with_rpc", [False, True], ids=["without rpc", "with rpc="])
@pytest.mark.parametrize(("prepare", "call", "error"), FAILING)
def test_every_async_call_failing(
    local: LocalTaskQueue,
    with_rpc: bool,
    prepare: Callable[[], None] | None,
    call: Call,
    error: type[Exception],
) -> None:
    """A call the queue refuses returns (its rpc when given); its error comes from the result."""
    if prepare is not None:
        prepare()
    rpc = taskqueue.create_rpc() if with_rpc else None
    result = call(rpc) if rpc is not None else call()
    assert rpc is None or result is rpc
    result.wait()
    with pytest.raises(error):
        result.get_result()
    with pytest.raises(error):
        result.check_success()


# -- the callback -----------------------------------------------------------------------------


class Recorder:
    """A callback that records, per call, the thread it ran in and the rpc's state then."""

    def __init__(self) -> None:
        self.rpc: AddResult[Any] | None = None
        self.calls: list[tuple[str, bool, int]] = []

    def __call__(self) -> None:
        assert self.rpc is not None
        self.calls.append((threading.current_thread().name, self.rpc.done(), self.rpc.state))


def _wait_in_thread(rpc: AddResult[Any], name: str = "waiter") -> None:
    thread = threading.Thread(target=rpc.wait, name=name)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()


SUCCEEDING = [pytest.param(*row.values[:2], None, id=row.id) for row in CALLS]


@pytest.mark.parametrize(("prepare", "call", "error"), SUCCEEDING + FAILING)
def test_callback_runs_once_in_the_waiting_thread(
    local: LocalTaskQueue,
    prepare: Callable[[], None] | None,
    call: Call,
    error: type[Exception] | None,
) -> None:
    """The callback runs once, when a thread waits on the completed call, failed or not."""
    if prepare is not None:
        prepare()
    recorder = Recorder()
    rpc = recorder.rpc = taskqueue.create_rpc(callback=recorder)
    call(rpc)
    assert recorder.calls == []  # the call itself does not run it
    _wait_in_thread(rpc)
    assert recorder.calls == [("waiter", True, AddResult.FINISHING)]
    if error is None:
        rpc.get_result()
        rpc.check_success()
    else:
        with pytest.raises(error):
            rpc.get_result()
        with pytest.raises(error):
            rpc.check_success()
    rpc.wait()
    assert len(recorder.calls) == 1


def _await(rpc: AddResult[Any]) -> Any:
    async def main() -> Any:
        return await rpc

    return asyncio.run(main())


# (how to wait, whether it raises the call's error)
WAITERS = [
    pytest.param(lambda rpc: rpc.wait(), False, id="wait()"),
    pytest.param(lambda rpc: rpc.check_success(), True, id="check_success()"),
    pytest.param(lambda rpc: rpc.get_result(), True, id="get_result()"),
    pytest.param(_await, True, id="await"),
]


@pytest.mark.parametrize(("waiter", "raises"), WAITERS)
@pytest.mark.parametrize(
    ("name", "error"),
    [
        pytest.param("fresh", None, id="added"),
        pytest.param("a1", taskqueue.TaskAlreadyExistsError, id="refused"),
    ],
)
def test_first_waiter_runs_the_callback(
    local: LocalTaskQueue,
    waiter: Callable[[AddResult[Any]], object],
    raises: bool,
    name: str,
    error: type[Exception] | None,
) -> None:
    """Whichever of wait/check_success/get_result/await comes first runs it, then raises."""
    _two_mail_tasks()
    recorder = Recorder()
    rpc = recorder.rpc = taskqueue.create_rpc(callback=recorder)
    Queue("mail").add_async(Task(url="/a", name=name), rpc=rpc)
    if error is not None and raises:
        with pytest.raises(error):
            waiter(rpc)
    else:
        waiter(rpc)
    assert recorder.calls == [("MainThread", True, AddResult.FINISHING)]
    for again in WAITERS:
        with contextlib.suppress(taskqueue.Error):
            again.values[0](rpc)
    assert len(recorder.calls) == 1


def test_callback_set_after_the_call(local: LocalTaskQueue) -> None:
    """rpc.callback may be set after the call, before waiting, as on App Engine."""
    recorder = Recorder()
    rpc = recorder.rpc = taskqueue.create_rpc()
    Queue("mail").add_async(Task(url="/a"), rpc=rpc)
    rpc.callback = recorder
    rpc.get_result()
    assert len(recorder.calls) == 1


def test_callback_may_read_the_result(local: LocalTaskQueue) -> None:
    """A callback that calls rpc.get_result() gets the tasks (no deadlock, no second call)."""
    seen: list[Any] = []
    rpc = taskqueue.create_rpc()
    rpc.callback = lambda: seen.append(rpc.get_result().name)
    Queue("mail").add_async(Task(url="/a", name="cb"), rpc=rpc)
    rpc.wait()
    assert seen == ["cb"]


@pytest.mark.parametrize(
    ("prepare", "error"),
    [
        pytest.param(None, None, id="the call succeeded"),
        pytest.param(_two_mail_tasks, taskqueue.TaskAlreadyExistsError, id="the call failed"),
    ],
)
def test_callback_error_is_raised_once(
    local: LocalTaskQueue, prepare: Callable[[], None] | None, error: type[Exception] | None
) -> None:
    """A callback that raises: the waiter that ran it raises that; the next gets the call's own."""

    def boom() -> None:
        raise ValueError("from the callback")

    if prepare is not None:
        prepare()
    rpc = taskqueue.create_rpc(callback=boom)
    Queue("mail").add_async(Task(url="/a", name="a1"), rpc=rpc)
    with pytest.raises(ValueError, match="from the callback"):
        rpc.get_result()
    if error is None:
        assert rpc.get_result().name == "a1"
    else:
        with pytest.raises(error):
            rpc.get_result()


def test_callback_runs_once_when_threads_race(local: LocalTaskQueue) -> None:
    """Eight threads wait at once on one completed call: the callback runs exactly once."""
    recorder = Recorder()
    rpc = recorder.rpc = taskqueue.create_rpc(callback=recorder)
    Queue("mail").add_async(Task(url="/a"), rpc=rpc)
    barrier = threading.Barrier(8)

    def wait() -> None:
        barrier.wait(WAIT)
        rpc.wait()

    threads = [threading.Thread(target=wait, name=f"w{n}") for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(recorder.calls) == 1
    assert recorder.calls[0][0] in {f"w{n}" for n in range(8)}


# -- one rpc, one call ------------------------------------------------------------------------


@pytest.mark.parametrize(("prepare", "second", "probe", "expected"), CALLS)
def test_rpc_is_not_reused(
    local: LocalTaskQueue,
    prepare: Callable[[], None] | None,
    second: Call,
    probe: Callable[[Any], Any],
    expected: Any,
) -> None:
    """An rpc already used for a call is refused by any second call (AssertionError), untouched."""
    if prepare is not None:
        prepare()
    rpc = taskqueue.create_rpc()
    first = Queue("default").add_async(Task(url="/first", name="first"), rpc=rpc)
    with pytest.raises(AssertionError, match="already used"):
        second(rpc)
    assert first.get_result().name == "first"
    # The second call did nothing: the same call without the rpc still gives what it gives.
    assert probe(second().get_result()) == expected


def test_a_result_without_rpc_is_not_an_rpc_to_reuse(local: LocalTaskQueue) -> None:
    """The object an *_async call returned by itself is refused as rpc= too."""
    result = taskqueue.add_async(url="/a")
    task = Task(url="/b")
    with pytest.raises(AssertionError):
        task.add_async(rpc=result)
    assert not task.was_enqueued


def test_two_threads_one_rpc(local: LocalTaskQueue) -> None:
    """Two threads pass one rpc at once: one call is made, the other is refused."""
    rpc = taskqueue.create_rpc()
    barrier = threading.Barrier(2)
    tasks = [Task(url="/a", name="t0"), Task(url="/b", name="t1")]
    refused: list[BaseException] = []

    def add(task: Task) -> None:
        barrier.wait(WAIT)
        try:
            Queue("mail").add_async(task, rpc=rpc)
        except AssertionError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=add, args=(task,)) for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(refused) == 1
    assert rpc.get_result() in tasks
    assert [task.was_enqueued for task in tasks].count(True) == 1


REFUSED_BEFORE_THE_CALL = [
    pytest.param(
        lambda rpc: Queue("mail").add_async([Task(url="/a", name="d"), Task(name="d")], rpc=rpc),
        taskqueue.DuplicateTaskNameError,
        id="a name twice",
    ),
    pytest.param(
        lambda rpc: Queue("mail").add_async(Task(url="/a"), transactional=True, rpc=rpc),
        taskqueue.BadTransactionStateError,
        id="transactional outside a transaction",
    ),
    pytest.param(
        lambda rpc: Queue("mail").add_async([Task(url="/a"), "x"], rpc=rpc),
        TypeError,
        id="not a Task",
    ),
    pytest.param(
        lambda rpc: Queue("pull-queue").lease_tasks_async(-1, 1, rpc),
        taskqueue.InvalidLeaseTimeError,
        id="lease -1 s",
    ),
    pytest.param(
        lambda rpc: QueueStatistics.fetch_async(3, rpc),
        TypeError,
        id="statistics of 3",
    ),
]


@pytest.mark.parametrize(("call", "error"), REFUSED_BEFORE_THE_CALL)
def test_refused_arguments_leave_the_rpc_unused(
    local: LocalTaskQueue, call: Callable[[AddResult[Any]], object], error: type[Exception]
) -> None:
    """Arguments refused before the call raise at once; the rpc stays IDLE and can be used."""
    recorder = Recorder()
    rpc = recorder.rpc = taskqueue.create_rpc(callback=recorder)
    with pytest.raises(error):
        call(rpc)
    assert rpc.state == AddResult.IDLE
    assert recorder.calls == []
    assert Queue("mail").add_async(Task(url="/a", name="ok"), rpc=rpc) is rpc
    assert rpc.get_result().name == "ok"
    assert len(recorder.calls) == 1


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(lambda rpc: rpc.wait(), id="wait()"),
        pytest.param(lambda rpc: rpc.check_success(), id="check_success()"),
        pytest.param(lambda rpc: rpc.get_result(), id="get_result()"),
        pytest.param(_await, id="await"),
    ],
)
def test_unused_rpc_cannot_be_waited_on(use: Callable[[AddResult[Any]], object]) -> None:
    """Waiting on an rpc no call has used is an AssertionError, as on App Engine."""
    rpc = taskqueue.create_rpc(callback=lambda: None)
    with pytest.raises(AssertionError, match="no call has been made"):
        use(rpc)
    assert (rpc.state, rpc.done()) == (AddResult.IDLE, False)


@pytest.mark.parametrize(
    "rpc",
    [
        pytest.param(object(), id="an object"),
        pytest.param(5, id="a number"),
        pytest.param(lambda: None, id="a function"),
    ],
)
def test_rpc_must_come_from_create_rpc(local: LocalTaskQueue, rpc: Any) -> None:
    """Anything else given as rpc= is a TypeError naming create_rpc(); nothing is added."""
    task = Task(url="/a")
    with pytest.raises(TypeError, match="create_rpc"):
        Queue("mail").add_async(task, rpc=rpc)
    assert not task.was_enqueued
    assert Queue("mail").fetch_statistics().tasks == 0


# -- create_rpc(deadline, callback) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("deadline", "error"),
    [
        pytest.param(0, taskqueue.InvalidDeadlineError, id="0"),
        pytest.param(-1, taskqueue.InvalidDeadlineError, id="-1"),
        pytest.param(-0.5, taskqueue.InvalidDeadlineError, id="-0.5"),
        pytest.param(float("nan"), taskqueue.InvalidDeadlineError, id="NaN"),
        pytest.param(float("-inf"), taskqueue.InvalidDeadlineError, id="-inf"),
        pytest.param("5", TypeError, id="text"),
        pytest.param(b"5", TypeError, id="bytes"),
        pytest.param(True, TypeError, id="a bool"),
        pytest.param([5], TypeError, id="a list"),
    ],
)
def test_bad_deadline_is_refused(deadline: Any, error: type[Exception]) -> None:
    """A deadline that is not a number above 0 is refused as App Engine refused it."""
    with pytest.raises(error, match="deadline"):
        taskqueue.create_rpc(deadline=deadline)


@pytest.mark.parametrize(
    ("deadline", "kept"),
    [
        pytest.param(None, None, id="none"),
        pytest.param(5, 5.0, id="5"),
        pytest.param(0.001, 0.001, id="1 ms"),
        pytest.param(10**9, 1e9, id="a billion"),
    ],
)
def test_deadline_is_kept(local: LocalTaskQueue, deadline: Any, kept: float | None) -> None:
    """A good deadline is kept as rpc.deadline, also after the (local, instant) call."""
    rpc = taskqueue.create_rpc(deadline=deadline)
    assert rpc.deadline == kept
    Queue("mail").add_async(Task(url="/a"), rpc=rpc).get_result()
    assert rpc.deadline == kept


def _done(value: list[str | taskqueue.Error]) -> concurrent.futures.Future[list[Any]]:
    future: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
    future.set_result(value)
    return future


class _TasksOnly(LocalTaskQueue):
    """A custom backend written before rpc deadlines: ``enqueue_async(tasks)``."""

    received: list[dict[str, Any]]

    def enqueue_async(self, tasks: Any) -> concurrent.futures.Future[list[Any]]:
        self.received.append({})
        return _done(self.enqueue(tasks))


class _KeywordDeadline(LocalTaskQueue):
    """A custom backend that takes ``enqueue_async(tasks, *, deadline=None)``."""

    received: list[dict[str, Any]]

    def enqueue_async(
        self, tasks: Any, *, deadline: float | None = None
    ) -> concurrent.futures.Future[list[Any]]:
        self.received.append({"deadline": deadline})
        return _done(self.enqueue(tasks))


class _AnyKeywords(LocalTaskQueue):
    """A custom backend that takes ``enqueue_async(tasks, **options)``."""

    received: list[dict[str, Any]]

    def enqueue_async(self, tasks: Any, **options: Any) -> concurrent.futures.Future[list[Any]]:
        self.received.append(options)
        return _done(self.enqueue(tasks))


@pytest.mark.parametrize(
    ("backend", "deadline", "received"),
    [
        pytest.param(_TasksOnly, 5, [{}, {}], id="enqueue_async(tasks), deadline 5"),
        pytest.param(_TasksOnly, None, [{}, {}], id="enqueue_async(tasks), no deadline"),
        pytest.param(
            _KeywordDeadline,
            5,
            [{"deadline": 5.0}] * 2,
            id="enqueue_async(tasks, *, deadline), deadline 5",
        ),
        pytest.param(
            _KeywordDeadline,
            None,
            [{"deadline": None}] * 2,
            id="enqueue_async(tasks, *, deadline), no deadline",
        ),
        pytest.param(
            _AnyKeywords, 5, [{"deadline": 5.0}] * 2, id="enqueue_async(tasks, **options)"
        ),
    ],
)
def test_custom_backend_gets_the_deadline_it_takes(
    tmp_path: Path, backend: type[Any], deadline: float | None, received: list[dict[str, Any]]
) -> None:
    """An rpc deadline goes to a custom enqueue_async only if it takes one; the add works."""
    from taskhandler.taskqueue import _enqueue

    queue = backend(_ok_app, db=tmp_path / "q.sqlite3", clock=ManualClock(NOW))
    queue.received = []
    with queue, taskqueue.use(queue):
        for name in ("c1", "c2"):
            rpc = taskqueue.create_rpc(deadline=deadline)
            task = Queue("default").add_async(Task(url="/a", name=name), rpc=rpc).get_result()
            assert (task.name, task.was_enqueued) == (name, True)
    assert queue.received == received
    if deadline is not None:  # asked once, kept by function
        assert _enqueue._deadline_accepted[backend.enqueue_async] is (backend is not _TasksOnly)


@pytest.mark.parametrize("callback", [5, "f", object()], ids=["a number", "text", "an object"])
def test_callback_must_be_callable(callback: Any) -> None:
    """A callback that cannot be called is refused at once, not at the first wait."""
    with pytest.raises(TypeError, match="callback"):
        taskqueue.create_rpc(callback=callback)


def test_create_rpc_is_public() -> None:
    """create_rpc is exported where App Engine code imports it from."""
    assert "create_rpc" in taskqueue.__all__
    rpc = taskqueue.create_rpc()
    assert isinstance(rpc, taskqueue.AddResult)
    assert (rpc.deadline, rpc.callback, rpc.state) == (None, None, AddResult.IDLE)


# -- the same story on App Engine's library ---------------------------------------------------


def rpc_story(m: Any) -> list[Any]:
    """create_rpc and rpc= step by step: states, callbacks, re-use, refusals, results."""
    seen: list[Any] = []

    def attempt(step: str, fn: Callable[[], Any]) -> None:
        try:
            seen.append((step, "ok", fn()))
        except Exception as exc:
            seen.append((step, "error", type(exc).__name__))

    waited: list[str] = []
    rpc = m.create_rpc(deadline=5, callback=lambda: waited.append(threading.current_thread().name))
    seen.append(("new", rpc.state, rpc.deadline))
    attempt("wait before a call", rpc.wait)
    returned = m.Queue("default").add_async(m.Task(url="/a", name="n1"), rpc=rpc)
    seen.append(("the call returns the rpc", returned is rpc, list(waited)))
    attempt(
        "a second call with it",
        lambda: m.Queue("default").add_async(m.Task(url="/b", name="n2"), rpc=rpc),
    )
    _wait_in_thread(rpc, "waiter")
    seen.append(("waited in a thread", list(waited), rpc.state))
    task = rpc.get_result()
    seen.append(("result", task.name, task.was_enqueued, list(waited)))
    seen.append(("n2 was never added", m.Queue("default").delete_tasks_by_name("n2").was_deleted))

    failed: list[int] = []
    rpc = m.create_rpc(callback=lambda: failed.append(1))
    m.Queue("no-such-queue").add_async(m.Task(url="/a"), rpc=rpc)
    rpc.wait()
    attempt("a refused call's result", rpc.get_result)
    seen.append(("its callback ran", len(failed)))

    rpc = m.create_rpc()
    attempt(
        "a name twice",
        lambda: m.Queue("default").add_async(
            [m.Task(url="/a", name="d"), m.Task(url="/b", name="d")], rpc=rpc
        ),
    )
    attempt(
        "transactional outside a transaction",
        lambda: m.Queue("default").add_async(m.Task(url="/a"), transactional=True, rpc=rpc),
    )
    seen.append(("still unused", rpc.state))
    m.Queue("default").add_async(m.Task(url="/a", name="d"), rpc=rpc)
    seen.append(("then used", rpc.get_result().name))

    for deadline in (0, -1, "5", 0.5):
        attempt(f"deadline {deadline!r}", lambda d=deadline: m.create_rpc(deadline=d).deadline)

    box: list[str] = []
    reader = m.create_rpc()
    reader.callback = lambda: box.append(reader.get_result().name)
    m.Queue("default").add_async(m.Task(url="/a", name="cb"), rpc=reader)
    reader.wait()
    seen.append(("a callback reads the result", box))

    def boom() -> None:
        raise ValueError("callback")

    rpc = m.create_rpc(callback=boom)
    m.Queue("default").add_async(m.Task(url="/a", name="boom"), rpc=rpc)
    attempt("a callback raises", lambda: rpc.get_result().name)
    attempt("the next get_result", lambda: rpc.get_result().name)

    q = m.Queue("pull-queue")
    q.add(m.Task(payload="p", method="PULL", name="p1"))
    rpc = m.create_rpc()
    seen.append(("lease", q.lease_tasks_async(60, 10, rpc=rpc) is rpc))
    seen.append(("leased", [(t.name, t.retry_count) for t in rpc.get_result()]))
    rpc = m.create_rpc()
    seen.append(("delete", q.delete_tasks_by_name_async("p1", rpc=rpc) is rpc))
    seen.append(("deleted", rpc.get_result().was_deleted))
    rpc = m.create_rpc()
    seen.append(("statistics", m.QueueStatistics.fetch_async([q], rpc=rpc) is rpc))
    seen.append(("counted", [s.tasks for s in rpc.get_result()]))
    return seen


RECORDED_RPC_STORY = [
    ("new", 0, 5),
    ("wait before a call", "error", "AssertionError"),
    ("the call returns the rpc", True, []),
    ("a second call with it", "error", "AssertionError"),
    ("waited in a thread", ["waiter"], 2),
    ("result", "n1", True, ["waiter"]),
    ("n2 was never added", False),
    ("a refused call's result", "error", "UnknownQueueError"),
    ("its callback ran", 1),
    ("a name twice", "error", "DuplicateTaskNameError"),
    ("transactional outside a transaction", "error", "BadTransactionStateError"),
    ("still unused", 0),
    ("then used", "d"),
    ("deadline 0", "error", "InvalidDeadlineError"),
    ("deadline -1", "error", "InvalidDeadlineError"),
    ("deadline '5'", "error", "TypeError"),
    ("deadline 0.5", "ok", 0.5),
    ("a callback reads the result", ["cb"]),
    ("a callback raises", "error", "ValueError"),
    ("the next get_result", "ok", "boom"),
    ("lease", True),
    ("leased", [("p1", 1)]),
    ("delete", True),
    ("deleted", True),
    ("statistics", True),
    ("counted", [0]),
]


def test_rpc_story_matches_recorded(tmp_path: Path) -> None:
    """taskhandler on a LocalTaskQueue tells the recorded story."""
    queues = [QueueConfig("default"), QueueConfig("pull-queue", mode="pull")]
    db = tmp_path / "q.sqlite3"
    with (
        LocalTaskQueue(_ok_app, db=db, clock=ManualClock(NOW), queues=queues) as q,
        taskqueue.use(q),
    ):
        assert rpc_story(taskqueue) == RECORDED_RPC_STORY


def test_rpc_story_matches_app_engine(request: pytest.FixtureRequest) -> None:
    """App Engine's library on its service stub tells the same story."""
    google: ModuleType = request.getfixturevalue("app_engine_stub")
    with warnings.catch_warnings():  # its transaction check warns of its own deprecations
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        story = rpc_story(google)
    assert story == RECORDED_RPC_STORY


# -- CloudTasksBackend: the call in flight, and the deadline -----------------------------------


@pytest.fixture
def cloud() -> Iterator[Any]:
    """A ``FakeCloudTasks`` that records the gRPC deadline each CreateTask arrived with."""
    pytest.importorskip("google.cloud.tasks_v2", reason="the cloudtasks extra is not installed")
    from tests.test_cloudtasks import FakeCloudTasks, serving

    class Timed(FakeCloudTasks):
        def __init__(self) -> None:
            super().__init__()
            self.time_remaining: list[float | None] = []
            self.arrived = threading.Event()

        def create_task(self, request: Any, context: Any) -> Any:
            self.time_remaining.append(context.time_remaining())
            self.arrived.set()
            return super().create_task(request, context)

    with serving(Timed()) as pair:
        yield pair


def _cloud_backend(client: Any, **kwargs: Any) -> Any:
    from taskhandler.taskqueue import CloudTasksBackend
    from tests.test_cloudtasks import LOCATION, PROJECT

    return CloudTasksBackend(PROJECT, LOCATION, client=client, clock=ManualClock(NOW), **kwargs)


def _created(service: Any) -> list[str]:
    return [str(request.task.name).rsplit("/", 1)[-1] for request in service.created]


def test_cloud_tasks_callback_waits_for_the_waiter(cloud: Any) -> None:
    """In flight the rpc is RUNNING; completing in a worker thread does not run the callback."""
    service, client = cloud
    with _cloud_backend(client) as backend, taskqueue.use(backend):
        service.gate.clear()
        recorder = Recorder()
        rpc = recorder.rpc = taskqueue.create_rpc(deadline=WAIT, callback=recorder)
        Queue("mail").add_async(Task(url="/a", name="held"), rpc=rpc)
        assert service.arrived.wait(WAIT)
        assert (rpc.state, rpc.done()) == (AddResult.RUNNING, False)
        service.gate.set()
        limit = time.monotonic() + WAIT
        while not rpc.done() and time.monotonic() < limit:
            time.sleep(0.01)
        assert rpc.state == AddResult.FINISHING
        assert recorder.calls == []
        assert rpc.get_result().was_enqueued
        assert recorder.calls == [("MainThread", True, AddResult.FINISHING)]
        assert _created(service) == ["held"]


@pytest.mark.parametrize(
    ("timeout", "deadline", "bound"),
    [
        pytest.param(30.0, None, (5.0, 30.5), id="no deadline: the backend's timeout"),
        pytest.param(30.0, 2.0, (0.0, 2.5), id="deadline 2 s under a 30 s timeout"),
        pytest.param(3.0, 60.0, (0.0, 3.5), id="deadline 60 s over a 3 s timeout"),
    ],
)
def test_cloud_tasks_call_carries_the_deadline(
    cloud: Any, timeout: float, deadline: float | None, bound: tuple[float, float]
) -> None:
    """CreateTask reaches Cloud Tasks with a gRPC deadline no later than the rpc's.

    The bounds allow half a second over: gRPC sends the deadline rounded up, so the server
    may see a little more than was set.
    """
    service, client = cloud
    with _cloud_backend(client, timeout=timeout) as backend, taskqueue.use(backend):
        rpc = taskqueue.create_rpc(deadline=deadline)
        task = Queue("mail").add_async(Task(url="/a"), rpc=rpc).get_result()
        assert task.was_enqueued
    [remaining] = service.time_remaining
    assert remaining is not None
    assert bound[0] < remaining <= bound[1]


def test_cloud_tasks_held_call_fails_at_the_deadline(cloud: Any) -> None:
    """A CreateTask not answered by the deadline ends with TransientError, retries included."""
    service, client = cloud
    with _cloud_backend(client, timeout=WAIT) as backend, taskqueue.use(backend):
        service.gate.clear()
        recorder = Recorder()
        rpc = recorder.rpc = taskqueue.create_rpc(deadline=0.5, callback=recorder)
        task = Task(url="/a", name="late")
        Queue("mail").add_async(task, rpc=rpc)
        with pytest.raises(taskqueue.TransientError):
            rpc.get_result()
        assert not task.was_enqueued
        assert len(recorder.calls) == 1
        assert all(r is not None and r <= 1.0 for r in service.time_remaining)  # see above
        service.gate.set()


def test_cloud_tasks_call_waiting_for_a_worker_past_its_deadline(cloud: Any) -> None:
    """A call still waiting for the backend's one worker when its deadline passes is not made."""
    service, client = cloud
    with _cloud_backend(client, max_workers=1) as backend, taskqueue.use(backend):
        service.gate.clear()
        first = Queue("mail").add_async(Task(url="/a", name="first"))
        assert service.arrived.wait(WAIT)
        rpc = taskqueue.create_rpc(deadline=0.2)
        Queue("mail").add_async(Task(url="/b", name="second"), rpc=rpc)
        passed = time.monotonic() + 0.3
        while time.monotonic() < passed:  # let the deadline pass while the worker is busy
            time.sleep(0.05)
        service.gate.set()
        assert first.get_result().name == "first"
        with pytest.raises(taskqueue.TransientError, match="deadline"):
            rpc.get_result()
    assert _created(service) == ["first"]


@pytest.mark.parametrize(
    ("deadline", "cut"),
    [
        pytest.param(None, None, id="no deadline: the retry's own 30 s"),
        pytest.param(2.0, 2.0, id="deadline 2 s: retries stop by then"),
    ],
)
def test_cloud_tasks_retries_stop_at_the_deadline(
    cloud: Any, deadline: float | None, cut: float | None
) -> None:
    """The retry of CreateTask is given the time left before the deadline as its limit."""
    from google.api_core import retry as api_retry

    limits: list[float] = []

    class Recording(api_retry.Retry):
        def with_timeout(self, timeout: float) -> Any:
            limits.append(timeout)
            return super().with_timeout(timeout)

    client = cloud[1]
    with _cloud_backend(client, retry=Recording(timeout=30.0)) as backend, taskqueue.use(backend):
        rpc = taskqueue.create_rpc(deadline=deadline)
        assert Queue("mail").add_async(Task(url="/a"), rpc=rpc).get_result().was_enqueued
    if cut is None:
        assert limits == []
    else:
        [limit] = limits
        assert 0 < limit <= cut


@pytest.mark.parametrize(
    ("deadline", "error"),
    [
        pytest.param(0, taskqueue.InvalidDeadlineError, id="0"),
        pytest.param("1", TypeError, id="text"),
    ],
)
def test_cloud_tasks_enqueue_async_checks_its_deadline(
    cloud: Any, deadline: Any, error: type[Exception]
) -> None:
    """CloudTasksBackend.enqueue_async refuses a deadline that is not a number above 0."""
    from taskhandler.taskqueue import NewTask

    service, client = cloud
    record = NewTask("mail", None, "POST", "/a", (), b"", NOW, None, None)
    with _cloud_backend(client) as backend, pytest.raises(error):
        backend.enqueue_async([record], deadline=deadline)
    assert service.created == []


# -- CloudTasksBackend: a retry meets ALREADY_EXISTS, and the task is read back ---------------
#
# The first CreateTask commits the task but its answer is lost (UNAVAILABLE), so the retry
# meets ALREADY_EXISTS and GetTask tells whether the queued task is this request. When GetTask
# cannot tell, the add may have created the task: TransientError, never another's name.


@pytest.fixture
def read_back() -> Iterator[Any]:
    """A ``FakeCloudTasks`` whose GetTask answers as ``service.get`` says."""
    pytest.importorskip("google.cloud.tasks_v2", reason="the cloudtasks extra is not installed")
    import grpc

    from tests.test_cloudtasks import FakeCloudTasks, serving

    class ReadBack(FakeCloudTasks):
        def __init__(self) -> None:
            super().__init__()
            self.get = "answer"
            self.gets: list[str] = []
            self.release = threading.Event()

        def get_task(self, request: Any, context: Any) -> Any:
            self.gets.append(request.name.rsplit("/", 1)[-1])
            if self.get == "unavailable":  # retried, as the client retries GetTask
                context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: GetTask unavailable")
            if self.get == "internal":  # not retried
                context.abort(grpc.StatusCode.INTERNAL, "scripted: GetTask failed")
            if self.get == "hold":  # until after the caller's deadline
                self.release.wait(WAIT)
            if self.get == "finished":  # the task ran and finished before GetTask came
                context.abort(grpc.StatusCode.NOT_FOUND, "Requested entity was not found.")
            return super().get_task(request, context)

    service = ReadBack()
    try:
        with serving(service) as pair:
            yield pair
    finally:
        service.release.set()


TRANSIENT = taskqueue.TransientError


@pytest.mark.parametrize(
    ("get", "other", "deadline", "error", "once"),
    [
        pytest.param("answer", False, None, None, True, id="our task, no rpc deadline"),
        pytest.param("answer", False, WAIT, None, True, id="our task, rpc deadline"),
        pytest.param(
            "answer",
            True,
            WAIT,
            taskqueue.TaskAlreadyExistsError,
            True,
            id="another request's task",
        ),
        pytest.param(
            "finished",
            False,
            WAIT,
            taskqueue.TombstonedTaskError,
            True,
            id="no task queued by then",
        ),
        pytest.param("internal", False, None, TRANSIENT, True, id="GetTask fails, no deadline"),
        pytest.param("internal", False, WAIT, TRANSIENT, True, id="GetTask fails, rpc deadline"),
        pytest.param(
            "unavailable", False, 1.0, TRANSIENT, False, id="GetTask retried to the rpc deadline"
        ),
        pytest.param("hold", False, 1.0, TRANSIENT, True, id="GetTask outlasts the rpc deadline"),
    ],
)
def test_cloud_tasks_retry_meets_already_exists(
    read_back: Any,
    get: str,
    other: bool,
    deadline: float | None,
    error: type[Exception] | None,
    once: bool,
) -> None:
    """After a lost answer, ALREADY_EXISTS is our task, another's, or TransientError if unknown."""
    service, client = read_back
    service.get = get
    with _cloud_backend(client) as backend, taskqueue.use(backend):
        if other:
            Queue("mail").add(Task(url="/other", name="n-1"))
            service.refuse = 1  # the first try fails unanswered; the retry meets the name
        else:
            service.lose_answer = 1  # the first try creates it; its answer is lost
        rpc = taskqueue.create_rpc(deadline=deadline)
        task = Task(url="/a", name="n-1")
        Queue("mail").add_async(task, rpc=rpc)
        if error is None:
            assert rpc.get_result() is task
            assert task.was_enqueued
        else:
            with pytest.raises(error) as info:
                rpc.get_result()
            assert not task.was_enqueued
            if error is taskqueue.TransientError:
                assert "may have been created" in str(info.value)
    assert _created(service)[-2:] == ["n-1", "n-1"]
    assert service.gets[:1] == ["n-1"]
    assert (len(service.gets) == 1) is once  # one GetTask tells, else retried to the deadline


class _LosesTheFirstAnswer:
    """A Cloud Tasks client stand-in (the review's): the first CreateTask creates the task but
    its answer is lost; the second answers ALREADY_EXISTS as the time given to it runs out,
    so no time is left before the rpc deadline to read the task back."""

    def __init__(self) -> None:
        self.tasks: dict[str, Any] = {}
        self.calls = 0
        self.gets = 0

    def create_task(self, parent: str, task: Any, timeout: float) -> Any:
        from google.api_core import exceptions

        self.calls += 1
        if self.calls == 1:
            self.tasks[task.name] = task
            raise exceptions.DeadlineExceeded("answer lost")
        time.sleep(timeout)
        raise exceptions.AlreadyExists("Requested entity already exists")

    def get_task(self, request: Any, timeout: float, retry: Any) -> Any:
        self.gets += 1
        return self.tasks[request["name"]]

    def queue_path(self, project: str, location: str, queue: str) -> str:
        return f"projects/{project}/locations/{location}/queues/{queue}"


@pytest.mark.parametrize(
    ("timeout", "deadline", "gets", "error"),
    [
        pytest.param(0.2, None, 1, None, id="no rpc deadline: read back, our task"),
        pytest.param(WAIT, 0.5, 0, taskqueue.TransientError, id="rpc deadline 0.5 s: no time left"),
    ],
)
def test_cloud_tasks_no_time_left_to_read_back(
    cloud: Any, timeout: float, deadline: float | None, gets: int, error: type[Exception] | None
) -> None:
    """With no time left to check, a task our lost answer created is not another's name."""
    client = _LosesTheFirstAnswer()
    with _cloud_backend(client, timeout=timeout) as backend, taskqueue.use(backend):
        rpc = taskqueue.create_rpc(deadline=deadline)
        Queue("mail").add_async(Task(url="/a", name="mine"), rpc=rpc)
        if error is None:
            assert rpc.get_result().was_enqueued
        else:
            with pytest.raises(error, match="may have been created"):
                rpc.get_result()
    assert (client.calls, client.gets) == (2, gets)


class _RetriesOnce:
    """A retry= that is a plain wrapper (no ``with_timeout``): a second try after UNAVAILABLE."""

    def __init__(self) -> None:
        self.wrapped = 0

    def __call__(self, func: Callable[[], Any]) -> Callable[[], Any]:
        from google.api_core import exceptions

        self.wrapped += 1

        def call() -> Any:
            try:
                return func()
            except exceptions.ServiceUnavailable:
                return func()

        return call


@pytest.mark.parametrize("deadline", [None, WAIT], ids=["no rpc deadline", "rpc deadline"])
def test_cloud_tasks_retry_without_with_timeout(cloud: Any, deadline: float | None) -> None:
    """A retry= without with_timeout is used as given, also under an rpc deadline."""
    service, client = cloud
    retry = _RetriesOnce()
    service.refuse = 1
    with _cloud_backend(client, retry=retry) as backend, taskqueue.use(backend):
        rpc = taskqueue.create_rpc(deadline=deadline)
        assert Queue("mail").add_async(Task(url="/a", name="r1"), rpc=rpc).get_result().name == "r1"
    assert (retry.wrapped, _created(service)) == (1, ["r1", "r1"])


@pytest.mark.parametrize("retry", [True, 5, "Retry()"], ids=["True", "a number", "text"])
def test_cloud_tasks_retry_must_be_callable(cloud: Any, retry: Any) -> None:
    """A retry= that cannot wrap a call is a ConfigError naming retry at construction."""
    from taskhandler.exceptions import ConfigError

    with pytest.raises(ConfigError, match="retry"):
        _cloud_backend(cloud[1], retry=retry)


# -- end to end: the gcloud-tasks-emulator ------------------------------------------------------


@pytest.fixture
def emulated(request: pytest.FixtureRequest) -> tuple[Any, Path]:
    """The emulator's client and its deliveries' folder (test_cloudtasks_emulator's fixtures)."""
    if deliveries is None:
        pytest.skip("the cloudtasks extra is not installed")
    return request.getfixturevalue("client"), request.getfixturevalue("workdir")


ROUND_TRIPS = [
    pytest.param(
        lambda queue_id, rpc: Queue(queue_id).add_async(
            [
                Task(url="/tasks/count", params={"amount": "2"}, name=f"two-{uuid.uuid4().hex}"),
                Task(url="/tasks/count", params={"amount": "3"}),
            ],
            False,
            rpc,
        ),
        None,
        id="Queue.add_async([tasks])",
    ),
    pytest.param(
        lambda queue_id, rpc: taskqueue.add_async(
            url="/tasks/count", params={"amount": "5"}, queue_name=queue_id, rpc=rpc
        ),
        None,
        id="taskqueue.add_async",
    ),
    pytest.param(
        lambda queue_id, rpc: Task(url="/tasks/count").add_async("never-created", False, rpc),
        taskqueue.InvalidQueueError,  # the emulator's FAILED_PRECONDITION for a missing queue
        id="Task.add_async: no such queue",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("call", "error"), ROUND_TRIPS)
def test_emulator_round_trip(
    emulated: tuple[Any, Path],
    call: Callable[[str, AddResult[Any]], object],
    error: type[Exception] | None,
) -> None:
    """add_async(rpc=...) through the emulator: the callback once, then the tasks delivered."""
    from google.cloud import tasks_v2

    from taskhandler.taskqueue import CloudTasksBackend

    emulator_client, workdir = emulated
    queue_id = f"rpc-{uuid.uuid4().hex[:10]}"
    emulator_client.create_queue(
        parent=PARENT, queue=tasks_v2.Queue(name=f"{PARENT}/queues/{queue_id}")
    )
    with (
        CloudTasksBackend(PROJECT, LOCATION, client=emulator_client) as backend,
        taskqueue.use(backend),
    ):
        recorder = Recorder()
        rpc = recorder.rpc = taskqueue.create_rpc(deadline=WAIT, callback=recorder)
        assert call(queue_id, rpc) is rpc
        if error is not None:
            with pytest.raises(error):
                rpc.get_result()
            assert recorder.calls == [("MainThread", True, AddResult.FINISHING)]
            return
        tasks = _listed(rpc.get_result())
        assert recorder.calls == [("MainThread", True, AddResult.FINISHING)]
        assert all(task.was_enqueued and task.queue_name == queue_id for task in tasks)
    found = deliveries(workdir, queue_id, len(tasks))
    assert sorted(entry["context"]["task_name"] for entry in found) == sorted(
        task.name for task in tasks
    )
    assert sorted(entry["amount"] for entry in found) == sorted(
        int(task.extract_params()["amount"]) for task in tasks
    )
