"""Adding tasks: what ``Task.add`` and ``Queue.add`` share.

App Engine's rules for one ``add()`` call (at most 100 tasks, no name twice, no task added
twice), transactional adds (``with transaction():``, at most 5, unnamed, all or none), and the
:class:`AddResult` that ``add_async()`` returns, which is also the RPC object
``create_rpc()`` makes for a call's ``rpc=`` (:func:`claiming` and :func:`outcome` fill one).
The tasks are handed to the installed backend as
:class:`~taskhandler.taskqueue._backend.NewTask` records.

It works on anything shaped like a :class:`Task` (:class:`Addable`), so it does not import the
``Task`` class: ``Task`` imports this module, and ``Queue`` imports both.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import inspect
import threading
import weakref
from collections.abc import Callable, Generator, Iterator, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from .._trace import outgoing_traceparent
from ._backend import NewTask, current_backend, pull_backend
from ._errors import (
    BadTaskStateError,
    BadTransactionStateError,
    DuplicateTaskNameError,
    Error,
    InvalidQueueNameError,
    InvalidTaskError,
    InvalidTaskNameError,
    TaskAlreadyExistsError,
    TombstonedTaskError,
    TooManyTasksError,
)
from ._queue_yaml import QUEUE_NAME_RE

__all__ = [
    "MAX_TASKS_PER_ADD",
    "MAX_TRANSACTIONAL_TASKS",
    "AddResult",
    "Addable",
    "TransactionSink",
    "add_tasks",
    "bind_transaction_sink",
    "check_queue_name",
    "claiming",
    "outcome",
    "reset_transaction_sink",
    "transaction",
]

MAX_TASKS_PER_ADD = 100
MAX_TRANSACTIONAL_TASKS = 5

T = TypeVar("T")


class Addable(Protocol):
    """What :func:`add_tasks` needs of a task (``Task`` is one)."""

    @property
    def name(self) -> str | None: ...

    @property
    def was_enqueued(self) -> bool: ...

    @property
    def method(self) -> str: ...

    def _record(self, queue_name: str) -> NewTask: ...

    def _mark_enqueued(self, queue_name: str, name: str) -> None: ...


def check_queue_name(name: object) -> str:
    """``name`` if it is a valid queue name; :class:`InvalidQueueNameError` otherwise."""
    if not isinstance(name, str) or not QUEUE_NAME_RE.match(name):
        raise InvalidQueueNameError(
            f'Queue name does not match pattern "{QUEUE_NAME_RE.pattern}"; found {name!r}'
        )
    return name


# -- results ---------------------------------------------------------------------------------


class AddResult(Generic[T]):
    """What the ``*_async`` calls return, and App Engine's RPC object (:func:`create_rpc`).

    ``get_result()`` gives the call's result (for ``add_async``, the task or list of tasks) or
    raises its error. With a backend that offers ``enqueue_async`` (``CloudTasksBackend``) an
    add is still in flight when this object is returned: ``done()`` tells whether it has
    finished, and the first of ``get_result()``, ``check_success()`` or ``wait()`` waits for
    it and then fills in the tasks' ``name``/``queue_name`` and ``was_enqueued`` (as App
    Engine's result hook did), so read those only after one of them. With the local queue the
    call has already happened (it takes well under a millisecond) and nothing blocks.

    As App Engine's ``UserRPC``: ``deadline`` is the deadline given to :func:`create_rpc`
    (``None`` otherwise); ``callback`` (assignable) is called without arguments, once, by the
    first ``wait()``, ``check_success()`` or ``get_result()`` after the call completed, in
    that thread, also when the call failed; ``state`` is :attr:`IDLE` before a call was made
    with it, :attr:`RUNNING` while the call is in flight, :attr:`FINISHING` once it has
    completed. An object carries one call: passing it as ``rpc=`` to a second call raises
    ``AssertionError``, as App Engine's ``make_call`` did. A callback that raises: the wait
    that ran it raises the callback's error instead of the call's result or error; every
    later wait gives the call's own.

    Each object is safe to use from several threads; the outcome is settled once and every
    later call gives the same result or raises the same error.
    """

    #: ``state`` values, the numbers of App Engine's ``apiproxy_rpc.RPC`` states.
    IDLE = 0
    RUNNING = 1
    FINISHING = 2

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
        self._deadline: float | None = None
        #: Called without arguments by the first wait after the call completed (see above).
        self.callback: Callable[[], object] | None = None
        self._callback_due = True
        self._started = True  # a call has filled it (only create_rpc() makes one that has not)
        self._taken = True  # a call has claimed it (refuses a second)

    @classmethod
    def _unstarted(
        cls, deadline: float | None, callback: Callable[[], object] | None
    ) -> AddResult[Any]:
        """An RPC object no call has used yet: what :func:`create_rpc` returns."""
        rpc: AddResult[Any] = cls()
        rpc._deadline = deadline
        rpc.callback = callback
        rpc._started = False
        rpc._taken = False
        return rpc

    def _take(self) -> None:
        """Claim this object for a call; ``AssertionError`` if a call already has it."""
        with self._lock:
            if self._taken:
                raise AssertionError(
                    "this RPC object was already used for a call (state "
                    f"{self.state}): make one per call with taskqueue.create_rpc()"
                )
            self._taken = True

    def _give_back(self) -> None:
        """The call that claimed it failed before it started: the object is unused again."""
        with self._lock:
            if not self._started:
                self._taken = False

    def _start(
        self,
        value: Any = None,
        error: BaseException | None = None,
        *,
        future: concurrent.futures.Future[list[str | Error]] | None = None,
        finish: Callable[[list[str | Error]], Any] | None = None,
    ) -> None:
        """Fill a claimed object with its call's outcome, or with the add still in flight."""
        with self._lock:
            self._value, self._error = value, error
            self._future, self._finish = future, finish
            self._started = True

    @property
    def deadline(self) -> float | None:
        """The deadline given to :func:`create_rpc`, in seconds; ``None`` when none was."""
        return self._deadline

    @property
    def state(self) -> int:
        """:attr:`IDLE`, :attr:`RUNNING` or :attr:`FINISHING` (App Engine's numbers)."""
        if not self._started:
            return self.IDLE
        return self.FINISHING if self.done() else self.RUNNING

    def _settle(self) -> None:
        # Under the lock: _start fills _future (None to a future) while another thread may be
        # here, and the first waiter finishes the call (a future to None) while others wait.
        with self._lock:
            if not self._started:
                raise AssertionError(
                    "no call has been made with this RPC object: pass it as rpc= to an *_async call"
                )
            future, finish = self._future, self._finish
            if future is not None and finish is not None:
                try:
                    self._value = finish(future.result())
                except Exception as exc:  # the call's error, kept to raise on every call
                    self._error = exc
                self._future = None
                self._finish = None
        self._run_callback()

    def _run_callback(self) -> None:
        # Once, in the thread that waited; outside the lock, so that it may call get_result().
        if not self._callback_due:
            return
        with self._lock:
            due, self._callback_due = self._callback_due, False
        callback = self.callback
        if due and callback is not None:
            callback()  # if it raises, this one wait raises that instead of the call's error

    def get_result(self) -> T:
        """Wait for the call; return its result (the task or list of tasks) or raise its error."""
        self._settle()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def check_success(self) -> None:
        """Wait for the call; raise its error, if any."""
        self._settle()
        if self._error is not None:
            raise self._error

    def wait(self) -> None:
        """Wait for the call to complete, without raising its error."""
        self._settle()

    def done(self) -> bool:
        """Whether the call has completed (``get_result()`` will not block)."""
        if not self._started:
            return False
        future = self._future
        return future is None or future.done()

    def __await__(self) -> Generator[Any, None, T]:
        """``await taskqueue.add_async(...)``: what ``get_result()`` gives, without blocking.

        Async code waits for a backend's add in flight (``CloudTasksBackend``) on the event
        loop instead of a thread: other requests go on meanwhile. With the local queue the
        add has already happened and this returns at once.
        """
        future = self._future
        if future is not None and not future.done():
            import asyncio  # only async callers pay for it

            with contextlib.suppress(Exception):  # the add's error comes from get_result()
                yield from asyncio.wrap_future(future).__await__()
        return self.get_result()


@contextlib.contextmanager
def claiming(rpc: AddResult[Any] | None) -> Iterator[None]:
    """Claim ``rpc`` (if given) for the call made in the block; give it back if the block raises.

    ``TypeError`` for an ``rpc`` not made by :func:`create_rpc`; ``AssertionError`` for one a
    call already has (App Engine's ``make_call`` asserted the RPC was idle).
    """
    if rpc is None:
        yield
        return
    if not isinstance(rpc, AddResult):
        raise TypeError(f"rpc must be an RPC object from taskqueue.create_rpc(), not {rpc!r}")
    rpc._take()
    try:
        yield
    except BaseException:
        rpc._give_back()
        raise


def outcome(
    rpc: AddResult[Any] | None,
    value: Any = None,
    error: BaseException | None = None,
    *,
    future: concurrent.futures.Future[list[str | Error]] | None = None,
    finish: Callable[[list[str | Error]], Any] | None = None,
) -> AddResult[Any]:
    """A call's outcome: in ``rpc`` (claimed with :func:`claiming`) if given, else a new object."""
    if rpc is None:
        return AddResult[Any](value, error, future=future, finish=finish)
    rpc._start(value, error, future=future, finish=finish)
    return rpc


# -- transactions ----------------------------------------------------------------------------


@dataclass
class _Transaction:
    pending: list[tuple[str, Addable]] = field(default_factory=list)


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
        records = [task._record(queue_name) for queue_name, task in txn.pending]
        names = backend.enqueue(records, atomic=True)
        for (queue_name, task), name in zip(txn.pending, names, strict=True):
            if isinstance(name, str):
                task._mark_enqueued(queue_name, name)


class TransactionSink(Protocol):
    """A database transaction that takes transactional adds (``taskhandler.outbox`` makes them).

    ``count`` is how many tasks it holds already; ``add`` writes the records into the
    transaction and returns the task name each will have once it is committed and relayed.
    """

    @property
    def count(self) -> int: ...

    def add(self, records: Sequence[NewTask]) -> list[str]: ...


_sink: ContextVar[TransactionSink | None] = ContextVar("taskhandler_transaction_sink", default=None)


def bind_transaction_sink(sink: TransactionSink | None) -> Token[TransactionSink | None]:
    """Send this context's ``transactional=True`` adds to ``sink`` (``None``: stop).

    Outside a :func:`transaction` block, a transactional add then goes into ``sink`` (the
    application's database transaction) instead of raising ``BadTransactionStateError``.
    Returns the token :func:`reset_transaction_sink` takes to restore the previous sink.
    """
    return _sink.set(sink)


def reset_transaction_sink(token: Token[TransactionSink | None]) -> None:
    """Restore the sink that was bound before :func:`bind_transaction_sink` gave ``token``."""
    _sink.reset(token)


def _add_transactional(queue_name: str, tasks: Sequence[Addable]) -> None:
    # A taskqueue.transaction() block first; else the database transaction bound by
    # taskhandler.outbox, if any.
    txn = _transaction.get()
    sink = _sink.get() if txn is None else None
    if txn is not None:
        held = len(txn.pending)
    elif sink is not None:
        held = sink.count
    else:
        raise BadTransactionStateError("Transactional adds are not allowed outside of transactions")
    for item in tasks:
        if item.name:
            raise InvalidTaskNameError("A task bound to a transaction cannot be named.")
    if held + len(tasks) > MAX_TRANSACTIONAL_TASKS:
        raise TooManyTasksError(
            f"No more than {MAX_TRANSACTIONAL_TASKS} transactional tasks can be added in a"
            " single transaction"
        )
    if sink is not None:
        names = sink.add(_traced([item._record(queue_name) for item in tasks]))
        for item, name in zip(tasks, names, strict=True):
            item._mark_enqueued(queue_name, name)
    elif txn is not None:
        if tasks and tasks[0].method == "PULL":
            pull_backend().check_pull_queue(queue_name)
        else:
            current_backend().check_queue(queue_name)
        txn.pending.extend((queue_name, item) for item in tasks)


def _traced(records: list[NewTask]) -> list[NewTask]:
    """Push tasks added while a request is handled carry its ``traceparent`` (SPEC §16).

    A task that names its own ``traceparent`` keeps it; pull tasks have no headers.
    """
    traceparent = outgoing_traceparent()
    if traceparent is None:
        return records
    return [
        record
        if record.method == "PULL"
        or any(name.lower() == "traceparent" for name, _ in record.headers)
        else dataclasses.replace(record, headers=(*record.headers, ("traceparent", traceparent)))
        for record in records
    ]


# -- adding ----------------------------------------------------------------------------------

#: Whether a backend's ``enqueue_async`` takes ``deadline=``, by its function (asked once).
_deadline_accepted: weakref.WeakKeyDictionary[Callable[..., Any], bool] = (
    weakref.WeakKeyDictionary()
)


def _accepts_deadline(enqueue_async: Callable[..., Any]) -> bool:
    """Whether a backend's ``enqueue_async`` accepts a ``deadline`` keyword.

    Read from its signature once per function (a ``deadline`` parameter or ``**kwargs``);
    one whose signature cannot be read is given the deadline, as the protocol says.
    """
    func = getattr(enqueue_async, "__func__", enqueue_async)
    with contextlib.suppress(KeyError, TypeError):  # TypeError: not weakly referable
        return _deadline_accepted[func]
    try:
        parameters = inspect.signature(enqueue_async).parameters.values()
    except (TypeError, ValueError):
        takes = True
    else:
        takes = any(
            (p.name == "deadline" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
            or p.kind is p.VAR_KEYWORD
            for p in parameters
        )
    with contextlib.suppress(TypeError):
        _deadline_accepted[func] = takes
    return takes


def _finish(
    queue_name: str, tasks: Sequence[Addable], multiple: bool, results: list[str | Error]
) -> Any:
    """Mark the stored tasks enqueued; raise the error to report, as App Engine chose it.

    That is the first error other than ``TaskAlreadyExistsError``/``TombstonedTaskError``
    if any, else the first of those.
    """
    error: Error | None = None
    for item, result in zip(tasks, results, strict=True):
        if isinstance(result, str):
            item._mark_enqueued(queue_name, result)
        elif error is None or isinstance(error, (TaskAlreadyExistsError, TombstonedTaskError)):
            error = result
    if error is not None:
        raise error
    return list(tasks) if multiple else tasks[0]


def add_tasks(
    queue_name: str,
    tasks: Sequence[Addable],
    *,
    transactional: bool,
    multiple: bool,
    rpc: AddResult[Any] | None = None,
) -> AddResult[Any]:
    """Add ``tasks`` to the queue ``queue_name`` (a checked name); see ``Queue.add_async``.

    Errors in the arguments (too many tasks, duplicate names, a task already added) are raised
    here; errors from the backend are kept in the returned :class:`AddResult` (``rpc`` when
    given, filled in), whose value is the list of tasks when ``multiple``, else the one task.
    ``rpc.deadline`` bounds the backend's ``enqueue_async`` call.
    """
    if len(tasks) > MAX_TASKS_PER_ADD:
        raise TooManyTasksError(
            f"No more than {MAX_TASKS_PER_ADD} tasks can be added in a single call"
        )
    if len({item.method == "PULL" for item in tasks}) > 1:
        raise InvalidTaskError("You cannot add both push and pull tasks in a single call.")
    seen: set[str] = set()
    for item in tasks:
        name = item.name
        if name:
            if name in seen:
                raise DuplicateTaskNameError(
                    f"The task name {name!r} is used more than once in the request"
                )
            seen.add(name)
        if item.was_enqueued:
            raise BadTaskStateError("The task has already been enqueued.")
    with claiming(rpc):
        if transactional:
            _add_transactional(queue_name, tasks)
            return outcome(rpc, list(tasks) if multiple else tasks[0])
        return _add_now(queue_name, tasks, multiple, rpc)


def _add_now(
    queue_name: str, tasks: Sequence[Addable], multiple: bool, rpc: AddResult[Any] | None
) -> AddResult[Any]:
    def finish(results: list[str | Error]) -> Any:
        return _finish(queue_name, tasks, multiple, results)

    deadline = None if rpc is None else rpc.deadline
    try:
        backend = current_backend()
        records = _traced([item._record(queue_name) for item in tasks])
        enqueue_async = getattr(backend, "enqueue_async", None)
        if enqueue_async is not None:
            # A deadline only when there is one and the backend takes it: backends written
            # before rpc deadlines take none, and the add then goes without it.
            future: concurrent.futures.Future[list[str | Error]] = (
                enqueue_async(records, deadline=deadline)
                if deadline is not None and _accepts_deadline(enqueue_async)
                else enqueue_async(records)
            )
            return outcome(rpc, future=future, finish=finish)
        results = backend.enqueue(records)
    except Error as exc:
        return outcome(rpc, error=exc)
    try:
        return outcome(rpc, finish(results))
    except Error as exc:
        return outcome(rpc, error=exc)
