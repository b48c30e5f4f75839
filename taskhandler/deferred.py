"""App Engine's ``deferred`` library: run a function call later, through the task queue.

Legacy App Engine code enqueues plain function calls more often than URLs. Porting it is an
import change::

    from taskhandler import deferred        # was: from google.appengine.ext import deferred

    deferred.defer(send_invoice, order_id, _countdown=30, _queue="mail", _name="invoice-42")

:func:`defer` pickles the call (the callable, its arguments) into the payload of a push task
to ``/_ah/queue/deferred``; :data:`application` (WSGI) or :data:`asgi_application` (ASGI),
mounted there, unpickles and runs it. The task goes through :mod:`taskhandler.taskqueue`, so
it lands in whatever backend ``taskqueue.use()`` installed: the local queue, Cloud Tasks, or
the testbed's stub.

**The payload is signed.** Unpickling runs code, so a payload nobody signed must never be
unpickled: :func:`serialize` signs the pickle with itsdangerous (HMAC-SHA256, a salt used for
nothing else, the key from ``TASKHANDLER_SECRET_KEY`` or :func:`configure`), and :func:`run`
checks the signature *before* ``pickle.loads`` is called. An unsigned, truncated or forged
payload is a :class:`PermanentTaskFailure` (answered 200 ``permanent-failure`` and logged: a
retry cannot fix it) -- even when it arrives from the queue's own address. The handler itself
runs only for trusted task requests (``@task_handler``'s rules): anyone else gets 403 and
nothing is read.

**Large calls.** A call whose task would exceed the push task limit (100 KiB) is kept in a
:class:`DeferredStore` (:class:`SqliteDeferredStore`, :class:`MemoryDeferredStore`, or your
own) and the task carries only its key, as App Engine kept it in a ``_DeferredTaskEntity``.
The stored call is deleted once it ran (or failed permanently).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import hashlib
import logging
import os
import pickle
import sqlite3
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from itsdangerous import BadSignature, Signer

from ._decorator import task_handler
from ._keys import MIN_KEY_BYTES, SecretKey, signing_keys
from ._types import Receive, Scope, Send, StartResponse, WSGIEnvironment
from .context import TaskContext
from .exceptions import ConfigError, RetryTask, TaskHandlerError
from .exceptions import PermanentTaskFailure as _PermanentTaskFailure
from .taskqueue import (
    DEFAULT_QUEUE,
    InternalError,
    Task,
    TaskRetryOptions,
    TaskTooLargeError,
    TransientError,
)

__all__ = [
    "DEFAULT_QUEUE",
    "DEFAULT_URL",
    "MAX_PAYLOAD_BYTES",
    "MAX_STORED_CALL_BYTES",
    "MIN_KEY_BYTES",
    "SALT",
    "SECRET_KEY_ENV",
    "DeferredStore",
    "Error",
    "MemoryDeferredStore",
    "PermanentTaskFailure",
    "SingularTaskFailure",
    "SqliteDeferredStore",
    "application",
    "asgi_application",
    "configure",
    "current_store",
    "defer",
    "has_secret_key",
    "invoke_member",
    "run",
    "run_from_store",
    "serialize",
]

log = logging.getLogger("taskhandler.deferred")

DEFAULT_URL = "/_ah/queue/deferred"
SECRET_KEY_ENV = "TASKHANDLER_SECRET_KEY"  # noqa: S105 - the name of a variable
SALT = "taskhandler.deferred"
# What a deferred task's body may be: Cloud Tasks' HTTP task limit (push tasks stop at 100 KiB).
MAX_PAYLOAD_BYTES = 1024 * 1024
# A stored call may be as large as a Datastore entity was, which bounded App Engine's.
MAX_STORED_CALL_BYTES = 1024 * 1024
_TASK_HEADERS = {"Content-Type": "application/octet-stream"}


# -- errors --------------------------------------------------------------------------------


class Error(TaskHandlerError):
    """Base class of the errors this module raises (as ``deferred.Error`` on App Engine)."""


class PermanentTaskFailure(Error, _PermanentTaskFailure):
    """Raise in a deferred function when it will never succeed: the task is not retried.

    It is a :class:`taskhandler.PermanentTaskFailure`, so the task is answered 200
    ``permanent-failure`` and logged at ERROR. :func:`run` raises it for a payload that is
    unsigned, forged or cannot be unpickled.
    """

    def __init__(self, reason: object = "") -> None:
        super().__init__(str(reason))


class SingularTaskFailure(Error, RetryTask):
    """Raise in a deferred function to fail this attempt quietly: the task is retried.

    Answered 408 (as App Engine did) without an error log or traceback.
    """

    def __init__(self, reason: object = "") -> None:
        super().__init__(str(reason) or "SingularTaskFailure", status=408)


# -- the stores for large calls ------------------------------------------------------------


@runtime_checkable
class DeferredStore(Protocol):
    """Where :func:`defer` keeps a call too large for a task (App Engine's ``_DeferredTaskEntity``).

    The task carries only the key :meth:`put` returned; :func:`run_from_store` reads the call
    back, runs it and deletes it. Every process that runs deferred tasks must see the same
    store (a file or a database shared by the workers, not memory, once they are several).
    """

    def put(self, data: bytes) -> str:
        """Keep ``data``; return a new key for it."""
        ...

    def get(self, key: str) -> bytes | None:
        """The data kept under ``key``, or ``None`` when there is none."""
        ...

    def delete(self, key: str) -> None:
        """Forget ``key`` (nothing happens when it is not there)."""
        ...


class MemoryDeferredStore:
    """A :class:`DeferredStore` in this process's memory, for tests and single-process servers."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, data: bytes) -> str:
        """Keep ``data``; return a new key for it."""
        key = uuid.uuid4().hex
        with self._lock:
            self._data[key] = bytes(data)
        return key

    def get(self, key: str) -> bytes | None:
        """The data kept under ``key``, or ``None``."""
        with self._lock:
            return self._data.get(key)

    def delete(self, key: str) -> None:
        """Forget ``key``."""
        with self._lock:
            self._data.pop(key, None)

    def keys(self) -> list[str]:
        """The keys kept, in no particular order."""
        with self._lock:
            return list(self._data)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __repr__(self) -> str:
        return f"MemoryDeferredStore({len(self)} call(s))"


class SqliteDeferredStore:
    """A :class:`DeferredStore` in a SQLite file: one table, ``taskhandler_deferred``.

    Put it beside the local queue's database (``taskhandler serve`` uses
    ``<queue db stem>.deferred.sqlite3``) or on storage every worker shares.

    Args:
        path: the database file (created with its table when missing).
        busy_timeout: seconds a call waits for another connection's write lock.

    Raises:
        ConfigError: the file cannot be opened or is not a SQLite database (it is left as it is).

    A storage failure while in use raises :class:`~taskhandler.taskqueue.TransientError`
    (locked, disk full, I/O) or :class:`~taskhandler.taskqueue.InternalError`, naming the file.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        self.path = str(path)
        if self.path == ":memory:" or not self.path:
            raise ConfigError(
                "a SqliteDeferredStore needs a file; use MemoryDeferredStore() for memory",
                value=self.path,
            )
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the deferred store: {exc}", path=self.path) from None
        try:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS taskhandler_deferred "
                "(key TEXT PRIMARY KEY, data BLOB NOT NULL, created REAL NOT NULL)"
            )
        except sqlite3.Error as exc:
            self._conn.close()
            raise ConfigError(f"cannot open the deferred store: {exc}", path=self.path) from None

    def _failed(self, exc: sqlite3.Error, doing: str) -> TransientError | InternalError:
        kind = TransientError if isinstance(exc, sqlite3.OperationalError) else InternalError
        return kind(f"deferred store {self.path}: {doing}: {exc}")

    def put(self, data: bytes) -> str:
        """Keep ``data``; return a new key for it."""
        key = uuid.uuid4().hex
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO taskhandler_deferred (key, data, created) VALUES (?, ?, ?)",
                    (key, bytes(data), time.time()),
                )
            except sqlite3.Error as exc:
                raise self._failed(exc, "storing a call") from None
        return key

    def get(self, key: str) -> bytes | None:
        """The data kept under ``key``, or ``None``."""
        with self._lock:
            try:
                row = self._conn.execute(
                    "SELECT data FROM taskhandler_deferred WHERE key = ?", (key,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise self._failed(exc, "reading a call") from None
        return None if row is None else bytes(row[0])

    def delete(self, key: str) -> None:
        """Forget ``key``."""
        with self._lock:
            try:
                self._conn.execute("DELETE FROM taskhandler_deferred WHERE key = ?", (key,))
            except sqlite3.Error as exc:
                raise self._failed(exc, "deleting a call") from None

    def keys(self) -> list[str]:
        """The keys kept, oldest first."""
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT key FROM taskhandler_deferred ORDER BY created, key"
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._failed(exc, "listing calls") from None
        return [str(row[0]) for row in rows]

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SqliteDeferredStore({self.path!r})"

    @staticmethod
    def beside(queue_db: str | os.PathLike[str]) -> Path:
        """The store file beside a queue database: ``q.sqlite3`` -> ``q.deferred.sqlite3``."""
        path = Path(queue_db)
        return path.with_name(f"{path.stem}.deferred{path.suffix or '.sqlite3'}")


# -- configuration -------------------------------------------------------------------------


class _Settings:
    """The process-wide settings :func:`configure` changes (read under ``_lock``)."""

    keys: tuple[bytes, ...] | None = None
    store: DeferredStore | None = None


_lock = threading.Lock()
_settings = _Settings()
_signers: dict[tuple[bytes, ...], Signer] = {}
_UNSET: Any = object()


class configure:  # used like a function, or as `with deferred.configure(...):`
    """Set the signing key(s) and the store for large calls, process-wide.

    Args:
        secret_key: a key of at least 32 bytes, or a list for rotation: the first signs new
            payloads, all of them verify (put the new key first; drop the old one once the
            tasks signed with it have run). ``None`` forgets the configured key, so
            ``TASKHANDLER_SECRET_KEY`` is read again. Not given: left as it is.
        store: the :class:`DeferredStore` for calls too large for a task; ``None`` for none
            (then such a call raises ``TaskTooLargeError``). Not given: left as it is.

    Raises:
        ConfigError: a key shorter than 32 bytes, or a store that is not a ``DeferredStore``.

    Used in a ``with`` statement, the previous settings come back at the end of the block.

    Example::

        deferred.configure(secret_key=os.environ["DEFERRED_KEYS"].split(),
                           store=deferred.SqliteDeferredStore("/var/lib/app/deferred.sqlite3"))
    """

    def __init__(self, *, secret_key: SecretKey | None = _UNSET, store: Any = _UNSET) -> None:
        keys: Any = _UNSET
        if secret_key is not _UNSET:
            keys = None if secret_key is None else signing_keys(secret_key)
        if store is not _UNSET and store is not None and not isinstance(store, DeferredStore):
            raise ConfigError("store must be a DeferredStore (put, get, delete)", value=store)
        with _lock:
            self._previous = (_settings.keys, _settings.store)
            if keys is not _UNSET:
                _settings.keys = keys
            if store is not _UNSET:
                _settings.store = store

    def __enter__(self) -> configure:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _lock:
            _settings.keys, _settings.store = self._previous


def current_store() -> DeferredStore | None:
    """The store :func:`configure` set for large calls, or ``None``."""
    return _settings.store


def has_secret_key() -> bool:
    """Whether payloads can be signed: a key was configured or ``TASKHANDLER_SECRET_KEY`` is set."""
    return _settings.keys is not None or bool(os.environ.get(SECRET_KEY_ENV))


def _signer() -> Signer:
    keys = _settings.keys
    if keys is None:
        env = os.environ.get(SECRET_KEY_ENV)
        if not env:
            raise ConfigError(
                f"deferred payloads are signed: set {SECRET_KEY_ENV} (32 bytes or more, the "
                "same in every process that defers or runs tasks) or call "
                "deferred.configure(secret_key=...)"
            )
        try:
            keys = signing_keys(env)
        except ConfigError as exc:
            raise ConfigError(f"{SECRET_KEY_ENV}: {exc.message}") from None
    signer = _signers.get(keys)
    if signer is None:
        if len(_signers) > 16:
            _signers.clear()
        # itsdangerous signs with the last key and tries all; ours reads newest first.
        signer = Signer(
            list(reversed(keys)),
            salt=SALT,
            digest_method=hashlib.sha256,
            key_derivation="hmac",
        )
        _signers[keys] = signer
    return signer


# -- serializing and running a call ---------------------------------------------------------


def invoke_member(obj: Any, membername: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``obj.membername(*args, **kwargs)``: how a deferred bound method is run.

    Its module and name are part of the payload format; they stay as they are.
    """
    return getattr(obj, membername)(*args, **kwargs)


def _curry(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """(callable, args, kwargs) that pickle safely, as App Engine's ``_curry_callable``."""
    if isinstance(obj, types.MethodType):
        return invoke_member, (obj.__self__, obj.__func__.__name__, *args), kwargs
    if isinstance(obj, types.BuiltinMethodType):
        owner = obj.__self__
        if owner is None or isinstance(owner, types.ModuleType):
            return obj, args, kwargs
        return invoke_member, (owner, obj.__name__, *args), kwargs
    if callable(obj):
        return obj, args, kwargs
    raise ValueError(f"obj must be callable, not {type(obj).__name__}")


def serialize(obj: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
    """The signed payload of the call ``obj(*args, **kwargs)``, as :func:`defer` enqueues it.

    ``obj`` is a module-level function or class, an instance with ``__call__``, or a bound
    method (of a picklable instance, or a classmethod); nested functions, lambdas and local
    classes cannot be pickled.

    Raises:
        pickle.PicklingError: the callable or an argument cannot be pickled (the message
            names the callable).
        ConfigError: no signing key (see :func:`configure`).
    """
    curried = _curry(obj, args, kwargs)
    try:
        pickled = pickle.dumps(curried, pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
        raise pickle.PicklingError(
            f"cannot defer {name}: {exc} (defer module-level functions, classes, or methods "
            "of picklable objects, with picklable arguments)"
        ) from exc
    return _signer().sign(pickled)


def _verified(data: object) -> bytes:
    """The pickle inside a signed payload; PermanentTaskFailure when it is not signed by us."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PermanentTaskFailure(
            f"a deferred payload is bytes, not {type(data).__name__}: refused"
        )
    try:
        return _signer().unsign(bytes(data))
    except BadSignature:
        raise PermanentTaskFailure(
            "the deferred payload is not signed with a configured key (unsigned, truncated, "
            "forged, or signed with a key no longer configured): refused without unpickling"
        ) from None


def run(data: bytes | bytearray | memoryview | None) -> Any:
    """Check the signature of a payload, then unpickle and call it; return what it returns.

    Runs a task the testbed's stub holds: ``deferred.run(task.payload)``.

    Raises:
        PermanentTaskFailure: the payload is not signed with a configured key (checked before
            anything is unpickled), or it cannot be unpickled.
        ConfigError: no signing key (see :func:`configure`).
        Exception: whatever the deferred call raises.
    """
    pickled = _verified(data)
    try:
        func, args, kwargs = pickle.loads(pickled)  # noqa: S301 - signed by us, checked above
    except Exception as exc:
        raise PermanentTaskFailure(f"the deferred call cannot be unpickled: {exc!r}") from exc
    return func(*args, **kwargs)


def run_from_store(key: str) -> Any:
    """Run the call kept under ``key`` in the configured store, then delete it.

    The task of a call too large for a task carries ``run_from_store(key)``; its module and
    name are part of the payload format. A missing entry is a :class:`PermanentTaskFailure`;
    the entry is deleted after a success or a permanent failure, kept for a retry otherwise.
    """
    store = current_store()
    if store is None:
        raise ConfigError(
            "this task's call was kept in a deferred store, and none is configured here: "
            "call deferred.configure(store=...) with the store the call was deferred into"
        )
    data = store.get(key)
    if data is None:
        raise PermanentTaskFailure(f"the stored deferred call {key!r} is gone")
    try:
        result = run(data)
    except PermanentTaskFailure:
        store.delete(key)
        raise
    store.delete(key)
    return result


def defer(
    obj: Callable[..., Any],
    *args: Any,
    _countdown: float | None = None,
    _eta: Any = None,
    _name: str | None = None,
    _target: str | None = None,
    _url: str | None = DEFAULT_URL,
    _queue: str = DEFAULT_QUEUE,
    _transactional: bool = False,
    _retry_options: TaskRetryOptions | None = None,
    _headers: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Task:
    """Enqueue the call ``obj(*args, **kwargs)`` to run later in a task; return the added Task.

    The ``_``-prefixed arguments go to the task queue (see :class:`taskhandler.taskqueue.Task`);
    every other keyword goes to ``obj``. ``_url=None`` sends the task to its queue's default URL
    (``/_ah/queue/<queue>``), where you mount :data:`application` yourself.
    ``_transactional=True`` adds it with ``transactional=True`` (inside
    ``taskqueue.transaction()`` or an outbox transaction).

    A call whose task would exceed 100 KiB is kept in the configured :class:`DeferredStore`
    and the task carries its key (then the store row is written at once, even for a
    transactional task whose transaction later rolls back).

    Raises:
        pickle.PicklingError: ``obj`` or an argument cannot be pickled.
        ConfigError: no signing key (see :func:`configure`).
        TaskTooLargeError: the call is too large for a task and no store is configured, or
            larger than 1 MiB.
        taskqueue errors: as ``Task.add`` raises them (unknown queue, existing name, ...).

    Example::

        deferred.defer(send_invoice, order_id, _countdown=30, _queue="mail", _name="invoice-42")
    """
    headers = dict(_TASK_HEADERS)
    headers.update(_headers or {})
    task_args: dict[str, Any] = {
        "countdown": _countdown,
        "eta": _eta,
        "name": _name,
        "target": _target,
        "retry_options": _retry_options,
        "url": _url,
        "headers": headers,
    }
    payload = serialize(obj, *args, **kwargs)
    try:
        task = Task(payload, **task_args)
    except TaskTooLargeError:
        return _defer_stored(payload, task_args, _queue, _transactional)
    return task.add(_queue, transactional=_transactional)


def _defer_stored(
    payload: bytes, task_args: dict[str, Any], queue_name: str, transactional: bool
) -> Task:
    store = current_store()
    if store is None:
        raise TaskTooLargeError(
            f"the deferred call is {len(payload)} bytes, too large for a task; configure a store "
            "for large calls: deferred.configure(store=deferred.SqliteDeferredStore(path))"
        )
    if len(payload) > MAX_STORED_CALL_BYTES:
        raise TaskTooLargeError(
            f"the deferred call is {len(payload)} bytes; at most {MAX_STORED_CALL_BYTES} "
            "can be stored"
        )
    key = store.put(payload)
    try:
        task = Task(serialize(run_from_store, key), **task_args)
        return task.add(queue_name, transactional=transactional)
    except BaseException:
        store.delete(key)
        raise


# -- the handler that runs deferred tasks ----------------------------------------------------

# (method, read the body) of the request being handled, set by application/asgi_application
# for the handler function, which @task_handler calls with the task context only.
_request: contextvars.ContextVar[tuple[str, Callable[[], bytes]]] = contextvars.ContextVar(
    "taskhandler.deferred.request"
)


def _run_deferred(task: TaskContext) -> Any:
    """Run one deferred task request: POST only, the body a signed payload."""
    method, read = _request.get()
    if method != "POST":
        return ("deferred tasks are POST requests\n", 405, [("Allow", "POST")])
    run(read())
    return "Success"


_handler = task_handler(_run_deferred)


def _wsgi_body(environ: WSGIEnvironment) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise PermanentTaskFailure("bad Content-Length") from None
    if length < 0 or length > MAX_PAYLOAD_BYTES:
        raise PermanentTaskFailure(f"a deferred payload is at most {MAX_PAYLOAD_BYTES} bytes")
    data: bytes = environ["wsgi.input"].read(length) if length else b""
    return data


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI application that runs deferred tasks; mount it at ``/_ah/queue/deferred``.

    It is a ``@task_handler``: behind a ``TaskMiddleware`` it uses the middleware's trust and
    access decisions; on its own it trusts only the queue's address (0.1.0.2). A request
    that is not a trusted task gets 403 and its body is never read.

    Example (Flask)::

        app.wsgi_app = DispatcherMiddleware(
            app.wsgi_app, {"/_ah/queue/deferred": deferred.application}
        )
    """
    method = str(environ.get("REQUEST_METHOD", "GET")).upper()
    token = _request.set((method, lambda: _wsgi_body(environ)))
    try:
        chunks = _handler.wsgi(environ, start_response)
        try:
            return [b"".join(chunks)]
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
    finally:
        _request.reset(token)


async def _asgi_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise PermanentTaskFailure("the client went away before sending the payload")
        body += message.get("body", b"")
        if len(body) > MAX_PAYLOAD_BYTES:
            raise PermanentTaskFailure(f"a deferred payload is at most {MAX_PAYLOAD_BYTES} bytes")
        if not message.get("more_body"):
            return bytes(body)


async def asgi_application(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI twin of :data:`application`: mount it at ``/_ah/queue/deferred`` in an ASGI app.

    The deferred call runs in a worker thread (it is plain, blocking code) under the task's
    deadline, as a plain ``@task_handler`` function does under ASGI.

    Example (Starlette)::

        Mount("/_ah/queue/deferred", app=deferred.asgi_application)
    """
    if scope["type"] != "http":
        await _handler(scope, receive, send)  # lifespan answered, websockets closed
        return
    loop = asyncio.get_running_loop()

    def read() -> bytes:
        # Called in the handler's worker thread, once the request was admitted.
        future = asyncio.run_coroutine_threadsafe(_asgi_body(receive), loop)
        while True:
            try:
                return future.result(timeout=0.25)  # short waits let a deadline reach us
            except concurrent.futures.TimeoutError:
                continue
            except BaseException:
                future.cancel()
                raise

    token = _request.set((str(scope.get("method", "GET")).upper(), read))
    try:
        await _handler(scope, receive, send)
    finally:
        _request.reset(token)
