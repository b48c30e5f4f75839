"""``TaskQueueBackend``: Django's tasks framework (``django.tasks``) on ``taskhandler.taskqueue``.

``task.enqueue(...)`` adds a push task (the local queue in development and tests, Cloud Tasks
in production) whose body names the Django task and its JSON arguments; the queue delivers it
to the view of :mod:`taskhandler.django.urls`, a ``@task_handler``, so each run has the
guarantees of SPEC §3-§6: only the queue (or an admin) may run it, under the task deadline,
its outcome the status the queue reads.
"""

from __future__ import annotations

import datetime
import functools
import json
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.utils.module_loading import import_string

from .. import taskqueue
from ..context import TaskContext as QueueTaskContext
from ..exceptions import PermanentTaskFailure
from ._compat import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_enqueued,
    task_finished,
    task_started,
)

__all__ = ["URL_NAME", "TaskQueueBackend"]

URL_NAME = "taskhandler-django-task"
_OPTIONS = frozenset(
    ("RESULTS", "RESULT_TTL", "PRIORITY_QUEUES", "OUTBOX", "DATABASE", "URL", "ON_COMMIT")
)
_DEFAULT_PRIORITY = 0
_WEEK = 7 * 24 * 3600


class TaskQueueBackend(BaseTaskBackend):  # type: ignore[misc]
    """A ``django.tasks`` backend that enqueues push tasks through ``taskhandler.taskqueue``.

    Settings::

        TASKS = {
            "default": {
                "BACKEND": "taskhandler.django.TaskQueueBackend",
                "QUEUES": ["default", "mail"],     # Django queue names = queue.yaml queues
                "OPTIONS": {
                    "RESULTS": "default",          # a cache alias: get_result() works
                    "RESULT_TTL": 604800,          # seconds results are kept (7 days)
                    "PRIORITY_QUEUES": {10: "urgent"},  # priority -> queue (else refused)
                    "OUTBOX": True,                # transactional enqueue in DATABASE
                    "DATABASE": "default",
                    "ON_COMMIT": True,             # without an outbox: add after the commit
                    "URL": None,                   # where the task view is (else reversed)
                },
            }
        }

    and ``path("", include("taskhandler.django.urls"))`` in the URLconf. The queue used is
    the one installed with ``taskqueue.use(...)`` (``taskhandler serve`` installs its local
    queue; the pytest plugin's ``task_queue`` fixture one in memory).
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = False
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = self.options
        unknown = sorted(str(key) for key in options if key not in _OPTIONS)
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']: unknown option {unknown[0]!r} "
                f"(known: {', '.join(sorted(_OPTIONS))})"
            )
        self.results: str | None = options.get("RESULTS")
        self.supports_get_result = self.results is not None
        self.result_ttl = float(options.get("RESULT_TTL", _WEEK))
        priorities = options.get("PRIORITY_QUEUES") or {}
        if not isinstance(priorities, Mapping) or not all(
            isinstance(p, int) and isinstance(q, str) for p, q in priorities.items()
        ):
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['PRIORITY_QUEUES'] must map priorities (int) to "
                "queue names"
            )
        self.priority_queues: dict[int, str] = dict(priorities)
        self.supports_priority = bool(self.priority_queues)
        self.database: str = options.get("DATABASE", "default")
        self.on_commit = bool(options.get("ON_COMMIT", True))
        self.url: str | None = options.get("URL")
        self._outbox_option = options.get("OUTBOX")

    # -- enqueue ---------------------------------------------------------------------------

    def validate_task(self, task: Any) -> None:
        """Django's checks, and a priority must name a queue (``PRIORITY_QUEUES``)."""
        if task.priority != _DEFAULT_PRIORITY and task.priority not in self.priority_queues:
            raise InvalidTask(
                f"{type(self).__name__} has no queue for priority {task.priority}: map it "
                "with OPTIONS['PRIORITY_QUEUES'] = {priority: queue_name}"
                + (f" (mapped: {sorted(self.priority_queues)})" if self.priority_queues else "")
            )
        super().validate_task(task)

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Add ``task(*args, **kwargs)`` to its queue; a ``TaskResult`` in status READY.

        Inside ``transaction.atomic()``: with ``OUTBOX`` the task is written into the outbox
        table in that transaction (added if and only if it commits); without, it is added
        when the transaction commits (``ON_COMMIT``, Django's ``on_commit``).
        """
        self.validate_task(task)
        queue_name = self._queue_of(task)
        body = self._body(task, args, kwargs)
        url = self._url()
        conn = connections[self.database]
        outbox = self.outbox
        if outbox is not None and conn.in_atomic_block:
            added = self._queue_task(body, url, task.run_after, name=None)
            conn.ensure_connection()
            with outbox.enlist(conn.connection, dialect=conn.vendor):
                added.add(queue_name, transactional=True)
            transaction.on_commit(outbox.notify, using=self.database)
            result_id = str(added.name)
        else:
            result_id = uuid.uuid4().hex
            added = self._queue_task(body, url, task.run_after, name=result_id)
            if conn.in_atomic_block and self.on_commit:
                transaction.on_commit(
                    functools.partial(added.add, queue_name), using=self.database, robust=False
                )
            else:
                added.add(queue_name)
        result = self._result(task, result_id, args, kwargs, TaskResultStatus.READY)
        object.__setattr__(result, "enqueued_at", _now())
        self._store(result)
        task_enqueued.send(type(self), task_result=result)
        return result

    def _queue_of(self, task: Any) -> str:
        if task.priority == _DEFAULT_PRIORITY and _DEFAULT_PRIORITY not in self.priority_queues:
            return str(task.queue_name)
        queue = self.priority_queues[task.priority]
        if task.queue_name not in ("default", queue):
            raise InvalidTask(
                f"priority {task.priority} sends tasks to queue {queue!r}, but this task asks "
                f"for queue {task.queue_name!r}: give one or the other"
            )
        return queue

    def _body(self, task: Any, args: Any, kwargs: Any) -> str:
        try:
            return json.dumps(
                {"task": task.module_path, "args": list(args), "kwargs": dict(kwargs)},
                separators=(",", ":"),
                allow_nan=False,
            )
        except (TypeError, ValueError) as exc:
            raise InvalidTask(f"task arguments must be JSON: {exc}") from None

    def _url(self) -> str:
        if self.url:
            return self.url
        from django.urls import NoReverseMatch, reverse

        try:
            return str(reverse(URL_NAME, kwargs={"backend": self.alias}))
        except NoReverseMatch:
            raise ImproperlyConfigured(
                f"{type(self).__name__}: the task view is not in the URLconf: add "
                "path('', include('taskhandler.django.urls')), or set OPTIONS['URL']"
            ) from None

    @staticmethod
    def _queue_task(
        body: str, url: str, run_after: datetime.datetime | None, name: str | None
    ) -> taskqueue.Task:
        return taskqueue.Task(
            body,
            url=url,
            method="POST",
            headers={"Content-Type": "application/json"},
            eta=run_after,
            name=name,
        )

    @functools.cached_property
    def outbox(self) -> Any:
        """The outbox for transactional enqueue (``OPTIONS['OUTBOX']``), or ``None``."""
        option = self._outbox_option
        if option is None or option is False:
            return None
        from ..outbox import Outbox

        if isinstance(option, str):
            option = import_string(option)
        if isinstance(option, Outbox):
            return option
        if option is True:
            alias = self.database

            def connect() -> Any:
                conn = connections[alias]
                return conn.get_new_connection(conn.get_connection_params())

            return Outbox(connect, dialect=connections[alias].vendor)
        raise ImproperlyConfigured(
            f"TASKS[{self.alias!r}]['OPTIONS']['OUTBOX'] must be True, an Outbox or its dotted path"
        )

    # -- results ---------------------------------------------------------------------------

    def _result(self, task: Any, result_id: str, args: Any, kwargs: Any, status: Any) -> Any:
        return TaskResult(
            task=task,
            id=result_id,
            status=status,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )

    def _cache(self) -> Any:
        from django.core.cache import caches

        return caches[self.results] if self.results is not None else None

    def _key(self, result_id: str) -> str:
        return f"taskhandler:django-task:{self.alias}:{result_id}"

    def _store(self, result: Any, value: Any = None) -> None:
        cache = self._cache()
        if cache is None:
            return
        record = {
            "task": result.task.module_path,
            "status": str(result.status),
            "enqueued_at": result.enqueued_at,
            "started_at": result.started_at,
            "finished_at": result.finished_at,
            "last_attempted_at": result.last_attempted_at,
            "args": result.args,
            "kwargs": result.kwargs,
            "errors": [(e.exception_class_path, e.traceback) for e in result.errors],
            "worker_ids": list(result.worker_ids),
            "return_value": value,
        }
        if result.status == TaskResultStatus.READY:  # the view may have run already
            cache.add(self._key(result.id), record, self.result_ttl)
        else:
            cache.set(self._key(result.id), record, self.result_ttl)

    def _record(self, result_id: str) -> dict[str, Any] | None:
        cache = self._cache()
        record = cache.get(self._key(result_id)) if cache is not None else None
        return record if isinstance(record, dict) else None

    def get_result(self, result_id: str) -> Any:
        """The result of a task enqueued here (``OPTIONS['RESULTS']`` names the cache)."""
        if self._cache() is None:
            return super().get_result(result_id)
        record = self._record(result_id)
        if record is None:
            raise TaskResultDoesNotExist(result_id)
        task = import_string(record["task"])
        result = self._result(
            task, result_id, record["args"], record["kwargs"], TaskResultStatus(record["status"])
        )
        for field in ("enqueued_at", "started_at", "finished_at", "last_attempted_at"):
            object.__setattr__(result, field, record[field])
        result.errors.extend(
            TaskError(exception_class_path=path, traceback=tb) for path, tb in record["errors"]
        )
        result.worker_ids.extend(record["worker_ids"])
        object.__setattr__(result, "_return_value", record["return_value"])
        return result

    # -- running (the view of taskhandler.django.urls) -------------------------------------

    def run(self, body: bytes, ctx: QueueTaskContext) -> None:
        """Run one delivered task; what it raises is the outcome (SPEC §6)."""
        task, args, kwargs = self._decode(body)
        result = self._result(task, ctx.task_name, args, kwargs, TaskResultStatus.RUNNING)
        known = self._record(ctx.task_name)
        if known is not None:  # what earlier attempts left: when it was enqueued, its errors
            object.__setattr__(result, "enqueued_at", known["enqueued_at"])
            result.errors.extend(
                TaskError(exception_class_path=path, traceback=tb) for path, tb in known["errors"]
            )
        started = _now()
        for field in ("started_at", "last_attempted_at"):
            object.__setattr__(result, field, started)
        attempts = max(ctx.execution_count, ctx.retry_count) + 1
        result.worker_ids.extend([f"{ctx.queue_name}/{ctx.task_name}"] * attempts)
        self._store(result)
        task_started.send(type(self), task_result=result)
        try:
            if task.takes_context:
                value = task.call(TaskContext(task_result=result), *args, **kwargs)
            else:
                value = task.call(*args, **kwargs)
            try:
                value = json.loads(json.dumps(value, allow_nan=False))
            except (TypeError, ValueError) as exc:
                raise PermanentTaskFailure(f"task returned a value not JSON: {exc}") from exc
        except BaseException as exc:
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            object.__setattr__(result, "finished_at", _now())
            result.errors.append(
                TaskError(
                    exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
                    traceback="".join(traceback.format_exception(exc)),
                )
            )
            self._store(result)
            task_finished.send(type(self), task_result=result)
            raise
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(result, "finished_at", _now())
        object.__setattr__(result, "_return_value", value)
        self._store(result, value)
        task_finished.send(type(self), task_result=result)

    def _decode(self, body: bytes) -> tuple[Any, list[Any], dict[str, Any]]:
        try:
            data = json.loads(body)
            path, args, kwargs = data["task"], data["args"], data["kwargs"]
        except (ValueError, KeyError, TypeError):
            raise PermanentTaskFailure("not a Django task: the body is not its JSON") from None
        if not isinstance(path, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
            raise PermanentTaskFailure("not a Django task: the body is not its JSON")
        try:
            task = import_string(path)
        except ImportError:
            raise PermanentTaskFailure(f"no Django task {path!r}") from None
        if not isinstance(task, Task):
            # Only functions made tasks with @task run: a body naming any other callable
            # (os.system, say) is refused, even from the queue.
            raise PermanentTaskFailure(f"{path!r} is not a Django task (@task)")
        return task, args, kwargs


def _now() -> datetime.datetime:
    from django.utils import timezone

    now: datetime.datetime = timezone.now()
    return now
