"""taskhandler.django.TaskQueueBackend: Django's tasks framework on the local push queue.

Tasks are enqueued with Django's own API (``task.enqueue(...)``) into a ``LocalTaskQueue``
kept in a real SQLite file, which delivers them in-process (peer 0.1.0.2, App Engine's
headers) to Django's WSGI handler; the view of ``taskhandler.django.urls`` runs them behind
``TaskMiddleware``. The transactional tests commit and roll back real transactions in a
SQLite database file (pytest-django's test database).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections.abc import Iterator
from typing import Any

import pytest

from taskhandler import taskqueue
from taskhandler.taskqueue import LocalTaskQueue, load_queue_yaml
from tests.conformance.django_adapter import URLConf, configure

configure()

from django.core.cache import cache  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.urls import include, path  # noqa: E402

from taskhandler.django._compat import (  # noqa: E402
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
)
from taskhandler.testing import TaskTestApp  # noqa: E402
from tests import test_django_tasks as tasks  # noqa: E402

QUEUE_YAML = """
queue:
- name: mail
  rate: 100/s
- name: urgent
  rate: 100/s
"""
TASK_URL = "/_ah/django-tasks/default"
urls = URLConf(lambda request: None)
urls.urlpatterns = [path("", include("taskhandler.django.urls"))]


def backend_settings(**options: Any) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "taskhandler.django.TaskQueueBackend",
            "QUEUES": ["default", "mail", "urgent"],
            "OPTIONS": {"RESULTS": "default", "PRIORITY_QUEUES": {10: "urgent"}, **options},
        }
    }


def project(**options: Any) -> Any:
    return override_settings(
        ROOT_URLCONF=urls,
        MIDDLEWARE=["taskhandler.django.TaskMiddleware"],
        TASKHANDLER={"AUTHENTICATOR": None},
        TASKS=backend_settings(**options),
    )


@pytest.fixture
def queue(tmp_path: Any) -> Iterator[LocalTaskQueue]:
    """A local queue in a SQLite file delivering to the Django project, installed for taskqueue."""
    (tmp_path / "queue.yaml").write_text(QUEUE_YAML)
    cache.clear()
    with project():
        q = LocalTaskQueue(
            WSGIHandler(),
            db=tmp_path / "queue.sqlite3",
            queues=load_queue_yaml(tmp_path / "queue.yaml"),
        )
        try:
            with taskqueue.use(q):
                yield q
        finally:
            q.close()


def test_a_task_is_enqueued_delivered_and_its_result_kept(queue: LocalTaskQueue) -> None:
    """enqueue() adds a push task; the queue runs it in the view; get_result() tells it."""
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    (pending,) = queue.tasks("default")
    assert (pending.task_name, pending.url) == (result.id, TASK_URL)
    assert json.loads(pending.payload) == {
        "task": "tests.test_django_tasks.add",
        "args": [2, 3],
        "kwargs": {},
    }
    assert queue.run_until_idle(timeout=30) == 1
    assert tasks.ran() == [["add", 2, 3, "default"]]
    done = tasks.add.get_result(result.id)
    assert (done.status, done.return_value, done.attempts) == (TaskResultStatus.SUCCESSFUL, 5, 1)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL


@pytest.mark.parametrize(
    ("task", "args", "expected_queue", "record", "value"),
    [
        pytest.param(
            tasks.send, ["a@example.com"], "mail", ["send", "a@example.com"], None, id="queue_name"
        ),
        pytest.param(tasks.async_add, [1, 2], "default", ["async_add", 1, 2], 3, id="async task"),
        pytest.param(tasks.with_context, ["x"], "default", None, 1, id="takes_context"),
    ],
)
def test_task_kinds(
    queue: LocalTaskQueue, task: Any, args: list[Any], expected_queue: str, record: Any, value: Any
) -> None:
    """Queue names, async tasks and tasks that take their context all run."""
    result = task.enqueue(*args)
    assert [t.task_name for t in queue.tasks(expected_queue)] == [result.id]
    queue.run_until_idle(timeout=30)
    done = task.get_result(result.id)
    assert (done.status, done.return_value) == (TaskResultStatus.SUCCESSFUL, value)
    if record is not None:
        assert tasks.ran() == [record]
    else:
        assert tasks.ran() == [["context", "x", result.id, 1]]


def test_a_failed_attempt_is_retried_by_the_queue(queue: LocalTaskQueue) -> None:
    """A task that raises answers 500; the queue retries it; its result keeps the error."""
    result = tasks.flaky.enqueue("again")
    queue.run_until_idle(timeout=30)
    assert tasks.ran() == [["flaky", "again", 0], ["flaky", "again", 1]]
    done = tasks.flaky.get_result(result.id)
    assert (done.status, done.return_value, done.attempts) == (
        TaskResultStatus.SUCCESSFUL,
        "again",
        2,
    )
    assert [e.exception_class_path for e in done.errors] == ["builtins.RuntimeError"]


def test_a_permanent_failure_is_not_retried(queue: LocalTaskQueue) -> None:
    """PermanentTaskFailure acknowledges the task: one attempt, result FAILED."""
    result = tasks.refuses.enqueue("once")
    queue.run_until_idle(timeout=30)
    assert tasks.ran() == [["refuses", "once"]]
    assert tasks.refuses.get_result(result.id).status == TaskResultStatus.FAILED
    assert queue.tasks("default") == []


@pytest.mark.parametrize(
    ("options", "task", "error"),
    [
        pytest.param(
            {"PRIORITY_QUEUES": {}}, tasks.urgent, "PRIORITY_QUEUES", id="priority without a queue"
        ),
        pytest.param(
            {"PRIORITY_QUEUES": {5: "urgent"}},
            tasks.urgent,
            r"mapped: \[5\]",
            id="priority not mapped",
        ),
        pytest.param(
            {"PRIORITY_QUEUES": {10: "urgent"}},
            tasks.send.using(priority=10),
            "give one or the other",
            id="priority and queue",
        ),
    ],
)
def test_priorities_are_mapped_to_queues_or_refused(
    queue: LocalTaskQueue, options: dict[str, Any], task: Any, error: str
) -> None:
    """A priority goes to the queue PRIORITY_QUEUES names; otherwise enqueue() says why not."""
    with (
        override_settings(TASKS=backend_settings(**options)),
        pytest.raises(InvalidTask, match=error),
    ):
        task.enqueue()


def test_a_mapped_priority_goes_to_its_queue(queue: LocalTaskQueue) -> None:
    """priority=10 with PRIORITY_QUEUES {10: "urgent"} is a task of queue urgent."""
    result = tasks.urgent.enqueue()
    assert [t.task_name for t in queue.tasks("urgent")] == [result.id]
    queue.run_until_idle(timeout=30)
    assert tasks.urgent.get_result(result.id).return_value == "done"


def test_run_after_is_the_tasks_eta(queue: LocalTaskQueue) -> None:
    """run_after becomes the push task's ETA."""
    when = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(
        hours=1
    )
    result = tasks.add.using(run_after=when).enqueue(1, 1)
    (pending,) = queue.tasks("default")
    assert (pending.task_name, pending.eta) == (result.id, when)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(lambda: tasks.add.enqueue(object(), 1), "JSON", id="arguments not JSON"),
        pytest.param(
            lambda: tasks.add.using(run_after=datetime.datetime(2030, 1, 1)).enqueue(1, 1),
            "aware",
            id="naive run_after",
        ),
        pytest.param(
            lambda: tasks.add.using(queue_name="nope").enqueue(1, 1), "nope", id="queue not listed"
        ),
    ],
)
def test_bad_tasks_are_refused_at_enqueue(queue: LocalTaskQueue, call: Any, error: str) -> None:
    """What the queue could not run is refused when it is enqueued, not when it is run."""
    with pytest.raises(InvalidTask, match=error):
        call()
    assert queue.tasks("default") == []


def test_aenqueue(queue: LocalTaskQueue) -> None:
    """aenqueue() enqueues from async code."""
    result = asyncio.run(tasks.add.aenqueue(4, 4))
    queue.run_until_idle(timeout=30)
    assert tasks.add.get_result(result.id).return_value == 8


@pytest.mark.parametrize(
    ("options", "error"),
    [
        pytest.param({"RESULT": "default"}, "unknown option 'RESULT'", id="misspelt option"),
        pytest.param(
            {"PRIORITY_QUEUES": {"high": 10}}, "PRIORITY_QUEUES", id="priorities backwards"
        ),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], error: str) -> None:
    """A bad OPTIONS entry is ImproperlyConfigured, naming it."""
    with (
        override_settings(TASKS=backend_settings(**options)),
        pytest.raises(ImproperlyConfigured, match=error),
    ):
        task_backends["default"]


def test_results_need_a_cache(queue: LocalTaskQueue) -> None:
    """get_result() answers from the RESULTS cache; an unknown id is TaskResultDoesNotExist."""
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("0" * 32)
    settings = backend_settings()
    del settings["default"]["OPTIONS"]["RESULTS"]
    with override_settings(TASKS=settings):
        backend = task_backends["default"]
        assert backend.supports_get_result is False
        with pytest.raises(NotImplementedError):
            backend.get_result("0" * 32)


# -- who may run a task --------------------------------------------------------------------


def test_only_django_tasks_run(queue: LocalTaskQueue) -> None:
    """A task body naming a plain function is a permanent failure; the function never runs."""
    with project():
        app = TaskTestApp(WSGIHandler())
        body = {"task": "tests.test_django_tasks.not_a_task", "args": ["x"], "kwargs": {}}
        res = app.post_task(TASK_URL, json=body)
        assert (res.status_int, res.task_outcome) == (200, "permanent-failure")
        bad = app.post_task(TASK_URL, payload=b"not json", status=200)
        assert bad.task_outcome == "permanent-failure"
    assert tasks.ran() == []


def test_a_stranger_cannot_run_a_task(queue: LocalTaskQueue) -> None:
    """A POST to the task URL from anyone but the queue is 403; nothing runs."""
    with project():
        app = TaskTestApp(WSGIHandler())
        body = {"task": "tests.test_django_tasks.add", "args": [1, 1], "kwargs": {}}
        res = app.post_json(
            TASK_URL,
            body,
            headers={"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "t"},
            extra_environ={"REMOTE_ADDR": "203.0.113.9"},
            status=403,
        )
    assert res.headers["X-Task-Outcome"] == "rejected"
    assert tasks.ran() == []


# -- transactions ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("commits", [True, False], ids=["commit", "rollback"])
def test_inside_atomic_the_task_is_added_on_commit(queue: LocalTaskQueue, commits: bool) -> None:
    """Without an outbox, a task enqueued in transaction.atomic() is added after the commit."""
    with _raises_unless(commits), transaction.atomic():
        result = tasks.add.enqueue(1, 2)
        assert queue.tasks("default") == []  # not before the commit
        if not commits:
            raise RuntimeError("roll back")
    assert [t.task_name for t in queue.tasks("default")] == ([result.id] if commits else [])


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("commits", [True, False], ids=["commit", "rollback"])
def test_with_the_outbox_the_task_commits_with_the_transaction(
    queue: LocalTaskQueue, commits: bool
) -> None:
    """OUTBOX: the task is a row written in the same transaction; the relay hands it over."""
    with override_settings(TASKS=backend_settings(OUTBOX=True)):
        backend = task_backends["default"]
        backend.outbox.create_table()
        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
        with _raises_unless(commits), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO orders (id) VALUES (1)")
            result = tasks.add.enqueue(20, 22)
            assert result.id.startswith("outbox-")
            if not commits:
                raise RuntimeError("roll back")
        assert backend.outbox.pending() == (1 if commits else 0)
        assert queue.tasks("default") == []
        assert backend.outbox.relay_until_idle() == (1 if commits else 0)
        assert [t.task_name for t in queue.tasks("default")] == ([result.id] if commits else [])
        queue.run_until_idle(timeout=30)
        if commits:
            assert tasks.add.get_result(result.id).return_value == 42
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM orders")
            assert cursor.fetchone()[0] == (1 if commits else 0)
            cursor.execute("DROP TABLE orders")


def _raises_unless(commits: bool) -> Any:
    """The block's own RuntimeError (which rolls the transaction back) unless it commits."""
    return contextlib.nullcontext() if commits else pytest.raises(RuntimeError)
