"""A task queue backend that creates Google Cloud Tasks tasks: ``taskqueue.add()`` in production.

Cloud Tasks is the managed engine App Engine's push queues became. Installed with
:func:`taskqueue.use <taskhandler.taskqueue.use>`, :class:`CloudTasksBackend` turns every
``taskqueue.add()`` / ``Queue.add()`` into a ``CreateTask`` call of the official
``google-cloud-tasks`` client (the ``cloudtasks`` extra:
``pip install 'taskhandler[cloudtasks]'``)::

    from taskhandler import taskqueue
    from taskhandler.taskqueue.cloudtasks import CloudTasksBackend

    taskqueue.use(CloudTasksBackend("my-project", "us-central1"))
    taskqueue.add(url="/tasks/count", params={"amount": "1"}, name="count-1")

Two kinds of task:

- **App Engine tasks** (the default): an App Engine HTTP request with the task's relative URL
  (``/_ah/queue/<queue>`` when none is given), method, headers and body, routed by the
  task's ``target`` (``service``, ``version.service`` or ``instance.version.service``). The
  handler runs behind ``TrustPolicy.app_engine()``.
- **HTTP target tasks** (``base_url=`` given): the full URL ``base_url + url``, signed with an
  OIDC ID token for ``service_account_email``; the handler (Cloud Run, GKE, a VM) trusts it
  with ``TrustPolicy(oidc=OIDCVerifier(audience=..., service_accounts=[...]))``.

How App Engine behaviour carries over:

- A named task is created under the queue's resource path, so Cloud Tasks deduplicates it:
  ``ALREADY_EXISTS`` for a task that is still queued or running raises
  :class:`TaskAlreadyExistsError`; for one that already finished or was deleted (Cloud Tasks
  keeps such names for about an hour, or 9 days on queues made from queue.yaml) it raises
  :class:`TombstonedTaskError`, as App Engine did. Telling them apart costs one ``GetTask``
  call, made only after ``ALREADY_EXISTS``.
- Other API errors become :class:`~taskhandler.taskqueue.Error` subclasses carrying the
  API's message (the API exception is the ``__cause__``); see :data:`ERROR_MAP`.
- ``add_async()``: the backend offers :meth:`CloudTasksBackend.enqueue_async`, which returns a
  ``concurrent.futures.Future`` at once while worker threads make the calls; lists of tasks
  are created concurrently. An ``rpc=taskqueue.create_rpc(deadline=...)`` bounds the add:
  attempts and retries stop at the deadline, and a task not created by then gets
  ``TransientError``.
- **Deadlines.** ``deadline=`` (the handler's deadline: the number given to
  ``TaskMiddleware(deadline=...)``) is sent as every task's ``dispatch_deadline``, so Cloud
  Tasks waits as long as taskhandler lets the handler run (without it Cloud Tasks cuts HTTP
  target requests at 10 minutes). A deadline Cloud Tasks cannot honour (HTTP targets: 15 s to
  30 minutes; App Engine targets: 15 s to 24 hours, basic and manual scaling) is a
  ``ConfigError`` at construction. A task's own ``dispatch_deadline_usec`` wins over it.
- **Transient errors.** ``CreateTask`` is retried with ``google.api_core.retry`` (``retry=``;
  by default UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and ABORTED, with exponential
  backoff for up to 30 s). A named task stays exactly-once: when a retry meets ``ALREADY_EXISTS``
  after an attempt whose outcome was unknown, the queued task is read back (``GetTask``) and,
  when it is the same request, the add succeeds as that task; when ``GetTask`` fails or the
  rpc deadline leaves no time for it, the add gets ``TransientError`` (the task may have been
  created: adding it again then answers ``TaskAlreadyExistsError`` or ``TombstonedTaskError``).
  An unnamed task has no such guard: a retry after an attempt that was committed but not
  answered creates it twice (at least once, as App Engine's own delivery); name tasks that must
  not run twice.
- **Emulator.** With ``CLOUD_TASKS_EMULATOR_HOST=host:port`` set and no ``client`` given, the
  backend talks to that emulator over plain gRPC, without credentials.
- **Size.** Cloud Tasks takes HTTP target tasks up to 1 MB and App Engine tasks up to
  100 KiB; :attr:`CloudTasksBackend.max_task_size` is the limit of the backend's kind.
- Per-task ``retry_options`` are not sent: Cloud Tasks sets retries per queue only
  (``retry_config``; queue.yaml's ``retry_parameters`` when deployed from it). A warning is
  logged the first time a task carries them.
- **Transactions.** Cloud Tasks has no transactions. Inside ``with taskqueue.transaction():``
  the tasks are still created only when the block completes, and if one of them fails the
  ones already created are deleted again (best effort) before the error is raised. But the
  tasks are not committed atomically with your database: a crash between your commit and the
  end of the block loses them, and a crash after it keeps them even if your own commit
  happens later and fails. A transactional outbox (tasks written to your database in the same
  transaction, forwarded afterwards) is **not** offered by taskhandler.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import functools
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigError
from ._backend import NO_PULL_QUEUES, NewTask
from ._errors import (
    Error,
    InternalError,
    InvalidDeadlineError,
    InvalidQueueError,
    InvalidQueueModeError,
    InvalidTaskError,
    PermissionDeniedError,
    TaskAlreadyExistsError,
    TombstonedTaskError,
    TransientError,
    UnknownQueueError,
)
from ._queue_yaml import QUEUE_NAME_RE
from ._task import DEFAULT_QUEUE

_HTTP_MAX_DEADLINE = 1800.0  # seconds: Cloud Tasks' limit for HTTP target tasks
_APP_ENGINE_MAX_DEADLINE = 86400.0  # seconds: App Engine targets, basic and manual scaling
_MIN_DEADLINE = 15.0  # seconds: Cloud Tasks' shortest dispatch_deadline
#: Cloud Tasks' largest task: 1 MB for HTTP target tasks, 100 KiB for App Engine tasks.
HTTP_MAX_TASK_SIZE = 1_000_000
APP_ENGINE_MAX_TASK_SIZE = 100 * 2**10
#: The environment variable naming the Cloud Tasks emulator (``host:port``).
EMULATOR_ENV = "CLOUD_TASKS_EMULATOR_HOST"

if TYPE_CHECKING:
    from google.api_core.exceptions import GoogleAPICallError
    from google.cloud import tasks_v2

__all__ = [
    "APP_ENGINE_MAX_TASK_SIZE",
    "EMULATOR_ENV",
    "ERROR_MAP",
    "HTTP_MAX_TASK_SIZE",
    "CloudTasksBackend",
    "app_engine_routing",
    "default_retry",
    "emulator_client",
]

log = logging.getLogger("taskhandler")

INSTALL_HINT = "install the cloudtasks extra: pip install 'taskhandler[cloudtasks]'"

#: gRPC status name -> the taskqueue error raised for it (ALREADY_EXISTS is decided per task).
ERROR_MAP: Mapping[str, type[Error]] = {
    "NOT_FOUND": UnknownQueueError,
    "INVALID_ARGUMENT": InvalidTaskError,
    "OUT_OF_RANGE": InvalidTaskError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "UNAUTHENTICATED": PermissionDeniedError,
    "FAILED_PRECONDITION": InvalidQueueError,
    "RESOURCE_EXHAUSTED": TransientError,
    "UNAVAILABLE": TransientError,
    "DEADLINE_EXCEEDED": TransientError,
    "ABORTED": TransientError,
    "CANCELLED": TransientError,
}

_PROJECT_RE = re.compile(r"[a-z][a-z0-9.:-]{0,99}")
_LOCATION_RE = re.compile(r"[a-z0-9-]{1,63}")
_QUEUE_PATH_RE = re.compile(r"projects/[^/]+/locations/[^/]+/queues/[A-Za-z0-9-]{1,100}")
_ROUTING_PART_RE = re.compile(r"[A-Za-z0-9-]{1,63}")


def _import_tasks() -> tuple[Any, Any]:
    try:
        from google.api_core import exceptions
        from google.cloud import tasks_v2
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ConfigError(f"CloudTasksBackend needs google-cloud-tasks: {INSTALL_HINT}") from exc
    return tasks_v2, exceptions


#: The statuses a CreateTask is retried on: the call may not have reached Cloud Tasks.
RETRIED_STATUSES = ("ServiceUnavailable", "DeadlineExceeded", "ResourceExhausted", "Aborted")


def default_retry(timeout: float = 30.0) -> Any:
    """The ``google.api_core.retry.Retry`` used for CreateTask unless ``retry=`` is given.

    Retries the statuses of :data:`RETRIED_STATUSES` with exponential backoff (0.1 s doubling
    up to 5 s) for at most ``timeout`` seconds.
    """
    return _retry(RETRIED_STATUSES, initial=0.1, maximum=5.0, multiplier=2.0, timeout=timeout)


#: The statuses a GetTask is retried on, as the Cloud Tasks client retries it.
_GET_TASK_RETRIED = ("ServiceUnavailable", "DeadlineExceeded")


def _get_task_retry() -> Any:
    """The Cloud Tasks client's own retry of GetTask (0.1 s growing 1.3-fold, up to 20 s)."""
    return _retry(_GET_TASK_RETRIED, initial=0.1, maximum=10.0, multiplier=1.3, timeout=20.0)


def _retry(
    statuses: Iterable[str], *, initial: float, maximum: float, multiplier: float, timeout: float
) -> Any:
    """A ``google.api_core.retry.Retry`` of the named ``google.api_core.exceptions``."""
    _, exceptions = _import_tasks()
    from google.api_core import retry as api_retry

    types = tuple(getattr(exceptions, name) for name in statuses)
    return api_retry.Retry(
        predicate=api_retry.if_exception_type(*types),
        initial=initial,
        maximum=maximum,
        multiplier=multiplier,
        timeout=timeout,
    )


def emulator_client(host: str) -> Any:
    """A ``CloudTasksClient`` for the emulator at ``host:port`` (plain gRPC, no credentials).

    Raises:
        ConfigError: ``host`` is not ``host:port``.
    """
    tasks_v2, _ = _import_tasks()
    if not re.fullmatch(r"[A-Za-z0-9.\-]+:[0-9]{1,5}|\[[0-9a-fA-F:]+\]:[0-9]{1,5}", host or ""):
        raise ConfigError(f"{EMULATOR_ENV}: expected host:port", value=host)
    import grpc  # type: ignore[import-untyped]
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(host)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


def app_engine_routing(target: str) -> dict[str, str]:
    """Split an App Engine ``target`` into Cloud Tasks' ``app_engine_routing`` fields.

    ``service``, ``version.service`` or ``instance.version.service``, as App Engine read
    it (the leftmost part is the most specific).

    Raises:
        InvalidTaskError: any other shape.

    Example:
        >>> app_engine_routing("v2.worker")
        {'version': 'v2', 'service': 'worker'}
    """
    parts = target.split(".")
    if not 1 <= len(parts) <= 3 or not all(_ROUTING_PART_RE.fullmatch(p) for p in parts):
        raise InvalidTaskError(
            f"target {target!r} is not service, version.service or instance.version.service"
        )
    names = ("instance", "version", "service")[3 - len(parts) :]
    return dict(zip(names, parts, strict=True))


def _timestamp(posix: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(posix, tz=datetime.timezone.utc)


class CloudTasksBackend:
    """Creates Cloud Tasks tasks for ``taskqueue.add()``; install it with ``taskqueue.use()``.

    Args:
        project: the Google Cloud project id.
        location: the Cloud Tasks location of the queues (e.g. ``us-central1``).
        client: a ``google.cloud.tasks_v2.CloudTasksClient``; by default one is made with
            the application default credentials.
        queue_map: taskqueue queue name -> Cloud Tasks queue id, or a full
            ``projects/P/locations/L/queues/Q`` path. When given, only these queues (and
            ``default``) are known; others raise ``UnknownQueueError``. Without it a queue
            name is used as the queue id in ``project``/``location``.
        base_url: make HTTP target tasks for ``base_url + url`` instead of App Engine tasks
            (e.g. ``https://worker-abc123-uc.a.run.app``).
        service_account_email: with ``base_url``, the service account the OIDC token is
            minted for (required with ``base_url``).
        audience: with ``base_url``, the token's audience (default: ``base_url``). Give the
            same value to ``OIDCVerifier(audience=...)``.
        deadline: the handler's deadline in seconds (give the number given to
            ``TaskMiddleware(deadline=...)``), sent as each task's ``dispatch_deadline``.
            ``None``: Cloud Tasks' default (10 minutes for HTTP targets, the scaling type's
            deadline for App Engine targets).
        retry: a ``google.api_core.retry.Retry`` for CreateTask (default:
            :func:`default_retry`), or ``False`` to make one attempt only. Any other
            callable that wraps a function (``retry(fn)()`` makes the call with retries) is
            used as given; without a ``with_timeout`` method an rpc deadline still cuts each
            attempt, but does not shorten its own limit.
        timeout: seconds allowed for each API call.
        max_workers: threads making API calls for ``enqueue_async`` and task lists.
        clock: seconds since the epoch; countdowns and ETAs are measured against it.

    Raises:
        ConfigError: a bad argument (a ``deadline`` Cloud Tasks cannot honour names both the
            deadline and the limit), or google-cloud-tasks (the ``cloudtasks`` extra) is missing.

    Example::

        taskqueue.use(CloudTasksBackend(
            "my-project", "us-central1",
            base_url="https://worker-abc123-uc.a.run.app",
            service_account_email="tasks@my-project.iam.gserviceaccount.com",
        ))
    """

    def __init__(
        self,
        project: str,
        location: str,
        *,
        client: Any = None,
        queue_map: Mapping[str, str] | None = None,
        base_url: str | None = None,
        service_account_email: str | None = None,
        audience: str | None = None,
        deadline: float | None = None,
        retry: Any = None,
        timeout: float = 30.0,
        max_workers: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(project, str) or not _PROJECT_RE.fullmatch(project):
            raise ConfigError("CloudTasksBackend project: not a project id", value=project)
        if not isinstance(location, str) or not _LOCATION_RE.fullmatch(location):
            raise ConfigError("CloudTasksBackend location: not a location id", value=location)
        self.project = project
        self.location = location
        self._paths: dict[str, str] | None = None
        if queue_map is not None:
            self._paths = {}
            for name, queue in dict(queue_map).items():
                if not isinstance(name, str) or not QUEUE_NAME_RE.match(name):
                    raise ConfigError("CloudTasksBackend queue_map: bad queue name", value=name)
                if not isinstance(queue, str):
                    raise ConfigError("CloudTasksBackend queue_map: bad queue id", value=queue)
                if _QUEUE_PATH_RE.fullmatch(queue):
                    self._paths[name] = queue
                elif QUEUE_NAME_RE.match(queue):
                    self._paths[name] = self._path_for(queue)
                else:
                    raise ConfigError(
                        "CloudTasksBackend queue_map: not a queue id or "
                        "projects/P/locations/L/queues/Q path",
                        value=queue,
                    )
        self.base_url: str | None = None
        self.service_account_email = service_account_email
        self.audience = audience
        if base_url is not None:
            parsed = urllib.parse.urlsplit(base_url) if isinstance(base_url, str) else None
            if (
                parsed is None
                or parsed.scheme not in ("http", "https")
                or not parsed.netloc
                or parsed.query
                or parsed.fragment
            ):
                raise ConfigError(
                    "CloudTasksBackend base_url: expected http(s)://host[/prefix]", value=base_url
                )
            if not service_account_email or "@" not in service_account_email:
                raise ConfigError(
                    "CloudTasksBackend service_account_email: required with base_url, so that "
                    "each request carries an OIDC token the handler can verify",
                    value=service_account_email,
                )
            self.base_url = base_url.rstrip("/")
            self.audience = audience or self.base_url
        elif service_account_email is not None or audience is not None:
            raise ConfigError(
                "CloudTasksBackend: service_account_email and audience apply only to HTTP "
                "target tasks (give base_url too)",
                value=service_account_email or audience,
            )
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ConfigError("CloudTasksBackend timeout: positive seconds", value=timeout)
        if not (isinstance(max_workers, int) and max_workers >= 1):
            raise ConfigError("CloudTasksBackend max_workers: at least 1", value=max_workers)
        self.timeout = float(timeout)
        self._clock = clock
        self.deadline = self._check_deadline(deadline)
        #: The largest task Cloud Tasks accepts for this backend's kind of task (bytes).
        self.max_task_size = (
            HTTP_MAX_TASK_SIZE if self.base_url is not None else APP_ENGINE_MAX_TASK_SIZE
        )

        self._tasks_v2, self._exceptions = _import_tasks()
        self._get_task_retry = _get_task_retry()
        if retry is not None and retry is not False and not callable(retry):
            raise ConfigError(
                f"CloudTasksBackend retry: a google.api_core Retry, False or None, not {retry!r}",
                value=retry,
            )
        self._retry = None if retry is False else (retry or default_retry())
        emulator = os.environ.get(EMULATOR_ENV)
        if client is None and emulator:
            client = emulator_client(emulator)
            self._owns_client = True
        elif client is None:
            try:
                client = self._tasks_v2.CloudTasksClient()
            except self._exceptions.GoogleAPIError as exc:  # no default credentials
                raise ConfigError(f"CloudTasksBackend: cannot make a client: {exc}") from exc
            self._owns_client = True
        else:
            self._owns_client = False
        self.client = client
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="taskhandler-cloudtasks"
        )
        self._warned_retry = False

    def _check_deadline(self, deadline: object) -> float | None:
        if deadline is None:
            return None
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
            raise ConfigError("CloudTasksBackend deadline: seconds", value=deadline)
        if self.base_url is not None:
            limit, kind = _HTTP_MAX_DEADLINE, "HTTP target tasks"
        else:
            limit, kind = _APP_ENGINE_MAX_DEADLINE, "App Engine tasks (basic/manual scaling)"
        if not _MIN_DEADLINE <= deadline <= limit:
            raise ConfigError(
                f"CloudTasksBackend deadline: {deadline:g} s cannot be honoured: Cloud Tasks "
                f"allows {kind} a dispatch_deadline of {_MIN_DEADLINE:g} s to {limit:g} s",
                value=deadline,
            )
        return float(deadline)

    def __repr__(self) -> str:
        kind = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"CloudTasksBackend({self.project!r}, {self.location!r}{kind})"

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for calls in flight, stop the worker threads, and close a client made here."""
        self._pool.shutdown(wait=True)
        if self._owns_client:
            self.client.transport.close()

    def __enter__(self) -> CloudTasksBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- names -----------------------------------------------------------------------------

    def _path_for(self, queue_id: str) -> str:
        return f"projects/{self.project}/locations/{self.location}/queues/{queue_id}"

    def queue_path(self, queue_name: str) -> str:
        """The Cloud Tasks resource path of a taskqueue queue.

        Raises:
            UnknownQueueError: ``queue_map`` was given and does not name the queue.
        """
        if self._paths is None:
            return self._path_for(queue_name)
        path = self._paths.get(queue_name)
        if path is None:
            if queue_name == DEFAULT_QUEUE:
                return self._path_for(DEFAULT_QUEUE)
            raise UnknownQueueError(f"queue {queue_name!r} is not in the Cloud Tasks queue_map")
        return path

    # -- the backend protocol --------------------------------------------------------------

    def now(self) -> float:
        """The backend's clock (seconds since the epoch)."""
        return self._clock()

    def check_queue(self, queue_name: str) -> None:
        """Raise ``UnknownQueueError`` for a queue missing from ``queue_map`` (no API call)."""
        self.queue_path(queue_name)

    def build_task(self, task: NewTask) -> tasks_v2.Task:
        """The Cloud Tasks ``Task`` for a taskqueue task (no API call).

        Raises:
            Error: the task cannot be expressed (unknown queue, bad target).
        """
        v2 = self._tasks_v2
        if task.method == "PULL":
            raise InvalidQueueModeError(NO_PULL_QUEUES.format(backend=type(self).__name__))
        queue_path = self.queue_path(task.queue_name)
        if task.retry is not None and not self._warned_retry:
            self._warned_retry = True
            log.warning(
                "taskhandler: Cloud Tasks has no per-task retry options; the retry_config of "
                "queue %s applies",
                queue_path,
            )
        headers: dict[str, str] = {}
        for name, value in task.headers:
            # Cloud Tasks takes one value per header: join repeats as HTTP allows.
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        method = v2.HttpMethod[task.method]
        fields: dict[str, Any] = {}
        if task.task_name:
            fields["name"] = f"{queue_path}/tasks/{task.task_name}"
        # An ETA not in the future is "now": leave the schedule to Cloud Tasks.
        if task.eta > self.now():
            fields["schedule_time"] = _timestamp(task.eta)
        if task.dispatch_deadline is not None:
            if self.base_url is not None and task.dispatch_deadline > _HTTP_MAX_DEADLINE:
                raise InvalidTaskError(
                    f"dispatch_deadline_usec of {task.dispatch_deadline:g} s is over the 30 "
                    "minutes Cloud Tasks allows HTTP target tasks"
                )
            fields["dispatch_deadline"] = datetime.timedelta(seconds=task.dispatch_deadline)
        elif self.deadline is not None:
            fields["dispatch_deadline"] = datetime.timedelta(seconds=self.deadline)
        if self.base_url is not None:
            if task.target:
                raise InvalidTaskError(
                    f"target {task.target!r} routes App Engine tasks; HTTP target tasks go to "
                    f"{self.base_url}"
                )
            fields["http_request"] = v2.HttpRequest(
                url=self.base_url + task.url,
                http_method=method,
                headers=headers,
                body=task.payload,
                oidc_token=v2.OidcToken(
                    service_account_email=self.service_account_email,
                    audience=self.audience,
                ),
            )
        else:
            request: dict[str, Any] = {
                "relative_uri": task.url,
                "http_method": method,
                "headers": headers,
                "body": task.payload,
            }
            if task.target:
                request["app_engine_routing"] = v2.AppEngineRouting(
                    **app_engine_routing(task.target)
                )
            fields["app_engine_http_request"] = v2.AppEngineHttpRequest(**request)
        built: tasks_v2.Task = v2.Task(**fields)
        return built

    def enqueue(self, tasks: Sequence[NewTask], *, atomic: bool = False) -> list[str | Error]:
        """Create the tasks; return each task's name or the error that refused it.

        With ``atomic=True`` (a ``taskqueue.transaction()`` block) the tasks are created one
        after another; on the first failure those already created are deleted again (best
        effort: Cloud Tasks has no transactions) and the error is raised.
        """
        if not atomic:
            return self.enqueue_async(tasks).result()
        calls: list[tuple[str, tasks_v2.Task]] = []
        for task in tasks:
            built = self._build_or_error(task)
            if isinstance(built, Error):
                raise built
            calls.append(built)
        created: list[tuple[str, str]] = []
        for task, (parent, proto) in zip(tasks, calls, strict=True):
            result = self._create(parent, proto)
            if isinstance(result, Error):
                for queue_name, name in created:
                    try:
                        self.delete(queue_name, name)
                    except Error as exc:
                        log.warning("taskhandler: could not delete task %s again: %s", name, exc)
                raise result
            created.append((task.queue_name, result))
        return [name for _, name in created]

    def enqueue_async(
        self, tasks: Sequence[NewTask], *, deadline: float | None = None
    ) -> concurrent.futures.Future[list[str | Error]]:
        """Start creating the tasks and return at once.

        The future's result is what :meth:`enqueue` returns: each task's name or its error.

        Args:
            tasks: the tasks.
            deadline: seconds from now by which every CreateTask must have been answered
                (``taskqueue.create_rpc(deadline=...)``): each attempt's gRPC timeout and the
                retries are cut to what is left, and a task still waiting for a worker
                thread when it passes is not attempted. A task not created in time gets
                ``TransientError`` (Cloud Tasks may still have created it, as after any
                ``DEADLINE_EXCEEDED``), also when a retry met ``ALREADY_EXISTS`` and there was
                no time left to read the task back. ``None``: ``timeout`` per attempt,
                ``retry``'s limit.

        Raises:
            TypeError, InvalidDeadlineError: ``deadline`` is not a number above 0.
        """
        end: float | None = None
        if deadline is not None:
            if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
                raise TypeError("deadline must be numeric")
            if not deadline > 0:
                raise InvalidDeadlineError("Negative or zero deadline requested")
            end = time.monotonic() + deadline
        outer: concurrent.futures.Future[list[str | Error]] = concurrent.futures.Future()
        results: list[str | Error | None] = [None] * len(tasks)
        pending = [0]
        guard = threading.Lock()

        def finish() -> None:
            outer.set_result([r for r in results if r is not None])

        def done(index: int, future: concurrent.futures.Future[str | Error]) -> None:
            exc = future.exception()
            results[index] = (
                future.result()
                if exc is None
                else InternalError(f"creating the task failed: {exc!r}")
            )
            with guard:
                pending[0] -= 1
                last = pending[0] == 0
            if last:
                finish()

        calls: list[tuple[int, str, tasks_v2.Task]] = []
        for index, task in enumerate(tasks):
            built = self._build_or_error(task)
            if isinstance(built, Error):
                results[index] = built
            else:
                calls.append((index, *built))
        if not calls:
            finish()
            return outer
        pending[0] = len(calls)
        for index, parent, proto in calls:
            future = self._pool.submit(self._create, parent, proto, end)
            future.add_done_callback(functools.partial(done, index))
        return outer

    def delete(self, queue_name: str, task_name: str) -> bool:
        """Delete a queued task; False when there was none of that name."""
        name = f"{self.queue_path(queue_name)}/tasks/{task_name}"
        try:
            self.client.delete_task(name=name, timeout=self.timeout)
        except self._exceptions.NotFound:
            return False
        except self._exceptions.GoogleAPIError as exc:
            raise self._error(exc) from exc
        return True

    def purge(self, queue_name: str) -> int:
        """Delete every task of the queue. Returns 0: Cloud Tasks does not say how many."""
        try:
            self.client.purge_queue(name=self.queue_path(queue_name), timeout=self.timeout)
        except self._exceptions.GoogleAPIError as exc:
            raise self._error(exc) from exc
        return 0

    # -- calls -----------------------------------------------------------------------------

    def _build_or_error(self, task: NewTask) -> tuple[str, tasks_v2.Task] | Error:
        try:
            return self.queue_path(task.queue_name), self.build_task(task)
        except Error as exc:
            return exc

    def _timeout(self, end: float | None) -> float:
        """Seconds the next API call may take: ``timeout``, cut to what is left before ``end``.

        Raises:
            DeadlineExceeded: ``end`` (a ``time.monotonic()`` value) has passed.
        """
        if end is None:
            return self.timeout
        left = end - time.monotonic()
        if left <= 0:
            raise self._exceptions.DeadlineExceeded(
                "the RPC deadline passed before the call was made"
            )
        return min(self.timeout, left)

    def _create(self, parent: str, proto: tasks_v2.Task, end: float | None = None) -> str | Error:
        attempts = [0]

        def attempt() -> Any:
            attempts[0] += 1
            return self.client.create_task(parent=parent, task=proto, timeout=self._timeout(end))

        retry = self._retry
        with_timeout = getattr(retry, "with_timeout", None)
        if with_timeout is not None and end is not None:
            # Retries stop at the RPC deadline too (each attempt is cut to it above).
            left = end - time.monotonic()
            limit = getattr(retry, "timeout", None)
            retry = with_timeout(left if limit is None else min(limit, left))
        call = attempt if retry is None else retry(attempt)
        try:
            created = call()
        except self._exceptions.AlreadyExists as exc:
            if attempts[0] > 1:
                # After an attempt whose answer was lost, the name may be our own task.
                return self._own_or_error(proto, exc, end)
            return self._already_exists(proto.name, exc, end)
        except self._exceptions.RetryError as exc:
            return self._error(exc.cause if exc.cause is not None else exc)
        except self._exceptions.GoogleAPIError as exc:
            return self._error(exc)
        return str(created.name).rsplit("/", 1)[-1]

    def _own_or_error(
        self, proto: tasks_v2.Task, exc: GoogleAPICallError, end: float | None = None
    ) -> str | Error:
        """A retry met ALREADY_EXISTS: the name when the queued task is ``proto``'s request.

        Else ``TaskAlreadyExistsError`` (a different request has the name),
        ``TombstonedTaskError`` (no task of the name is queued), or ``TransientError`` when
        ``GetTask`` could not tell in time or failed: an earlier attempt may have created it.
        """
        message = exc.message or "task already exists"
        try:
            found = self._get_task(proto.name, end, full=True)
        except self._exceptions.NotFound:
            error: Error = TombstonedTaskError(
                f"{message} (task {proto.name} finished or was deleted recently)"
            )
        except self._exceptions.GoogleAPIError as lookup:
            error = TransientError(
                f"{message}, after an attempt whose answer was lost; the task may have been "
                f"created by it, but reading it back failed: {lookup}"
            )
            error.__cause__ = lookup
            return error
        else:
            if self._is_same_task(proto, found):
                return str(proto.name).rsplit("/", 1)[-1]
            error = TaskAlreadyExistsError(message)
        error.__cause__ = exc
        return error

    @staticmethod
    def _is_same_task(proto: tasks_v2.Task, found: tasks_v2.Task) -> bool:
        """Whether the queued task ``found`` carries the request ``proto`` does."""
        for field, url in (("http_request", "url"), ("app_engine_http_request", "relative_uri")):
            sent, got = getattr(proto, field), getattr(found, field)
            if getattr(sent, url):
                return bool(
                    getattr(sent, url) == getattr(got, url)
                    and sent.http_method == got.http_method
                    and sent.body == got.body
                )
        return False

    def _get_task(self, name: str, end: float | None, *, full: bool = False) -> Any:
        """GetTask, retried as the client retries it (UNAVAILABLE, DEADLINE_EXCEEDED; up to
        20 s), and answered by ``end`` (a ``time.monotonic()`` value) when one is given."""
        request: dict[str, Any] = {"name": name}
        if full:
            request["response_view"] = self._tasks_v2.Task.View.FULL

        def attempt() -> Any:
            return self.client.get_task(request=request, timeout=self._timeout(end), retry=None)

        retry = self._get_task_retry
        if end is not None:
            retry = retry.with_timeout(max(min(retry.timeout, end - time.monotonic()), 0.0))
        return retry(attempt)()

    def _already_exists(
        self, name: str, exc: GoogleAPICallError, end: float | None = None
    ) -> Error:
        """App Engine told a live name from a recently used one; ask Cloud Tasks which it is."""
        message = exc.message or "task already exists"
        try:
            self._get_task(name, end)
        except self._exceptions.NotFound:
            error: Error = TombstonedTaskError(
                f"{message} (task {name} finished or was deleted recently)"
            )
        except self._exceptions.GoogleAPIError:
            error = TaskAlreadyExistsError(message)
        else:
            error = TaskAlreadyExistsError(message)
        error.__cause__ = exc
        return error

    def _error(self, exc: Exception) -> Error:
        code = getattr(exc, "grpc_status_code", None)
        status = getattr(code, "name", None)
        if status is None and isinstance(exc, self._exceptions.RetryError):
            status = "UNAVAILABLE"
        cls = ERROR_MAP.get(str(status), InternalError)
        message = getattr(exc, "message", None) or str(exc)
        error = cls(message)
        error.__cause__ = exc
        return error
