"""Django tasks (``@task``) the backend tests enqueue; what they did goes to Django's cache.

A module of their own, importable by the dotted path the queue's task body names (tests
hold no tasks: this file only defines them).
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.core.cache import cache

from taskhandler import PermanentTaskFailure, current_task
from taskhandler.django._compat import Task

try:
    from django.tasks import task  # type: ignore[import-not-found, unused-ignore]
except ImportError:
    from django_tasks import task  # type: ignore[no-redef, unused-ignore]

__all__ = ["Task"]


def ran() -> list[Any]:
    """What the tasks did, in order."""
    return list(cache.get("django-tasks-ran", []))


def _record(entry: Any) -> None:
    cache.set("django-tasks-ran", [*ran(), entry])


@task
def add(a: int, b: int) -> int:
    """Add, and record the call and the task it ran as."""
    current = current_task()
    _record(["add", a, b, current.queue_name if current else None])
    return a + b


@task(queue_name="mail")
def send(to: str) -> None:
    _record(["send", to])


@task(priority=10)
def urgent() -> str:
    _record(["urgent"])
    return "done"


@task(takes_context=True)
def with_context(context: Any, label: str) -> int:
    _record(["context", label, context.task_result.id, context.attempt])
    return int(context.attempt)


@task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    _record(["async_add", a, b])
    return a + b


@task
def flaky(label: str) -> str:
    """Fails on its first attempt, succeeds on the next."""
    current = current_task()
    _record(["flaky", label, current.retry_count if current else None])
    if current is not None and current.retry_count == 0:
        raise RuntimeError("first attempt fails")
    return label


@task
def refuses(label: str) -> None:
    _record(["refuses", label])
    raise PermanentTaskFailure("never")


def not_a_task(label: str) -> None:
    """A plain function: a task body naming it must not run it."""
    _record(["not_a_task", label])
