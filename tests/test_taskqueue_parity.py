"""taskqueue against App Engine's own ``google.appengine.api.taskqueue``, side by side.

Each row builds the same ``Task`` (or calls the same ``Queue`` method) with taskhandler and,
when appengine-python-standard imports, with App Engine's library, and compares what a probe
reads from both with a *recorded* expectation. The recorded column always runs, so the table
holds even where App Engine's library is missing. Rows whose App Engine value differs on
purpose carry it in ``app_engine=`` and say why in their id (and in docs/porting.md).

App Engine's ``Queue`` lease and delete calls check their arguments before any RPC, so those
checks are compared live too; pull-queue behaviour is compared against App Engine's service
stub (``taskqueue_stub``) registered on its own API proxy.
"""

from __future__ import annotations

import datetime
import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from taskhandler import taskqueue
from taskhandler.taskqueue import LocalTaskQueue, ManualClock, QueueConfig

SAME = object()  # App Engine's value is the recorded one


def _app_engine() -> ModuleType | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("google.appengine.api.taskqueue.taskqueue")
    except ImportError:
        return None


GOOGLE = _app_engine()
NO_APP_ENGINE = "appengine-python-standard is not installed (the test extra installs it)"


def outcome(call: Callable[[], Any], probe: Callable[[Any], Any]) -> Any:
    """``("ok", probe(result))`` or ``("error", the error's class name)``."""
    try:
        return ("ok", probe(call()))
    except Exception as exc:
        return ("error", type(exc).__name__)


def without_namespace(headers: Any) -> dict[str, Any]:
    """The headers as a dict, less App Engine's namespace header (taskhandler has no namespaces)."""
    return {k: v for k, v in dict(headers).items() if k != "X-AppEngine-Current-Namespace"}


# -- Task: (kwargs, probe, recorded, App Engine's when it differs on purpose) ----------------

PAYLOAD = lambda t: t.payload  # noqa: E731 - table cells
PARAMS = lambda t: t.extract_params()  # noqa: E731
HEADERS = lambda t: without_namespace(t.headers)  # noqa: E731
NAME = lambda t: t.name  # noqa: E731
URL = lambda t: t.url  # noqa: E731
TAG = lambda t: t.tag  # noqa: E731
OK = lambda t: True  # noqa: E731

TASK_ROWS = [
    # names
    pytest.param({"name": ""}, NAME, ("ok", ""), SAME, id="name '' is no name"),
    pytest.param({"name": None}, NAME, ("ok", None), SAME, id="name None"),
    pytest.param({"name": "a-b_1"}, NAME, ("ok", "a-b_1"), SAME, id="good name"),
    pytest.param({"name": "a b"}, NAME, ("error", "InvalidTaskNameError"), SAME, id="bad name"),
    pytest.param(
        {"name": "n" * 501}, NAME, ("error", "InvalidTaskNameError"), SAME, id="501-char name"
    ),
    # payloads and params: bytes and str as App Engine's Python 3 library has them
    pytest.param({"payload": "text"}, PAYLOAD, ("ok", b"text"), SAME, id="str payload is bytes"),
    pytest.param({"payload": b"\x00"}, PAYLOAD, ("ok", b"\x00"), SAME, id="bytes payload"),
    pytest.param({"payload": ""}, PAYLOAD, ("ok", b""), SAME, id="empty str payload"),
    pytest.param(
        {"params": {"a": "1", "b": ["2", "3"]}},
        PAYLOAD,
        ("ok", "a=1&b=2&b=3"),
        SAME,
        id="POST params payload is a str",
    ),
    pytest.param(
        {"params": {"a": "1", "b": ["2", "3"]}},
        PARAMS,
        ("ok", {"a": b"1", "b": [b"2", b"3"]}),
        SAME,
        id="extract_params of params: str names, bytes values",
    ),
    pytest.param(
        {"payload": b"a=1&a=2"},
        PARAMS,
        ("ok", {b"a": [b"1", b"2"]}),
        SAME,
        id="extract_params of a bytes body: bytes names",
    ),
    pytest.param(
        {"url": "/x?k=v&e=", "method": "GET"},
        PARAMS,
        ("ok", {"k": b"v", "e": b""}),
        SAME,
        id="extract_params of a query string",
    ),
    pytest.param({"payload": "a"}, PARAMS, ("error", "ValueError"), SAME, id="not form data"),
    pytest.param(
        {"params": {"a": 1}, "method": "GET", "url": "/x"},
        URL,
        ("ok", "/x?a=1"),
        SAME,
        id="GET params in the url",
    ),
    # headers: case-insensitive, values as given, App Engine's content-type spelling
    pytest.param(
        {"payload": "x"},
        HEADERS,
        ("ok", {"content-type": "text/plain; charset=utf-8"}),
        SAME,
        id="str payload content-type",
    ),
    pytest.param(
        {"params": {"a": "1"}},
        HEADERS,
        ("ok", {"content-type": "application/x-www-form-urlencoded"}),
        SAME,
        id="params content-type",
    ),
    pytest.param(
        {"payload": "x", "headers": {"Content-Type": "a/b", "X-Multi": ["1", "2"]}},
        HEADERS,
        ("ok", {"Content-Type": "a/b", "X-Multi": ["1", "2"]}),
        SAME,
        id="given headers kept as given",
    ),
    pytest.param(
        {"payload": "x", "headers": {"Content-Type": "a/b"}},
        lambda t: (t.headers.get("Content-Type"), "content-type" in t.headers),
        ("ok", ("a/b", False)),
        SAME,
        id="headers is a plain dict: case-sensitive, given spelling",
    ),
    pytest.param(
        {"headers": {"Host": "h"}, "target": "v1"},
        OK,
        ("error", "InvalidTaskError"),
        SAME,
        id="Host header with a target",
    ),
    # methods and urls
    pytest.param(
        {"method": "get", "url": "/x"},
        lambda t: t.method,
        ("ok", "GET"),
        SAME,
        id="lower-case method",
    ),
    pytest.param({"method": "PATCH"}, OK, ("error", "InvalidTaskError"), SAME, id="PATCH"),
    pytest.param({"url": "x"}, OK, ("error", "InvalidUrlError"), SAME, id="relative url"),
    pytest.param({"url": "/" + "a" * 2083}, OK, ("error", "InvalidUrlError"), SAME, id="long url"),
    pytest.param({"url": "/x#f"}, OK, ("error", "InvalidUrlError"), SAME, id="url fragment"),
    pytest.param({"url": "/x?a=1"}, OK, ("error", "InvalidTaskError"), SAME, id="POST query"),
    # eta
    pytest.param({"countdown": 31 * 86400}, OK, ("error", "InvalidEtaError"), SAME, id="31 days"),
    pytest.param(
        {"countdown": "soon"}, OK, ("error", "InvalidTaskError"), SAME, id="bad countdown"
    ),
    pytest.param(
        {"eta": datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc), "countdown": 1},
        OK,
        ("error", "InvalidTaskError"),
        SAME,
        id="eta and countdown",
    ),
    # dispatch deadlines
    pytest.param(
        {"dispatch_deadline_usec": 60_000_000},
        lambda t: t.dispatch_deadline_usec,
        ("ok", 60_000_000),
        SAME,
        id="dispatch deadline",
    ),
    pytest.param(
        {"dispatch_deadline_usec": 14_000_000},
        OK,
        ("error", "InvalidDispatchDeadlineError"),
        SAME,
        id="dispatch deadline under 15 s",
    ),
    pytest.param(
        {"dispatch_deadline_usec": 86_401_000_000},
        OK,
        ("error", "InvalidDispatchDeadlineError"),
        SAME,
        id="dispatch deadline over 24 h",
    ),
    pytest.param(
        {"dispatch_deadline_usec": 60.0}, OK, ("error", "TypeError"), SAME, id="float deadline"
    ),
    # pull tasks and tags
    pytest.param(
        {"payload": "x", "method": "PULL", "tag": "t"},
        lambda t: (t.method, t.tag, t.payload),
        ("ok", ("PULL", "t", b"x")),
        SAME,
        id="pull task",
    ),
    pytest.param({"tag": "t"}, OK, ("error", "InvalidTaskError"), SAME, id="tag on a push task"),
    pytest.param(
        {"payload": "x", "method": "PULL", "tag": "t" * 501},
        OK,
        ("error", "InvalidTagError"),
        SAME,
        id="501-char tag",
    ),
    pytest.param(
        {"payload": "x", "method": "PULL", "tag": 7},
        OK,
        ("error", "InvalidTagError"),
        ("error", "TypeError"),
        id="int tag: InvalidTagError (App Engine: TypeError from len)",
    ),
    pytest.param({"method": "PULL"}, OK, ("error", "InvalidTaskError"), SAME, id="pull no payload"),
    pytest.param(
        {"method": "PULL", "payload": "x", "url": "/x"},
        OK,
        ("error", "InvalidTaskError"),
        SAME,
        id="pull with url",
    ),
    pytest.param(
        {"method": "PULL", "payload": "x", "headers": {"a": "b"}},
        OK,
        ("error", "InvalidTaskError"),
        SAME,
        id="pull with headers",
    ),
    pytest.param(
        {"method": "PULL", "params": {"a": "1"}},
        lambda t: (t.payload, t.extract_params()),
        ("ok", (b"a=1", {b"a": b"1"})),
        SAME,
        id="pull params",
    ),
    # sizes
    pytest.param(
        {"payload": b"x" * 102_400}, OK, ("error", "TaskTooLargeError"), SAME, id="push 100 KiB"
    ),
    pytest.param(
        {"payload": b"x" * 500_000, "method": "PULL"}, OK, ("ok", True), SAME, id="pull 500 KB"
    ),
    pytest.param(
        {"payload": b"x" * 2**20, "method": "PULL"},
        OK,
        ("error", "TaskTooLargeError"),
        SAME,
        id="pull 1 MiB",
    ),
    pytest.param(
        {"payload": "abc", "headers": {"X-A": "1"}},
        lambda t: t.size,
        ("ok", 4 + 3 + 0 + len("X-A1: \r\n") + len("content-typetext/plain; charset=utf-8: \r\n")),
        (
            "ok",
            4
            + 3
            + 0
            + len("X-A1: \r\n")
            + len("content-typetext/plain; charset=utf-8: \r\n")
            + len("X-AppEngine-Current-Namespace: \r\n"),
        ),
        id="size (App Engine counts its namespace header)",
    ),
    # retry options
    pytest.param(
        {"retry_options": "no"},
        OK,
        ("error", "InvalidTaskError"),
        ("ok", True),
        id="retry_options not TaskRetryOptions: refused (App Engine: accepted, fails later)",
    ),
]


@pytest.mark.parametrize(("kwargs", "probe", "recorded", "app_engine"), TASK_ROWS)
def test_task_matches_app_engine(
    kwargs: dict[str, Any], probe: Callable[[Any], Any], recorded: Any, app_engine: Any
) -> None:
    """Task(...) gives the recorded value, and App Engine's Task the same (or its noted one)."""
    with taskqueue.use(None):
        assert outcome(lambda: taskqueue.Task(**kwargs), probe) == recorded
    if GOOGLE is None:
        pytest.skip(NO_APP_ENGINE)
    expected = recorded if app_engine is SAME else app_engine
    assert outcome(lambda: GOOGLE.Task(**kwargs), probe) == expected


# -- module names and constants ---------------------------------------------------------------

CONSTANTS = {
    "MAX_QUEUE_NAME_LENGTH": 100,
    "MAX_TASK_NAME_LENGTH": 500,
    "MAX_URL_LENGTH": 2083,
    "MAX_TASK_SIZE_BYTES": 102_400,
    "MAX_PUSH_TASK_SIZE_BYTES": 102_400,
    "MAX_PULL_TASK_SIZE_BYTES": 1_048_576,
    "MAX_TASKS_PER_ADD": 100,
    "MAX_TRANSACTIONAL_REQUEST_SIZE_BYTES": 1_048_576,
    "MAX_TASKS_PER_LEASE": 1000,
    "MAX_TAG_LENGTH": 500,
    "MAX_LEASE_SECONDS": 604_800,
    "MAX_DISPATCH_DEADLINE": datetime.timedelta(hours=24),
    "MIN_DISPATCH_DEADLINE": datetime.timedelta(seconds=15),
}


@pytest.mark.parametrize(("name", "value"), sorted(CONSTANTS.items()), ids=sorted(CONSTANTS))
def test_constant(name: str, value: object) -> None:
    """Each of App Engine's limits has its value in taskhandler.taskqueue."""
    assert getattr(taskqueue, name) == value
    if GOOGLE is None:
        pytest.skip(NO_APP_ENGINE)
    assert getattr(GOOGLE, name) == value


# App Engine's __all__ names with no taskhandler counterpart, each with its reason (none left).
NOT_PORTED: dict[str, str] = {}


def test_every_app_engine_name_exists_or_is_explained() -> None:
    """Every public name of App Engine's taskqueue module is in taskqueue or listed as absent."""
    if GOOGLE is None:
        pytest.skip(NO_APP_ENGINE)
    missing = {name for name in GOOGLE.__all__ if not hasattr(taskqueue, name)}
    assert missing == set(NOT_PORTED)


def test_error_tree_matches() -> None:
    """Each App Engine error is a subclass of the same App Engine errors in taskhandler."""
    if GOOGLE is None:
        pytest.skip(NO_APP_ENGINE)
    errors = [
        name
        for name in GOOGLE.__all__
        if isinstance(getattr(GOOGLE, name), type)
        and issubclass(getattr(GOOGLE, name), GOOGLE.Error)
    ]
    assert len(errors) > 25
    for name in errors:
        theirs = {b for b in errors if issubclass(getattr(GOOGLE, name), getattr(GOOGLE, b))}
        ours = {b for b in errors if issubclass(getattr(taskqueue, name), getattr(taskqueue, b))}
        assert ours == theirs, name


# -- Queue: checks made before any RPC --------------------------------------------------------

QUEUE_ROWS = [
    pytest.param(lambda m: m.Queue("bad name!"), "InvalidQueueNameError", id="bad queue name"),
    pytest.param(lambda m: m.Queue("q" * 101), "InvalidQueueNameError", id="101-char queue name"),
    pytest.param(lambda m: m.Queue("p").lease_tasks(-1, 1), "InvalidLeaseTimeError", id="lease -1"),
    pytest.param(
        lambda m: m.Queue("p").lease_tasks(604_801, 1), "InvalidLeaseTimeError", id="lease > week"
    ),
    pytest.param(lambda m: m.Queue("p").lease_tasks("1", 1), "TypeError", id="lease as text"),
    pytest.param(lambda m: m.Queue("p").lease_tasks(1, 0), "InvalidMaxTasksError", id="0 tasks"),
    pytest.param(
        lambda m: m.Queue("p").lease_tasks(1, 1001), "InvalidMaxTasksError", id="1001 tasks"
    ),
    pytest.param(lambda m: m.Queue("p").lease_tasks(1, 1.0), "TypeError", id="float max_tasks"),
    pytest.param(
        lambda m: m.Queue("p").lease_tasks(1, 1, deadline=0),
        "InvalidDeadlineError",
        id="deadline 0",
    ),
    pytest.param(
        lambda m: m.Queue("p").lease_tasks_by_tag(-1, 1, "t"),
        "InvalidLeaseTimeError",
        id="by tag: lease -1",
    ),
    pytest.param(
        lambda m: m.Queue("p").modify_task_lease(m.Task(name="a"), -1),
        "InvalidLeaseTimeError",
        id="modify: lease -1",
    ),
    pytest.param(
        lambda m: m.Queue("p").delete_tasks(m.Task()), "BadTaskStateError", id="delete unnamed"
    ),
    pytest.param(
        lambda m: m.Queue("p").delete_tasks_by_name(["a", "a"]),
        "DuplicateTaskNameError",
        id="delete a name twice",
    ),
    pytest.param(
        lambda m: m.Queue("p").add([m.Task(url="/a"), m.Task(payload="x", method="PULL")]),
        "InvalidTaskError",
        id="push and pull in one add",
    ),
    pytest.param(
        lambda m: m.Queue("p").add([m.Task(url="/a", name="n"), m.Task(url="/b", name="n")]),
        "DuplicateTaskNameError",
        id="a name twice in one add",
    ),
    pytest.param(
        lambda m: m.Queue("p").add([m.Task(url="/a") for _ in range(101)]),
        "TooManyTasksError",
        id="101 tasks in one add",
    ),
    pytest.param(lambda m: m.Queue("p").add([]), None, id="an empty add"),
]


@pytest.mark.parametrize(("call", "error"), QUEUE_ROWS)
def test_queue_checks_match_app_engine(
    request: pytest.FixtureRequest, call: Callable[[Any], Any], error: str | None
) -> None:
    """Queue's argument checks raise what App Engine's raise, before any task is touched."""
    with taskqueue.use(None):
        assert outcome(lambda: call(taskqueue), lambda r: None)[-1] == error
    google = request.getfixturevalue("app_engine_stub")  # its RPC objects need the stub
    assert outcome(lambda: call(google), lambda r: None)[-1] == error


# -- pull queues: the same steps against App Engine's stub and LocalTaskQueue -----------------

QUEUE_YAML = "queue:\n- name: pull-queue\n  mode: pull\n"


@pytest.fixture
def app_engine_stub(tmp_path: Path) -> Iterator[ModuleType]:
    """App Engine's taskqueue with its service stub installed on a fresh API proxy."""
    if GOOGLE is None:
        pytest.skip(NO_APP_ENGINE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stub_map = importlib.import_module("google.appengine.api.apiproxy_stub_map")
            stub_module = importlib.import_module("google.appengine.api.taskqueue.taskqueue_stub")
    except ImportError as exc:
        pytest.skip(f"App Engine's taskqueue stub does not import: {exc}")
    (tmp_path / "queue.yaml").write_text(QUEUE_YAML)
    previous = getattr(stub_map, "apiproxy")  # noqa: B009 - untyped module
    app_id = os.environ.get("APPLICATION_ID")
    os.environ["APPLICATION_ID"] = "parity"
    proxy = stub_map.APIProxyStubMap()
    setattr(stub_map, "apiproxy", proxy)  # noqa: B010 - untyped module
    stub = stub_module.TaskQueueServiceStub(root_path=str(tmp_path), auto_task_running=False)
    proxy.RegisterStub("taskqueue", stub)
    try:
        yield GOOGLE
    finally:
        stub.Shutdown()
        setattr(stub_map, "apiproxy", previous)  # noqa: B010 - untyped module
        if app_id is None:
            os.environ.pop("APPLICATION_ID", None)
        else:
            os.environ["APPLICATION_ID"] = app_id


def pull_story(m: Any) -> list[Any]:
    """Tagged pull tasks leased by tag, a lease ended, tasks deleted: what a worker sees."""
    q = m.Queue("pull-queue")
    seen: list[Any] = []
    eta = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    tasks = [
        m.Task(
            payload=f"{n}",
            method="PULL",
            tag=tag,
            name=f"t{n}",
            eta=eta + datetime.timedelta(seconds=n),
        )
        for n, tag in enumerate(["a", "b", None, "a", "b"])
    ]
    q.add(tasks)
    first = q.lease_tasks_by_tag(60, 10)
    seen.append(("oldest tag", [(t.name, t.tag, t.retry_count) for t in first]))
    by_b = q.lease_tasks_by_tag(60, 1, tag="b")
    seen.append(("tag b, one", [(t.name, t.tag, t.payload) for t in by_b]))
    q.modify_task_lease(first[0], 0)
    again = q.lease_tasks(60, 10)
    seen.append(("after ending a lease", [(t.name, t.retry_count) for t in again]))
    q.delete_tasks(again)
    seen.append(("deleted", [t.was_deleted for t in again]))
    seen.append(("unknown name", q.delete_tasks_by_name("nope").was_deleted))
    try:
        q.modify_task_lease(by_b[0], 30)
        seen.append(("modify a held lease", "ok"))
    except Exception as exc:
        seen.append(("modify a held lease", type(exc).__name__))
    try:
        m.Queue("default").lease_tasks(10, 1)
    except Exception as exc:
        seen.append(("lease a push queue", type(exc).__name__))
    return seen


RECORDED_PULL_STORY = [
    ("oldest tag", [("t0", "a", 1), ("t3", "a", 1)]),
    ("tag b, one", [("t1", "b", b"1")]),
    # the ended lease's task is due "now", after the others' 2020 ETAs
    ("after ending a lease", [("t2", 1), ("t4", 1), ("t0", 2)]),
    ("deleted", [True, True, True]),
    ("unknown name", False),
    ("modify a held lease", "ok"),
    ("lease a push queue", "InvalidQueueModeError"),
]


def test_pull_queue_matches_recorded_story(tmp_path: Path) -> None:
    """LocalTaskQueue gives the recorded pull-queue story."""
    queues = [QueueConfig("default"), QueueConfig("pull-queue", mode="pull")]
    db = tmp_path / "q.sqlite3"
    with LocalTaskQueue(lambda e, s: [], db=db, queues=queues) as q, taskqueue.use(q):
        assert pull_story(taskqueue) == RECORDED_PULL_STORY


def test_pull_queue_matches_app_engine_stub(app_engine_stub: ModuleType) -> None:
    """App Engine's library on its service stub tells the same pull-queue story."""
    assert pull_story(app_engine_stub) == RECORDED_PULL_STORY


def test_recorded_story_runs_on_a_manual_clock(tmp_path: Path) -> None:
    """The story does not depend on the wall clock: it holds on a ManualClock too."""
    queues = [QueueConfig("default"), QueueConfig("pull-queue", mode="pull")]
    clock = ManualClock(1_700_000_000.0)
    with LocalTaskQueue(lambda e, s: [], queues=queues, clock=clock) as q, taskqueue.use(q):
        assert pull_story(taskqueue) == RECORDED_PULL_STORY
