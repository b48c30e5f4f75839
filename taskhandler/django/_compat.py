"""Django's tasks framework: ``django.tasks`` (Django >= 6.0) or the ``django_tasks`` backport."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]

BaseTaskBackend: Any
InvalidTask: Any
Task: Any
TaskContext: Any
TaskError: Any
TaskResult: Any
TaskResultDoesNotExist: Any
TaskResultStatus: Any
task_backends: Any
task_enqueued: Any
task_finished: Any
task_started: Any

try:
    from django.tasks import (  # type: ignore[no-redef, import-not-found, unused-ignore]
        TaskContext,
        TaskResult,
        TaskResultStatus,
        task_backends,
    )
    from django.tasks.backends.base import (  # type: ignore[no-redef, import-not-found, unused-ignore]
        BaseTaskBackend,
    )
    from django.tasks.base import (  # type: ignore[no-redef, import-not-found, unused-ignore]
        Task,
        TaskError,
    )
    from django.tasks.exceptions import (  # type: ignore[no-redef, import-not-found, unused-ignore]
        InvalidTask,
        TaskResultDoesNotExist,
    )
    from django.tasks.signals import (  # type: ignore[no-redef, import-not-found, unused-ignore]
        task_enqueued,
        task_finished,
        task_started,
    )
except ImportError:  # Django 5.2 with the backport
    from django_tasks import (  # type: ignore[no-redef, unused-ignore]
        TaskContext,
        TaskResult,
        TaskResultStatus,
        task_backends,
    )
    from django_tasks.backends.base import (  # type: ignore[no-redef, unused-ignore]
        BaseTaskBackend,
    )
    from django_tasks.base import Task, TaskError  # type: ignore[no-redef, unused-ignore]
    from django_tasks.exceptions import (  # type: ignore[no-redef, unused-ignore]
        InvalidTaskError as InvalidTask,
    )
    from django_tasks.exceptions import (  # type: ignore[no-redef, unused-ignore]
        TaskResultDoesNotExist,
    )
    from django_tasks.signals import (  # type: ignore[no-redef, unused-ignore]
        task_enqueued,
        task_finished,
        task_started,
    )
