"""End to end: taskqueue.add() -> CloudTasksBackend -> a Cloud Tasks emulator -> gunicorn -> Flask handlers.

The emulator (``gcloud-tasks-emulator``) runs on 127.0.0.1 in a subprocess, the official
client talks to it over gRPC, and it delivers each task to the Flask app below served by
gunicorn, whose handlers record the ``TaskContext`` they were given.

What the emulator does differently from Cloud Tasks (the tests allow for these):

- ``X-AppEngine-QueueName`` / ``X-CloudTasks-QueueName`` hold the queue's full resource path
  (``projects/P/locations/L/queues/Q``); Cloud Tasks sends the short queue id. Both parse to ``Q``.
- ``X-AppEngine-TaskETA`` is empty for a task created without ``schedule_time``; Cloud Tasks
  always sends the time. An empty ETA parses as "no ETA".
- ``TaskRetryCount`` and ``TaskExecutionCount`` are both ``dispatches - 1``; Cloud Tasks counts
  executions (responses received) separately. ``TaskPreviousResponse``/``TaskRetryReason`` are
  never sent.
- Failed tasks are retried at once, with no backoff, no rate limits, no queue ``retry_config``;
  one queue's tasks are delivered one at a time, in the order they were created.
- Names are not deduplicated (no ``ALREADY_EXISTS``, no tombstones), and a missing queue is
  ``FAILED_PRECONDITION`` where Cloud Tasks answers ``NOT_FOUND``.
- HTTP target tasks get no ``Authorization: Bearer`` OIDC token, so the app here trusts the
  emulator by its address (127.0.0.1); token checks are tested in ``test_oidc.py``.
- App Engine tasks all go to one host:port (no routing by service/version), from 127.0.0.1.
- Its gRPC server binds every interface; the launcher below binds it to 127.0.0.1 instead.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.tasks_v2", reason="the cloudtasks extra is not installed")

import flask
from pydantic import BaseModel

from taskhandler import task_handler, taskqueue
from taskhandler.context import TaskContext
from taskhandler.exceptions import RetryTask
from taskhandler.taskqueue.cloudtasks import CloudTasksBackend
from taskhandler.trust import TrustPolicy
from taskhandler.wsgi import TaskMiddleware

from .servers import free_port, serve, stop, wait_for_port

LOG_ENV = "TASKHANDLER_EMULATOR_LOG"
PROJECT = "emulated-project"
LOCATION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
DELIVERY_TIMEOUT = 20.0

# -- the app the emulator delivers to (imported by gunicorn from this module) -----------------

app = flask.Flask(__name__)


def _record(task: TaskContext, **extra: Any) -> None:
    headers = {
        name: value
        for name, value in flask.request.headers.items()
        if name.lower().startswith(("x-appengine-", "x-cloudtasks-"))
    }
    entry = {
        "path": flask.request.full_path.rstrip("?"),
        "method": flask.request.method,
        "context": task.model_dump(mode="json"),
        "headers": headers,
        **extra,
    }
    with open(os.environ[LOG_ENV], "a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\n")


class Count(BaseModel):
    amount: int


class Lookup(BaseModel):
    key: str


@app.post("/tasks/count")
@task_handler(payload=Count)
def count(task: TaskContext, payload: Count) -> None:
    _record(task, amount=payload.amount)


@app.get("/tasks/lookup")
@task_handler(payload=Lookup)
def lookup(task: TaskContext, payload: Lookup) -> None:
    _record(task, key=payload.key)


@app.post("/_ah/queue/<queue>")
@task_handler
def queue_default_url(task: TaskContext) -> None:
    _record(task)


@app.post("/tasks/flaky")
@task_handler
def flaky(task: TaskContext) -> None:
    _record(task)
    if task.is_first_attempt:
        raise RetryTask("the first attempt fails")


# The emulator sends from 127.0.0.1 and signs nothing: trust it by address, as App Engine's
# queue is trusted by 0.1.0.2.
app.wsgi_app = TaskMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, trust=TrustPolicy(queue_sources=["127.0.0.1"])
)

# -- the emulator ----------------------------------------------------------------------------

LAUNCHER = str(Path(__file__).with_name("emulator_on_loopback.py"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cloudtasks-emulator")


@pytest.fixture(scope="module")
def app_url(workdir: Path) -> Iterator[str]:
    log = workdir / "deliveries.jsonl"
    log.touch()
    with serve("gunicorn", f"{__name__}:app", env={LOG_ENV: str(log)}) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def emulator(app_url: str, workdir: Path) -> Iterator[str]:
    port = free_port()
    target_port = app_url.rsplit(":", 1)[1]
    with open(workdir / "emulator.log", "wb") as output:
        proc = subprocess.Popen(
            [sys.executable, LAUNCHER, str(port), target_port, "5"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, None)
        if proc.poll() is not None:
            raise RuntimeError((workdir / "emulator.log").read_text())
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def client(emulator: str) -> Iterator[Any]:
    import grpc
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(emulator)
    yield tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    channel.close()


@pytest.fixture
def make_queue(client: Any) -> Any:
    """Create an emulator queue with a fresh id; return the id."""
    from google.cloud import tasks_v2

    def make(prefix: str = "q") -> str:
        queue_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
        client.create_queue(parent=PARENT, queue=tasks_v2.Queue(name=f"{PARENT}/queues/{queue_id}"))
        return queue_id

    return make


@pytest.fixture
def backend(client: Any) -> Iterator[Any]:
    with CloudTasksBackend(PROJECT, LOCATION, client=client) as backend, taskqueue.use(backend):
        yield backend


def deliveries(workdir: Path, queue_id: str, count: int) -> list[dict[str, Any]]:
    """Wait (bounded) until ``count`` deliveries of the queue were recorded; return them."""
    log = workdir / "deliveries.jsonl"
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            lines = log.read_text(encoding="utf-8").splitlines()
            found = [
                entry
                for entry in map(json.loads, lines)
                if entry["context"]["queue_name"] == queue_id
            ]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    emulator_log = (workdir / "emulator.log").read_text(errors="replace")[-3000:]
    raise AssertionError(
        f"{len(found)} of {count} deliveries on {queue_id}: {found}\nemulator:\n{emulator_log}"
    )


pytestmark = pytest.mark.slow


def test_named_post_task_reaches_the_handler(backend: Any, make_queue: Any, workdir: Path) -> None:
    """A named POST task is delivered with its params, and its headers make the TaskContext."""
    queue_id = make_queue()
    task = taskqueue.add(
        url="/tasks/count", params={"amount": "3"}, name="count-3", queue_name=queue_id
    )
    assert task.name == "count-3"
    [entry] = deliveries(workdir, queue_id, 1)
    assert entry["path"] == "/tasks/count"
    assert entry["amount"] == 3
    assert entry["context"] == {
        "queue_name": queue_id,
        "task_name": "count-3",
        "retry_count": 0,
        "execution_count": 0,
        "eta": None,
        "previous_response": None,
        "retry_reason": None,
        "fail_fast": False,
        "trusted_by": "queue",
    }
    # What the emulator sent, that both parsed: the full queue path and an empty ETA.
    assert entry["headers"]["X-Appengine-Queuename"] == f"{PARENT}/queues/{queue_id}"
    assert entry["headers"]["X-Appengine-Tasketa"] == ""


def test_default_url_and_generated_name(backend: Any, make_queue: Any, workdir: Path) -> None:
    """An unnamed task without a URL goes to /_ah/queue/<queue> under the name Cloud Tasks gave it."""
    queue_id = make_queue()
    task = taskqueue.add(queue_name=queue_id)
    [entry] = deliveries(workdir, queue_id, 1)
    assert entry["path"] == f"/_ah/queue/{queue_id}"
    assert entry["context"]["task_name"] == task.name


def test_get_task_params_in_query(backend: Any, make_queue: Any, workdir: Path) -> None:
    """A GET task carries its params in the query string, where the payload model finds them."""
    queue_id = make_queue()
    taskqueue.add(url="/tasks/lookup", method="GET", params={"key": "k1"}, queue_name=queue_id)
    [entry] = deliveries(workdir, queue_id, 1)
    assert entry["method"] == "GET"
    assert entry["path"] == "/tasks/lookup?key=k1"
    assert entry["key"] == "k1"


def test_countdown_sets_the_eta(backend: Any, make_queue: Any, workdir: Path) -> None:
    """A countdown becomes schedule_time, delivered back as the task's ETA."""
    queue_id = make_queue()
    task = taskqueue.add(
        url="/tasks/count", params={"amount": "1"}, countdown=0.3, queue_name=queue_id
    )
    [entry] = deliveries(workdir, queue_id, 1)
    eta = entry["context"]["eta"]
    assert eta is not None
    assert abs(datetime.datetime.fromisoformat(eta).timestamp() - task.eta_posix) < 1e-3


def test_retry_counts_rise(backend: Any, make_queue: Any, workdir: Path) -> None:
    """A handler's RetryTask makes the queue deliver again, with retry_count 1."""
    queue_id = make_queue()
    taskqueue.add(url="/tasks/flaky", name="flaky-1", queue_name=queue_id)
    first, second = deliveries(workdir, queue_id, 2)[:2]
    assert (first["context"]["retry_count"], second["context"]["retry_count"]) == (0, 1)
    assert second["context"]["task_name"] == "flaky-1"


def test_add_async(backend: Any, make_queue: Any, workdir: Path) -> None:
    """add_async() gives a result whose task is delivered."""
    queue_id = make_queue()
    result = taskqueue.add_async(url="/tasks/count", params={"amount": "7"}, queue_name=queue_id)
    assert result.get_result().was_enqueued
    [entry] = deliveries(workdir, queue_id, 1)
    assert entry["amount"] == 7


def test_list_of_tasks(backend: Any, make_queue: Any, workdir: Path) -> None:
    """Queue.add() with a list creates every task; each is delivered once."""
    queue_id = make_queue()
    tasks = [
        taskqueue.Task(url="/tasks/count", params={"amount": str(i)}, name=f"n{i}")
        for i in range(5)
    ]
    taskqueue.Queue(queue_id).add(tasks)
    found = deliveries(workdir, queue_id, 5)
    assert sorted(e["context"]["task_name"] for e in found) == [f"n{i}" for i in range(5)]


def test_http_target_task(client: Any, app_url: str, make_queue: Any, workdir: Path) -> None:
    """With base_url, an HTTP target task arrives with X-CloudTasks-* headers that parse."""
    queue_id = make_queue()
    backend = CloudTasksBackend(
        PROJECT,
        LOCATION,
        client=client,
        base_url=app_url,
        service_account_email="tasks@emulated-project.iam.gserviceaccount.com",
    )
    with backend, taskqueue.use(backend):
        taskqueue.add(
            url="/tasks/count", params={"amount": "9"}, name="http-9", queue_name=queue_id
        )
    [entry] = deliveries(workdir, queue_id, 1)
    assert entry["amount"] == 9
    assert entry["context"]["task_name"] == "http-9"
    assert entry["headers"]["X-Cloudtasks-Queuename"] == f"{PARENT}/queues/{queue_id}"
    assert not any(name.lower().startswith("x-appengine-") for name in entry["headers"])


def test_missing_queue_is_an_error(backend: Any) -> None:
    """A queue the server does not have fails the add with a taskqueue error and its message."""
    with pytest.raises(taskqueue.Error, match="does not exist"):
        taskqueue.add(url="/tasks/count", queue_name="never-created")


# -- the project's Flask example, reached as a Cloud Tasks HTTP target -----------------------


@pytest.fixture(scope="module")
def example_url(workdir: Path) -> Iterator[str]:
    env = {"EXAMPLE_DB": str(workdir / "example.sqlite3"), "EXAMPLE_QUEUE_SOURCES": "127.0.0.1"}
    with serve("gunicorn", "examples.flask_style.main:app", env=env) as base_url:
        yield base_url


@pytest.fixture
def example_backend(client: Any, example_url: str) -> Iterator[CloudTasksBackend]:
    backend = CloudTasksBackend(
        PROJECT,
        LOCATION,
        client=client,
        base_url=example_url,
        service_account_email="tasks@emulated-project.iam.gserviceaccount.com",
    )
    with backend, taskqueue.use(backend):
        yield backend


def example_state(example_url: str, ready: Any) -> dict[str, Any]:
    """Poll the example's /state (bounded) until ``ready(state)``; return that state."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{example_url}/state", timeout=5) as response:
            state = json.loads(response.read())
        if ready(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"the example never reached the expected state: {state}")


def test_flask_example_counts_each_task_once(
    example_backend: CloudTasksBackend, example_url: str, make_queue: Any
) -> None:
    """The example counts a task once even when the queue delivers its name twice."""
    queue_id = make_queue("count")
    taskqueue.add(
        url="/tasks/count",
        params={"counter": queue_id, "amount": "2"},
        name="c1",
        queue_name=queue_id,
    )
    # The emulator does not deduplicate names, so this second "c1" is delivered too: the
    # example's task ledger (keyed by the parsed queue and task names) must skip it.
    taskqueue.add(
        url="/tasks/count",
        params={"counter": queue_id, "amount": "2"},
        name="c1",
        queue_name=queue_id,
    )
    taskqueue.add(
        url="/tasks/count",
        params={"counter": queue_id, "amount": "3"},
        name="c2",
        queue_name=queue_id,
    )
    # The emulator delivers one queue's tasks in order, so once c2 counted, both c1 have too.
    state = example_state(example_url, lambda s: s["counters"].get(queue_id, 0) >= 5)
    assert state["counters"][queue_id] == 5


def test_flask_example_gives_up_after_max_attempts(
    example_backend: CloudTasksBackend, example_url: str, make_queue: Any
) -> None:
    """Retry counts from the queue drive max_attempts: the third failure is a dead letter."""
    queue_id = make_queue("notify")
    taskqueue.add(
        url="/tasks/notify",
        params={"recipient": "ada@example.invalid", "message": "hi"},
        name="n1",
        queue_name=queue_id,
    )
    state = example_state(
        example_url, lambda s: any(d["queue_name"] == queue_id for d in s["dead_letters"])
    )
    [letter] = [d for d in state["dead_letters"] if d["queue_name"] == queue_id]
    assert letter["task_name"] == "n1"
    assert letter["attempts"] == 3
    assert letter["payload"] == {"recipient": "ada@example.invalid", "message": "hi"}


@pytest.mark.parametrize(
    ("kwargs", "deadline"),
    [
        pytest.param({}, 1800.0, id="App Engine target, deadline=1800"),
        pytest.param(
            {"base_url": "http://127.0.0.1:1", "service_account_email": "t@p.example"},
            900.0,
            id="HTTP target, deadline=900",
        ),
    ],
)
def test_emulator_host_from_the_environment(
    emulator: str,
    client: Any,
    make_queue: Any,
    monkeypatch: pytest.MonkeyPatch,
    kwargs: dict[str, Any],
    deadline: float,
) -> None:
    """CLOUD_TASKS_EMULATOR_HOST makes the backend's client; the task keeps its dispatch_deadline."""
    from google.cloud import tasks_v2

    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", emulator)
    queue_id = make_queue("env")
    # A far ETA keeps the task queued, so that it can be read back as the emulator stored it.
    backend = CloudTasksBackend(PROJECT, LOCATION, deadline=deadline, **kwargs)
    with backend, taskqueue.use(backend):
        task = taskqueue.add(url="/tasks/count", countdown=3600, queue_name=queue_id)
    # The emulator has no GetTask: ListTasks shows what it stored.
    [stored] = client.list_tasks(
        request={"parent": f"{PARENT}/queues/{queue_id}", "response_view": tasks_v2.Task.View.FULL}
    )
    assert stored.name.rsplit("/", 1)[-1] == task.name
    assert stored.dispatch_deadline.total_seconds() == deadline
