"""Pull queues on LocalTaskQueue: App Engine's lease_tasks, lease_tasks_by_tag, modify_task_lease.

Real SQLite files and threads; time is a ManualClock, so lease expiry is reached by advancing
it, never by sleeping. The rules are App Engine's (``taskqueue.py`` and its service stub).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhandler import taskqueue
from taskhandler.taskqueue import (
    LocalTaskQueue,
    ManualClock,
    QueueConfig,
    RetryParameters,
    Task,
    TaskRetryOptions,
    load_queue_yaml,
)

NOW = 1_700_000_000.0
QUEUE_YAML = """\
queue:
- name: default
  rate: 100/s
- name: pull-queue
  mode: pull
- name: twice
  mode: pull
  retry_parameters:
    task_retry_limit: 2
"""


class Recorder:
    """A WSGI app that records the path of every request it gets."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.paths.append(str(environ["PATH_INFO"]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def queues(tmp_path: Path) -> dict[str, QueueConfig]:
    path = tmp_path / "queue.yaml"
    path.write_text(QUEUE_YAML)
    return load_queue_yaml(path)


@pytest.fixture
def app() -> Recorder:
    return Recorder()


@pytest.fixture
def queue(
    tmp_path: Path, app: Recorder, clock: ManualClock, queues: dict[str, QueueConfig]
) -> Iterator[LocalTaskQueue]:
    with (
        LocalTaskQueue(app, db=tmp_path / "q.sqlite3", queues=queues, clock=clock) as q,
        taskqueue.use(q),
    ):
        yield q


def pull(payload: str = "x", **kwargs: Any) -> Task:
    return Task(payload=payload, method="PULL", **kwargs)


# -- leasing ------------------------------------------------------------------------------


def test_lease_takes_the_oldest_and_hides_them_until_the_lease_ends(
    queue: LocalTaskQueue, clock: ManualClock
) -> None:
    """lease_tasks returns the oldest due tasks; others see them again only after the lease."""
    q = taskqueue.Queue("pull-queue")
    q.add([pull(f"n={n}", countdown=n) for n in range(3)])
    clock.advance(5)
    first = q.lease_tasks(60, 2)
    assert [(t.payload, t.retry_count, t.eta_posix) for t in first] == [
        (b"n=0", 1, NOW + 65),
        (b"n=1", 1, NOW + 65),
    ]
    assert all(t.queue_name == "pull-queue" and t.method == "PULL" for t in first)
    assert [t.payload for t in q.lease_tasks(60, 10)] == [b"n=2"]
    assert q.lease_tasks(60, 10) == []
    clock.advance(61)
    again = q.lease_tasks(60, 10)
    assert [(t.payload, t.retry_count) for t in again] == [(b"n=0", 2), (b"n=1", 2), (b"n=2", 2)]


def test_task_with_an_eta_is_not_leased_before_it(
    queue: LocalTaskQueue, clock: ManualClock
) -> None:
    """A pull task with a countdown is leasable only once its ETA has come."""
    q = taskqueue.Queue("pull-queue")
    q.add(pull(countdown=30))
    assert q.lease_tasks(10, 10) == []
    clock.advance(30)
    assert len(q.lease_tasks(10, 10)) == 1


# (tag of each task, oldest first), the tag asked for, the payloads expected
TAG_CASES = [
    pytest.param(["a", "b", None, "a"], "a", ["0", "3"], id="a named tag"),
    pytest.param(["a", "b", None, "a"], None, ["0", "3"], id="no tag: the oldest task's"),
    pytest.param(["b", "a", "a"], "a", ["1", "2"], id="a tag that is not the oldest"),
    pytest.param([None, "a", None], None, ["0", "2"], id="oldest untagged: untagged tasks"),
    pytest.param(["a", "a"], "zz", [], id="a tag no task has"),
    pytest.param([], None, [], id="an empty queue"),
]


@pytest.mark.parametrize(("tags", "tag", "expected"), TAG_CASES)
def test_lease_tasks_by_tag(
    queue: LocalTaskQueue,
    clock: ManualClock,
    tags: list[str | None],
    tag: str | None,
    expected: list[str],
) -> None:
    """lease_tasks_by_tag leases tasks of one tag: the one given, or the oldest task's."""
    q = taskqueue.Queue("pull-queue")
    for n, task_tag in enumerate(tags):
        q.add(pull(str(n), tag=task_tag))
        clock.advance(1)
    leased = q.lease_tasks_by_tag(30, 100, tag=tag)
    assert [t.payload for t in leased] == [e.encode() for e in expected]
    assert {t.tag for t in leased} <= ({tag} if tag else {tags[0]} if tags else set())


def test_lease_by_tag_respects_max_tasks_and_bytes_tags(queue: LocalTaskQueue) -> None:
    """A bytes tag is the same tag as its text; max_tasks bounds the batch."""
    q = taskqueue.Queue("pull-queue")
    q.add([pull(str(n), tag=b"counter") for n in range(5)])
    assert [t.payload for t in q.lease_tasks_by_tag(30, 2, tag="counter")] == [b"0", b"1"]
    assert [t.tag for t in q.lease_tasks_by_tag(30, 10, tag=b"counter")] == ["counter"] * 3


# -- arguments and modes ----------------------------------------------------------------------

ARGUMENT_CASES = [
    pytest.param({"lease_seconds": -1}, taskqueue.InvalidLeaseTimeError, id="negative lease"),
    pytest.param({"lease_seconds": 604_801}, taskqueue.InvalidLeaseTimeError, id="over a week"),
    pytest.param({"lease_seconds": float("nan")}, taskqueue.InvalidLeaseTimeError, id="NaN lease"),
    pytest.param({"lease_seconds": "10"}, TypeError, id="lease as text"),
    pytest.param({"max_tasks": 0}, taskqueue.InvalidMaxTasksError, id="zero tasks"),
    pytest.param({"max_tasks": 1001}, taskqueue.InvalidMaxTasksError, id="over 1000 tasks"),
    pytest.param({"max_tasks": 1.5}, TypeError, id="fractional max_tasks"),
    pytest.param({"deadline": 0}, taskqueue.InvalidDeadlineError, id="zero deadline"),
    pytest.param({"deadline": "5"}, TypeError, id="deadline as text"),
]


@pytest.mark.parametrize(("override", "error"), ARGUMENT_CASES)
@pytest.mark.parametrize("by_tag", [False, True], ids=["lease_tasks", "lease_tasks_by_tag"])
def test_lease_arguments_are_checked(
    queue: LocalTaskQueue, override: dict[str, Any], error: type[Exception], by_tag: bool
) -> None:
    """Out-of-range lease arguments raise App Engine's errors, and nothing is leased."""
    q = taskqueue.Queue("pull-queue")
    q.add(pull())
    args: dict[str, Any] = {"lease_seconds": 10, "max_tasks": 10, **override}
    with pytest.raises(error):
        (q.lease_tasks_by_tag if by_tag else q.lease_tasks)(**args)
    assert [t.retry_count for t in queue.tasks("pull-queue")] == [0]


def test_limits_themselves_are_allowed(queue: LocalTaskQueue) -> None:
    """A lease of exactly a week for exactly 1000 tasks is allowed, as is a zero lease."""
    q = taskqueue.Queue("pull-queue")
    q.add(pull())
    assert len(q.lease_tasks(taskqueue.MAX_LEASE_SECONDS, taskqueue.MAX_TASKS_PER_LEASE)) == 1
    q.add(pull())
    assert len(q.lease_tasks(0, 1)) == 1


MODE_CASES = [
    pytest.param(
        lambda: taskqueue.Queue("default").lease_tasks(10, 1),
        taskqueue.InvalidQueueModeError,
        id="lease from a push queue",
    ),
    pytest.param(
        lambda: taskqueue.Queue("default").lease_tasks_by_tag(10, 1, "a"),
        taskqueue.InvalidQueueModeError,
        id="lease by tag from a push queue",
    ),
    pytest.param(
        lambda: taskqueue.add(url="/t", queue_name="pull-queue"),
        taskqueue.InvalidQueueModeError,
        id="push task to a pull queue",
    ),
    pytest.param(
        lambda: taskqueue.add(payload="x", method="PULL"),
        taskqueue.InvalidQueueModeError,
        id="pull task to a push queue",
    ),
    pytest.param(
        lambda: taskqueue.Queue("nope").lease_tasks(10, 1),
        taskqueue.UnknownQueueError,
        id="lease from an undeclared queue",
    ),
    pytest.param(
        lambda: taskqueue.Queue("pull-queue").add([pull(), Task(url="/t")]),
        taskqueue.InvalidTaskError,
        id="push and pull tasks in one add",
    ),
]


@pytest.mark.parametrize(("call", "error"), MODE_CASES)
def test_queue_mode_is_enforced(
    queue: LocalTaskQueue, call: Callable[[], object], error: type[Exception]
) -> None:
    """Pull operations need a pull queue and pull tasks; push tasks a push queue."""
    with pytest.raises(error):
        call()
    assert queue.tasks("pull-queue") == [] and queue.tasks("default") == []


PULL_TASK_ERRORS = [
    pytest.param({"url": "/t"}, taskqueue.InvalidTaskError, id="a url"),
    pytest.param({"headers": {"a": "1"}}, taskqueue.InvalidTaskError, id="headers"),
    pytest.param({"target": "worker"}, taskqueue.InvalidTaskError, id="a target"),
    pytest.param({"payload": None}, taskqueue.InvalidTaskError, id="no payload"),
    pytest.param({"params": {"a": "1"}}, taskqueue.InvalidTaskError, id="params and payload"),
    pytest.param({"tag": "t" * 501}, taskqueue.InvalidTagError, id="a 501-character tag"),
    pytest.param({"tag": 7}, taskqueue.InvalidTagError, id="a tag that is not text"),
    pytest.param({"payload": b"x" * 2**20}, taskqueue.TaskTooLargeError, id="over 1 MiB"),
]


@pytest.mark.parametrize(("override", "error"), PULL_TASK_ERRORS)
def test_pull_task_arguments_are_checked(override: dict[str, Any], error: type[Exception]) -> None:
    """Task(method='PULL') refuses what App Engine refuses for pull tasks."""
    kwargs: dict[str, Any] = {"payload": "x", "method": "PULL", **override}
    with taskqueue.use(None), pytest.raises(error):
        Task(**kwargs)


def test_pull_task_sizes_and_params() -> None:
    """A pull task may be 1 MiB (a push task 100 KiB); params become a form-encoded payload."""
    with taskqueue.use(None):
        assert Task(payload=b"x" * 200_000, method="PULL").size > taskqueue.MAX_PUSH_TASK_SIZE_BYTES
        task = Task(params={"name": "c1", "delta": ["1", "2"]}, method="PULL", tag="c1")
    # As App Engine's library: the encoded params are converted like a str payload, to bytes.
    assert task.payload == b"name=c1&delta=1&delta=2"
    assert task.extract_params() == {b"name": b"c1", b"delta": [b"1", b"2"]}


# -- leases: changing, ending, expiring -------------------------------------------------------


def test_modify_task_lease_extends_and_ends(queue: LocalTaskQueue, clock: ManualClock) -> None:
    """modify_task_lease moves the lease's end; 0 makes the task leasable again at once."""
    q = taskqueue.Queue("pull-queue")
    q.add(pull(name="job-1"))
    [task] = q.lease_tasks(30, 1)
    clock.advance(20)
    q.modify_task_lease(task, 60)
    assert task.eta_posix == NOW + 80
    clock.advance(30)  # past the first lease's end, inside the new one
    assert q.lease_tasks(30, 1) == []
    q.modify_task_lease(task, 0)
    [again] = q.lease_tasks(30, 1)
    assert (again.name, again.retry_count) == ("job-1", 2)


def _expired(q: taskqueue.Queue, task: Task, clock: ManualClock) -> None:
    clock.advance(31)


def _leased_by_another(q: taskqueue.Queue, task: Task, clock: ManualClock) -> None:
    clock.advance(31)
    assert len(q.lease_tasks(30, 1)) == 1


def _deleted(q: taskqueue.Queue, task: Task, clock: ManualClock) -> None:
    q.delete_tasks_by_name(task.name or "")


def _unknown(q: taskqueue.Queue, task: Task, clock: ManualClock) -> None:
    task._name = "never-added"


@pytest.mark.parametrize(
    ("happen", "error"),
    [
        pytest.param(_expired, taskqueue.TaskLeaseExpiredError, id="the lease ended"),
        pytest.param(
            _leased_by_another, taskqueue.TaskLeaseExpiredError, id="leased again by another"
        ),
        pytest.param(_deleted, taskqueue.TombstonedTaskError, id="the task was deleted"),
        pytest.param(_unknown, taskqueue.Error, id="no such task"),
    ],
)
def test_modify_task_lease_refuses(
    queue: LocalTaskQueue,
    clock: ManualClock,
    happen: Callable[[taskqueue.Queue, Task, ManualClock], None],
    error: type[Exception],
) -> None:
    """A lease that ended, or whose task moved on, cannot be changed."""
    q = taskqueue.Queue("pull-queue")
    q.add(pull(name="job-1"))
    [task] = q.lease_tasks(30, 1)
    happen(q, task, clock)
    with pytest.raises(error):
        q.modify_task_lease(task, 60)


def test_task_retry_limit_counts_leases(
    queue: LocalTaskQueue, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """With task_retry_limit 2 a task is leased twice; the third lease deletes it, warning."""
    q = taskqueue.Queue("twice")
    q.add(
        [pull("a", name="limited"), pull("b", retry_options=TaskRetryOptions(task_retry_limit=3))]
    )
    counts = []
    for _ in range(4):
        counts.append([(t.payload, t.retry_count) for t in q.lease_tasks(10, 10)])
        clock.advance(11)
    assert counts == [
        [(b"a", 1), (b"b", 1)],
        [(b"a", 2), (b"b", 2)],
        [(b"b", 3)],
        [],
    ]
    assert "limited in queue twice cannot be leased again after 2 leases" in caplog.text
    with pytest.raises(taskqueue.TombstonedTaskError):
        q.add(pull(name="limited"))


# -- finishing: delete_tasks -----------------------------------------------------------------


def test_deleted_tasks_are_not_leased_again(queue: LocalTaskQueue, clock: ManualClock) -> None:
    """delete_tasks of leased tasks marks them deleted; they never come back."""
    q = taskqueue.Queue("pull-queue")
    q.add([pull(str(n)) for n in range(3)])
    leased = q.lease_tasks(10, 2)
    assert q.delete_tasks(leased) is not None
    assert [t.was_deleted for t in leased] == [True, True]
    clock.advance(11)
    assert [t.payload for t in q.lease_tasks(10, 10)] == [b"2"]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(
            lambda q: q.delete_tasks(Task(payload="x", method="PULL")),
            taskqueue.BadTaskStateError,
            id="an unnamed task",
        ),
        pytest.param(
            lambda q: q.delete_tasks_by_name(["a", "a"]),
            taskqueue.DuplicateTaskNameError,
            id="a name twice",
        ),
        pytest.param(
            lambda q: q.delete_tasks_by_name("bad name"),
            taskqueue.InvalidTaskNameError,
            id="an invalid name",
        ),
    ],
)
def test_delete_tasks_refuses(
    queue: LocalTaskQueue, call: Callable[[taskqueue.Queue], object], error: type[Exception]
) -> None:
    """delete_tasks checks its tasks before deleting any, as App Engine does."""
    q = taskqueue.Queue("pull-queue")
    q.add(pull(name="a"))
    with pytest.raises(error):
        call(q)
    assert [t.task_name for t in queue.tasks("pull-queue")] == ["a"]


def test_delete_twice_and_unknown_names(queue: LocalTaskQueue) -> None:
    """A task deleted twice raises BadTaskStateError; an unknown name is not deleted."""
    q = taskqueue.Queue("pull-queue")
    q.add(pull(name="a"))
    [task] = q.lease_tasks(10, 1)
    q.delete_tasks(task)
    with pytest.raises(taskqueue.BadTaskStateError):
        q.delete_tasks(task)
    found = q.delete_tasks_by_name(["a", "b"])
    assert [t.was_deleted for t in found] == [False, False]


def test_purge_and_async_calls(queue: LocalTaskQueue) -> None:
    """purge empties a pull queue; the *_async calls give the same results via get_result()."""
    q = taskqueue.Queue("pull-queue")
    q.add([pull(str(n), tag="t") for n in range(4)])
    assert [t.payload for t in q.lease_tasks_async(10, 1).get_result()] == [b"0"]
    assert [t.payload for t in q.lease_tasks_by_tag_async(10, 1, "t").get_result()] == [b"1"]
    assert q.delete_tasks_by_name_async("nope").get_result().was_deleted is False
    q.purge()
    assert queue.tasks("pull-queue") == []
    with pytest.raises(taskqueue.UnknownQueueError):
        taskqueue.Queue("nope").lease_tasks_async(10, 1).get_result()


# -- never dispatched; durable; shared between workers ------------------------------------------


def test_pull_tasks_are_never_dispatched(queue: LocalTaskQueue, app: Recorder) -> None:
    """run_until_idle delivers push tasks only; pull tasks stay for a worker to lease."""
    taskqueue.Queue("pull-queue").add([pull(str(n)) for n in range(3)])
    taskqueue.add(url="/push")
    assert queue.run_until_idle(timeout=30) == 1
    assert app.paths == ["/push"]
    assert len(queue.tasks("pull-queue")) == 3


def test_background_dispatcher_leaves_leases_alone(
    tmp_path: Path, queues: dict[str, QueueConfig]
) -> None:
    """With the dispatcher running and the queue reopened, a lease holds until it ends."""
    clock = ManualClock(NOW)
    db = tmp_path / "shared.sqlite3"
    delivered = threading.Event()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        delivered.set()
        start_response("200 OK", [])
        return [b""]

    with LocalTaskQueue(app, db=db, queues=queues, clock=clock) as q, taskqueue.use(q):
        taskqueue.Queue("pull-queue").add(pull(name="held"))
        [task] = taskqueue.Queue("pull-queue").lease_tasks(300, 1)
        q.start()
        taskqueue.add(url="/push")
        assert delivered.wait(30)
    with LocalTaskQueue(app, db=db, queues=queues, clock=clock) as q, taskqueue.use(q):
        assert taskqueue.Queue("pull-queue").lease_tasks(300, 1) == []
        taskqueue.Queue("pull-queue").modify_task_lease(task, 0)
        assert [t.name for t in taskqueue.Queue("pull-queue").lease_tasks(300, 1)] == ["held"]


def test_workers_on_one_file_never_lease_the_same_task(
    tmp_path: Path, queues: dict[str, QueueConfig]
) -> None:
    """Four workers, each with its own LocalTaskQueue on one file, split 200 tasks exactly."""
    db = tmp_path / "shared.sqlite3"
    with LocalTaskQueue(Recorder(), db=db, queues=queues) as q, taskqueue.use(q):
        for start in range(0, 200, 100):
            taskqueue.Queue("pull-queue").add([pull(str(n)) for n in range(start, start + 100)])
    got: list[list[bytes]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            with LocalTaskQueue(Recorder(), db=db, queues=queues) as mine:
                while leased := mine.lease("pull-queue", 600, 7):
                    got[index] += [t.payload for t in leased]
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    everything = [p for part in got for p in part]
    assert sorted(everything) == sorted(str(n).encode() for n in range(200))


def test_transactional_pull_tasks_join_only_on_success(queue: LocalTaskQueue) -> None:
    """Pull tasks added in a transaction are leasable after it completes; none if it fails."""
    q = taskqueue.Queue("pull-queue")

    def fail() -> None:
        with taskqueue.transaction():
            q.add(pull("lost"), transactional=True)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        fail()
    with taskqueue.transaction():
        q.add(pull("kept"), transactional=True)
    assert [t.payload for t in q.lease_tasks(10, 10)] == [b"kept"]


def test_queue_config_pull_mode(queues: dict[str, QueueConfig]) -> None:
    """queue.yaml `mode: pull` queues carry their retry_parameters (the lease limit)."""
    assert (queues["pull-queue"].mode, queues["twice"].mode) == ("pull", "pull")
    assert queues["twice"].retry_parameters == RetryParameters(task_retry_limit=2)


def test_leases_log_nothing_at_warning_level(
    queue: LocalTaskQueue, caplog: pytest.LogCaptureFixture
) -> None:
    """Ordinary leases and deletes log no warning."""
    caplog.set_level(logging.INFO, logger="taskhandler.taskqueue")
    q = taskqueue.Queue("pull-queue")
    q.add(pull())
    q.delete_tasks(q.lease_tasks(10, 1))
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- CloudTasksBackend has no pull queues --------------------------------------------------------

CLOUD_CALLS = [
    pytest.param(lambda: taskqueue.Queue("default").lease_tasks(10, 1), id="lease_tasks"),
    pytest.param(lambda: taskqueue.Queue("default").lease_tasks_by_tag(10, 1), id="by tag"),
    pytest.param(
        lambda: taskqueue.Queue("default").modify_task_lease(Task(name="a"), 10),
        id="modify_task_lease",
    ),
    pytest.param(lambda: taskqueue.add(payload="x", method="PULL"), id="add a pull task"),
]


@pytest.mark.parametrize("call", CLOUD_CALLS)
def test_cloud_tasks_backend_says_what_to_use_instead(call: Callable[[], object]) -> None:
    """Pull operations on CloudTasksBackend raise InvalidQueueModeError naming the alternatives."""
    cloudtasks = pytest.importorskip("tests.test_cloudtasks")
    with (
        cloudtasks.serving(cloudtasks.FakeCloudTasks()) as (service, client),
        taskqueue.CloudTasksBackend(
            cloudtasks.PROJECT, cloudtasks.LOCATION, client=client, clock=ManualClock(NOW)
        ) as backend,
        taskqueue.use(backend),
    ):
        with pytest.raises(taskqueue.InvalidQueueModeError) as info:
            call()
        assert service.created == []
    message = str(info.value)
    assert "CloudTasksBackend has no pull queues" in message
    assert "LocalTaskQueue" in message and "Pub/Sub" in message
