"""taskhandler.taskqueue: App Engine's task API and its rules, against a real in-memory queue."""

from __future__ import annotations

import datetime
import importlib
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from taskhandler import taskqueue
from taskhandler.taskqueue import LocalTaskQueue, ManualClock, QueueConfig, Task

NOW = 1_700_000_000.0
DAY = 86_400.0


def _ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def queue(clock: ManualClock) -> Iterator[LocalTaskQueue]:
    q = LocalTaskQueue(
        _ok_app,
        clock=clock,
        queues=[
            QueueConfig("mail", target="worker"),
            QueueConfig("pulled", mode="pull"),
        ],
    )
    with taskqueue.use(q), q:
        yield q


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


# -- add(): every way a call can be refused ---------------------------------------------------

ADD_ERRORS = [
    pytest.param({"name": "a.b"}, taskqueue.InvalidTaskNameError, id="name with a dot"),
    pytest.param({"name": "x" * 501}, taskqueue.InvalidTaskNameError, id="name of 501 characters"),
    pytest.param({"name": "tâche"}, taskqueue.InvalidTaskNameError, id="non-ASCII name"),
    pytest.param({"url": "http://example.com/x"}, taskqueue.InvalidUrlError, id="absolute url"),
    pytest.param({"url": "tasks/x"}, taskqueue.InvalidUrlError, id="url without leading slash"),
    pytest.param({"url": "/x#frag"}, taskqueue.InvalidUrlError, id="url with a fragment"),
    pytest.param({"url": "/" + "x" * 2083}, taskqueue.InvalidUrlError, id="url over 2083 chars"),
    pytest.param({"url": "/x?a=1"}, taskqueue.InvalidTaskError, id="POST url with a query string"),
    pytest.param(
        {"url": "/x", "params": {"a": "1"}, "payload": "b"},
        taskqueue.InvalidTaskError,
        id="POST params and payload",
    ),
    pytest.param(
        {"url": "/x", "method": "GET", "payload": "b"},
        taskqueue.InvalidTaskError,
        id="GET with a payload",
    ),
    pytest.param(
        {"url": "/x", "method": "DELETE", "payload": "b"},
        taskqueue.InvalidTaskError,
        id="DELETE with a payload",
    ),
    pytest.param(
        {"url": "/x?a=1", "method": "GET", "params": {"b": "2"}},
        taskqueue.InvalidTaskError,
        id="GET with query string and params",
    ),
    pytest.param({"method": "PATCH"}, taskqueue.InvalidTaskError, id="unknown method"),
    pytest.param(
        {"method": "PULL", "payload": "x"},
        taskqueue.InvalidQueueModeError,
        id="pull task to a push queue",
    ),
    pytest.param(
        {"countdown": 5, "eta": _utc(NOW + 5)},
        taskqueue.InvalidTaskError,
        id="countdown and eta together",
    ),
    pytest.param({"countdown": "soon"}, taskqueue.InvalidTaskError, id="countdown not a number"),
    pytest.param({"eta": NOW + 5}, taskqueue.InvalidTaskError, id="eta not a datetime"),
    pytest.param({"eta": _utc(NOW + 31 * DAY)}, taskqueue.InvalidEtaError, id="eta 31 days ahead"),
    pytest.param(
        {"countdown": 30 * DAY + 1}, taskqueue.InvalidEtaError, id="countdown past 30 days"
    ),
    pytest.param(
        {"payload": b"x" * (100 * 1024)}, taskqueue.TaskTooLargeError, id="task over 100 KiB"
    ),
    pytest.param({"payload": 12}, taskqueue.InvalidTaskError, id="payload of the wrong type"),
    pytest.param(
        {"target": "worker", "headers": {"Host": "x.example.com"}},
        taskqueue.InvalidTaskError,
        id="target and a Host header",
    ),
    pytest.param({"queue_name": "bad_name"}, taskqueue.InvalidQueueNameError, id="bad queue name"),
    pytest.param({"queue_name": "nope"}, taskqueue.UnknownQueueError, id="undeclared queue"),
    pytest.param({"queue_name": "pulled"}, taskqueue.InvalidQueueModeError, id="pull queue"),
    pytest.param(
        {"transactional": True}, taskqueue.BadTransactionStateError, id="transactional, no txn"
    ),
]


@pytest.mark.parametrize(("kwargs", "error"), ADD_ERRORS)
def test_add_refuses(queue: LocalTaskQueue, kwargs: dict[str, Any], error: type[Exception]) -> None:
    """add() raises App Engine's error class for each invalid call, and stores nothing."""
    with pytest.raises(error):
        taskqueue.add(**kwargs)
    assert queue.tasks("default") == []


def _too_many() -> None:
    taskqueue.Queue().add([Task(url="/x") for _ in range(101)])


def _duplicate_in_batch() -> None:
    taskqueue.Queue().add([Task(url="/x", name="same"), Task(url="/y", name="same")])


def _added_twice() -> None:
    task = taskqueue.add(url="/x")
    taskqueue.Queue().add(task)


def _live_name() -> None:
    taskqueue.add(url="/x", name="once")
    taskqueue.add(url="/x", name="once")


def _tombstoned_name(q: LocalTaskQueue) -> None:
    taskqueue.add(url="/x", name="once")
    q.run_until_idle(timeout=10)
    taskqueue.add(url="/x", name="once")


def _deleted_name(q: LocalTaskQueue) -> None:
    taskqueue.add(url="/x", name="gone", countdown=60)
    assert taskqueue.Queue().delete_tasks_by_name("gone").was_deleted
    taskqueue.add(url="/x", name="gone")


def _named_transactional() -> None:
    with taskqueue.transaction():
        taskqueue.add(url="/x", name="named", transactional=True)


def _six_transactional() -> None:
    with taskqueue.transaction():
        for _ in range(6):
            taskqueue.add(url="/x", transactional=True)


def _nested_transaction() -> None:
    with taskqueue.transaction(), taskqueue.transaction():
        pass


def _no_backend() -> None:
    with taskqueue.use(None):
        taskqueue.add(url="/x")


CALL_ERRORS = [
    pytest.param(lambda q: _too_many(), taskqueue.TooManyTasksError, id="101 tasks in one add"),
    pytest.param(
        lambda q: _duplicate_in_batch(), taskqueue.DuplicateTaskNameError, id="name twice in batch"
    ),
    pytest.param(lambda q: _added_twice(), taskqueue.BadTaskStateError, id="task object re-added"),
    pytest.param(lambda q: _live_name(), taskqueue.TaskAlreadyExistsError, id="live name reused"),
    pytest.param(_tombstoned_name, taskqueue.TombstonedTaskError, id="finished name reused"),
    pytest.param(_deleted_name, taskqueue.TombstonedTaskError, id="deleted name reused"),
    pytest.param(
        lambda q: _named_transactional(),
        taskqueue.InvalidTaskNameError,
        id="named transactional task",
    ),
    pytest.param(
        lambda q: _six_transactional(), taskqueue.TooManyTasksError, id="6 tasks in a transaction"
    ),
    pytest.param(
        lambda q: _nested_transaction(),
        taskqueue.BadTransactionStateError,
        id="nested transaction",
    ),
    pytest.param(lambda q: _no_backend(), taskqueue.Error, id="no queue installed"),
    pytest.param(
        lambda q: taskqueue.TaskRetryOptions(min_backoff_seconds=-1),
        taskqueue.InvalidTaskRetryOptionsError,
        id="negative backoff option",
    ),
    pytest.param(
        lambda q: taskqueue.TaskRetryOptions(min_backoff_seconds=5, max_backoff_seconds=1),
        taskqueue.InvalidTaskRetryOptionsError,
        id="max backoff below min",
    ),
]


@pytest.mark.parametrize(("call", "error"), CALL_ERRORS)
def test_queue_refuses(queue: LocalTaskQueue, call: Any, error: type[Exception]) -> None:
    """Batch, naming, transaction and backend rules raise App Engine's error classes."""
    with pytest.raises(error):
        call(queue)


def test_rule_tables_reach_every_error_class() -> None:
    """Every error class SPEC §9 lists is raised by at least one row of the rule tables."""
    spec = {
        "Error",
        "InvalidTaskError",
        "InvalidTaskNameError",
        "InvalidUrlError",
        "InvalidEtaError",
        "TaskTooLargeError",
        "TaskAlreadyExistsError",
        "TombstonedTaskError",
        "DuplicateTaskNameError",
        "BadTaskStateError",
        "UnknownQueueError",
        "InvalidQueueNameError",
        "BadTransactionStateError",
        "TooManyTasksError",
    }
    reached = {p.values[1].__name__ for p in ADD_ERRORS + CALL_ERRORS}
    assert spec <= reached


def test_error_hierarchy_matches_app_engine() -> None:
    """Catching App Engine's base classes catches the same errors as on App Engine."""
    assert issubclass(taskqueue.TaskAlreadyExistsError, taskqueue.InvalidTaskError)
    assert issubclass(taskqueue.TombstonedTaskError, taskqueue.InvalidTaskError)
    assert issubclass(taskqueue.InvalidQueueNameError, taskqueue.InvalidQueueError)
    assert issubclass(taskqueue.InvalidTaskError, taskqueue.Error)
    assert not issubclass(taskqueue.DuplicateTaskNameError, taskqueue.InvalidTaskError)


# -- what a valid call stores ---------------------------------------------------------------

STORED = [
    pytest.param(
        {"url": "/x", "params": {"a": "1", "b": ["2", "3"]}},
        ("POST", "/x", b"a=1&b=2&b=3", "application/x-www-form-urlencoded"),
        id="POST params form-encoded in the body",
    ),
    pytest.param(
        {"url": "/x", "params": {"a": "1"}, "method": "GET"},
        ("GET", "/x?a=1", b"", None),
        id="GET params in the query string",
    ),
    pytest.param(
        {"url": "/x?key=blue", "method": "get"},
        ("GET", "/x?key=blue", b"", None),
        id="GET url with its own query",
    ),
    pytest.param(
        {"url": "/x", "params": {"a": "1"}, "method": "DELETE"},
        ("DELETE", "/x?a=1", b"", None),
        id="DELETE params in the query string",
    ),
    pytest.param(
        {"url": "/x", "params": {"a": "1"}, "method": "HEAD"},
        ("HEAD", "/x?a=1", b"", None),
        id="HEAD params in the query string",
    ),
    pytest.param(
        {"url": "/x", "params": {"a": "1"}, "method": "PUT", "payload": b"raw"},
        ("PUT", "/x?a=1", b"raw", None),
        id="PUT payload in the body and params in the query",
    ),
    pytest.param(
        {"url": "/x", "payload": "{'key': 'blue'}"},
        ("POST", "/x", b"{'key': 'blue'}", "text/plain; charset=utf-8"),
        id="text payload as UTF-8 text/plain",
    ),
    pytest.param(
        {"url": "/x", "payload": b"\x00\x01", "headers": {"Content-Type": "application/x-raw"}},
        ("POST", "/x", b"\x00\x01", "application/x-raw"),
        id="bytes payload with the caller's content type",
    ),
    pytest.param({}, ("POST", "/_ah/queue/default", b"", None), id="default url"),
]


@pytest.mark.parametrize(("kwargs", "expected"), STORED)
def test_add_stores(
    queue: LocalTaskQueue, kwargs: dict[str, Any], expected: tuple[str, str, bytes, str | None]
) -> None:
    """A valid add() stores the method, URL, body and content type App Engine would send."""
    taskqueue.add(**kwargs)
    (stored,) = queue.tasks("default")
    content_type = dict((k.lower(), v) for k, v in stored.headers).get("content-type")
    assert (stored.method, stored.url, stored.payload, content_type) == expected


def test_default_url_names_the_queue(queue: LocalTaskQueue) -> None:
    """A task without url goes to /_ah/queue/<its queue>, query kept for GET."""
    taskqueue.add(queue_name="mail", method="GET", params={"to": "a"})
    assert [t.url for t in queue.tasks("mail")] == ["/_ah/queue/mail?to=a"]


def test_queue_target_overrides_task_target(queue: LocalTaskQueue) -> None:
    """A queue with a target sends every task there, whatever the task asked for."""
    taskqueue.add(url="/x", queue_name="mail", target="other")
    taskqueue.add(url="/x", target="other")
    assert [t.target for t in queue.tasks("mail")] == ["worker"]
    assert [t.target for t in queue.tasks("default")] == ["other"]


def test_reserved_headers_are_dropped(queue: LocalTaskQueue) -> None:
    """X-AppEngine-* and X-CloudTasks-* headers given by the caller are not stored."""
    taskqueue.add(
        url="/x",
        headers={
            "X-AppEngine-TaskName": "forged",
            "x_cloudtasks_queuename": "forged",
            "X-Trace": ["a", "b"],
        },
    )
    (stored,) = queue.tasks()
    assert stored.headers == (("X-Trace", "a"), ("X-Trace", "b"))


ETAS = [
    pytest.param({}, NOW, id="no eta: now"),
    pytest.param({"countdown": 90}, NOW + 90, id="countdown from the queue clock"),
    pytest.param({"countdown": -30}, NOW - 30, id="negative countdown: in the past"),
    pytest.param({"eta": _utc(NOW + 60)}, NOW + 60, id="aware eta"),
    pytest.param(
        {"eta": _utc(NOW + 60).replace(tzinfo=None)}, NOW + 60, id="naive eta read as UTC"
    ),
    pytest.param({"countdown": 30 * DAY}, NOW + 30 * DAY, id="exactly 30 days is allowed"),
]


@pytest.mark.parametrize(("kwargs", "eta"), ETAS)
def test_eta(queue: LocalTaskQueue, kwargs: dict[str, Any], eta: float) -> None:
    """countdown and eta set the ETA from the installed queue's clock."""
    task = taskqueue.add(url="/x", **kwargs)
    assert task.eta_posix == pytest.approx(eta)
    assert queue.tasks()[0].eta == _utc(task.eta_posix)


def test_add_fills_in_name_and_queue(queue: LocalTaskQueue) -> None:
    """add() returns the task with its generated name, queue and was_enqueued set."""
    task = taskqueue.add(url="/x", queue_name="mail")
    assert task.was_enqueued
    assert task.queue_name == "mail"
    assert task.name is not None
    assert [t.task_name for t in queue.tasks("mail")] == [task.name]


def test_batch_add_keeps_the_others_and_raises(queue: LocalTaskQueue) -> None:
    """A non-transactional batch stores every valid task and raises for the existing name."""
    taskqueue.add(url="/x", name="taken")
    batch = [Task(url="/a"), Task(url="/b", name="taken"), Task(url="/c")]
    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        taskqueue.Queue().add(batch)
    assert [t.was_enqueued for t in batch] == [True, False, True]
    assert sorted(t.url for t in queue.tasks()) == ["/a", "/c", "/x"]


def test_add_async_get_result(queue: LocalTaskQueue) -> None:
    """add_async returns an object whose get_result() gives the task, or raises the add's error."""
    rpc = taskqueue.Queue("mail").add_async(Task(url="/x", name="n1"))
    assert rpc.get_result().name == "n1"
    failed = taskqueue.add_async(url="/x", name="n1", queue_name="mail")
    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        failed.get_result()
    listed = taskqueue.Queue().add_async([Task(url="/a"), Task(url="/b")])
    assert [t.url for t in listed.get_result()] == ["/a", "/b"]


def test_empty_batch_adds_nothing(queue: LocalTaskQueue) -> None:
    """Queue.add([]) returns [] (App Engine's behaviour)."""
    assert taskqueue.Queue().add([]) == []
    assert queue.tasks() == []


def test_transaction_commits_on_success(queue: LocalTaskQueue) -> None:
    """Transactional tasks are stored when the block completes, not before."""
    with taskqueue.transaction():
        taskqueue.add(url="/a", transactional=True)
        taskqueue.Queue("mail").add([Task(url="/b")], transactional=True)
        taskqueue.add(url="/now")  # non-transactional: stored at once
        assert [t.url for t in queue.tasks()] == ["/now"]
    assert sorted(t.url for t in queue.tasks()) == ["/a", "/now"]
    assert [t.url for t in queue.tasks("mail")] == ["/b"]


def test_transaction_rolls_back_on_error(queue: LocalTaskQueue) -> None:
    """When the block raises, none of its transactional tasks is stored."""

    def block() -> None:
        with taskqueue.transaction():
            taskqueue.add(url="/a", transactional=True)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        block()
    assert queue.tasks() == []


def test_transaction_checks_queue_inside_the_block(queue: LocalTaskQueue) -> None:
    """An undeclared queue is refused at the add, inside the block."""
    with taskqueue.transaction():
        with pytest.raises(taskqueue.UnknownQueueError):
            taskqueue.add(url="/a", queue_name="nope", transactional=True)
        taskqueue.add(url="/b", transactional=True)
    assert [t.url for t in queue.tasks()] == ["/b"]


def test_use_as_context_manager_restores(queue: LocalTaskQueue) -> None:
    """`with taskqueue.use(other):` switches the backend for the block only."""
    other = LocalTaskQueue(_ok_app, clock=ManualClock(NOW))
    with other:
        with taskqueue.use(other):
            taskqueue.add(url="/inner")
        taskqueue.add(url="/outer")
        assert [t.url for t in other.tasks()] == ["/inner"]
    assert [t.url for t in queue.tasks()] == ["/outer"]


def test_delete_and_purge(queue: LocalTaskQueue) -> None:
    """Queue.delete_tasks and purge remove pending tasks; missing names are not deleted."""
    tasks = taskqueue.Queue().add([Task(url=f"/{i}") for i in range(3)])
    deleted = taskqueue.Queue().delete_tasks(tasks[0])
    assert deleted.was_deleted
    assert not taskqueue.Queue().delete_tasks_by_name("missing").was_deleted
    assert len(queue.tasks()) == 2
    taskqueue.Queue().purge()
    assert queue.tasks() == []


def test_extract_params() -> None:
    """Task.extract_params reads the body for POST and the query for GET; values are bytes."""
    with taskqueue.use(None):
        post = Task(url="/x", params={"a": "1", "b": ["2", "3"]})
        get = Task(url="/x?a=1&a=2", method="GET")
    assert post.extract_params() == {"a": b"1", "b": [b"2", b"3"]}
    assert get.extract_params() == {"a": [b"1", b"2"]}


# -- the same calls through App Engine's own library ----------------------------------------


def _google_taskqueue() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("google.appengine.api.taskqueue.taskqueue")
    except ImportError:
        pytest.skip("appengine-python-standard is not installed")


SAME_AS_APP_ENGINE = [
    pytest.param({"url": "/x", "params": {"a": "1", "b": ["2", "3"]}}, id="POST params"),
    pytest.param({"url": "/x", "params": {"a": "1"}, "method": "GET"}, id="GET params"),
    pytest.param({"url": "/x?key=blue", "method": "GET"}, id="GET query"),
    pytest.param({"url": "/x", "payload": "{'key': 'blue'}"}, id="text payload"),
    pytest.param({"url": "/x", "payload": b"raw", "method": "PUT"}, id="PUT payload"),
    pytest.param({"url": "/x", "params": {"a": "1"}, "method": "DELETE"}, id="DELETE params"),
    pytest.param({"url": "/x?a=1"}, id="POST with query"),
    pytest.param({"url": "/x", "params": {"a": "1"}, "payload": "p"}, id="params and payload"),
    pytest.param({"url": "/x", "method": "GET", "payload": "p"}, id="GET payload"),
    pytest.param({"url": "/x?a=1", "method": "GET", "params": {"b": 1}}, id="query and params"),
    pytest.param({"url": "x"}, id="relative url"),
    pytest.param({"url": "//host/x"}, id="network-path url"),
    pytest.param({"name": "bad name"}, id="bad name"),
    pytest.param({"name": "ok-name_1"}, id="good name"),
    pytest.param({"countdown": 1, "eta": _utc(NOW)}, id="countdown and eta"),
    pytest.param({"countdown": 40 * DAY}, id="countdown 40 days"),
    pytest.param({"method": "OPTIONS"}, id="OPTIONS"),
    pytest.param({"payload": b"x" * 102_400}, id="oversized payload"),
]


@pytest.mark.parametrize("kwargs", SAME_AS_APP_ENGINE)
def test_task_matches_app_engine_library(kwargs: dict[str, Any]) -> None:
    """Task(...) accepts and refuses what App Engine's Task does, with the same URL and body."""
    google = _google_taskqueue()

    def build(cls: Any) -> tuple[str, Any]:
        try:
            task = cls(**kwargs)
        except Exception as exc:
            return ("error", type(exc).__name__)
        payload = task.payload
        if isinstance(payload, str):
            payload = payload.encode()
        return ("ok", (task.method, task.url, payload or b"", task.name))

    with taskqueue.use(None):
        assert build(Task) == build(google.Task)
