"""``Queue``, ``add`` and ``add_async``: App Engine's ways to add tasks.

The module does not store tasks itself. It validates a call the way App Engine does and hands
plain :class:`NewTask` records to the installed *backend* (a :class:`TaskQueueBackend`, normally
a :class:`~taskhandler.taskqueue.LocalTaskQueue`), chosen with :func:`use`. The backend
interface lives in ``_backend``, the rules shared with ``Task.add`` in ``_enqueue``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload, runtime_checkable

from ._backend import NewTask as NewTask
from ._backend import TaskQueueBackend as TaskQueueBackend
from ._backend import current_backend as current_backend
from ._backend import now as now
from ._backend import pull_backend
from ._backend import use as use
from ._enqueue import MAX_TASKS_PER_ADD as MAX_TASKS_PER_ADD
from ._enqueue import MAX_TRANSACTIONAL_TASKS as MAX_TRANSACTIONAL_TASKS
from ._enqueue import AddResult as AddResult
from ._enqueue import add_tasks, check_queue_name, claiming, outcome
from ._enqueue import transaction as transaction
from ._errors import (
    BadTaskStateError,
    DuplicateTaskNameError,
    Error,
    InvalidDeadlineError,
    InvalidLeaseTimeError,
    InvalidMaxTasksError,
)
from ._task import DEFAULT_QUEUE, MAX_LEASE_SECONDS, MAX_TASKS_PER_LEASE, Task

if TYPE_CHECKING:
    from ._local import QueueFigures

T = TypeVar("T")


@runtime_checkable
class StatisticsBackend(Protocol):
    """A backend that reports queue statistics (``LocalTaskQueue``)."""

    def queue_statistics(self, queue_name: str) -> QueueFigures:
        """The queue's figures; ``UnknownQueueError`` for an undeclared queue."""
        ...


NO_STATISTICS = (
    "{backend} has no queue statistics: the Cloud Tasks v2 API does not report them. Read them "
    "from Cloud Monitoring instead: the metrics cloudtasks.googleapis.com/queue/depth (tasks "
    "waiting) and cloudtasks.googleapis.com/queue/task_attempt_count (attempts, by response "
    "code), or see them in the Cloud console's Cloud Tasks page"
)


def statistics_backend() -> StatisticsBackend:
    """The installed backend, if it reports queue statistics.

    Raises:
        Error: it does not (``CloudTasksBackend``; the message says what to use), or no backend
            is installed.
    """
    backend = current_backend()
    if not isinstance(backend, StatisticsBackend):
        raise Error(NO_STATISTICS.format(backend=type(backend).__name__))
    return backend


class Queue:
    """A queue, by name: ``default`` always exists; others are declared in queue.yaml.

    Args:
        name: ``^[a-zA-Z0-9-]{1,100}$``.

    Raises:
        InvalidQueueNameError: the name does not match.
    """

    def __init__(self, name: str = DEFAULT_QUEUE) -> None:
        self._name = check_queue_name(name)

    @property
    def name(self) -> str:
        """The queue name."""
        return self._name

    @overload
    def add(self, task: Task, transactional: bool = False) -> Task: ...
    @overload
    def add(self, task: Sequence[Task], transactional: bool = False) -> list[Task]: ...

    def add(self, task: Task | Sequence[Task], transactional: bool = False) -> Task | list[Task]:
        """Add a task or a list of up to 100 tasks to this queue.

        Without ``transactional``, a failure of one task does not stop the others; the error
        raised is the first one other than ``TaskAlreadyExistsError``/``TombstonedTaskError``
        if any (check ``Task.was_enqueued`` to see which were added).

        Args:
            task: a :class:`Task` or a list of them.
            transactional: enqueue only when the enclosing :func:`transaction` block completes.

        Returns:
            The task or list given, with ``name`` and ``queue_name`` filled in.

        Raises:
            BadTaskStateError: a task was already added.
            BadTransactionStateError: ``transactional`` outside a :func:`transaction` block.
            DuplicateTaskNameError: a name appears twice in the list.
            InvalidTaskNameError: a transactional task is named.
            TaskAlreadyExistsError: a task of that name is pending or running.
            TombstonedTaskError: a task of that name finished or was deleted recently.
            TooManyTasksError: more than 100 tasks, or more than 5 in a transaction.
            UnknownQueueError: the queue is not declared.
        """
        if isinstance(task, Task):
            return self.add_async(task, transactional).get_result()
        if not task:
            return []
        return self.add_async(task, transactional).get_result()

    @overload
    def add_async(
        self, task: Task, transactional: bool = False, rpc: AddResult[Any] | None = None
    ) -> AddResult[Task]: ...
    @overload
    def add_async(
        self,
        task: Sequence[Task],
        transactional: bool = False,
        rpc: AddResult[Any] | None = None,
    ) -> AddResult[list[Task]]: ...

    def add_async(
        self,
        task: Task | Sequence[Task],
        transactional: bool = False,
        rpc: AddResult[Any] | None = None,
    ) -> AddResult[Task] | AddResult[list[Task]]:
        """Like :meth:`add`; returns an object whose ``get_result()`` gives what ``add`` returns.

        Errors in the arguments (too many tasks, duplicate names, a task already added) are
        raised here; errors from the queue (unknown queue, existing name) by ``get_result()``.
        With a backend that offers ``enqueue_async`` (``CloudTasksBackend``) it returns
        before the backend has answered; the tasks are marked enqueued by the first
        ``get_result()``, ``check_success()`` or ``wait()`` (see :class:`AddResult`).

        Args:
            task: a :class:`Task` or a list of them.
            transactional: as for :meth:`add`.
            rpc: an RPC object from :func:`create_rpc`, not used before: the call fills it
                and returns it; its ``deadline`` bounds a ``CloudTasksBackend`` call.

        Raises:
            AssertionError: ``rpc`` was already used for a call (as on App Engine).
            TypeError: ``rpc`` is not from :func:`create_rpc`.

        Example:
            >>> rpc = taskqueue.create_rpc(deadline=5)                 # doctest: +SKIP
            >>> taskqueue.Queue("mail").add_async(tasks, rpc=rpc)      # doctest: +SKIP
            >>> render_page()                                          # doctest: +SKIP
            >>> rpc.get_result()                                       # doctest: +SKIP
        """
        tasks: list[Task] = [task] if isinstance(task, Task) else list(task)
        for item in tasks:
            if not isinstance(item, Task):
                raise TypeError(f"not a Task: {item!r}")
        result: AddResult[Any] = add_tasks(
            self._name,
            tasks,
            transactional=transactional,
            multiple=not isinstance(task, Task),
            rpc=rpc,
        )
        return result

    # -- deleting ------------------------------------------------------------------------------

    def delete_tasks_by_name(self, task_name: str | Iterable[str]) -> Any:
        """Delete tasks by name; return ``Task`` stand-ins whose ``was_deleted`` says which were.

        A name given as a string returns one ``Task``; an iterable of names, a list.
        ``was_deleted`` is False for names unknown or already deleted.

        Raises:
            InvalidTaskNameError: a name is not a valid task name.
            DuplicateTaskNameError: a name is given twice.
            UnknownQueueError: the queue is not declared.
        """
        if isinstance(task_name, str):
            return self.delete_tasks(Task(name=task_name))
        return self.delete_tasks([Task(name=name) for name in task_name])

    def delete_tasks_by_name_async(
        self, task_name: str | Iterable[str], rpc: AddResult[Any] | None = None
    ) -> AddResult[Any]:
        """Like :meth:`delete_tasks_by_name`; ``get_result()`` on the returned object gives it.

        With ``rpc`` (from :func:`create_rpc`) the call fills it and returns it.
        """
        return _settled(lambda: self.delete_tasks_by_name(task_name), rpc)

    @overload
    def delete_tasks(self, task: Task) -> Task: ...
    @overload
    def delete_tasks(self, task: Iterable[Task]) -> list[Task]: ...

    def delete_tasks(self, task: Task | Iterable[Task]) -> Task | list[Task]:
        """Delete tasks of this queue, found by name (pending, leased or running).

        Each task gets ``was_deleted``: True when it was deleted, False when no such task was
        waiting (unknown, done or deleted before). A named task's name stays reserved
        (:class:`TombstonedTaskError`) as after it ran. This is how a pull-queue worker says
        it has finished a leased task.

        Returns:
            The task or list given.

        Raises:
            BadTaskStateError: a task has no name, or was already deleted.
            DuplicateTaskNameError: a name appears twice.
            UnknownQueueError: the queue is not declared.
        """
        tasks = [task] if isinstance(task, Task) else list(task)
        names: set[str] = set()
        for item in tasks:
            if not isinstance(item, Task):
                raise TypeError(f"not a Task: {item!r}")
            if not item.name:
                raise BadTaskStateError("A task name must be specified for a task")
            if item.was_deleted:
                raise BadTaskStateError(f"The task {item.name} has already been deleted")
            if item.name in names:
                raise DuplicateTaskNameError(
                    f"The task name {item.name!r} is used more than once in the request"
                )
            names.add(item.name)
        backend = current_backend()
        for item in tasks:
            assert item.name is not None  # checked above
            item._mark_deleted(backend.delete(self._name, item.name))
        return task if isinstance(task, Task) else tasks

    def delete_tasks_async(
        self, task: Task | Iterable[Task], rpc: AddResult[Any] | None = None
    ) -> AddResult[Any]:
        """Like :meth:`delete_tasks`; ``get_result()`` on the returned object gives its result.

        With ``rpc`` (from :func:`create_rpc`) the call fills it and returns it.
        """
        return _settled(lambda: self.delete_tasks(task), rpc)

    def purge(self) -> None:
        """Delete every task of this queue (pending, leased or running)."""
        current_backend().purge(self._name)

    # -- pull queues ---------------------------------------------------------------------------

    def lease_tasks(self, lease_seconds: float, max_tasks: int, deadline: float = 10) -> list[Task]:
        """Lease up to ``max_tasks`` tasks of this pull queue for ``lease_seconds``.

        The tasks whose ETA has come, oldest first; none is leased by anyone else until the
        lease ends, and a task not deleted by then can be leased again. Each returned task has
        ``eta`` = when its lease ends and ``retry_count`` = how many times it was leased.
        A task already leased its ``task_retry_limit`` times is deleted instead.

        Args:
            lease_seconds: 0 to 604800 (a week).
            max_tasks: 1 to 1000.
            deadline: accepted for App Engine's signature (checked, then unused: the call is
                local).

        Raises:
            InvalidLeaseTimeError, InvalidMaxTasksError, InvalidDeadlineError: a value out of
                range (``TypeError`` when not a number, as on App Engine).
            InvalidQueueModeError: this is a push queue, or the backend has no pull queues
                (``CloudTasksBackend``; the message says what to use instead).
            UnknownQueueError: the queue is not declared.
        """
        _check_deadline(deadline)
        return self._lease(lease_seconds, max_tasks, group_by_tag=False, tag=None)

    def lease_tasks_async(
        self, lease_seconds: float, max_tasks: int, rpc: AddResult[Any] | None = None
    ) -> AddResult[list[Task]]:
        """Like :meth:`lease_tasks`; ``get_result()`` on the returned object gives the tasks.

        With ``rpc`` (from :func:`create_rpc`) the call fills it and returns it.
        """
        lease_seconds = _check_lease_seconds(lease_seconds)
        _check_max_tasks(max_tasks)
        return _settled(lambda: self._lease(lease_seconds, max_tasks, group_by_tag=False), rpc)

    def lease_tasks_by_tag(
        self,
        lease_seconds: float,
        max_tasks: int,
        tag: str | bytes | None = None,
        deadline: float = 10,
    ) -> list[Task]:
        """Like :meth:`lease_tasks`, only tasks of one tag: ``tag``, or the oldest task's tag.

        With ``tag=None`` the tag of the oldest available task is used (untagged tasks if it
        has none), so workers can take batches of like tasks without knowing the tags.
        """
        _check_deadline(deadline)
        return self._lease(lease_seconds, max_tasks, group_by_tag=True, tag=tag)

    def lease_tasks_by_tag_async(
        self,
        lease_seconds: float,
        max_tasks: int,
        tag: str | bytes | None = None,
        rpc: AddResult[Any] | None = None,
    ) -> AddResult[list[Task]]:
        """Like :meth:`lease_tasks_by_tag`; ``get_result()`` on the returned object gives them.

        With ``rpc`` (from :func:`create_rpc`) the call fills it and returns it.
        """
        lease_seconds = _check_lease_seconds(lease_seconds)
        _check_max_tasks(max_tasks)
        return _settled(
            lambda: self._lease(lease_seconds, max_tasks, group_by_tag=True, tag=tag), rpc
        )

    def _lease(
        self,
        lease_seconds: float,
        max_tasks: int,
        *,
        group_by_tag: bool,
        tag: str | bytes | None = None,
    ) -> list[Task]:
        lease_seconds = _check_lease_seconds(lease_seconds)
        _check_max_tasks(max_tasks)
        text_tag = tag.decode("utf-8", "surrogateescape") if isinstance(tag, bytes) else tag
        leased = pull_backend().lease(
            self._name, lease_seconds, max_tasks, group_by_tag=group_by_tag, tag=text_tag
        )
        return [
            Task._leased(
                self._name,
                name=item.task_name,
                payload=item.payload,
                tag=item.tag,
                eta=item.eta,
                retry_count=item.retry_count,
            )
            for item in leased
        ]

    def modify_task_lease(self, task: Task, lease_seconds: float) -> None:
        """Make the lease of a leased ``task`` end ``lease_seconds`` from now (0: end it now).

        The task's ``eta`` is updated to the new end of its lease.

        Raises:
            InvalidLeaseTimeError: ``lease_seconds`` out of range (``TypeError``: not a number).
            TaskLeaseExpiredError: the lease had already ended (the task may be another
                worker's now).
            TombstonedTaskError: the task was deleted.
            QueuePausedError: the queue is paused.
            InvalidQueueModeError: this is a push queue, or the backend has no pull queues.
        """
        lease_seconds = _check_lease_seconds(lease_seconds)
        if not task.name:
            raise BadTaskStateError("A task name must be specified for a task")
        eta = pull_backend().modify_lease(self._name, task.name, task.eta_posix, lease_seconds)
        task._eta_posix = eta

    # -- statistics ----------------------------------------------------------------------------

    def fetch_statistics(self, deadline: float = 10) -> QueueStatistics:
        """The queue's current :class:`QueueStatistics`.

        Args:
            deadline: accepted for App Engine's signature (checked, then unused).

        Raises:
            UnknownQueueError: the queue is not declared.
            Error: the backend has no statistics (``CloudTasksBackend``: the message names the
                Cloud Monitoring metrics to read instead).
        """
        _check_deadline(deadline)
        return QueueStatistics._of(self)

    def fetch_statistics_async(
        self, rpc: AddResult[Any] | None = None
    ) -> AddResult[QueueStatistics]:
        """Like :meth:`fetch_statistics`; ``get_result()`` on the returned object gives them.

        With ``rpc`` (from :func:`create_rpc`) the call fills it and returns it.
        """
        return _settled(lambda: QueueStatistics._of(self), rpc)

    def __repr__(self) -> str:
        return f"Queue<{self._name}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Queue) and other._name == self._name

    def __hash__(self) -> int:
        return hash(self._name)


@dataclass(eq=True)
class QueueStatistics:
    """The state of a queue, as App Engine's ``QueueStatistics``.

    Attributes:
        queue: the :class:`Queue`.
        tasks: tasks not yet finished or deleted (pending, leased or being delivered).
        oldest_eta_usec: the earliest ETA that has come among them, in microseconds since the
            epoch; None when the queue has no backlog (empty, or only tasks to run later).
        executed_last_minute: push queues: deliveries started in the last minute; pull queues:
            tasks leased in the last minute.
        in_flight: push queues: tasks being delivered now; None for pull queues.
        enforced_rate: push queues: tasks per second the queue may start (its queue.yaml
            ``rate``, 0 while paused); None for pull queues.

    Example:
        >>> stats = taskqueue.Queue("mail").fetch_statistics()        # doctest: +SKIP
        >>> stats.tasks, stats.oldest_eta_usec                        # doctest: +SKIP
    """

    queue: Queue
    tasks: int
    oldest_eta_usec: int | None = None
    executed_last_minute: int | None = None
    in_flight: int | None = None
    enforced_rate: float | None = None

    @classmethod
    def _of(cls, queue: Queue) -> QueueStatistics:
        figures = statistics_backend().queue_statistics(queue.name)
        oldest = figures.oldest_eta
        return cls(
            queue=queue,
            tasks=figures.tasks,
            oldest_eta_usec=None if oldest is None else round(oldest * 1_000_000),
            executed_last_minute=figures.executed_last_minute,
            in_flight=figures.in_flight,
            enforced_rate=figures.enforced_rate,
        )

    @overload
    @classmethod
    def fetch(  # type: ignore[overload-overlap]  # a str is one queue, not an iterable
        cls, queue_or_queues: Queue | str, deadline: float = 10
    ) -> QueueStatistics: ...
    @overload
    @classmethod
    def fetch(
        cls, queue_or_queues: Iterable[Queue] | Iterable[str], deadline: float = 10
    ) -> list[QueueStatistics]: ...

    @classmethod
    def fetch(cls, queue_or_queues: Any, deadline: float = 10) -> Any:
        """The statistics of one queue, or of a list of queues (in the order given).

        Args:
            queue_or_queues: a :class:`Queue` or a queue name (one result), or an iterable of
                queues or of names (a list).
            deadline: accepted for App Engine's signature (checked, then unused).

        Raises:
            TypeError: not a queue, a name or an iterable of only one of the two.
            UnknownQueueError: a queue is not declared.
            Error: the backend has no statistics (``CloudTasksBackend``; see
                :meth:`Queue.fetch_statistics`).
        """
        _check_deadline(deadline)
        return cls.fetch_async(queue_or_queues).get_result()

    @classmethod
    def fetch_async(cls, queue_or_queues: Any, rpc: AddResult[Any] | None = None) -> AddResult[Any]:
        """Like :meth:`fetch`; ``get_result()`` on the returned object gives its result.

        A bad argument raises ``TypeError`` here; queue errors come from ``get_result()``.
        With ``rpc`` (from :func:`create_rpc`) the call fills it and returns it.
        """
        queues, wants_list = _queues_of(queue_or_queues)
        if wants_list:
            return _settled(lambda: [cls._of(queue) for queue in queues], rpc)
        return _settled(lambda: cls._of(queues[0]), rpc)


def _queues_of(queue_or_queues: object) -> tuple[list[Queue], bool]:
    """App Engine's reading of ``fetch``'s argument: (the queues, whether a list is wanted)."""
    if isinstance(queue_or_queues, (str, Queue)):
        items: list[object] = [queue_or_queues]
        wants_list = False
    elif isinstance(queue_or_queues, Iterable) and not isinstance(queue_or_queues, bytes):
        items = list(queue_or_queues)
        wants_list = True
    else:
        raise TypeError(
            "queue_or_queues must be a Queue, a queue name, or an iterable of queues or of "
            f"queue names, not {type(queue_or_queues).__name__}"
        )
    if all(isinstance(item, str) for item in items):
        return [Queue(str(item)) for item in items], wants_list
    if all(isinstance(item, Queue) for item in items):
        return [item for item in items if isinstance(item, Queue)], wants_list
    raise TypeError(
        "queue_or_queues must contain either strings or Queue instances, not both or others"
    )


def _settled(call: Callable[[], T], rpc: AddResult[Any] | None = None) -> AddResult[T]:
    """Run ``call`` now (the local calls are quick); its result or error, for ``get_result()``.

    In ``rpc`` when given (claimed first: ``AssertionError`` if a call already has it).
    """
    with claiming(rpc):
        try:
            value = call()
        except Error as exc:
            return outcome(rpc, error=exc)
        return outcome(rpc, value)


def _check_lease_seconds(lease_seconds: object) -> float:
    """App Engine's check: a number from 0 to ``MAX_LEASE_SECONDS``."""
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)):
        raise TypeError("lease_seconds must be a float or an integer")
    seconds = float(lease_seconds)
    if not seconds >= 0.0:  # NaN too
        raise InvalidLeaseTimeError("lease_seconds must not be negative")
    if seconds > MAX_LEASE_SECONDS:
        raise InvalidLeaseTimeError(
            f"Lease time must not be greater than {MAX_LEASE_SECONDS} seconds"
        )
    return seconds


def _check_max_tasks(max_tasks: object) -> None:
    """App Engine's check: an integer from 1 to ``MAX_TASKS_PER_LEASE``."""
    if isinstance(max_tasks, bool) or not isinstance(max_tasks, int):
        raise TypeError("max_tasks must be an integer")
    if max_tasks <= 0:
        raise InvalidMaxTasksError("Negative or zero tasks requested")
    if max_tasks > MAX_TASKS_PER_LEASE:
        raise InvalidMaxTasksError(f"Only {MAX_TASKS_PER_LEASE} tasks can be leased at once")


def _check_deadline(deadline: object) -> None:
    """App Engine's check of a call's ``deadline``: a number above 0."""
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        raise TypeError("deadline must be numeric")
    if not deadline > 0:
        raise InvalidDeadlineError("Negative or zero deadline requested")


def add(
    payload: str | bytes | None = None,
    *,
    queue_name: str = DEFAULT_QUEUE,
    transactional: bool = False,
    **kwargs: Any,
) -> Task:
    """Create a :class:`Task` from the arguments and add it to ``queue_name``.

    Takes :class:`Task`'s arguments plus ``queue_name`` (default ``"default"``) and
    ``transactional``.

    Example:
        >>> taskqueue.add(url="/tasks/count", params={"amount": "1"})  # doctest: +SKIP
    """
    return Task(payload, **kwargs).add(queue_name=queue_name, transactional=transactional)


def add_async(
    payload: str | bytes | None = None,
    *,
    queue_name: str = DEFAULT_QUEUE,
    transactional: bool = False,
    rpc: AddResult[Any] | None = None,
    **kwargs: Any,
) -> AddResult[Task]:
    """Like :func:`add`; returns an :class:`AddResult` whose ``get_result()`` gives the task.

    It returns without waiting for a backend that offers ``enqueue_async``. With ``rpc``
    (from :func:`create_rpc`) the call fills it and returns it.
    """
    return Task(payload, **kwargs).add_async(
        queue_name=queue_name, transactional=transactional, rpc=rpc
    )


def create_rpc(
    deadline: float | None = None, callback: Callable[[], object] | None = None
) -> AddResult[Any]:
    """An RPC object for one ``*_async`` call's ``rpc=`` argument, as App Engine's.

    The call fills it and returns it; ``get_result()``, ``check_success()``, ``wait()`` and
    ``done()`` then behave as on any :class:`AddResult`.

    Args:
        deadline: seconds the call may take. ``CloudTasksBackend`` gives up on an add after
            it (``TransientError``, as for Cloud Tasks' ``DEADLINE_EXCEEDED``); the local
            queue answers at once and only keeps it. ``None``: the backend's own timeout.
            An add passes it to the backend's ``enqueue_async(tasks, deadline=...)``; a
            backend whose ``enqueue_async`` takes no ``deadline`` is called without it.
        callback: called without arguments, once, by the first ``wait()``,
            ``check_success()`` or ``get_result()`` after the call completed, in that thread,
            also when the call failed (that method then still raises its error). It may
            call ``get_result()`` itself; it may be set later as ``rpc.callback``. A
            callback that raises: that one waiting call raises the callback's error instead
            of the call's result or error; later calls give the call's own.

    Raises:
        TypeError: ``deadline`` is not a number, or ``callback`` is not callable.
        InvalidDeadlineError: ``deadline`` is not above 0.

    Example:
        >>> rpc = taskqueue.create_rpc(deadline=5, callback=on_done)   # doctest: +SKIP
        >>> taskqueue.Queue("mail").add_async(task, rpc=rpc)           # doctest: +SKIP
        >>> rpc.wait()                                                 # doctest: +SKIP
    """
    if deadline is not None:
        _check_deadline(deadline)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable without arguments, not {callback!r}")
    return AddResult._unstarted(None if deadline is None else float(deadline), callback)
