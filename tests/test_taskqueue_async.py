"""add_async(): returns before a slow backend answers, and settles like App Engine's RPC object.

The Cloud Tasks cases run against ``FakeCloudTasks`` from ``test_cloudtasks.py``: a real gRPC
server on 127.0.0.1 speaking the Cloud Tasks protocol (Google's service cannot run here),
reached by the official client. Its CreateTask handler is held on an event that the test sets
only after ``add_async()`` has returned, so the call is provably still in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("google.cloud.tasks_v2", reason="the cloudtasks extra is not installed")

import grpc
from google.cloud import tasks_v2

from taskhandler import taskqueue
from taskhandler.taskqueue import CloudTasksBackend, LocalTaskQueue, ManualClock, Task
from tests.test_cloudtasks import LOCATION, NOW, PARENT, PROJECT, FakeCloudTasks, serving

WAIT = 10.0  # bound on every wait; the events are set long before it in a passing run
DEFAULT = f"{PARENT}/queues/default"


class HeldCloudTasks(FakeCloudTasks):
    """``FakeCloudTasks`` that also tells when a CreateTask call has reached the server."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()

    def create_task(
        self, request: tasks_v2.CreateTaskRequest, context: grpc.ServicerContext
    ) -> tasks_v2.Task:
        self.arrived.set()
        return super().create_task(request, context)


@pytest.fixture
def fake() -> Iterator[tuple[HeldCloudTasks, tasks_v2.CloudTasksClient]]:
    with serving(HeldCloudTasks()) as pair:
        yield pair


@pytest.fixture
def service(fake: tuple[HeldCloudTasks, Any]) -> HeldCloudTasks:
    return fake[0]


@pytest.fixture
def backend(fake: tuple[HeldCloudTasks, Any]) -> Iterator[CloudTasksBackend]:
    made = CloudTasksBackend(PROJECT, LOCATION, client=fake[1], clock=ManualClock(NOW))
    with made, taskqueue.use(made):
        yield made


def _one(name: str | None) -> tuple[taskqueue.AddResult[Any], list[Task]]:
    task = Task(url="/t", name=name)
    return taskqueue.Queue().add_async(task), [task]


def _many(name: str | None) -> tuple[taskqueue.AddResult[Any], list[Task]]:
    tasks = [Task(url="/a", name=name), Task(url="/b")]
    return taskqueue.Queue().add_async(tasks), tasks


def _module(name: str | None) -> tuple[taskqueue.AddResult[Any], list[Task]]:
    result = taskqueue.add_async(url="/t", name=name)
    return result, []


ADDERS = [
    pytest.param(_one, id="Queue.add_async(task)"),
    pytest.param(_many, id="Queue.add_async([tasks])"),
    pytest.param(_module, id="taskqueue.add_async()"),
]


def _tasks_of(value: Task | list[Task]) -> list[Task]:
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("adder", ADDERS)
def test_returns_before_the_server_answers(
    backend: CloudTasksBackend,
    service: HeldCloudTasks,
    adder: Callable[[str | None], tuple[taskqueue.AddResult[Any], list[Task]]],
) -> None:
    """add_async() returns while CreateTask is held at the server; get_result() gives the tasks."""
    service.gate.clear()
    result, given = adder("first")
    assert service.arrived.wait(WAIT)
    assert not result.done()
    assert service.created == []
    assert not any(task.was_enqueued for task in given)
    service.gate.set()
    tasks = _tasks_of(result.get_result())
    assert result.done()
    assert all(task.was_enqueued and task.queue_name == "default" for task in tasks)
    assert tasks[0].name == "first"
    assert {task.name for task in tasks} == {
        str(request.task.name).rsplit("/", 1)[-1] for request in service.created
    }
    if given:
        assert tasks == given


def _live_name() -> None:
    taskqueue.add(url="/t", name="taken")


def _tombstoned_name() -> None:
    taskqueue.add(url="/t", name="taken")
    assert taskqueue.Queue().delete_tasks_by_name("taken").was_deleted


def _status(status: grpc.StatusCode) -> Callable[[HeldCloudTasks], None]:
    def script(service: HeldCloudTasks) -> None:
        service.fail[DEFAULT] = (status, f"scripted {status.name}")

    return script


ERRORS = [
    pytest.param(
        lambda service: _live_name(),
        taskqueue.TaskAlreadyExistsError,
        "Requested entity already exists",
        id="ALREADY_EXISTS on a queued task: TaskAlreadyExistsError",
    ),
    pytest.param(
        lambda service: _tombstoned_name(),
        taskqueue.TombstonedTaskError,
        "Requested entity already exists",
        id="ALREADY_EXISTS on a deleted task: TombstonedTaskError",
    ),
    pytest.param(
        _status(grpc.StatusCode.NOT_FOUND),
        taskqueue.UnknownQueueError,
        "scripted NOT_FOUND",
        id="NOT_FOUND: UnknownQueueError",
    ),
    pytest.param(
        _status(grpc.StatusCode.PERMISSION_DENIED),
        taskqueue.PermissionDeniedError,
        "scripted PERMISSION_DENIED",
        id="PERMISSION_DENIED: PermissionDeniedError",
    ),
    pytest.param(
        _status(grpc.StatusCode.INVALID_ARGUMENT),
        taskqueue.InvalidTaskError,
        "scripted INVALID_ARGUMENT",
        id="INVALID_ARGUMENT: InvalidTaskError",
    ),
]


@pytest.mark.parametrize(("setup", "error", "message"), ERRORS)
def test_server_error_surfaces_from_get_result(
    backend: CloudTasksBackend,
    service: HeldCloudTasks,
    setup: Callable[[HeldCloudTasks], None],
    error: type[Exception],
    message: str,
) -> None:
    """The server's refusal is raised by get_result() as the mapped error, not by add_async()."""
    setup(service)
    service.arrived.clear()
    service.gate.clear()
    task = Task(url="/t", name="taken")
    result = taskqueue.Queue().add_async(task)
    assert service.arrived.wait(WAIT)
    assert not result.done()
    service.gate.set()
    with pytest.raises(error, match=message) as first:
        result.get_result()
    assert type(first.value) is error
    assert first.value.__cause__ is not None
    with pytest.raises(error) as again:
        result.check_success()
    assert again.value is first.value
    assert not task.was_enqueued


def test_batch_error_leaves_the_others_enqueued(
    backend: CloudTasksBackend, service: HeldCloudTasks
) -> None:
    """In a list, get_result() raises the refused task's error; the other tasks are enqueued."""
    taskqueue.add(url="/t", name="taken")
    tasks = [Task(url="/a"), Task(url="/b", name="taken"), Task(url="/c")]
    result = taskqueue.Queue().add_async(tasks)
    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        result.get_result()
    assert [task.was_enqueued for task in tasks] == [True, False, True]


SETTLERS = [
    pytest.param(lambda result: result.get_result(), id="get_result"),
    pytest.param(lambda result: result.check_success(), id="check_success"),
    pytest.param(lambda result: result.wait(), id="wait"),
]


@pytest.mark.parametrize("settle", SETTLERS)
def test_first_settling_call_marks_the_task(
    backend: CloudTasksBackend,
    service: HeldCloudTasks,
    settle: Callable[[taskqueue.AddResult[Any]], object],
) -> None:
    """Each of get_result/check_success/wait waits for the add and marks the task enqueued."""
    service.gate.clear()
    task = Task(url="/t", name="marked")
    result = taskqueue.Queue().add_async(task)
    assert service.arrived.wait(WAIT)
    assert not task.was_enqueued
    service.gate.set()
    settle(result)
    assert result.done()
    assert (task.was_enqueued, task.name, task.queue_name) == (True, "marked", "default")


def test_wait_does_not_raise(backend: CloudTasksBackend, service: HeldCloudTasks) -> None:
    """wait() completes a failed add without raising; get_result() raises afterwards."""
    service.fail[DEFAULT] = (grpc.StatusCode.NOT_FOUND, "no such queue")
    result = taskqueue.add_async(url="/t")
    result.wait()
    assert result.done()
    with pytest.raises(taskqueue.UnknownQueueError, match="no such queue"):
        result.get_result()


def test_get_result_from_many_threads(backend: CloudTasksBackend, service: HeldCloudTasks) -> None:
    """Threads calling get_result() at once all receive the same task, settled once."""
    service.gate.clear()
    task = Task(url="/t", name="shared")
    result = taskqueue.Queue().add_async(task)
    assert service.arrived.wait(WAIT)
    seen: list[Task] = []
    start = threading.Barrier(5)

    def reader() -> None:
        start.wait(WAIT)
        seen.append(result.get_result())

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    start.wait(WAIT)
    service.gate.set()
    for thread in threads:
        thread.join(WAIT)
    assert seen == [task] * 4
    assert len(service.created) == 1


def _ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def local() -> Iterator[LocalTaskQueue]:
    queue = LocalTaskQueue(_ok_app, clock=ManualClock(NOW))
    with taskqueue.use(queue), queue:
        yield queue


@pytest.mark.parametrize("adder", ADDERS)
def test_local_queue_is_done_on_return(
    local: LocalTaskQueue,
    adder: Callable[[str | None], tuple[taskqueue.AddResult[Any], list[Task]]],
) -> None:
    """With the local queue the add is complete when add_async() returns: tasks already marked."""
    result, given = adder("local-1")
    assert result.done()
    assert all(task.was_enqueued for task in given)
    tasks = _tasks_of(result.get_result())
    assert tasks[0].name == "local-1"
    assert sorted(stored.task_name for stored in local.tasks()) == sorted(
        str(task.name) for task in tasks
    )


def test_local_queue_error_from_get_result(local: LocalTaskQueue) -> None:
    """With the local queue a taken name is raised by get_result(), not by add_async()."""
    taskqueue.add(url="/t", name="taken")
    result = taskqueue.add_async(url="/t", name="taken")
    assert result.done()
    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        result.get_result()
