"""QueueStatistics on LocalTaskQueue: App Engine's fetch_statistics and QueueStatistics.fetch.

Real SQLite files and dispatcher threads; time is a ManualClock, so "the last minute" is left by
advancing it, never by sleeping. The fields are App Engine's (``taskqueue.py``'s
``QueueStatistics``): tasks, oldest_eta_usec, executed_last_minute, in_flight, enforced_rate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhandler import taskqueue
from taskhandler.taskqueue import LocalTaskQueue, ManualClock, Task, load_queue_yaml
from taskhandler.taskqueue._api import QueueStatistics

NOW = 1_700_000_000.0
USEC = 1_000_000
QUEUE_YAML = """\
queue:
- name: default
  rate: 5/s
- name: mail
  rate: 2/m
- name: stopped
  rate: 0/s
- name: pulled
  mode: pull
"""


class Gate:
    """A WSGI app that holds each request until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.open = threading.Event()
        self.paths: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.paths.append(str(environ["PATH_INFO"]))
        self.entered.set()
        if not self.open.wait(30):
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"the test never opened the gate"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.open.set()


@pytest.fixture
def q(tmp_path: Path, clock: ManualClock, gate: Gate) -> Iterator[LocalTaskQueue]:
    (tmp_path / "queue.yaml").write_text(QUEUE_YAML)
    queue = LocalTaskQueue(
        gate,
        db=tmp_path / "tasks.sqlite3",
        queues=load_queue_yaml(tmp_path / "queue.yaml"),
        clock=clock,
    )
    with queue, taskqueue.use(queue):
        yield queue


def test_empty_queue(q: LocalTaskQueue) -> None:
    """A queue without tasks: no tasks, no backlog, nothing executed or in flight."""
    stats = taskqueue.Queue("default").fetch_statistics()
    assert stats == QueueStatistics(
        queue=taskqueue.Queue("default"),
        tasks=0,
        oldest_eta_usec=None,
        executed_last_minute=0,
        in_flight=0,
        enforced_rate=5.0,
    )
    assert repr(stats).startswith("QueueStatistics(queue=Queue<default>, tasks=0,")


BACKLOGS = [
    pytest.param([0.0], 0.0, NOW, id="one due task"),
    pytest.param([30.0, 0.0, 10.0], 10.0, NOW, id="the oldest of the due ETAs"),
    pytest.param([30.0, 10.0], 10.0, NOW + 10, id="a later ETA once it has come"),
    pytest.param([60.0], 0.0, None, id="only future tasks: no backlog"),
]


@pytest.mark.parametrize(("countdowns", "advance", "oldest"), BACKLOGS)
def test_tasks_and_oldest_eta(
    q: LocalTaskQueue,
    clock: ManualClock,
    countdowns: list[float],
    advance: float,
    oldest: float | None,
) -> None:
    """tasks counts pending tasks; oldest_eta_usec is the earliest ETA that has come."""
    for countdown in countdowns:
        taskqueue.add(url="/work", countdown=countdown, queue_name="mail")
    clock.advance(advance)
    stats = taskqueue.Queue("mail").fetch_statistics()
    assert stats.tasks == len(countdowns)
    assert stats.oldest_eta_usec == (None if oldest is None else round(oldest * USEC))
    assert (stats.in_flight, stats.executed_last_minute) == (0, 0)


RATES = [
    pytest.param("default", 5.0, id="5/s"),
    pytest.param("mail", 2 / 60, id="2/m"),
    pytest.param("stopped", 0.0, id="rate 0 pauses"),
]


@pytest.mark.parametrize(("name", "rate"), RATES)
def test_enforced_rate_is_the_queue_rate(q: LocalTaskQueue, name: str, rate: float) -> None:
    """enforced_rate is queue.yaml's rate in tasks per second, 0 for a paused queue."""
    assert taskqueue.Queue(name).fetch_statistics().enforced_rate == pytest.approx(rate)


def test_paused_queue_has_rate_zero(q: LocalTaskQueue) -> None:
    """pause() makes enforced_rate 0; resume() gives the rate back."""
    q.pause("default")
    assert taskqueue.Queue("default").fetch_statistics().enforced_rate == 0.0
    q.resume("default")
    assert taskqueue.Queue("default").fetch_statistics().enforced_rate == 5.0


def test_in_flight_and_executed_last_minute(
    q: LocalTaskQueue, clock: ManualClock, gate: Gate
) -> None:
    """A delivery under way is in flight; once it ran, it counts for one minute."""
    taskqueue.add(url="/held", name="held")
    q.start()
    assert gate.entered.wait(30), "the task was not delivered"
    during = taskqueue.Queue("default").fetch_statistics()
    assert (during.tasks, during.in_flight, during.executed_last_minute) == (1, 1, 1)
    assert during.oldest_eta_usec == round(NOW * USEC)
    gate.open.set()
    q.stop()
    q.run_until_idle()
    after = taskqueue.Queue("default").fetch_statistics()
    assert (after.tasks, after.in_flight, after.executed_last_minute) == (0, 0, 1)
    assert after.oldest_eta_usec is None
    clock.advance(60)
    assert taskqueue.Queue("default").fetch_statistics().executed_last_minute == 0
    assert gate.paths == ["/held"]


def test_pull_queue_statistics(q: LocalTaskQueue, clock: ManualClock) -> None:
    """A pull queue: leases count as executed; in_flight and enforced_rate are None."""
    queue = taskqueue.Queue("pulled")
    queue.add([Task(payload=f"p{n}", method="PULL", tag="t") for n in range(3)])
    before = queue.fetch_statistics()
    assert before == QueueStatistics(queue, 3, round(NOW * USEC), 0, None, None)
    leased = queue.lease_tasks(lease_seconds=30, max_tasks=2)
    after = queue.fetch_statistics()
    # The two leased tasks' ETAs are the lease's end, to come: the third is the backlog.
    assert (after.tasks, after.executed_last_minute) == (3, 2)
    assert after.oldest_eta_usec == round(NOW * USEC)
    queue.delete_tasks(leased)
    clock.advance(61)
    assert queue.fetch_statistics().tasks == 1
    assert queue.fetch_statistics().executed_last_minute == 0


def test_other_queues_are_not_counted(q: LocalTaskQueue) -> None:
    """Each queue's figures are its own."""
    taskqueue.add(url="/a", queue_name="mail")
    assert taskqueue.Queue("default").fetch_statistics().tasks == 0
    assert taskqueue.Queue("mail").fetch_statistics().tasks == 1


FETCHES = [
    pytest.param("mail", False, ["mail"], id="a name"),
    pytest.param(taskqueue.Queue("mail"), False, ["mail"], id="a Queue"),
    pytest.param(["mail", "default"], True, ["mail", "default"], id="a list of names"),
    pytest.param(
        (taskqueue.Queue("pulled"), taskqueue.Queue("mail")), True, ["pulled", "mail"], id="Queues"
    ),
    pytest.param([], True, [], id="an empty list"),
]


@pytest.mark.parametrize(("argument", "is_list", "names"), FETCHES)
def test_fetch_many(q: LocalTaskQueue, argument: Any, is_list: bool, names: list[str]) -> None:
    """QueueStatistics.fetch gives one result for one queue, a list in order for an iterable."""
    taskqueue.add(url="/a", queue_name="mail")
    for result in (
        QueueStatistics.fetch(argument),
        QueueStatistics.fetch_async(argument).get_result(),
    ):
        results = result if is_list else [result]
        assert isinstance(results, list) is True
        assert [stats.queue.name for stats in results] == names
        assert [stats.tasks for stats in results] == [int(n == "mail") for n in names]
        assert isinstance(result, list) is is_list


BAD_ARGUMENTS = [
    pytest.param(["mail", taskqueue.Queue("default")], id="names and queues mixed"),
    pytest.param(42, id="a number"),
    pytest.param([42], id="a list of numbers"),
    pytest.param(b"mail", id="bytes"),
]


@pytest.mark.parametrize("argument", BAD_ARGUMENTS)
def test_fetch_refuses_bad_arguments(q: LocalTaskQueue, argument: Any) -> None:
    """What is not a queue, a name or an iterable of one kind is a TypeError."""
    with pytest.raises(TypeError, match="queue_or_queues"):
        QueueStatistics.fetch(argument)


ERRORS = [
    pytest.param(lambda: taskqueue.Queue("nowhere").fetch_statistics(), id="fetch_statistics"),
    pytest.param(
        lambda: taskqueue.Queue("nowhere").fetch_statistics_async().get_result(), id="async"
    ),
    pytest.param(lambda: QueueStatistics.fetch(["default", "nowhere"]), id="fetch list"),
]


@pytest.mark.parametrize("call", ERRORS)
def test_unknown_queue(q: LocalTaskQueue, call: Callable[[], object]) -> None:
    """An undeclared queue raises UnknownQueueError naming it."""
    with pytest.raises(taskqueue.UnknownQueueError, match="nowhere"):
        call()


@pytest.mark.parametrize(
    ("deadline", "error"),
    [
        pytest.param(0, taskqueue.InvalidDeadlineError, id="zero"),
        pytest.param("10", TypeError, id="a string"),
    ],
)
def test_deadline_is_checked(q: LocalTaskQueue, deadline: Any, error: type[Exception]) -> None:
    """fetch_statistics and fetch check deadline as App Engine does."""
    with pytest.raises(error):
        taskqueue.Queue("default").fetch_statistics(deadline=deadline)
    with pytest.raises(error):
        QueueStatistics.fetch("default", deadline=deadline)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: taskqueue.Queue("default").fetch_statistics(), id="fetch_statistics"),
        pytest.param(lambda: QueueStatistics.fetch(["default"]), id="QueueStatistics.fetch"),
    ],
)
def test_cloud_tasks_backend_says_what_to_use_instead(call: Callable[[], object]) -> None:
    """CloudTasksBackend has no statistics: the error names Cloud Monitoring's metrics."""
    cloudtasks = pytest.importorskip("tests.test_cloudtasks")
    with (
        cloudtasks.serving(cloudtasks.FakeCloudTasks()) as (_service, client),
        taskqueue.CloudTasksBackend(
            cloudtasks.PROJECT, cloudtasks.LOCATION, client=client, clock=ManualClock(NOW)
        ) as backend,
        taskqueue.use(backend),
        pytest.raises(taskqueue.Error) as info,
    ):
        call()
    message = str(info.value)
    assert "CloudTasksBackend has no queue statistics" in message
    assert "Cloud Monitoring" in message and "cloudtasks.googleapis.com/queue/depth" in message
