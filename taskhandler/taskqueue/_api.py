"""``Queue``, ``add``, ``add_async``, ``transaction`` and ``use``: where tasks go once created.

The module does not store tasks itself. It validates a call the way App Engine does and hands
plain :class:`NewTask` records to the installed *backend* (a :class:`TaskQueueBackend`, normally
a :class:`~taskhandler.taskqueue.LocalTaskQueue`), chosen with :func:`use`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, overload, runtime_checkable

from ._errors import (
    BadTaskStateError,
    BadTransactionStateError,
    DuplicateTaskNameError,
    Error,
    InvalidQueueNameError,
    InvalidTaskNameError,
    TaskAlreadyExistsError,
    TombstonedTaskError,
    TooManyTasksError,
)
from ._queue_yaml import QUEUE_NAME_RE, RetryParameters
from ._task import DEFAULT_QUEUE, DEFAULT_QUEUE_PATH, Task

MAX_TASKS_PER_ADD = 100
MAX_TRANSACTIONAL_TASKS = 5

T = TypeVar("T")


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


# -- the installed backend ------------------------------------------------------------------

_lock = threading.Lock()
_backend: TaskQueueBackend | None = None


def now() -> float:
    """The installed backend's clock, or the system clock when none is installed."""
    backend = _backend
    return time.time() if backend is None else backend.now()


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


# -- results ---------------------------------------------------------------------------------


class AddResult(Generic[T]):
    """What ``add_async`` returns: ``get_result()`` gives the task(s) or raises the add's error.

    It behaves like the RPC object App Engine's ``add_async()`` returns. With a backend that
    offers ``enqueue_async`` (``CloudTasksBackend``) the add is still in flight when this
    object is returned: ``done()`` tells whether it has finished, and the first of
    ``get_result()``, ``check_success()`` or ``wait()`` waits for it and then fills in the
    tasks' ``name``/``queue_name`` and ``was_enqueued`` (as App Engine's result hook did), so
    read those only after one of them. With the local queue the add has already happened
    (it takes well under a millisecond) and nothing blocks.

    Each object is safe to use from several threads; the outcome is settled once and every
    later call gives the same task(s) or raises the same error.
    """

    def __init__(
        self,
        value: T | None = None,
        error: BaseException | None = None,
        *,
        future: concurrent.futures.Future[list[str | Error]] | None = None,
        finish: Callable[[list[str | Error]], T] | None = None,
    ) -> None:
        if (future is None) != (finish is None):
            raise TypeError("AddResult: future and finish go together")
        self._value = value
        self._error = error
        self._future = future
        self._finish = finish
        self._lock = threading.Lock()

    def _settle(self) -> None:
        # Unlocked fast path: _future only ever goes from a future to None.
        if self._future is None:
            return
        with self._lock:
            future, finish = self._future, self._finish
            if future is None or finish is None:
                return
            try:
                self._value = finish(future.result())
            except Exception as exc:  # the add's error, kept to raise on every call
                self._error = exc
            self._future = None
            self._finish = None

    def get_result(self) -> T:
        """Wait for the add; return the added task (or list of tasks) or raise its error."""
        self._settle()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def check_success(self) -> None:
        """Wait for the add; raise its error, if any."""
        self._settle()
        if self._error is not None:
            raise self._error

    def wait(self) -> None:
        """Wait for the add to complete, without raising its error."""
        self._settle()

    def done(self) -> bool:
        """Whether the add has completed (``get_result()`` will not block)."""
        future = self._future
        return future is None or future.done()


# -- transactions ----------------------------------------------------------------------------


@dataclass
class _Transaction:
    pending: list[tuple[str, Task]] = field(default_factory=list)


_transaction: ContextVar[_Transaction | None] = ContextVar("taskhandler_transaction", default=None)


@contextlib.contextmanager
def transaction() -> Iterator[None]:
    """Tasks added with ``transactional=True`` inside the block are enqueued only if it completes.

    As with App Engine's datastore transactions, at most 5 tasks, all unnamed. If the block
    raises, none of them is enqueued; if it completes, all are enqueued together (all or none).

    Raises:
        BadTransactionStateError: the block is nested in another ``transaction()``.

    Example:
        >>> with taskqueue.transaction():                               # doctest: +SKIP
        ...     save_order(order)
        ...     taskqueue.add(url="/tasks/mail", params={"order": order.id}, transactional=True)
    """
    if _transaction.get() is not None:
        raise BadTransactionStateError("nested transactions are not supported")
    txn = _Transaction()
    token = _transaction.set(txn)
    try:
        yield
    finally:
        _transaction.reset(token)
    if txn.pending:
        backend = current_backend()
        records = [_record(queue_name, task) for queue_name, task in txn.pending]
        names = backend.enqueue(records, atomic=True)
        for (queue_name, task), name in zip(txn.pending, names, strict=True):
            if isinstance(name, str):
                task._mark_enqueued(queue_name, name)


# -- Queue -----------------------------------------------------------------------------------


def _done(tasks: list[Task], multiple: bool) -> AddResult[Task] | AddResult[list[Task]]:
    if multiple:
        return AddResult[list[Task]](tasks)
    return AddResult[Task](tasks[0])


def _record(queue_name: str, task: Task) -> NewTask:
    url = task.url
    if task.on_queue_url:
        url = f"{DEFAULT_QUEUE_PATH}/{queue_name}{url}"
    options = task.retry_options
    return NewTask(
        queue_name=queue_name,
        task_name=task.name,
        method=task.method,
        url=url,
        headers=tuple(task.header_list),
        payload=task.payload or b"",
        eta=task.eta_posix,
        target=task.target,
        retry=None if options is None else options.to_parameters(),
    )


class Queue:
    """A queue, by name: ``default`` always exists; others are declared in queue.yaml.

    Args:
        name: ``^[a-zA-Z0-9-]{1,100}$``.

    Raises:
        InvalidQueueNameError: the name does not match.
    """

    def __init__(self, name: str = DEFAULT_QUEUE) -> None:
        if not isinstance(name, str) or not QUEUE_NAME_RE.match(name):
            raise InvalidQueueNameError(
                f'Queue name does not match pattern "{QUEUE_NAME_RE.pattern}"; found {name!r}'
            )
        self._name = name

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
    def add_async(self, task: Task, transactional: bool = False) -> AddResult[Task]: ...
    @overload
    def add_async(
        self, task: Sequence[Task], transactional: bool = False
    ) -> AddResult[list[Task]]: ...

    def add_async(
        self, task: Task | Sequence[Task], transactional: bool = False
    ) -> AddResult[Task] | AddResult[list[Task]]:
        """Like :meth:`add`; returns an object whose ``get_result()`` gives what ``add`` returns.

        Errors in the arguments (too many tasks, duplicate names, a task already added) are
        raised here; errors from the queue (unknown queue, existing name) by ``get_result()``.
        With a backend that offers ``enqueue_async`` (``CloudTasksBackend``) it returns
        before the backend has answered; the tasks are marked enqueued by the first
        ``get_result()``, ``check_success()`` or ``wait()`` (see :class:`AddResult`).

        Example:
            >>> rpc = taskqueue.Queue("mail").add_async(tasks)   # doctest: +SKIP
            >>> render_page()                                    # doctest: +SKIP
            >>> rpc.get_result()                                 # doctest: +SKIP
        """
        multiple = not isinstance(task, Task)
        tasks: list[Task] = [task] if isinstance(task, Task) else list(task)
        if len(tasks) > MAX_TASKS_PER_ADD:
            raise TooManyTasksError(
                f"No more than {MAX_TASKS_PER_ADD} tasks can be added in a single call"
            )
        seen: set[str] = set()
        for item in tasks:
            if not isinstance(item, Task):
                raise TypeError(f"not a Task: {item!r}")
            if item.name:
                if item.name in seen:
                    raise DuplicateTaskNameError(
                        f"The task name {item.name!r} is used more than once in the request"
                    )
                seen.add(item.name)
            if item.was_enqueued:
                raise BadTaskStateError("The task has already been enqueued.")
        if transactional:
            self._add_transactional(tasks)
            return _done(tasks, multiple)

        def finish(results: list[str | Error]) -> Any:
            return self._finish(tasks, multiple, results)

        try:
            backend = current_backend()
            records = [_record(self._name, item) for item in tasks]
            enqueue_async = getattr(backend, "enqueue_async", None)
            if enqueue_async is not None:
                future: concurrent.futures.Future[list[str | Error]] = enqueue_async(records)
                return AddResult[Any](future=future, finish=finish)
            results = backend.enqueue(records)
        except Error as exc:
            return AddResult(error=exc)
        try:
            return AddResult[Any](finish(results))
        except Error as exc:
            return AddResult(error=exc)

    def _finish(
        self, tasks: list[Task], multiple: bool, results: list[str | Error]
    ) -> Task | list[Task]:
        """Mark the stored tasks enqueued; raise the error to report, as App Engine chose it.

        That is the first error other than ``TaskAlreadyExistsError``/``TombstonedTaskError``
        if any, else the first of those.
        """
        error: Error | None = None
        for item, result in zip(tasks, results, strict=True):
            if isinstance(result, str):
                item._mark_enqueued(self._name, result)
            elif error is None or isinstance(error, (TaskAlreadyExistsError, TombstonedTaskError)):
                error = result
        if error is not None:
            raise error
        return tasks if multiple else tasks[0]

    def _add_transactional(self, tasks: list[Task]) -> None:
        txn = _transaction.get()
        if txn is None:
            raise BadTransactionStateError(
                "Transactional adds are not allowed outside of transactions"
            )
        for item in tasks:
            if item.name:
                raise InvalidTaskNameError("A task bound to a transaction cannot be named.")
        if len(txn.pending) + len(tasks) > MAX_TRANSACTIONAL_TASKS:
            raise TooManyTasksError(
                f"No more than {MAX_TRANSACTIONAL_TASKS} transactional tasks can be added in a"
                " single transaction"
            )
        current_backend().check_queue(self._name)
        txn.pending.extend((self._name, item) for item in tasks)

    def delete_tasks_by_name(self, task_name: str | Sequence[str]) -> Any:
        """Delete pending tasks by name; return the deleted :class:`Task` stand-ins.

        Returns one ``Task`` (or a list, if a list was given) whose ``was_deleted`` tells
        whether a pending task of that name existed.
        """
        names = [task_name] if isinstance(task_name, str) else list(task_name)
        backend = current_backend()
        out: list[Task] = []
        for name in names:
            stand_in = Task(name=name)
            if backend.delete(self._name, name):
                stand_in._mark_deleted()
            out.append(stand_in)
        return out[0] if isinstance(task_name, str) else out

    def delete_tasks(self, task: Task | Sequence[Task]) -> Task | list[Task]:
        """Delete the given added tasks; each gets ``was_deleted`` set when it was pending."""
        tasks = [task] if isinstance(task, Task) else list(task)
        backend = current_backend()
        for item in tasks:
            if item.name and backend.delete(self._name, item.name):
                item._mark_deleted()
        return task if isinstance(task, Task) else tasks

    def purge(self) -> None:
        """Delete every pending task of this queue."""
        current_backend().purge(self._name)

    def __repr__(self) -> str:
        return f"Queue<{self._name}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Queue) and other._name == self._name

    def __hash__(self) -> int:
        return hash(self._name)


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
    **kwargs: Any,
) -> AddResult[Task]:
    """Like :func:`add`; returns an :class:`AddResult` whose ``get_result()`` gives the task.

    It returns without waiting for a backend that offers ``enqueue_async``.
    """
    return Task(payload, **kwargs).add_async(queue_name=queue_name, transactional=transactional)
