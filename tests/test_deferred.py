"""``taskhandler.deferred``: App Engine's deferred library, with signed payloads.

The same requests are made to the WSGI application and its ASGI twin, each behind its
``TaskMiddleware``; calls go through a real ``LocalTaskQueue`` on SQLite; forged payloads are
shown never to reach ``pickle.loads``; large calls go through both stores; and the
``builtins: - deferred: on`` of app.yaml is served by the real ``taskhandler serve`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import os
import pickle
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from itsdangerous import Signer
from werkzeug.test import Client

from taskhandler import ConfigError, TaskMiddleware, User, deferred, load_app_yaml, taskqueue
from taskhandler.asgi import TaskMiddleware as AsgiTaskMiddleware
from taskhandler.taskqueue import (
    BadTransactionStateError,
    LocalTaskQueue,
    ManualClock,
    QueueConfig,
    TaskAlreadyExistsError,
    TaskRetryOptions,
    TaskTooLargeError,
    UnknownQueueError,
)
from taskhandler.trust import RequestInfo
from tests.servers import ROOT, free_port, stop, wait_for_port

KEY = "k" * 40
OLD_KEY = "o" * 40
QUEUE_PEER = "0.1.0.2"
STRANGER = "203.0.113.7"
TASK_HEADERS = {"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "deferred-1"}

CALLS: list[Any] = []


# -- what the tests defer (module level, so that they pickle) --------------------------------


def record(*args: Any, **kwargs: Any) -> str:
    """A deferred function: remembers its call."""
    CALLS.append((args, kwargs))
    return "recorded"


def fail_permanently(*_args: Any) -> None:
    """A deferred function that will never succeed."""
    raise deferred.PermanentTaskFailure("the order was cancelled")


def fail_once_quietly(marker: str) -> None:
    """Fails quietly on the first attempt (the marker file says which attempt this is)."""
    path = Path(marker)
    if not path.exists():
        path.write_text("tried")
        raise deferred.SingularTaskFailure("not yet")
    CALLS.append(("second attempt", marker))


def fail_loudly(*_args: Any) -> None:
    """A deferred function with a bug."""
    raise ValueError("a bug")


class Counter:
    """A class, an instance with ``__call__``, and methods: every kind App Engine defers."""

    def __init__(self, start: int = 0) -> None:
        self.start = start
        CALLS.append(("init", start))

    def add(self, amount: int) -> int:
        CALLS.append(("add", self.start + amount))
        return self.start + amount

    def __call__(self, amount: int) -> int:
        CALLS.append(("call", self.start + amount))
        return self.start + amount

    @classmethod
    def make(cls, start: int) -> int:
        CALLS.append(("make", start))
        return start


class MakesDirectory:
    """Unpickling this creates a directory: the proof that a payload was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def evil_pickle(path: Path) -> bytes:
    """A (callable, args, kwargs) pickle whose unpickling creates ``path``."""
    return pickle.dumps((MakesDirectory(path), (), {}))


def sign(data: bytes, key: str = KEY, **options: Any) -> bytes:
    """Sign as deferred does (or with other options, to forge)."""
    kwargs: dict[str, Any] = {
        "salt": deferred.SALT,
        "digest_method": hashlib.sha256,
        "key_derivation": "hmac",
    }
    kwargs.update(options)
    return Signer(key, **kwargs).sign(data)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with the signing key set, no store, no environment key, no calls."""
    monkeypatch.delenv(deferred.SECRET_KEY_ENV, raising=False)
    CALLS.clear()
    with deferred.configure(secret_key=KEY, store=None):
        yield


@pytest.fixture
def unpickled(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every payload ``pickle.loads`` is given during the test."""
    seen: list[bytes] = []
    real = pickle.loads

    def spy(data: bytes, /, **kwargs: Any) -> Any:
        seen.append(bytes(data))
        return real(data, **kwargs)

    monkeypatch.setattr(pickle, "loads", spy)
    return seen


def header_user(info: RequestInfo) -> User | None:
    """Stand-in for a sign-in system: ``X-Test-User: admin`` is an administrator."""
    who = info.header("x-test-user")
    return None if who is None else User(f"{who}@example.com", is_admin=who == "admin")


Post = Callable[..., tuple[int, str]]


def _wsgi_post(
    path: str = deferred.DEFAULT_URL,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    peer: str = QUEUE_PEER,
    method: str = "POST",
) -> tuple[int, str]:
    app = TaskMiddleware(deferred.application, authenticator=header_user)
    response = Client(app).open(
        path,
        method=method,
        data=body,
        headers=headers or {},
        environ_base={"REMOTE_ADDR": peer},
    )
    return response.status_code, response.headers.get("X-Task-Outcome", "")


def _asgi_post(
    path: str = deferred.DEFAULT_URL,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    peer: str = QUEUE_PEER,
    method: str = "POST",
) -> tuple[int, str]:
    app = AsgiTaskMiddleware(deferred.asgi_application, authenticator=header_user)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.request(method, path, content=body, headers=headers or {})

    response = asyncio.run(go())
    return response.status_code, response.headers.get("X-Task-Outcome", "")


@pytest.fixture(params=["wsgi", "asgi"])
def post(request: pytest.FixtureRequest) -> Post:
    """Send one request to the deferred handler, WSGI or ASGI, behind its TaskMiddleware."""
    return _wsgi_post if request.param == "wsgi" else _asgi_post


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[LocalTaskQueue]:
    """A real local queue on a SQLite file, delivering to the deferred handler."""
    queues = [QueueConfig("mail"), QueueConfig("retries", rate=100)]
    with (
        LocalTaskQueue(
            TaskMiddleware(deferred.application),
            db=tmp_path / "queue.sqlite3",
            queues=queues,
            clock=ManualClock(),
        ) as q,
        taskqueue.use(q),
    ):
        yield q


# -- the handler: who runs what ------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_body", "headers", "peer", "method", "expected", "ran"),
    [
        pytest.param(
            lambda: deferred.serialize(record, 1, b=2),
            TASK_HEADERS,
            QUEUE_PEER,
            "POST",
            (200, "success"),
            True,
            id="the queue runs a signed call",
        ),
        pytest.param(
            lambda: deferred.serialize(record, 1),
            TASK_HEADERS,
            STRANGER,
            "POST",
            (403, "rejected"),
            False,
            id="a stranger with spoofed task headers is refused",
        ),
        pytest.param(
            lambda: deferred.serialize(record, 1),
            {},
            STRANGER,
            "POST",
            (403, "rejected"),
            False,
            id="a stranger without task headers is refused",
        ),
        pytest.param(
            lambda: deferred.serialize(record, 1),
            {"X-Test-User": "admin"},
            STRANGER,
            "POST",
            (200, "success"),
            True,
            id="an administrator runs it from a browser",
        ),
        pytest.param(
            lambda: deferred.serialize(record, 1),
            {"X-Test-User": "someone"},
            STRANGER,
            "POST",
            (403, "rejected"),
            False,
            id="a signed-in user who is not an administrator is refused",
        ),
        pytest.param(
            lambda: b"",
            TASK_HEADERS,
            QUEUE_PEER,
            "GET",
            (405, "retry"),
            False,
            id="GET is not a deferred task",
        ),
        pytest.param(
            lambda: deferred.serialize(fail_permanently),
            TASK_HEADERS,
            QUEUE_PEER,
            "POST",
            (200, "permanent-failure"),
            False,
            id="PermanentTaskFailure is acknowledged",
        ),
        pytest.param(
            lambda: deferred.serialize(fail_loudly),
            TASK_HEADERS,
            QUEUE_PEER,
            "POST",
            (500, "retry"),
            False,
            id="an error is retried",
        ),
    ],
)
def test_handler_answers(
    post: Post,
    make_body: Callable[[], bytes],
    headers: dict[str, str],
    peer: str,
    method: str,
    expected: tuple[int, str],
    ran: bool,
) -> None:
    """Only trusted task requests and administrators run a call; outcomes map to statuses."""
    body = make_body()
    assert post(body=body, headers=headers, peer=peer, method=method) == expected
    assert bool(CALLS) is ran


def test_singular_failure_is_retried_without_an_error_log(
    post: Post, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SingularTaskFailure answers 408 (retry) and logs no error, as on App Engine."""
    body = deferred.serialize(fail_once_quietly, str(tmp_path / "marker"))
    with caplog.at_level(logging.DEBUG):
        assert post(body=body, headers=TASK_HEADERS) == (408, "retry")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r for r in caplog.records if r.exc_info] == []
    assert post(body=body, headers=TASK_HEADERS) == (200, "success")


def test_stranger_body_is_never_unpickled(post: Post, unpickled: list[bytes]) -> None:
    """A refused request's payload, even a validly signed one, is not unpickled."""
    body = deferred.serialize(record, "secret")
    assert post(body=body, headers=TASK_HEADERS, peer=STRANGER) == (403, "rejected")
    assert unpickled == []


# -- signed payloads ------------------------------------------------------------------------


def _forged(kind: str, evil: bytes) -> bytes:
    harmless = deferred.serialize(record, "harmless")
    signature = harmless.rsplit(b".", 1)[1]
    return {
        "unsigned pickle": evil,
        "made-up signature": evil + b"." + b"A" * 43,
        "signature of another payload": evil + b"." + signature,
        "signed with another key": sign(evil, "x" * 40),
        "signed with the sign-in cookie's salt": sign(evil, salt="taskhandler.signin"),
        "signed with itsdangerous defaults": Signer(KEY, salt=deferred.SALT).sign(evil),
        "signed without a salt": sign(evil, salt=None),
        "truncated signed payload": sign(evil)[:-1],
        "signature cut off": sign(evil)[:-44],
        "one byte changed": evil[:-2] + bytes([evil[-2] ^ 1]) + b"." + sign(evil).rsplit(b".")[-1],
        "empty body": b"",
        "only a signature": b"." + signature,
        "signed by a retired key": sign(evil, OLD_KEY),
    }[kind]


FORGERIES = [
    "unsigned pickle",
    "made-up signature",
    "signature of another payload",
    "signed with another key",
    "signed with the sign-in cookie's salt",
    "signed with itsdangerous defaults",
    "signed without a salt",
    "truncated signed payload",
    "signature cut off",
    "one byte changed",
    "empty body",
    "only a signature",
    "signed by a retired key",
]


@pytest.mark.parametrize("kind", FORGERIES)
def test_forged_payload_is_refused_before_unpickling(
    post: Post,
    kind: str,
    tmp_path: Path,
    unpickled: list[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A payload not signed by a configured key is a permanent failure, never unpickled."""
    target = tmp_path / "created-by-unpickling"
    body = _forged(kind, evil_pickle(target))
    unpickled.clear()  # serialize() of the harmless payload does not unpickle, but be sure
    with caplog.at_level(logging.ERROR):
        assert post(body=body, headers=TASK_HEADERS) == (200, "permanent-failure")
    assert (target.exists(), unpickled) == (False, [])
    assert any("permanent" in r.getMessage() for r in caplog.records)


def test_the_evil_payload_would_create_its_file(tmp_path: Path) -> None:
    """The forgery tests can fail: signed with the key, the same pickle does create its file."""
    target = tmp_path / "created-by-unpickling"
    with pytest.raises(TypeError):  # os.mkdir returned None, which is then called
        deferred.run(sign(evil_pickle(target)))
    assert target.is_dir()


@pytest.mark.parametrize(
    ("configured", "signed_with", "accepted"),
    [
        pytest.param([KEY, OLD_KEY], OLD_KEY, True, id="old key still listed verifies"),
        pytest.param([KEY, OLD_KEY], KEY, True, id="new key verifies"),
        pytest.param([KEY], OLD_KEY, False, id="dropped key is refused"),
    ],
)
def test_key_rotation(configured: list[str], signed_with: str, accepted: bool) -> None:
    """The first key signs, every listed key verifies."""
    payload = sign(pickle.dumps((record, ("rotated",), {})), signed_with)
    with deferred.configure(secret_key=configured):
        if accepted:
            assert deferred.run(payload) == "recorded"
        else:
            with pytest.raises(deferred.PermanentTaskFailure):
                deferred.run(payload)
        new = deferred.serialize(record, "rotated")
    assert new == sign(pickle.dumps((record, ("rotated",), {}), pickle.HIGHEST_PROTOCOL), KEY)


@pytest.mark.parametrize(
    ("secret_key", "message"),
    [
        pytest.param("short", "secret key 1 is 5 bytes; at least 32", id="short key"),
        pytest.param([KEY, "x" * 31], "secret key 2 is 31 bytes", id="short second key"),
        pytest.param([], "at least one key is required", id="no keys"),
        pytest.param([KEY, 42], "secret key 2 must be str or bytes", id="not a key"),
    ],
)
def test_bad_keys_are_config_errors(secret_key: Any, message: str) -> None:
    """Keys shorter than 32 bytes, or not keys, are refused with ConfigError."""
    with pytest.raises(ConfigError, match=message) as caught:
        deferred.configure(secret_key=secret_key)
    assert "x" * 31 not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(None, "set TASKHANDLER_SECRET_KEY", id="no key at all"),
        pytest.param("short", "TASKHANDLER_SECRET_KEY: secret key 1 is 5 bytes", id="short env"),
    ],
)
def test_missing_or_short_environment_key(
    monkeypatch: pytest.MonkeyPatch, env: str | None, message: str
) -> None:
    """Without a configured key, TASKHANDLER_SECRET_KEY is needed and checked."""
    if env is not None:
        monkeypatch.setenv(deferred.SECRET_KEY_ENV, env)
    with deferred.configure(secret_key=None), pytest.raises(ConfigError, match=message):
        deferred.serialize(record)


def test_environment_key_signs(monkeypatch: pytest.MonkeyPatch) -> None:
    """TASKHANDLER_SECRET_KEY is the key when none is configured."""
    monkeypatch.setenv(deferred.SECRET_KEY_ENV, OLD_KEY)
    with deferred.configure(secret_key=None):
        assert deferred.has_secret_key()
        payload = deferred.serialize(record, "env")
    assert sign(pickle.dumps((record, ("env",), {}), pickle.HIGHEST_PROTOCOL), OLD_KEY) == payload


# -- what can be deferred --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "args", "result", "calls"),
    [
        pytest.param(record, (1,), "recorded", [((1,), {})], id="module-level function"),
        pytest.param(Counter, (5,), None, [("init", 5)], id="class"),
        pytest.param(Counter(10), (5,), 15, [("call", 15)], id="instance with __call__"),
        pytest.param(Counter(10).add, (5,), 15, [("add", 15)], id="bound method"),
        pytest.param(Counter.make, (7,), 7, [("make", 7)], id="classmethod"),
        pytest.param(len, ("abc",), 3, [], id="built-in function"),
        pytest.param({"a": 1}.get, ("a",), 1, [], id="built-in method"),
    ],
)
def test_callables_run_as_deferred(
    obj: Any, args: tuple[Any, ...], result: Any, calls: Any
) -> None:
    """Every kind of callable App Engine's deferred accepts runs from its payload."""
    payload = deferred.serialize(obj, *args)
    CALLS.clear()
    value = deferred.run(payload)
    assert (isinstance(value, Counter) if result is None else value == result) is True
    assert calls == CALLS


def test_unpicklable_calls_are_refused_with_their_name() -> None:
    """Lambdas and nested functions cannot be deferred; the error names them."""

    def nested() -> None: ...

    for obj in (lambda: None, nested):
        with pytest.raises(pickle.PicklingError, match=r"cannot defer .*(lambda|nested)"):
            deferred.defer(obj)
    with pytest.raises(ValueError, match="obj must be callable"):
        deferred.serialize(42)  # type: ignore[arg-type]


# -- defer(): the task -----------------------------------------------------------------------


def test_defer_adds_a_task(queue: LocalTaskQueue) -> None:
    """defer() returns the added Task; the task queue arguments reach it."""
    eta = datetime.datetime.fromtimestamp(queue.now() + 3600, datetime.timezone.utc)
    task = deferred.defer(
        record,
        "invoice",
        _queue="mail",
        _name="invoice-42",
        _eta=eta,
        _headers={"X-Order": "42"},
        _retry_options=TaskRetryOptions(task_retry_limit=2),
        copies=2,
    )
    assert (task.name, task.queue_name, task.url, task.was_enqueued) == (
        "invoice-42",
        "mail",
        "/_ah/queue/deferred",
        True,
    )
    [stored] = queue.tasks("mail")
    assert dict(stored.headers) == {"Content-Type": "application/octet-stream", "X-Order": "42"}
    assert stored.eta == eta
    assert deferred.run(stored.payload) == "recorded"
    assert CALLS == [(("invoice",), {"copies": 2})]


@pytest.mark.parametrize(
    ("kwargs", "url"),
    [
        pytest.param({}, "/_ah/queue/deferred", id="default URL"),
        pytest.param({"_url": "/work/deferred"}, "/work/deferred", id="own URL"),
        pytest.param({"_url": None, "_queue": "mail"}, "/_ah/queue/mail", id="queue's URL"),
    ],
)
def test_defer_url(queue: LocalTaskQueue, kwargs: dict[str, Any], url: str) -> None:
    """_url picks the handler's URL; None means the queue's default URL."""
    deferred.defer(record, **kwargs)
    assert [t.url for t in queue.tasks(kwargs.get("_queue", "default"))] == [url]


def test_defer_to_an_unknown_queue(queue: LocalTaskQueue) -> None:
    """The queue's errors come through unchanged."""
    with pytest.raises(UnknownQueueError):
        deferred.defer(record, _queue="nowhere")


def test_countdown_and_retry_through_the_local_queue(queue: LocalTaskQueue, tmp_path: Path) -> None:
    """Through a real queue: a countdown is waited for, a SingularTaskFailure is retried."""
    deferred.defer(fail_once_quietly, str(tmp_path / "marker"), _countdown=60, _queue="retries")
    assert queue.run_until_idle(timeout=30) == 2
    assert [("second attempt", str(tmp_path / "marker"))] == CALLS


@pytest.mark.parametrize(
    ("completes", "pending"),
    [
        pytest.param(True, 1, id="block completes: enqueued"),
        pytest.param(False, 0, id="block fails: nothing"),
    ],
)
def test_transactional(queue: LocalTaskQueue, completes: bool, pending: int) -> None:
    """_transactional=True adds the task only when the transaction block completes."""
    expected = pytest.raises(RuntimeError) if not completes else contextlib.nullcontext()
    with expected, taskqueue.transaction():
        deferred.defer(record, "tx", _transactional=True)
        if not completes:
            raise RuntimeError("rolled back")
    assert len(queue.tasks()) == pending


def test_transactional_outside_a_transaction(queue: LocalTaskQueue) -> None:
    """_transactional=True outside a transaction is the queue's BadTransactionStateError."""
    with pytest.raises(BadTransactionStateError):
        deferred.defer(record, _transactional=True)


# -- large calls ------------------------------------------------------------------------------

BIG = "x" * (150 * 1024)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Each store, configured for the test."""
    made: Any = (
        deferred.MemoryDeferredStore()
        if request.param == "memory"
        else deferred.SqliteDeferredStore(tmp_path / "deferred.sqlite3")
    )
    with deferred.configure(store=made):
        yield made
    if request.param == "sqlite":
        made.close()


def test_large_call_is_stored_and_deleted_after_it_ran(queue: LocalTaskQueue, store: Any) -> None:
    """A call over 100 KiB waits in the store; the task carries its key; success deletes it."""
    task = deferred.defer(record, BIG)
    assert task.payload is not None and len(task.payload) < 1024
    assert len(store.keys()) == 1
    assert queue.run_until_idle(timeout=30) == 1
    assert (CALLS, store.keys()) == ([((BIG,), {})], [])


@pytest.mark.parametrize(
    ("func", "kept"),
    [
        pytest.param(fail_permanently, False, id="permanent failure deletes it"),
        pytest.param(fail_loudly, True, id="an error keeps it for the retry"),
    ],
)
def test_large_call_failures(store: Any, func: Callable[..., Any], kept: bool) -> None:
    """As App Engine: deleted after a permanent failure, kept while the task is retried."""
    with taskqueue.use(LocalTaskQueue(deferred.application)) as q:
        deferred.defer(func, BIG)
        [task] = q.tasks()  # type: ignore[union-attr]
    with pytest.raises((deferred.PermanentTaskFailure, ValueError)):
        deferred.run(task.payload)
    assert bool(store.keys()) is kept


def test_missing_stored_call_is_a_permanent_failure(store: Any) -> None:
    """A task whose stored call is gone cannot succeed."""
    with pytest.raises(deferred.PermanentTaskFailure, match="is gone"):
        deferred.run(deferred.serialize(deferred.run_from_store, "no-such-key"))


def test_large_call_without_a_store(queue: LocalTaskQueue) -> None:
    """Without a store, a large call is TaskTooLargeError saying how to configure one."""
    with pytest.raises(TaskTooLargeError, match="configure a store"):
        deferred.defer(record, BIG)
    assert queue.tasks() == []


def test_too_large_even_for_the_store(queue: LocalTaskQueue, store: Any) -> None:
    """Over 1 MiB nothing is stored and nothing enqueued."""
    with pytest.raises(TaskTooLargeError, match="at most"):
        deferred.defer(record, "x" * (deferred.MAX_STORED_CALL_BYTES + 1))
    assert (store.keys(), queue.tasks()) == ([], [])


def test_stored_call_is_removed_when_the_add_fails(queue: LocalTaskQueue, store: Any) -> None:
    """A named large call whose name is taken leaves nothing in the store."""
    deferred.defer(record, _name="only-once")
    with pytest.raises(TaskAlreadyExistsError):
        deferred.defer(record, BIG, _name="only-once")
    assert store.keys() == []


def test_sqlite_store_survives_a_restart(tmp_path: Path) -> None:
    """The SQLite store is a file: a reopened store finds the call."""
    first = deferred.SqliteDeferredStore(tmp_path / "d.sqlite3")
    key = first.put(b"call")
    first.close()
    second = deferred.SqliteDeferredStore(tmp_path / "d.sqlite3")
    try:
        assert (second.get(key), second.get("other")) == (b"call", None)
    finally:
        second.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"this is not a database" * 100, "cannot open the deferred store", id="junk"),
        pytest.param(None, "needs a file", id=":memory:"),
    ],
)
def test_sqlite_store_bad_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    """A file that is not SQLite is a ConfigError naming it, and left as it was."""
    path = tmp_path / "junk.sqlite3"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        deferred.SqliteDeferredStore(path if content is not None else ":memory:")
    if content is not None:
        assert path.read_bytes() == content


def test_configure_refuses_a_store_that_is_not_one() -> None:
    """store= must offer put, get and delete."""
    with pytest.raises(ConfigError, match="DeferredStore"):
        deferred.configure(store=object())


# -- app.yaml builtins --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "builtins", "first_rule"),
    [
        pytest.param(
            "builtins:\n- deferred: on\n",
            ("deferred",),
            "/_ah/queue/deferred admin",
            id="deferred on adds the admin rule",
        ),
        pytest.param("builtins:\n- deferred: off\n", (), "/.* optional", id="off"),
        pytest.param(
            "builtins:\n- appstats: on\n- deferred: yes\n",
            ("appstats", "deferred"),
            "/_ah/queue/deferred admin",
            id="yes, among others",
        ),
        pytest.param(
            "builtins:\n- deferred: on\nhandlers:\n- url: /_ah/queue/deferred\n  script: auto\n"
            "  login: admin\n",
            ("deferred",),
            "/_ah/queue/deferred admin",
            id="the app's own identical rule is not doubled",
        ),
    ],
)
def test_builtins_in_app_yaml(
    tmp_path: Path, text: str, builtins: tuple[str, ...], first_rule: str
) -> None:
    """load_app_yaml keeps the builtins switched on and puts deferred's rule first."""
    path = tmp_path / "app.yaml"
    if "handlers" not in text:
        text += "handlers:\n- url: /.*\n  script: auto\n"
    path.write_text("runtime: python312\n" + text)
    config = load_app_yaml(path)
    rule = config.rules[0]
    assert (config.builtins, f"{rule.url} {rule.login}") == (builtins, first_rule)
    assert [r.url for r in config.rules].count("/_ah/queue/deferred") <= 1


def test_builtin_value_that_is_not_on_or_off(tmp_path: Path) -> None:
    """A builtin switched by something other than on/off is a ConfigError naming the line."""
    path = tmp_path / "app.yaml"
    path.write_text("runtime: python312\nbuiltins:\n- deferred: maybe\n")
    with pytest.raises(ConfigError, match=r"app.yaml:3: builtins\[1\].deferred: 'maybe'"):
        load_app_yaml(path)


# -- taskhandler serve, end to end ---------------------------------------------------------------


def _http(port: int, method: str, path: str, body: bytes = b"", headers: Any = None) -> Any:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15) as client:
        return client.request(method, path, content=body, headers=headers or {})


def _wait_for(check: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll ``check`` until it holds (bounded: fails after ``limit`` seconds)."""
    end = time.monotonic() + limit
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"{what} did not happen within {limit} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """`taskhandler serve` running the deferred example from its app.yaml (builtins: deferred)."""
    tmp = tmp_path_factory.mktemp("deferred-serve")
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TASKHANDLER_SECRET_KEY": KEY,
        "EXAMPLE_DB": str(tmp / "counter.sqlite3"),
    }
    command = [
        sys.executable,
        "-m",
        "taskhandler.cli",
        "serve",
        "--app-yaml",
        "examples/deferred_style/app.yaml",
        "--port",
        str(port),
        "--db",
        str(tmp / "queue.sqlite3"),
    ]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, proc)
        yield port, tmp
    finally:
        stop(proc)


@pytest.mark.slow
def test_serve_runs_deferred_calls(serve: tuple[int, Path]) -> None:
    """The example's /home defers a call that the dev server's queue runs at /_ah/queue/deferred."""
    port, tmp = serve
    before = int(_http(port, "GET", "/total").text)
    assert _http(port, "GET", "/home").status_code == 200
    _wait_for(lambda: int(_http(port, "GET", "/total").text) == before + 20, "the deferred call")
    assert (tmp / "queue.deferred.sqlite3").is_file()


@pytest.mark.slow
def test_serve_protects_the_deferred_url(serve: tuple[int, Path]) -> None:
    """builtins: deferred puts the URL behind login: admin: a plain visitor is sent to sign in."""
    port, _ = serve
    response = _http(port, "POST", "/_ah/queue/deferred", deferred.serialize(record, "x"))
    assert response.status_code == 302
    assert urllib.parse.urlsplit(response.headers["location"]).path == "/_ah/login"


@pytest.mark.slow
def test_serve_refuses_forged_payload_from_a_task(serve: tuple[int, Path]) -> None:
    """Development trust believes task headers, but a forged payload is still not unpickled."""
    port, tmp = serve
    target = tmp / "created-by-unpickling"
    response = _http(
        port,
        "POST",
        "/_ah/queue/deferred",
        sign(evil_pickle(target), "x" * 40),
        {**TASK_HEADERS, "X-AppEngine-TaskName": "forged"},
    )
    assert (response.status_code, response.headers["x-task-outcome"]) == (200, "permanent-failure")
    assert not target.exists()
