"""``taskhandler.testing.testbed``: App Engine's testbed task queue stub, over a real local queue.

The first tests are written as App Engine tests were (``unittest``, ``setUp``/``tearDown``,
``get_filtered_tasks``, ``deferred.run(task.payload)``), with only their imports changed;
the rest pin the stub's methods and the shapes App Engine's stub returned.
"""

# App Engine's unittest style (assertEqual) is kept on purpose: these tests port as they were.
# ruff: noqa: PT009, PT027
from __future__ import annotations

import base64
import os
import re
import tempfile
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhandler import ConfigError, deferred, taskqueue
from taskhandler.taskqueue import LocalTaskQueue, TaskAlreadyExistsError, UnknownQueueError
from taskhandler.testing import testbed

QUEUE_YAML = """\
queue:
- name: mail
  rate: 10/m
  bucket_size: 2
  retry_parameters:
    task_retry_limit: 3
    min_backoff_seconds: 2
- name: reports
  rate: 1/s
"""

SENT: list[str] = []


def send_invoice(order_id: int, copies: int = 1) -> None:
    """The deferred function of the ported tests."""
    SENT.append(f"invoice {order_id} x{copies}")


def place_order(order_id: int) -> None:
    """Application code: defers the invoice and adds a report task."""
    deferred.defer(send_invoice, order_id, _queue="mail", _name=f"invoice-{order_id}")
    taskqueue.add(url="/reports/orders", params={"id": str(order_id)}, queue_name="reports")


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No signing key or store configured: the testbed supplies its own."""
    monkeypatch.delenv(deferred.SECRET_KEY_ENV, raising=False)
    SENT.clear()
    with deferred.configure(secret_key=None, store=None):
        yield


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """An application directory with a queue.yaml."""
    (tmp_path / "queue.yaml").write_text(QUEUE_YAML)
    return tmp_path


# -- ported App Engine tests -------------------------------------------------------------------


class OrderTest(unittest.TestCase):
    """An App Engine test of deferred work, with only its imports changed."""

    def setUp(self) -> None:
        app_dir = tempfile.TemporaryDirectory()
        self.addCleanup(app_dir.cleanup)
        Path(app_dir.name, "queue.yaml").write_text(QUEUE_YAML)
        self.testbed = testbed.Testbed()
        self.testbed.activate()
        self.testbed.init_taskqueue_stub(root_path=app_dir.name)
        self.taskqueue_stub: Any = self.testbed.get_stub(testbed.TASKQUEUE_SERVICE_NAME)

    def tearDown(self) -> None:
        self.testbed.deactivate()

    def test_order_defers_invoice(self) -> None:
        """Placing an order defers the invoice to the mail queue; running it sends it."""
        place_order(42)
        tasks = self.taskqueue_stub.get_filtered_tasks(queue_names="mail")
        self.assertEqual(1, len(tasks))
        self.assertEqual("invoice-42", tasks[0].name)
        deferred.run(tasks[0].payload)
        self.assertEqual(["invoice 42 x1"], SENT)

    def test_order_adds_report_task(self) -> None:
        """Placing an order adds a report task with the order id."""
        place_order(7)
        tasks = self.taskqueue_stub.get_filtered_tasks(url="/reports/orders")
        self.assertEqual(1, len(tasks))
        self.assertEqual({b"id": b"7"}, tasks[0].extract_params())
        self.assertEqual("reports", tasks[0].headers["X-AppEngine-QueueName"])

    def test_flush(self) -> None:
        """FlushQueue empties the queues."""
        place_order(1)
        self.taskqueue_stub.FlushQueue("mail")
        self.taskqueue_stub.FlushQueue("reports")
        self.assertEqual([], self.taskqueue_stub.get_filtered_tasks())

    def test_invoice_is_deferred_once(self) -> None:
        """The invoice task is named: a second order of the same id is refused."""
        place_order(3)
        with self.assertRaises(TaskAlreadyExistsError):
            place_order(3)


# -- the testbed's life cycle ---------------------------------------------------------------------


def test_activate_installs_and_deactivate_restores_the_backend(app_dir: Path) -> None:
    """init_taskqueue_stub installs the stub's queue; deactivate puts the previous one back."""
    with LocalTaskQueue(lambda e, s: [], db=":memory:") as before, taskqueue.use(before):
        bed = testbed.Testbed()
        bed.activate()
        bed.init_taskqueue_stub(root_path=app_dir)
        stub = bed.get_stub(testbed.TASKQUEUE_SERVICE_NAME)
        assert stub is not None
        assert taskqueue.current_backend() is stub.queue
        bed.deactivate()
        assert taskqueue.current_backend() is before


def test_deactivate_restores_environment_and_deferred(monkeypatch: pytest.MonkeyPatch) -> None:
    """setup_env and the testbed's deferred key and store last only while it is active."""
    monkeypatch.delenv("USER_EMAIL", raising=False)
    bed = testbed.Testbed()
    bed.activate()
    bed.setup_env(user_email="a@example.com")
    bed.init_taskqueue_stub()
    assert (os.environ["USER_EMAIL"], deferred.has_secret_key()) == ("a@example.com", True)
    assert isinstance(deferred.current_store(), deferred.MemoryDeferredStore)
    bed.deactivate()
    assert ("USER_EMAIL" in os.environ, deferred.has_secret_key()) == (False, False)
    assert deferred.current_store() is None


def test_configured_deferred_settings_are_kept() -> None:
    """A key and store the test configured itself are not replaced by the testbed's."""
    store = deferred.MemoryDeferredStore()
    with deferred.configure(secret_key="s" * 40, store=store):
        bed = testbed.Testbed()
        bed.activate()
        bed.init_taskqueue_stub()
        payload = deferred.serialize(send_invoice, 1)
        bed.deactivate()
        assert deferred.current_store() is store
        deferred.run(payload)  # signed with the test's own key
    assert SENT == ["invoice 1 x1"]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(lambda b: b.get_stub("taskqueue"), testbed.NotActivatedError, id="get_stub"),
        pytest.param(lambda b: b.init_taskqueue_stub(), testbed.NotActivatedError, id="init"),
        pytest.param(lambda b: b.deactivate(), testbed.NotActivatedError, id="deactivate"),
        pytest.param(lambda b: b.setup_env(a="b"), testbed.NotActivatedError, id="setup_env"),
    ],
)
def test_not_activated(call: Any, error: type[Exception]) -> None:
    """Using a testbed before activate() is App Engine's NotActivatedError."""
    with pytest.raises(error, match="not activated"):
        call(testbed.Testbed())


@pytest.mark.parametrize(
    ("method", "service"),
    [
        pytest.param("init_datastore_v3_stub", "datastore_v3", id="datastore"),
        pytest.param("init_memcache_stub", "memcache", id="memcache"),
        pytest.param("init_user_stub", "user", id="users"),
        pytest.param("init_urlfetch_stub", "urlfetch", id="urlfetch"),
        pytest.param("init_mail_stub", "mail", id="mail"),
        pytest.param("init_app_identity_stub", "app_identity_service", id="app identity"),
        pytest.param("init_blobstore_stub", "blobstore", id="blobstore"),
        pytest.param("init_search_stub", "search", id="search"),
        pytest.param("init_modules_stub", "modules", id="modules"),
        pytest.param("init_all_stubs", "init_all_stubs", id="all stubs"),
    ],
)
def test_other_stubs_say_they_are_not_supported(method: str, service: str) -> None:
    """Every other init_*_stub raises a NotImplementedError naming what is supported."""
    bed = testbed.Testbed()
    bed.activate()
    try:
        with pytest.raises(NotImplementedError, match=re.escape(service)) as caught:
            getattr(bed, method)()
        assert isinstance(caught.value, testbed.StubNotSupportedError)
        assert "init_taskqueue_stub" in str(caught.value)
    finally:
        bed.deactivate()


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        pytest.param("taskqueue", None, id="task queue before init: None"),
        pytest.param("datastore_v3", testbed.StubNotSupportedError, id="datastore: unsupported"),
        pytest.param("nonsense", testbed.StubNotSupportedError, id="unknown name: unsupported"),
    ],
)
def test_get_stub(service: str, expected: Any) -> None:
    """get_stub returns None for the task queue before init, and refuses other services."""
    bed = testbed.Testbed()
    bed.activate()
    try:
        if expected is None:
            assert bed.get_stub(service) is None
        else:
            with pytest.raises(expected):
                bed.get_stub(service)
    finally:
        bed.deactivate()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param({"auto_task_running": True}, NotImplementedError, "never runs", id="auto"),
        pytest.param({"_all_queues_valid": True}, TypeError, "_all_queues_valid", id="unknown"),
    ],
)
def test_unsupported_stub_arguments(kwargs: dict[str, Any], error: type, message: str) -> None:
    """App Engine stub arguments the stub cannot honour are refused, not ignored."""
    bed = testbed.Testbed()
    bed.activate()
    try:
        with pytest.raises(error, match=message):
            bed.init_taskqueue_stub(**kwargs)
    finally:
        bed.deactivate()


def test_disabled_stub_installs_no_queue() -> None:
    """init_taskqueue_stub(enable=False): adding a task fails, as with a disabled service."""
    bed = testbed.Testbed()
    bed.activate()
    try:
        bed.init_taskqueue_stub(enable=False)
        with pytest.raises(taskqueue.Error, match="no task queue is installed"):
            taskqueue.add(url="/x")
    finally:
        bed.deactivate()


# -- the stub -----------------------------------------------------------------------------------


@pytest.fixture
def stub(app_dir: Path) -> Iterator[testbed.TaskQueueServiceStub]:
    """An active testbed's task queue stub over app_dir's queue.yaml."""
    bed = testbed.Testbed()
    bed.activate()
    bed.init_taskqueue_stub(root_path=app_dir)
    found = bed.get_stub(testbed.TASKQUEUE_SERVICE_NAME)
    assert found is not None
    yield found
    bed.deactivate()


def _add_three() -> None:
    taskqueue.add(url="/a", params={"x": "1"}, name="first")
    taskqueue.add(url="/b", payload=b"\x00body", name="second", queue_name="mail")
    taskqueue.add(url="/a", method="GET", params={"y": "2"}, queue_name="reports", countdown=30)


@pytest.mark.parametrize(
    ("filters", "names"),
    [
        pytest.param({}, ["first", "second", "*"], id="all"),
        pytest.param({"url": "/a"}, ["first"], id="by url (a GET task's url has its query)"),
        pytest.param({"url": "/a?y=2"}, ["*"], id="GET url with its query"),
        pytest.param({"name": "second"}, ["second"], id="by name"),
        pytest.param({"queue_names": "mail"}, ["second"], id="one queue by name"),
        pytest.param({"queue_names": ["default", "mail"]}, ["first", "second"], id="queue list"),
        pytest.param({"queue_names": ["nowhere"]}, [], id="unknown queue skipped"),
        pytest.param({"url": "/a", "queue_names": "mail"}, [], id="filters combine"),
    ],
)
def test_get_filtered_tasks(
    stub: testbed.TaskQueueServiceStub, filters: dict[str, Any], names: list[str]
) -> None:
    """get_filtered_tasks filters by url, name and queue names, as App Engine's stub did."""
    _add_three()
    found = [t.name for t in stub.get_filtered_tasks(**filters)]
    assert [n if n in ("first", "second") else "*" for n in found] == names


def test_filtered_task_is_a_task(stub: testbed.TaskQueueServiceStub) -> None:
    """Returned tasks have url, name, payload, method, headers and extract_params()."""
    _add_three()
    first, second, third = stub.get_filtered_tasks()
    assert isinstance(first, taskqueue.Task)
    assert (first.url, first.method, first.payload, first.extract_params()) == (
        "/a",
        "POST",
        b"x=1",
        {b"x": b"1"},
    )
    assert (second.payload, second.queue_name) == (b"\x00body", "mail")
    assert (third.method, third.payload, third.extract_params()) == ("GET", None, {"y": b"2"})
    assert {k: v for k, v in first.headers.items() if k.startswith("X-AppEngine-Task")} == {
        "X-AppEngine-TaskName": "first",
        "X-AppEngine-TaskRetryCount": "0",
        "X-AppEngine-TaskETA": first.headers["X-AppEngine-TaskETA"],
        "X-AppEngine-TaskExecutionCount": "0",
    }
    assert first.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_get_tasks_has_app_engine_shape(stub: testbed.TaskQueueServiceStub) -> None:
    """GetTasks returns App Engine's dicts: its keys, base64 body, its time format."""
    _add_three()
    [task] = stub.GetTasks("mail")
    assert set(task) == {
        "name",
        "queue_name",
        "url",
        "method",
        "eta",
        "eta_usec",
        "eta_delta",
        "body",
        "creation_time_usec",
        "headers",
    }
    assert (task["name"], task["queue_name"], task["url"], task["method"]) == (
        "second",
        "mail",
        "/b",
        "POST",
    )
    assert base64.b64decode(task["body"]) == b"\x00body"
    assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d", task["eta"])
    assert task["eta_delta"].endswith(" ago")
    names = [name for name, _ in task["headers"]]
    assert names[-3:] == ["Content-Length", "Content-Type", "X-AppEngine-TaskExecutionCount"]
    [later] = stub.GetTasks("reports")
    assert re.fullmatch(r"0:00:[23]\d from now", later["eta_delta"])


def test_get_tasks_of_unknown_queue(stub: testbed.TaskQueueServiceStub) -> None:
    """An undeclared queue is a KeyError, as in App Engine's stub."""
    with pytest.raises(KeyError):
        stub.GetTasks("nowhere")


def test_get_queues(stub: testbed.TaskQueueServiceStub) -> None:
    """GetQueues lists every queue of queue.yaml and default, sorted, with counts."""
    _add_three()
    queues = {q["name"]: q for q in stub.GetQueues()}
    assert list(queues) == ["default", "mail", "reports"]
    mail = queues["mail"]
    assert (mail["max_rate"], mail["bucket_size"], mail["mode"], mail["tasks_in_queue"]) == (
        "10/m",
        2,
        "push",
        1,
    )
    assert mail["retry_parameters"] == {"retry_limit": 3, "min_backoff_sec": 2.0}
    assert "retry_parameters" not in queues["default"]
    assert queues["default"]["max_rate"] == "5/s"


@pytest.mark.parametrize(
    ("file_name", "queues"),
    [
        pytest.param("queue.yaml", ["default", "mail", "reports"], id="queue.yaml"),
        pytest.param("queue.yml", ["default", "mail", "reports"], id="queue.yml"),
        pytest.param(None, ["default"], id="no file: default only"),
    ],
)
def test_root_path_queue_files(tmp_path: Path, file_name: str | None, queues: list[str]) -> None:
    """init_taskqueue_stub(root_path=) reads queue.yaml or queue.yml there."""
    if file_name is not None:
        (tmp_path / file_name).write_text(QUEUE_YAML)
    bed = testbed.Testbed()
    bed.activate()
    try:
        bed.init_taskqueue_stub(root_path=str(tmp_path))
        stub = bed.get_stub(testbed.TASKQUEUE_SERVICE_NAME)
        assert stub is not None
        assert [q["name"] for q in stub.GetQueues()] == queues
        if queues == ["default"]:
            with pytest.raises(UnknownQueueError):
                taskqueue.add(url="/x", queue_name="mail")
    finally:
        bed.deactivate()


def test_bad_queue_yaml_names_the_file(tmp_path: Path) -> None:
    """An invalid queue.yaml is a ConfigError naming the file."""
    (tmp_path / "queue.yaml").write_text("queue:\n- name: mail\n  rate: fast\n")
    bed = testbed.Testbed()
    bed.activate()
    try:
        with pytest.raises(ConfigError, match=r"queue\.yaml"):
            bed.init_taskqueue_stub(root_path=tmp_path)
    finally:
        bed.deactivate()


def test_delete_task_and_flush(stub: testbed.TaskQueueServiceStub) -> None:
    """DeleteTask and FlushQueue remove waiting tasks; unknown queues are ignored."""
    _add_three()
    stub.DeleteTask("default", "first")
    stub.DeleteTask("nowhere", "first")
    stub.FlushQueue("mail")
    stub.FlushQueue("nowhere")
    assert [q["tasks_in_queue"] for q in stub.GetQueues()] == [0, 0, 1]


def test_flushed_names_stay_reserved(stub: testbed.TaskQueueServiceStub) -> None:
    """After FlushQueue a named task's name is a tombstone, as in production."""
    _add_three()
    stub.FlushQueue("default")
    with pytest.raises(taskqueue.TombstonedTaskError):
        taskqueue.add(url="/a", name="first")


def test_the_stub_does_not_dispatch(stub: testbed.TaskQueueServiceStub) -> None:
    """Tasks wait in the stub: the queue is never started."""
    deferred.defer(send_invoice, 5)
    assert (stub.queue.running, len(stub.get_filtered_tasks()), SENT) == (False, 1, [])


def test_large_deferred_call_runs_from_the_stub(stub: testbed.TaskQueueServiceStub) -> None:
    """A call too large for a task is kept by the testbed; deferred.run(payload) runs it."""
    deferred.defer(send_invoice, 9, copies="x" * (120 * 1024))
    [task] = stub.get_filtered_tasks(url="/_ah/queue/deferred")
    assert task.payload is not None and len(task.payload) < 1024
    deferred.run(task.payload)
    assert [f"invoice 9 x{'x' * (120 * 1024)}"] == SENT
    assert len(deferred.current_store()) == 0  # type: ignore[arg-type]


# -- pull queues in the stub ----------------------------------------------------------------------

PULL_YAML = QUEUE_YAML + "- name: work\n  mode: pull\n"


@pytest.fixture
def pull_stub(tmp_path: Path) -> Iterator[testbed.TaskQueueServiceStub]:
    """An active testbed's stub whose queue.yaml also declares a pull queue, ``work``."""
    (tmp_path / "queue.yaml").write_text(PULL_YAML)
    bed = testbed.Testbed()
    bed.activate()
    bed.init_taskqueue_stub(root_path=tmp_path)
    found = bed.get_stub(testbed.TASKQUEUE_SERVICE_NAME)
    assert found is not None
    yield found
    bed.deactivate()


def _add_pull_tasks() -> None:
    work = taskqueue.Queue("work")
    work.add(taskqueue.Task(payload=b"\x00one", method="PULL", tag="red", name="one"))
    work.add(taskqueue.Task(payload="two", method="PULL", name="two", countdown=30))
    taskqueue.add(url="/a", name="push")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param(
            {"queue_names": "work"},
            [("one", "PULL", b"\x00one", "red"), ("two", "PULL", b"two", None)],
            id="the pull queue",
        ),
        pytest.param({"name": "one"}, [("one", "PULL", b"\x00one", "red")], id="by name"),
        pytest.param(
            {},
            [
                ("push", "POST", b"", None),
                ("one", "PULL", b"\x00one", "red"),
                ("two", "PULL", b"two", None),
            ],
            id="every queue",
        ),
    ],
)
def test_get_filtered_tasks_lists_pull_tasks(
    pull_stub: testbed.TaskQueueServiceStub,
    filters: dict[str, Any],
    expected: list[tuple[str, str, bytes, str | None]],
) -> None:
    """Pull tasks are listed as Tasks with method PULL, their payload and their tag."""
    _add_pull_tasks()
    found = pull_stub.get_filtered_tasks(**filters)
    assert [(t.name, t.method, t.payload or b"", t.tag) for t in found] == expected
    assert all(isinstance(t, taskqueue.Task) for t in found)
    assert [t.queue_name for t in found if t.method == "PULL"] == ["work"] * sum(
        1 for e in expected if e[1] == "PULL"
    )


def test_get_tasks_lists_pull_tasks(pull_stub: testbed.TaskQueueServiceStub) -> None:
    """GetTasks gives pull tasks in ETA order, method PULL, base64 body, and a tag when set."""
    _add_pull_tasks()
    one, two = pull_stub.GetTasks("work")
    assert (one["name"], one["method"], one["tag"]) == ("one", "PULL", "red")
    assert base64.b64decode(one["body"]) == b"\x00one"
    assert (two["name"], two["method"], base64.b64decode(two["body"])) == ("two", "PULL", b"two")
    assert "tag" not in two
    assert re.fullmatch(r"0:00:[23]\d from now", two["eta_delta"])
    assert ("X-AppEngine-QueueName", "work") in one["headers"]


def test_leased_pull_tasks_stay_listed_until_deleted(
    pull_stub: testbed.TaskQueueServiceStub,
) -> None:
    """A leased pull task is still in the queue (as in App Engine's stub) until deleted."""
    _add_pull_tasks()
    work = taskqueue.Queue("work")
    [leased] = work.lease_tasks(lease_seconds=60, max_tasks=10)
    assert leased.name == "one"
    assert [t.name for t in pull_stub.get_filtered_tasks(queue_names="work")] == ["two", "one"]
    work.delete_tasks(leased)
    assert [t["name"] for t in pull_stub.GetTasks("work")] == ["two"]


def test_pull_queue_counts_delete_and_flush(pull_stub: testbed.TaskQueueServiceStub) -> None:
    """GetQueues counts pull tasks; DeleteTask and FlushQueue work on a pull queue."""
    _add_pull_tasks()
    counts = {q["name"]: (q["mode"], q["tasks_in_queue"]) for q in pull_stub.GetQueues()}
    assert counts["work"] == ("pull", 2)
    pull_stub.DeleteTask("work", "one")
    assert [t.name for t in pull_stub.get_filtered_tasks(queue_names="work")] == ["two"]
    pull_stub.FlushQueue("work")
    assert pull_stub.GetTasks("work") == []
