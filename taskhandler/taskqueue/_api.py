"""``Queue``, ``add`` and ``add_async``: App Engine's ways to add tasks.

The module does not store tasks itself. It validates a call the way App Engine does and hands
plain :class:`NewTask` records to the installed *backend* (a :class:`TaskQueueBackend`, normally
a :class:`~taskhandler.taskqueue.LocalTaskQueue`), chosen with :func:`use`. The backend
interface lives in ``_backend``, the rules shared with ``Task.add`` in ``_enqueue``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

from ._backend import NewTask as NewTask
from ._backend import TaskQueueBackend as TaskQueueBackend
from ._backend import current_backend as current_backend
from ._backend import now as now
from ._backend import use as use
from ._enqueue import MAX_TASKS_PER_ADD as MAX_TASKS_PER_ADD
from ._enqueue import MAX_TRANSACTIONAL_TASKS as MAX_TRANSACTIONAL_TASKS
from ._enqueue import AddResult as AddResult
from ._enqueue import add_tasks, check_queue_name
from ._enqueue import transaction as transaction
from ._task import DEFAULT_QUEUE, Task


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
        tasks: list[Task] = [task] if isinstance(task, Task) else list(task)
        for item in tasks:
            if not isinstance(item, Task):
                raise TypeError(f"not a Task: {item!r}")
        result: AddResult[Any] = add_tasks(
            self._name, tasks, transactional=transactional, multiple=not isinstance(task, Task)
        )
        return result

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
