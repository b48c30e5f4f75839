"""CloudTasksBackend: taskqueue.add() mapped to Cloud Tasks CreateTask calls, and the API's errors mapped back.

Google's Cloud Tasks service cannot run here, so ``FakeCloudTasks`` stands in for it: a real
gRPC server on 127.0.0.1 speaking the real ``google.cloud.tasks.v2.CloudTasks`` protocol,
reached by the official client, whose answers (deduplication of names, tombstones, error
statuses) are scripted to match the service's documented behaviour. Dispatch to a real app is
tested against the open-source emulator in ``test_cloudtasks_emulator.py``.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any, TypeVar

import pytest

pytest.importorskip("google.cloud.tasks_v2", reason="the cloudtasks extra is not installed")

import grpc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import (
    CloudTasksGrpcTransport,
)
from google.protobuf import empty_pb2

from taskhandler import taskqueue
from taskhandler.exceptions import ConfigError
from taskhandler.taskqueue import ManualClock
from taskhandler.taskqueue.cloudtasks import (
    APP_ENGINE_MAX_TASK_SIZE,
    EMULATOR_ENV,
    HTTP_MAX_TASK_SIZE,
    CloudTasksBackend,
    app_engine_routing,
    default_retry,
)

PROJECT = "my-project"
LOCATION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
NOW = 1_700_000_000.0
SERVICE = "google.cloud.tasks.v2.CloudTasks"


class FakeCloudTasks:
    """Cloud Tasks' task calls with the service's documented answers, over real gRPC.

    A name is refused with ALREADY_EXISTS while its task is queued and after it finished
    (``finish``) or was deleted; GetTask finds only queued tasks. ``fail`` scripts a status
    for every call on a queue; ``gate`` holds CreateTask calls until it is set.
    """

    def __init__(self) -> None:
        self.created: list[tasks_v2.CreateTaskRequest] = []
        self.deleted: list[str] = []
        self.purged: list[str] = []
        self.live: dict[str, tasks_v2.Task] = {}
        self.tombstones: set[str] = set()
        self.fail: dict[str, tuple[grpc.StatusCode, str]] = {}
        #: CreateTask calls still to refuse with UNAVAILABLE before doing anything.
        self.refuse = 0
        #: CreateTask calls still to commit and then answer with UNAVAILABLE (answer lost).
        self.lose_answer = 0
        self.gate = threading.Event()
        self.gate.set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def finish(self, name: str) -> None:
        """The task ran: its name is kept as a tombstone."""
        self.live.pop(name)
        self.tombstones.add(name)

    def _check(self, queue: str, context: grpc.ServicerContext) -> None:
        if queue in self.fail:
            context.abort(*self.fail[queue])

    def create_task(
        self, request: tasks_v2.CreateTaskRequest, context: grpc.ServicerContext
    ) -> tasks_v2.Task:
        self.gate.wait(10)
        self._check(request.parent, context)
        with self._lock:
            self.created.append(request)
            if self.refuse:
                self.refuse -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: not reached")
            task = request.task
            if not task.name:
                task.name = f"{request.parent}/tasks/{next(self._ids):020d}"
            if task.name in self.live or task.name in self.tombstones:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Requested entity already exists")
            self.live[task.name] = task
            if self.lose_answer:
                self.lose_answer -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: committed, answer lost")
        return task

    def get_task(
        self, request: tasks_v2.GetTaskRequest, context: grpc.ServicerContext
    ) -> tasks_v2.Task:
        task = self.live.get(request.name)
        if task is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "Requested entity was not found.")
        return task

    def delete_task(
        self, request: tasks_v2.DeleteTaskRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._check(request.name.split("/tasks/")[0], context)
        with self._lock:
            if self.live.pop(request.name, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "Requested entity was not found.")
            self.tombstones.add(request.name)
            self.deleted.append(request.name)
        return empty_pb2.Empty()

    def purge_queue(
        self, request: tasks_v2.PurgeQueueRequest, context: grpc.ServicerContext
    ) -> tasks_v2.Queue:
        self._check(request.name, context)
        self.purged.append(request.name)
        return tasks_v2.Queue(name=request.name)

    def handler(self) -> grpc.GenericRpcHandler:
        def method(fn: Any, request_type: Any, response_serializer: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=request_type.deserialize,
                response_serializer=response_serializer,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "CreateTask": method(
                    self.create_task, tasks_v2.CreateTaskRequest, tasks_v2.Task.serialize
                ),
                "GetTask": method(self.get_task, tasks_v2.GetTaskRequest, tasks_v2.Task.serialize),
                "DeleteTask": method(
                    self.delete_task, tasks_v2.DeleteTaskRequest, empty_pb2.Empty.SerializeToString
                ),
                "PurgeQueue": method(
                    self.purge_queue, tasks_v2.PurgeQueueRequest, tasks_v2.Queue.serialize
                ),
            },
        )


S = TypeVar("S", bound="FakeCloudTasks")


@contextlib.contextmanager
def serving(service: S) -> Iterator[tuple[S, tasks_v2.CloudTasksClient]]:
    """Serve ``service`` on a real gRPC server on 127.0.0.1; yield it with a client bound to it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    try:
        yield service, client
    finally:
        service.gate.set()
        channel.close()
        server.stop(grace=None).wait(5)


@pytest.fixture
def fake() -> Iterator[tuple[FakeCloudTasks, tasks_v2.CloudTasksClient]]:
    with serving(FakeCloudTasks()) as pair:
        yield pair


@pytest.fixture
def service(fake: tuple[FakeCloudTasks, Any]) -> FakeCloudTasks:
    return fake[0]


@pytest.fixture
def client(fake: tuple[FakeCloudTasks, Any]) -> Any:
    return fake[1]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


def _backend(client: Any, clock: ManualClock, **kwargs: Any) -> CloudTasksBackend:
    # Retries as in production, but giving up after a second so that refused calls end soon.
    kwargs.setdefault("retry", default_retry(timeout=1.0))
    return CloudTasksBackend(PROJECT, LOCATION, client=client, clock=clock, **kwargs)


@pytest.fixture
def backend(client: Any, clock: ManualClock) -> Iterator[CloudTasksBackend]:
    with _backend(client, clock) as backend, taskqueue.use(backend):
        yield backend


def _utc(posix: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(posix, tz=datetime.timezone.utc)


APP_ENGINE_CASES = [
    pytest.param(
        {"url": "/tasks/count", "params": {"amount": "1"}},
        {
            "relative_uri": "/tasks/count",
            "http_method": "POST",
            "body": b"amount=1",
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
        },
        id="POST params form-encoded in the body",
    ),
    pytest.param(
        {},
        {"relative_uri": "/_ah/queue/default", "http_method": "POST", "body": b""},
        id="default URL of the queue",
    ),
    pytest.param(
        {"url": "/tasks/get", "method": "GET", "params": {"a": "1", "b": ["x", "y"]}},
        {"relative_uri": "/tasks/get?a=1&b=x&b=y", "http_method": "GET", "body": b""},
        id="GET params in the query string",
    ),
    pytest.param(
        {
            "url": "/tasks/put",
            "method": "PUT",
            "payload": b'{"k": 1}',
            "headers": {"Content-Type": "application/json", "X-Trace": "t1"},
        },
        {
            "relative_uri": "/tasks/put",
            "http_method": "PUT",
            "body": b'{"k": 1}',
            "headers": {"Content-Type": "application/json", "X-Trace": "t1"},
        },
        id="PUT payload and headers",
    ),
    pytest.param(
        {"url": "/tasks/x", "method": "DELETE"},
        {"relative_uri": "/tasks/x", "http_method": "DELETE"},
        id="DELETE",
    ),
    pytest.param(
        {"url": "/t", "target": "worker"},
        {"app_engine_routing": {"service": "worker"}},
        id="target service",
    ),
    pytest.param(
        {"url": "/t", "target": "v2.worker"},
        {"app_engine_routing": {"version": "v2", "service": "worker"}},
        id="target version.service",
    ),
    pytest.param(
        {"url": "/t", "target": "3.v2.worker"},
        {"app_engine_routing": {"instance": "3", "version": "v2", "service": "worker"}},
        id="target instance.version.service",
    ),
]


@pytest.mark.parametrize(("kwargs", "expected"), APP_ENGINE_CASES)
def test_app_engine_request(
    backend: CloudTasksBackend,
    service: FakeCloudTasks,
    kwargs: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    """A taskqueue Task becomes an App Engine HTTP request task with the same request."""
    task = taskqueue.add(**kwargs)
    [request] = service.created
    assert request.parent == f"{PARENT}/queues/default"
    sent = request.task.app_engine_http_request
    for field, value in expected.items():
        if field == "http_method":
            assert sent.http_method == tasks_v2.HttpMethod[value]
        elif field == "app_engine_routing":
            routing = sent.app_engine_routing
            got = {k: getattr(routing, k) for k in ("instance", "version", "service")}
            assert {k: v for k, v in got.items() if v} == value
        elif field == "headers":
            assert {k: v for k, v in sent.headers.items() if k in value} == value
        else:
            assert getattr(sent, field) == value
    assert not request.task.http_request.url
    assert task.was_enqueued
    assert task.name == request.task.name.rsplit("/", 1)[-1]


def test_named_task_under_the_queue_path(
    backend: CloudTasksBackend, service: FakeCloudTasks
) -> None:
    """A named task is created as projects/P/locations/L/queues/Q/tasks/NAME."""
    task = taskqueue.Queue("default").add(taskqueue.Task(url="/t", name="count-1"))
    assert service.created[0].task.name == f"{PARENT}/queues/default/tasks/count-1"
    assert task.name == "count-1"
    assert task.queue_name == "default"


@pytest.mark.parametrize(
    ("kwargs", "delay"),
    [
        pytest.param({"countdown": 90}, 90.0, id="countdown"),
        pytest.param({"eta": _utc(NOW + 3600.5)}, 3600.5, id="eta"),
        pytest.param({}, None, id="neither: scheduled by Cloud Tasks"),
        pytest.param({"eta": _utc(NOW - 10)}, None, id="eta in the past: now"),
    ],
)
def test_schedule_time(
    backend: CloudTasksBackend,
    service: FakeCloudTasks,
    kwargs: dict[str, Any],
    delay: float | None,
) -> None:
    """countdown and eta become schedule_time; an immediate task leaves it unset."""
    taskqueue.add(url="/t", **kwargs)
    sent = service.created[0].task
    if delay is None:
        assert "schedule_time" not in sent
    else:
        assert sent.schedule_time == _utc(NOW + delay)


def test_http_target_with_oidc_token(
    client: Any, clock: ManualClock, service: FakeCloudTasks
) -> None:
    """With base_url, a task becomes an HTTP target task signed with an OIDC token."""
    backend = _backend(
        client,
        clock,
        base_url="https://worker-abc123-uc.a.run.app/",
        service_account_email="tasks@my-project.iam.gserviceaccount.com",
    )
    with backend, taskqueue.use(backend):
        taskqueue.add(url="/tasks/mail", params={"to": "a@example.com"}, queue_name="default")
        taskqueue.add()
    first, second = (r.task for r in service.created)
    assert first.http_request.url == "https://worker-abc123-uc.a.run.app/tasks/mail"
    assert first.http_request.http_method == tasks_v2.HttpMethod.POST
    assert first.http_request.body == b"to=a%40example.com"
    assert first.http_request.oidc_token.service_account_email == (
        "tasks@my-project.iam.gserviceaccount.com"
    )
    assert first.http_request.oidc_token.audience == "https://worker-abc123-uc.a.run.app"
    assert not first.app_engine_http_request.relative_uri
    assert second.http_request.url == "https://worker-abc123-uc.a.run.app/_ah/queue/default"


def test_http_target_explicit_audience(
    client: Any, clock: ManualClock, service: FakeCloudTasks
) -> None:
    """audience= is sent as the token's audience."""
    backend = _backend(
        client,
        clock,
        base_url="https://w.example",
        service_account_email="t@p.iam.gserviceaccount.com",
        audience="my-audience",
    )
    with backend, taskqueue.use(backend):
        taskqueue.add(url="/t")
    assert service.created[0].task.http_request.oidc_token.audience == "my-audience"


def test_http_target_refuses_a_target(
    client: Any, clock: ManualClock, service: FakeCloudTasks
) -> None:
    """An App Engine target has no meaning for an HTTP target task: refused, not ignored."""
    backend = _backend(
        client,
        clock,
        base_url="https://w.example",
        service_account_email="t@p.iam.gserviceaccount.com",
    )
    with backend, taskqueue.use(backend), pytest.raises(taskqueue.InvalidTaskError, match="target"):
        taskqueue.add(url="/t", target="v2.worker")
    assert service.created == []


def test_queue_map(client: Any, clock: ManualClock, service: FakeCloudTasks) -> None:
    """queue_map names Cloud Tasks queues by id or full path; unmapped queues are unknown."""
    backend = _backend(
        client,
        clock,
        queue_map={
            "mail": "mail-prod",
            "reports": "projects/other/locations/europe-west1/queues/rep",
        },
    )
    with backend, taskqueue.use(backend):
        taskqueue.add(url="/a", queue_name="mail")
        taskqueue.add(url="/b", queue_name="reports")
        taskqueue.add(url="/c")
        with pytest.raises(taskqueue.UnknownQueueError, match="queue_map"):
            taskqueue.add(url="/d", queue_name="other")
        with pytest.raises(taskqueue.UnknownQueueError), taskqueue.transaction():
            taskqueue.add(url="/e", queue_name="other", transactional=True)
    assert [r.parent for r in service.created] == [
        f"{PARENT}/queues/mail-prod",
        "projects/other/locations/europe-west1/queues/rep",
        f"{PARENT}/queues/default",
    ]


def test_live_name_raises_task_already_exists(
    backend: CloudTasksBackend, service: FakeCloudTasks
) -> None:
    """ALREADY_EXISTS for a queued task is TaskAlreadyExistsError, with the API's message."""
    taskqueue.add(url="/t", name="once")
    with pytest.raises(taskqueue.TaskAlreadyExistsError, match="Requested entity already exists"):
        taskqueue.add(url="/t", name="once")


@pytest.mark.parametrize("how", ["ran", "deleted"])
def test_used_name_raises_tombstoned(
    backend: CloudTasksBackend, service: FakeCloudTasks, how: str
) -> None:
    """ALREADY_EXISTS for a task that ran or was deleted is TombstonedTaskError."""
    taskqueue.add(url="/t", name="once")
    if how == "ran":
        service.finish(f"{PARENT}/queues/default/tasks/once")
    else:
        assert taskqueue.Queue().delete_tasks_by_name("once").was_deleted
    with pytest.raises(taskqueue.TombstonedTaskError, match="Requested entity already exists"):
        taskqueue.add(url="/t", name="once")


ERROR_CASES = [
    pytest.param(grpc.StatusCode.NOT_FOUND, taskqueue.UnknownQueueError, id="NOT_FOUND"),
    pytest.param(
        grpc.StatusCode.INVALID_ARGUMENT, taskqueue.InvalidTaskError, id="INVALID_ARGUMENT"
    ),
    pytest.param(
        grpc.StatusCode.PERMISSION_DENIED, taskqueue.PermissionDeniedError, id="PERMISSION_DENIED"
    ),
    pytest.param(
        grpc.StatusCode.UNAUTHENTICATED, taskqueue.PermissionDeniedError, id="UNAUTHENTICATED"
    ),
    pytest.param(
        grpc.StatusCode.FAILED_PRECONDITION, taskqueue.InvalidQueueError, id="FAILED_PRECONDITION"
    ),
    pytest.param(
        grpc.StatusCode.RESOURCE_EXHAUSTED, taskqueue.TransientError, id="RESOURCE_EXHAUSTED"
    ),
    pytest.param(grpc.StatusCode.UNAVAILABLE, taskqueue.TransientError, id="UNAVAILABLE"),
    pytest.param(
        grpc.StatusCode.DEADLINE_EXCEEDED, taskqueue.TransientError, id="DEADLINE_EXCEEDED"
    ),
    pytest.param(grpc.StatusCode.INTERNAL, taskqueue.InternalError, id="INTERNAL"),
    pytest.param(grpc.StatusCode.UNKNOWN, taskqueue.InternalError, id="UNKNOWN"),
]


@pytest.mark.parametrize(("status", "error"), ERROR_CASES)
def test_api_errors(
    backend: CloudTasksBackend,
    service: FakeCloudTasks,
    status: grpc.StatusCode,
    error: type[Exception],
) -> None:
    """Each API status becomes its taskqueue error, carrying the API's message."""
    service.fail[f"{PARENT}/queues/default"] = (status, f"scripted {status.name}")
    with pytest.raises(error, match=f"scripted {status.name}") as info:
        taskqueue.add(url="/t")
    assert type(info.value) is error
    assert info.value.__cause__ is not None


def test_list_add_reports_each_task(backend: CloudTasksBackend, service: FakeCloudTasks) -> None:
    """A list add creates every task; a duplicate name fails alone and the others are added."""
    taskqueue.add(url="/t", name="taken")
    tasks = [taskqueue.Task(url="/t", name=f"t{i}") for i in range(5)]
    tasks.append(taskqueue.Task(url="/t", name="taken"))
    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        taskqueue.Queue().add(tasks)
    assert [t.was_enqueued for t in tasks] == [True] * 5 + [False]
    assert len(service.live) == 6


def test_enqueue_async_returns_before_the_call_completes(
    backend: CloudTasksBackend, service: FakeCloudTasks
) -> None:
    """enqueue_async hands back a future while CreateTask is still in flight."""
    service.gate.clear()
    record = taskqueue.NewTask(
        queue_name="default",
        task_name="slow",
        method="POST",
        url="/t",
        headers=(),
        payload=b"",
        eta=NOW,
        target=None,
        retry=None,
    )
    future = backend.enqueue_async([record])
    assert not future.done()
    service.gate.set()
    assert future.result(timeout=10) == ["slow"]
    assert f"{PARENT}/queues/default/tasks/slow" in service.live


def test_transaction_deletes_created_tasks_when_one_fails(
    backend: CloudTasksBackend, service: FakeCloudTasks
) -> None:
    """In a transaction, a failed create deletes the tasks already created, then raises."""
    service.fail[f"{PARENT}/queues/broken"] = (grpc.StatusCode.NOT_FOUND, "Queue does not exist.")

    def transaction() -> None:
        with taskqueue.transaction():
            taskqueue.add(url="/a", transactional=True)
            taskqueue.add(url="/b", transactional=True)
            taskqueue.add(url="/c", queue_name="broken", transactional=True)

    with pytest.raises(taskqueue.UnknownQueueError, match="Queue does not exist"):
        transaction()
    assert len(service.created) == 2  # the third was refused
    assert len(service.deleted) == 2
    assert service.live == {}


def test_transaction_completes(backend: CloudTasksBackend, service: FakeCloudTasks) -> None:
    """Transactional tasks are created when the block completes, not before."""
    with taskqueue.transaction():
        taskqueue.add(url="/a", transactional=True)
        assert service.created == []
    assert len(service.created) == 1


def test_delete_and_purge(backend: CloudTasksBackend, service: FakeCloudTasks) -> None:
    """delete_tasks_by_name and purge call DeleteTask and PurgeQueue on the queue's path."""
    taskqueue.add(url="/t", name="d1")
    queue = taskqueue.Queue()
    assert queue.delete_tasks_by_name("d1").was_deleted
    assert not queue.delete_tasks_by_name("d1").was_deleted
    queue.purge()
    assert service.purged == [f"{PARENT}/queues/default"]


def test_retry_options_are_logged_once(
    backend: CloudTasksBackend, service: FakeCloudTasks, caplog: pytest.LogCaptureFixture
) -> None:
    """Per-task retry options cannot be sent: a warning says the queue's retry_config applies."""
    options = taskqueue.TaskRetryOptions(task_retry_limit=3)
    with caplog.at_level(logging.WARNING, logger="taskhandler"):
        taskqueue.add(url="/t", retry_options=options)
        taskqueue.add(url="/t", retry_options=options)
    assert caplog.text.count("no per-task retry options") == 1
    assert len(service.created) == 2


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param("worker", {"service": "worker"}, id="service"),
        pytest.param("v2.worker", {"version": "v2", "service": "worker"}, id="version.service"),
        pytest.param(
            "1.v2.worker",
            {"instance": "1", "version": "v2", "service": "worker"},
            id="instance.version.service",
        ),
        pytest.param("a.b.c.d", None, id="four parts"),
        pytest.param("v2..worker", None, id="empty part"),
        pytest.param("", None, id="empty"),
        pytest.param("v2.worker.appspot.com", None, id="host name"),
        pytest.param("v_2.worker", None, id="underscore"),
    ],
)
def test_app_engine_routing(target: str, expected: dict[str, str] | None) -> None:
    """App Engine targets split into routing fields; other shapes are refused."""
    if expected is None:
        with pytest.raises(taskqueue.InvalidTaskError, match="is not service"):
            app_engine_routing(target)
    else:
        assert app_engine_routing(target) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"project": ""}, "project", id="empty project"),
        pytest.param({"project": "a/b"}, "project", id="project with slash"),
        pytest.param({"location": "US Central"}, "location", id="bad location"),
        pytest.param({"queue_map": {"mail": "a/b"}}, "queue_map", id="bad queue id"),
        pytest.param({"queue_map": {"bad name!": "q"}}, "queue_map", id="bad queue name"),
        pytest.param(
            {"base_url": "/relative", "service_account_email": "a@b"},
            "base_url",
            id="relative base_url",
        ),
        pytest.param(
            {"base_url": "https://w.example/?x=1", "service_account_email": "a@b"},
            "base_url",
            id="base_url with query",
        ),
        pytest.param(
            {"base_url": "https://w.example"},
            "service_account_email",
            id="base_url without service account",
        ),
        pytest.param(
            {"service_account_email": "a@b"},
            "only to HTTP target",
            id="service account without base_url",
        ),
        pytest.param({"timeout": 0}, "timeout", id="zero timeout"),
        pytest.param({"max_workers": 0}, "max_workers", id="no workers"),
    ],
)
def test_bad_configuration(client: Any, kwargs: dict[str, Any], message: str) -> None:
    """Bad backend arguments raise ConfigError at construction."""
    args: dict[str, Any] = {"project": PROJECT, "location": LOCATION, "client": client}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        CloudTasksBackend(**args)


# -- dispatch_deadline, retries, size, emulator ---------------------------------------------

HTTP = {"base_url": "https://worker.example", "service_account_email": "tasks@p.example"}


@pytest.mark.parametrize(
    ("kwargs", "task_kwargs", "expected"),
    [
        pytest.param({}, {}, None, id="no deadline: Cloud Tasks' default"),
        pytest.param({"deadline": 3600}, {}, 3600.0, id="App Engine target, 1 h"),
        pytest.param({"deadline": 86400}, {}, 86400.0, id="App Engine target, 24 h"),
        pytest.param({**HTTP, "deadline": 1800}, {}, 1800.0, id="HTTP target, 30 min"),
        pytest.param({**HTTP, "deadline": 15}, {}, 15.0, id="HTTP target, 15 s"),
        pytest.param(
            {"deadline": 600},
            {"dispatch_deadline_usec": 120_000_000},
            120.0,
            id="the task's dispatch_deadline_usec wins",
        ),
    ],
)
def test_dispatch_deadline_from_the_handler_deadline(
    client: Any,
    clock: ManualClock,
    service: FakeCloudTasks,
    kwargs: dict[str, Any],
    task_kwargs: dict[str, Any],
    expected: float | None,
) -> None:
    """The backend's deadline is each task's dispatch_deadline unless the task sets its own."""
    with _backend(client, clock, **kwargs) as backend, taskqueue.use(backend):
        taskqueue.add(url="/t", **task_kwargs)
    [request] = service.created
    sent = request.task.dispatch_deadline
    got = None if not request.task._pb.HasField("dispatch_deadline") else sent.total_seconds()
    assert got == expected


@pytest.mark.parametrize(
    ("kwargs", "numbers"),
    [
        pytest.param({**HTTP, "deadline": 3600}, ("3600 s", "1800 s"), id="HTTP target, 1 h"),
        pytest.param({"deadline": 86401}, ("86401 s", "86400 s"), id="App Engine, over 24 h"),
        pytest.param({"deadline": 10}, ("10 s", "15 s"), id="under Cloud Tasks' 15 s"),
        pytest.param({"deadline": "600"}, ("seconds",), id="not a number"),
    ],
)
def test_deadline_cloud_tasks_cannot_honour(
    client: Any, kwargs: dict[str, Any], numbers: tuple[str, ...]
) -> None:
    """A deadline outside Cloud Tasks' range is a ConfigError naming the deadline and the limit."""
    with pytest.raises(ConfigError, match="deadline") as info:
        CloudTasksBackend(PROJECT, LOCATION, client=client, **kwargs)
    for number in numbers:
        assert number in str(info.value)


@pytest.mark.parametrize(
    ("script", "name", "calls"),
    [
        pytest.param({"refuse": 2}, None, 3, id="unnamed, refused twice, then created"),
        pytest.param({"refuse": 1}, "n-1", 2, id="named, refused once, then created"),
        pytest.param(
            {"lose_answer": 1}, "n-1", 2, id="named, committed but answer lost: the same task"
        ),
    ],
)
def test_create_task_retried_on_transient_errors(
    backend: CloudTasksBackend,
    service: FakeCloudTasks,
    script: dict[str, int],
    name: str | None,
    calls: int,
) -> None:
    """Transient CreateTask failures are retried; a named task is created exactly once."""
    for field, value in script.items():
        setattr(service, field, value)
    task = taskqueue.add(url="/t", name=name, payload=b"body")
    assert len(service.created) == calls
    assert len(service.live) == 1
    [live] = service.live
    assert task.was_enqueued
    assert task.name == live.rsplit("/", 1)[-1]


def test_lost_answer_then_a_different_task_of_that_name(
    backend: CloudTasksBackend, service: FakeCloudTasks
) -> None:
    """ALREADY_EXISTS after a retry is success only when the queued task is the request sent."""
    taskqueue.add(url="/other", name="n-1")
    service.refuse = 1  # the next add's first try fails, so its ALREADY_EXISTS follows a retry
    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        taskqueue.add(url="/t", name="n-1")


def test_first_try_already_exists_is_not_retried(
    backend: CloudTasksBackend, service: FakeCloudTasks
) -> None:
    """ALREADY_EXISTS on the first try is the duplicate App Engine reported, with no GetTask guess."""
    taskqueue.add(url="/t", name="n-1", payload=b"same")
    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        taskqueue.add(url="/t", name="n-1", payload=b"same")
    assert len(service.created) == 2


@pytest.mark.parametrize(
    ("retry", "calls", "error"),
    [
        pytest.param(False, 1, taskqueue.TransientError, id="retry=False: one attempt"),
        pytest.param(None, 4, None, id="default retry: until it succeeds"),
    ],
)
def test_retry_setting(
    client: Any,
    clock: ManualClock,
    service: FakeCloudTasks,
    retry: Any,
    calls: int,
    error: type[Exception] | None,
) -> None:
    """retry=False makes one attempt; the default retry keeps trying through transient errors."""
    service.refuse = 3
    with (
        CloudTasksBackend(PROJECT, LOCATION, client=client, clock=clock, retry=retry) as backend,
        taskqueue.use(backend),
    ):
        if error is None:
            taskqueue.add(url="/t")
        else:
            with pytest.raises(error, match="not reached"):
                taskqueue.add(url="/t")
    assert len(service.created) == calls


@pytest.mark.parametrize(
    ("kwargs", "size"),
    [
        pytest.param({}, APP_ENGINE_MAX_TASK_SIZE, id="App Engine target: 100 KiB"),
        pytest.param(HTTP, HTTP_MAX_TASK_SIZE, id="HTTP target: 1 MB"),
    ],
)
def test_max_task_size(client: Any, kwargs: dict[str, Any], size: int) -> None:
    """The backend states Cloud Tasks' size limit for its kind of task."""
    with CloudTasksBackend(PROJECT, LOCATION, client=client, **kwargs) as backend:
        assert backend.max_task_size == size


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("no-port", id="no port"),
        pytest.param("host:port", id="port not a number"),
        pytest.param("a/b:80", id="slash"),
    ],
)
def test_bad_emulator_host(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    """A malformed CLOUD_TASKS_EMULATOR_HOST is a ConfigError naming the variable."""
    monkeypatch.setenv(EMULATOR_ENV, host)
    with pytest.raises(ConfigError, match=EMULATOR_ENV):
        CloudTasksBackend(PROJECT, LOCATION)


@pytest.mark.parametrize(
    ("base_url", "size", "accepted"),
    [
        pytest.param("https://w.example", 500_000, True, id="HTTP target, 500 kB"),
        pytest.param("https://w.example", 999_000, True, id="HTTP target, just under 1 MB"),
        pytest.param("https://w.example", 1_000_001, False, id="HTTP target, over 1 MB"),
        pytest.param(None, 200_000, False, id="App Engine target, over 100 KiB"),
    ],
)
def test_http_target_payloads_up_to_cloud_tasks_limit(
    client: Any,
    clock: ManualClock,
    service: FakeCloudTasks,
    base_url: str | None,
    size: int,
    accepted: bool,
) -> None:
    """HTTP-target tasks may carry up to Cloud Tasks' 1 MB; App Engine targets keep 100 KiB."""
    kwargs: dict[str, Any] = {}
    if base_url is not None:
        kwargs = {"base_url": base_url, "service_account_email": "t@p.iam.gserviceaccount.com"}
    backend = _backend(client, clock, **kwargs)
    with backend, taskqueue.use(backend):
        if accepted:
            taskqueue.add(url="/tasks/big", payload=b"x" * size)
            assert len(service.created[0].task.http_request.body) == size
        else:
            with pytest.raises(taskqueue.TaskTooLargeError):
                taskqueue.add(url="/tasks/big", payload=b"x" * size)
            assert service.created == []
    with pytest.raises(taskqueue.TaskTooLargeError):  # no backend: App Engine's 100 KiB
        taskqueue.Task(url="/tasks/big", payload=b"x" * 200_000)
