"""What a task queue backend is, and which one is installed.

:class:`NewTask` is the plain record a backend receives; :class:`TaskQueueBackend` is what it
offers; :func:`use` installs one process-wide and :func:`current_backend` returns it. This
module sits below ``Task`` and ``Queue`` (both hand it records), and imports neither.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

from ._errors import Error, InvalidQueueModeError
from ._queue_yaml import RetryParameters

__all__ = [
    "NO_PULL_QUEUES",
    "LeasedTask",
    "NewTask",
    "PullQueueBackend",
    "TaskQueueBackend",
    "current_backend",
    "now",
    "pull_backend",
    "use",
]


@dataclass(frozen=True)
class NewTask:
    """A validated task on its way into a backend: plain data only.

    Attributes:
        queue_name: the queue.
        task_name: the caller's name, or ``None`` for the backend to generate one.
        method: the HTTP method.
        url: the full relative URL (the queue's default URL already filled in).
        headers: the caller's extra headers, in order.
        payload: the body (``b""`` when none).
        eta: seconds since the epoch.
        target: the task's own target (the backend applies a queue's ``target`` over it).
        retry: the task's retry options, or ``None``.
        tag: a pull task's tag, or ``None`` (``method`` is ``"PULL"`` for pull tasks).
        dispatch_deadline: seconds a push task's handler may take (``dispatch_deadline_usec``
            converted), or ``None`` for the queue's.
    """

    queue_name: str
    task_name: str | None
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    payload: bytes
    eta: float
    target: str | None
    retry: RetryParameters | None
    tag: str | None = None
    dispatch_deadline: float | None = None


@runtime_checkable
class TaskQueueBackend(Protocol):
    """What :func:`use` accepts: something that stores tasks for dispatch.

    ``enqueue`` returns, for each task in order, the task name it stored or the
    :class:`Error` that refused it. With ``atomic=True`` it stores all or none and raises the
    first error instead.

    A backend whose calls are slow (a network service) may also offer
    ``enqueue_async(tasks) -> concurrent.futures.Future[list[str | Error]]``: it starts the
    non-atomic ``enqueue`` and returns at once. ``add_async()`` then returns without waiting
    for it; without it ``add_async()`` calls ``enqueue``.
    """

    def now(self) -> float:
        """The backend's clock, in seconds since the epoch (countdowns start from it)."""
        ...

    def check_queue(self, queue_name: str) -> None:
        """Raise ``UnknownQueueError`` (or ``InvalidQueueModeError``) if tasks cannot join."""
        ...

    def enqueue(self, tasks: Sequence[NewTask], *, atomic: bool = False) -> list[str | Error]:
        """Store tasks; see the class docstring."""
        ...

    def delete(self, queue_name: str, task_name: str) -> bool:
        """Delete a pending task (leaving a tombstone); False when there was none."""
        ...

    def purge(self, queue_name: str) -> int:
        """Delete every pending task of the queue; return how many."""
        ...


@dataclass(frozen=True)
class LeasedTask:
    """A pull task a lease returned: plain data (``Queue.lease_tasks`` makes ``Task``s of it).

    Attributes:
        task_name: its name.
        payload: its body.
        tag: its tag, if any.
        eta: when the lease ends, seconds since the epoch.
        retry_count: how many times it has been leased, this lease included.
    """

    task_name: str
    payload: bytes
    tag: str | None
    eta: float
    retry_count: int


@runtime_checkable
class PullQueueBackend(Protocol):
    """A backend that also has pull queues (``LocalTaskQueue``); what ``Queue.lease_tasks`` uses."""

    def check_pull_queue(self, queue_name: str) -> None:
        """Raise ``UnknownQueueError``, or ``InvalidQueueModeError`` for a push queue."""
        ...

    def lease(
        self,
        queue_name: str,
        lease_seconds: float,
        max_tasks: int,
        *,
        group_by_tag: bool = False,
        tag: str | None = None,
    ) -> list[LeasedTask]:
        """Lease up to ``max_tasks`` available tasks of a pull queue for ``lease_seconds``."""
        ...

    def modify_lease(
        self, queue_name: str, task_name: str, eta: float, lease_seconds: float
    ) -> float:
        """Move the lease of a task leased until ``eta`` to ``lease_seconds`` from now."""
        ...


NO_PULL_QUEUES = (
    "{backend} has no pull queues (Google Cloud Tasks has none). Use LocalTaskQueue, whose "
    "queue.yaml `mode: pull` queues lease tasks as App Engine's did, or move the workers to a "
    "Cloud Pub/Sub pull subscription (google-cloud-pubsub: publish() instead of add(), "
    "subscriber.pull() and acknowledge() instead of lease_tasks() and delete_tasks())"
)


def pull_backend() -> PullQueueBackend:
    """The installed backend, if it has pull queues.

    Raises:
        InvalidQueueModeError: it has none (``CloudTasksBackend``); the message says what to use.
        Error: no backend is installed.
    """
    backend = current_backend()
    if not isinstance(backend, PullQueueBackend):
        raise InvalidQueueModeError(NO_PULL_QUEUES.format(backend=type(backend).__name__))
    return backend


_lock = threading.Lock()
_backend: TaskQueueBackend | None = None


def now() -> float:
    """The installed backend's clock, or the system clock when none is installed."""
    backend = _backend
    return time.time() if backend is None else backend.now()


def max_push_task_size(default: int) -> int:
    """The largest push task the installed backend takes (``max_task_size``), else ``default``.

    App Engine's limit (100 KiB) holds unless the backend says otherwise: Cloud Tasks takes
    HTTP-target tasks up to 1 MB (``CloudTasksBackend.max_task_size``).
    """
    size = getattr(_backend, "max_task_size", None)
    return size if isinstance(size, int) and size > 0 else default


def current_backend() -> TaskQueueBackend:
    """The backend :func:`add` uses.

    Raises:
        Error: none is installed.
    """
    backend = _backend
    if backend is None:
        raise Error(
            "no task queue is installed: call taskqueue.use(LocalTaskQueue(app_or_url)) first"
        )
    return backend


class use:  # used like a function: taskqueue.use(q), or `with taskqueue.use(q):`
    """Install ``backend`` as the queue that :func:`add`, :class:`Queue` and :class:`Task` use.

    It takes effect at once, process-wide (every thread). Used in a ``with`` statement, the
    previous backend is restored at the end of the block.

    Args:
        backend: a :class:`TaskQueueBackend` such as :class:`LocalTaskQueue`, or ``None`` to
            uninstall.

    Example:
        >>> taskqueue.use(LocalTaskQueue(app))              # doctest: +SKIP
        >>> with taskqueue.use(LocalTaskQueue(app)): ...    # doctest: +SKIP
    """

    def __init__(self, backend: TaskQueueBackend | None) -> None:
        global _backend
        if backend is not None and not isinstance(backend, TaskQueueBackend):
            raise TypeError(f"not a task queue backend: {backend!r}")
        with _lock:
            self.previous = _backend
            self.backend = backend
            _backend = backend

    def __enter__(self) -> TaskQueueBackend | None:
        return self.backend

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _backend
        with _lock:
            _backend = self.previous
