"""App Engine's ``testbed``, for the task queue: App Engine tests run with their imports changed.

::

    from taskhandler import deferred          # was: from google.appengine.ext import deferred
    from taskhandler.testing import testbed   # was: from google.appengine.ext import testbed

    class InvoiceTest(unittest.TestCase):
        def setUp(self):
            self.testbed = testbed.Testbed()
            self.testbed.activate()
            self.testbed.init_taskqueue_stub(root_path=APP_DIR)   # reads APP_DIR/queue.yaml
            self.taskqueue_stub = self.testbed.get_stub(testbed.TASKQUEUE_SERVICE_NAME)

        def tearDown(self):
            self.testbed.deactivate()

        def test_invoice_is_deferred(self):
            place_order(42)
            [task] = self.taskqueue_stub.get_filtered_tasks(queue_names="mail")
            deferred.run(task.payload)

The stub is a real :class:`~taskhandler.taskqueue.LocalTaskQueue` (SQLite in memory, every
App Engine rule of ``taskqueue.add()``) that never dispatches on its own: tasks wait until the
test looks at them or runs them. ``init_taskqueue_stub`` installs it as the backend
``taskqueue.add()`` and ``deferred.defer()`` use; ``deactivate`` puts the previous one back.

Only the task queue is stubbed. The other ``init_*_stub`` methods App Engine tests call
(datastore, memcache, users, urlfetch, mail, ...) raise :class:`StubNotSupportedError`, a
``NotImplementedError`` that says so: use your database's or framework's own test tools.
"""

from __future__ import annotations

import base64
import datetime
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from .. import deferred, taskqueue
from ..taskqueue import (
    LocalTaskQueue,
    QueueConfig,
    QueuedTask,
    Task,
    TaskQueueBackend,
    format_rate,
    load_queue_yaml,
)

__all__ = [
    "APP_IDENTITY_SERVICE_NAME",
    "BLOBSTORE_SERVICE_NAME",
    "CAPABILITY_SERVICE_NAME",
    "CHANNEL_SERVICE_NAME",
    "DATASTORE_SERVICE_NAME",
    "FILES_SERVICE_NAME",
    "IMAGES_SERVICE_NAME",
    "MAIL_SERVICE_NAME",
    "MEMCACHE_SERVICE_NAME",
    "MODULES_SERVICE_NAME",
    "SEARCH_SERVICE_NAME",
    "SUPPORTED_SERVICES",
    "TASKQUEUE_SERVICE_NAME",
    "URLFETCH_SERVICE_NAME",
    "USER_SERVICE_NAME",
    "XMPP_SERVICE_NAME",
    "Error",
    "NotActivatedError",
    "StubNotSupportedError",
    "StubTask",
    "TaskQueueServiceStub",
    "Testbed",
]

# App Engine's service names, so `testbed.TASKQUEUE_SERVICE_NAME` and friends port unchanged.
APP_IDENTITY_SERVICE_NAME = "app_identity_service"
BLOBSTORE_SERVICE_NAME = "blobstore"
CAPABILITY_SERVICE_NAME = "capability_service"
CHANNEL_SERVICE_NAME = "channel"
DATASTORE_SERVICE_NAME = "datastore_v3"
FILES_SERVICE_NAME = "file"
IMAGES_SERVICE_NAME = "images"
MAIL_SERVICE_NAME = "mail"
MEMCACHE_SERVICE_NAME = "memcache"
MODULES_SERVICE_NAME = "modules"
SEARCH_SERVICE_NAME = "search"
TASKQUEUE_SERVICE_NAME = "taskqueue"
URLFETCH_SERVICE_NAME = "urlfetch"
USER_SERVICE_NAME = "user"
XMPP_SERVICE_NAME = "xmpp"

SUPPORTED_SERVICES = [TASKQUEUE_SERVICE_NAME]
_KNOWN_SERVICES = frozenset(
    {
        APP_IDENTITY_SERVICE_NAME,
        BLOBSTORE_SERVICE_NAME,
        CAPABILITY_SERVICE_NAME,
        CHANNEL_SERVICE_NAME,
        DATASTORE_SERVICE_NAME,
        FILES_SERVICE_NAME,
        IMAGES_SERVICE_NAME,
        MAIL_SERVICE_NAME,
        MEMCACHE_SERVICE_NAME,
        MODULES_SERVICE_NAME,
        SEARCH_SERVICE_NAME,
        TASKQUEUE_SERVICE_NAME,
        URLFETCH_SERVICE_NAME,
        USER_SERVICE_NAME,
        XMPP_SERVICE_NAME,
    }
)

# The stub's time format and the headers App Engine's stub shows with each task.
TIME_STR_FMT = "%Y/%m/%d %H:%M:%S"


class Error(Exception):
    """Base class of the testbed's errors (``testbed.Error`` on App Engine)."""


class NotActivatedError(Error):
    """The testbed is used before :meth:`Testbed.activate` or after :meth:`Testbed.deactivate`."""


class StubNotSupportedError(Error, NotImplementedError):
    """A service stub taskhandler does not provide (everything but the task queue)."""


# -- the task queue stub -----------------------------------------------------------------


def _not_dispatched(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The stub queue's target: never reached, since the stub does not dispatch."""
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"the testbed's task queue stub does not run tasks\n"]


def _usec(moment: datetime.datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


def _delta(moment: datetime.datetime, now: datetime.datetime) -> str:
    """App Engine's ``eta_delta``: ``0:00:06 from now`` / ``0:00:06 ago``, whole seconds."""
    if moment > now:
        delta = moment - now
        suffix = "from now"
    else:
        delta = now - moment
        suffix = "ago"
    return f"{datetime.timedelta(days=delta.days, seconds=delta.seconds)} {suffix}"


def _stub_headers(task: QueuedTask) -> list[tuple[str, str]]:
    """The headers App Engine's stub lists for a task: the task's own, then the queue's."""
    headers = list(task.headers)
    headers += [
        ("X-AppEngine-QueueName", task.queue_name),
        ("X-AppEngine-TaskName", task.task_name),
        ("X-AppEngine-TaskRetryCount", str(task.retry_count)),
        ("X-AppEngine-TaskETA", repr(task.eta.timestamp())),
        ("X-AppEngine-Development-Payload", "1"),
        ("Content-Length", str(len(task.payload))),
    ]
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", "application/octet-stream"))
    headers.append(("X-AppEngine-TaskExecutionCount", str(task.execution_count)))
    if task.previous_response is not None:
        headers.append(("X-AppEngine-TaskPreviousResponse", str(task.previous_response)))
    return headers


def _task_dict(task: QueuedTask, now: datetime.datetime) -> dict[str, Any]:
    """A task as App Engine's stub's ``GetTasks`` gives it (``tag`` for a tagged pull task)."""
    entry: dict[str, Any] = {
        "name": task.task_name,
        "queue_name": task.queue_name,
        "url": task.url,
        "method": task.method,
        "eta": task.eta.strftime(TIME_STR_FMT),
        "eta_usec": _usec(task.eta),
        "eta_delta": _delta(task.eta, now),
        "body": base64.b64encode(task.payload),
        "creation_time_usec": _usec(task.created),
        "headers": _stub_headers(task),
    }
    if task.tag is not None:
        entry["tag"] = task.tag
    return entry


class StubTask(Task):
    """A task waiting in the stub, as ``get_filtered_tasks`` returns it: a :class:`Task`.

    Besides ``Task``'s ``url``, ``name``, ``payload``, ``method``, ``eta`` and
    ``extract_params()``, its ``headers`` include the ``X-AppEngine-*`` headers the queue
    would send, as App Engine's stub showed them, and ``queue_name`` is its queue. A pull
    task has ``method == "PULL"``, its ``payload`` and its ``tag``.
    """

    def __init__(self, queued: QueuedTask) -> None:
        own: dict[str, list[str]] = {}
        for name, value in queued.headers:
            own.setdefault(name, []).append(value)
        if queued.method == "PULL":
            # A pull task has a payload and maybe a tag; no URL, headers or target.
            super().__init__(
                queued.payload,
                name=queued.task_name,
                method="PULL",
                tag=queued.tag,
                eta=queued.eta,
                _size_check=False,
            )
        else:
            body = queued.method in ("POST", "PUT") and queued.payload
            super().__init__(
                queued.payload if body else None,
                name=queued.task_name,
                method=queued.method,
                url=queued.url,
                headers=own,
                eta=queued.eta,
            )
        self._queued = queued
        self._stub_headers = _stub_headers(queued)

    @property
    def headers(self) -> dict[str, str]:
        """The task's headers and the queue's ``X-AppEngine-*`` headers."""
        result: dict[str, str] = {}
        for key, value in self._stub_headers:
            result[key] = f"{result[key]},{value}" if key in result else value
        return result

    @property
    def queue_name(self) -> str | None:
        """The queue the task waits in."""
        return self._queued.queue_name

    @property
    def retry_count(self) -> int:
        """Attempts made so far (0 in the stub, which runs nothing)."""
        return self._queued.retry_count

    @property
    def was_enqueued(self) -> bool:
        """True: the task is in a queue."""
        return True


class TaskQueueServiceStub:
    """The task queue stub a :class:`Testbed` hands out: App Engine's methods over a real queue.

    Attributes:
        queue: the :class:`~taskhandler.taskqueue.LocalTaskQueue` holding the tasks (SQLite in
            memory, never started). ``queue.run_due()`` is there, but its target only answers
            503: run deferred tasks with ``deferred.run(task.payload)``, or test handlers with
            ``TaskTestApp.post_task``.
        root_path: the directory whose ``queue.yaml`` (or ``queue.yml``) declared the queues.
        queue_yaml: the file read, or ``None`` (then only ``default`` exists).
    """

    def __init__(
        self, root_path: str | os.PathLike[str] | None = None, queue_config_path: Any = None
    ) -> None:
        self.root_path = None if root_path is None else str(root_path)
        self.queue_yaml = self._find_queue_yaml(queue_config_path)
        queues = load_queue_yaml(self.queue_yaml) if self.queue_yaml else None
        self.queue = LocalTaskQueue(_not_dispatched, db=":memory:", queues=queues)

    def _find_queue_yaml(self, queue_config_path: Any) -> str | None:
        """App Engine's order: ``queue_config_path``, then root_path's queue.yaml, queue.yml."""
        if queue_config_path is not None:
            return str(queue_config_path)
        if self.root_path is None:
            return None
        for name in ("queue.yaml", "queue.yml"):
            path = Path(self.root_path) / name
            if path.is_file():
                return str(path)
        return None

    def _queued(self, queue_name: str) -> list[QueuedTask]:
        config = self.queue.queues.get(queue_name)
        if config is None:
            raise KeyError(queue_name)
        return self.queue.tasks(queue_name)

    # -- what App Engine tests call ------------------------------------------------------

    def get_filtered_tasks(
        self,
        url: str | None = None,
        name: str | None = None,
        queue_names: str | Iterable[str] | None = None,
    ) -> list[StubTask]:
        """The waiting tasks as :class:`Task` objects, optionally only those with this URL,
        name, or in these queues (a name or a list; unknown names are skipped).

        Example::

            [task] = stub.get_filtered_tasks(url="/_ah/queue/deferred", queue_names="mail")
        """
        if isinstance(queue_names, str):
            queue_names = [queue_names]
        wanted = sorted(self.queue.queues) if queue_names is None else list(queue_names)
        found: list[StubTask] = []
        for queue_name in wanted:
            if queue_name not in self.queue.queues:
                continue
            for queued in self._queued(queue_name):
                if url is not None and queued.url != url:
                    continue
                if name is not None and queued.task_name != name:
                    continue
                found.append(StubTask(queued))
        return found

    def GetTasks(self, queue_name: str) -> list[dict[str, Any]]:
        """A queue's waiting tasks as App Engine's stub gives them: dicts, in ETA order.

        Each has ``name``, ``queue_name``, ``url``, ``method``, ``eta`` (``%Y/%m/%d
        %H:%M:%S`` UTC), ``eta_usec``, ``eta_delta``, ``body`` (base64, bytes),
        ``creation_time_usec`` and ``headers`` (a list of pairs, ``X-AppEngine-*`` included).
        A pull task's ``method`` is ``"PULL"``, and a tagged one has ``tag`` (a string).

        Raises:
            KeyError: the queue is not declared.
        """
        now = datetime.datetime.fromtimestamp(self.queue.now(), datetime.timezone.utc)
        return [_task_dict(task, now) for task in self._queued(queue_name)]

    def GetQueues(self) -> list[dict[str, Any]]:
        """Every declared queue as App Engine's stub gives it: dicts, sorted by name.

        Each has ``name``, ``max_rate`` (``"5/s"``), ``bucket_size``, ``mode``, ``acl``
        (``None``), ``oldest_task`` and ``eta_delta`` (``""`` when empty), ``tasks_in_queue``
        and, when set, ``retry_parameters`` (App Engine's keys: ``retry_limit``,
        ``age_limit_sec``, ``min_backoff_sec``, ``max_backoff_sec``, ``max_doublings``).
        """
        now = datetime.datetime.fromtimestamp(self.queue.now(), datetime.timezone.utc)
        queues: list[dict[str, Any]] = []
        for queue_name, config in sorted(self.queue.queues.items()):
            tasks = self._queued(queue_name)
            oldest = min((task.eta for task in tasks), default=None)
            entry: dict[str, Any] = {
                "name": queue_name,
                "bucket_size": config.bucket_size,
                "max_rate": format_rate(config.rate) if config.rate else "0/s",
                "mode": config.mode,
                "acl": None,
                "oldest_task": "" if oldest is None else oldest.strftime(TIME_STR_FMT),
                "eta_delta": "" if oldest is None else _delta(oldest, now),
                "tasks_in_queue": len(tasks),
            }
            retry = _retry_dict(config)
            if retry:
                entry["retry_parameters"] = retry
            queues.append(entry)
        return queues

    def FlushQueue(self, queue_name: str) -> None:
        """Remove every waiting task of a queue (an undeclared queue is ignored).

        Unlike App Engine's stub, the names of named tasks stay reserved (tombstones), as
        they do in production; use new names, or a new ``Testbed``, to add them again.
        """
        if queue_name in self.queue.queues:
            self.queue.purge(queue_name)

    def DeleteTask(self, queue_name: str, task_name: str) -> None:
        """Delete a waiting task (an undeclared queue or unknown task is ignored).

        The name of a named task stays reserved, as in :meth:`FlushQueue`.
        """
        if queue_name in self.queue.queues:
            self.queue.delete(queue_name, task_name)

    def close(self) -> None:
        """Close the queue (the testbed does this on ``deactivate``)."""
        self.queue.close()


def _retry_dict(config: QueueConfig) -> dict[str, Any]:
    retry = config.retry_parameters
    pairs = (
        ("retry_limit", retry.task_retry_limit),
        ("age_limit_sec", retry.task_age_limit),
        ("min_backoff_sec", retry.min_backoff_seconds),
        ("max_backoff_sec", retry.max_backoff_seconds),
        ("max_doublings", retry.max_doublings),
    )
    return {key: value for key, value in pairs if value is not None}


# -- the testbed ---------------------------------------------------------------------------


class Testbed:
    """App Engine's ``testbed.Testbed``, with the task queue stub.

    ``activate()`` starts a test's use of stubs (and remembers the environment and the
    installed task queue), ``init_taskqueue_stub()`` makes and installs the stub,
    ``get_stub(TASKQUEUE_SERVICE_NAME)`` returns it, ``deactivate()`` puts everything back.

    The stub is also set up for ``deferred``: when no signing key is configured a random one
    is (for this test only), and calls too large for a task are kept in memory.
    """

    __test__ = False  # not a test class, whatever pytest's name patterns say

    def __init__(self) -> None:
        self._activated = False
        self._stubs: dict[str, TaskQueueServiceStub] = {}
        self._environ: dict[str, str] | None = None
        self._previous_backend: TaskQueueBackend | None = None
        self._backend_installed = False
        self._deferred: list[deferred.configure] = []

    def activate(self) -> None:
        """Start using stubs: the environment and the task queue backend are restored later."""
        self._environ = dict(os.environ)
        try:
            self._previous_backend = taskqueue.current_backend()
        except taskqueue.Error:
            self._previous_backend = None
        self._activated = True

    def deactivate(self) -> None:
        """Close the stubs and restore the environment, the task queue backend and deferred.

        Raises:
            NotActivatedError: :meth:`activate` was not called.
        """
        if not self._activated:
            raise NotActivatedError("The testbed is not activated.")
        for stub in self._stubs.values():
            stub.close()
        self._stubs.clear()
        if self._backend_installed:
            taskqueue.use(self._previous_backend)
            self._backend_installed = False
        for change in reversed(self._deferred):
            change.__exit__(None, None, None)
        self._deferred.clear()
        if self._environ is not None:
            os.environ.clear()
            os.environ.update(self._environ)
        self._activated = False

    def setup_env(self, overwrite: bool = False, **kwargs: str) -> None:
        """Set environment variables for the test (names upper-cased, as App Engine does).

        An existing variable is kept unless ``overwrite`` is true; all are restored by
        :meth:`deactivate`.
        """
        self._check_active()
        for name, value in kwargs.items():
            key = name.upper()
            if overwrite or key not in os.environ:
                os.environ[key] = str(value)

    def init_taskqueue_stub(
        self,
        enable: bool = True,
        root_path: str | os.PathLike[str] | None = None,
        queue_config_path: str | os.PathLike[str] | None = None,
        auto_task_running: bool = False,
        **stub_kw_args: Any,
    ) -> None:
        """Make the task queue stub and install it as the queue ``taskqueue.add()`` uses.

        Args:
            enable: ``False`` installs no queue at all: ``taskqueue.add()`` then raises,
                as a disabled service did.
            root_path: the directory whose ``queue.yaml`` (or ``queue.yml``) declares the
                queues; without one only ``default`` exists.
            queue_config_path: the queue.yaml file itself (wins over ``root_path``).
            auto_task_running: must stay ``False``: the stub never runs tasks by itself
                (use a ``LocalTaskQueue(app)`` and ``run_until_idle()`` for that).

        Raises:
            NotActivatedError: :meth:`activate` was not called.
            StubNotSupportedError: ``auto_task_running=True``.
            TypeError: another App Engine stub argument (``_all_queues_valid``, ...).
            ConfigError: the queue.yaml is invalid.
        """
        self._check_active()
        if stub_kw_args:
            raise TypeError(
                "init_taskqueue_stub: unsupported argument(s) "
                f"{', '.join(sorted(stub_kw_args))}; supported: enable, root_path, "
                "queue_config_path"
            )
        if auto_task_running:
            raise StubNotSupportedError(
                "auto_task_running=True is not supported: the stub never runs tasks; run them "
                "with deferred.run(task.payload), or use LocalTaskQueue(app).run_until_idle()"
            )
        old = self._stubs.pop(TASKQUEUE_SERVICE_NAME, None)
        if old is not None:
            old.close()
        if not enable:
            taskqueue.use(None)
            self._backend_installed = True
            return
        stub = TaskQueueServiceStub(root_path, queue_config_path)
        self._stubs[TASKQUEUE_SERVICE_NAME] = stub
        taskqueue.use(stub.queue)
        self._backend_installed = True
        if not self._deferred:
            settings: dict[str, Any] = {}
            if not deferred.has_secret_key():
                settings["secret_key"] = secrets.token_urlsafe(32)
            if deferred.current_store() is None:
                settings["store"] = deferred.MemoryDeferredStore()
            self._deferred.append(deferred.configure(**settings))

    def get_stub(self, service_name: str) -> TaskQueueServiceStub | None:
        """The stub of a service: the task queue stub, or ``None`` before it is initialised.

        Raises:
            NotActivatedError: :meth:`activate` was not called.
            StubNotSupportedError: a service other than the task queue.
        """
        self._check_active()
        if service_name not in SUPPORTED_SERVICES:
            raise StubNotSupportedError(_unsupported(service_name))
        return self._stubs.get(service_name)

    def _check_active(self) -> None:
        if not self._activated:
            raise NotActivatedError("The testbed is not activated.")

    # -- the stubs taskhandler does not provide --------------------------------------------

    def init_datastore_v3_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(DATASTORE_SERVICE_NAME))

    def init_memcache_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(MEMCACHE_SERVICE_NAME))

    def init_user_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(USER_SERVICE_NAME))

    def init_urlfetch_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(URLFETCH_SERVICE_NAME))

    def init_mail_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(MAIL_SERVICE_NAME))

    def init_app_identity_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(APP_IDENTITY_SERVICE_NAME))

    def init_blobstore_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(BLOBSTORE_SERVICE_NAME))

    def init_capability_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(CAPABILITY_SERVICE_NAME))

    def init_channel_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(CHANNEL_SERVICE_NAME))

    def init_files_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(FILES_SERVICE_NAME))

    def init_images_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(IMAGES_SERVICE_NAME))

    def init_modules_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(MODULES_SERVICE_NAME))

    def init_search_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(SEARCH_SERVICE_NAME))

    def init_xmpp_stub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(_unsupported(XMPP_SERVICE_NAME))

    def init_all_stubs(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided (only the task queue stub exists): raises :class:`StubNotSupportedError`."""
        raise StubNotSupportedError(
            "init_all_stubs() is not supported: taskhandler's testbed provides only the task "
            "queue stub; call init_taskqueue_stub()"
        )


def _unsupported(service_name: str) -> str:
    what = (
        f"the {service_name!r} service"
        if service_name in _KNOWN_SERVICES
        else (f"{service_name!r}, which is not an App Engine service")
    )
    return (
        f"{what} is not supported by taskhandler's testbed: it provides only the task queue "
        f"stub ({TASKQUEUE_SERVICE_NAME!r}, init_taskqueue_stub()). Test the datastore, "
        "memcache, users and other services with your own database's and framework's test tools."
    )
