"""The view that runs ``django.tasks`` tasks enqueued by ``TaskQueueBackend``.

Mount it once::

    urlpatterns = [..., path("", include("taskhandler.django.urls"))]

It answers ``POST /_ah/django-tasks/<backend alias>`` for trusted task requests only (the
queue, or a signed-in administrator), as a ``@task_handler``.
"""

from __future__ import annotations

from typing import Any

from django.urls import path

from .._decorator import task_handler
from ..context import TaskContext
from ..exceptions import PermanentTaskFailure
from ._backend import URL_NAME, TaskQueueBackend

__all__ = ["run_django_task", "urlpatterns"]


@task_handler
def run_django_task(request: Any, task: TaskContext, backend: str) -> None:
    """Run the Django task a ``TaskQueueBackend`` enqueued (its body names it)."""
    from ._compat import task_backends

    try:
        target = task_backends[backend]
    except Exception:
        raise PermanentTaskFailure(f"no task backend {backend!r} in settings.TASKS") from None
    if not isinstance(target, TaskQueueBackend):
        raise PermanentTaskFailure(f"task backend {backend!r} is not a TaskQueueBackend")
    target.run(request.body, task)


urlpatterns = [path("_ah/django-tasks/<str:backend>", run_django_task, name=URL_NAME)]
