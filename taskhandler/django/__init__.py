"""Django: the request path's guarantees for Django projects, and a ``django.tasks`` backend.

::

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "taskhandler.django.TaskMiddleware",
        ...,
    ]
    TASKHANDLER = {"APP_YAML": BASE_DIR / "app.yaml"}
    TASKS = {"default": {"BACKEND": "taskhandler.django.TaskQueueBackend"}}

``TaskMiddleware`` believes task headers only from the queue (or a staff user), strips them
from every other request, applies app.yaml's ``login:``/``secure:`` rules, sets
``request.task`` and ``current_task()``, runs task requests under their deadline and maps
their outcome to the status (SPEC §1-§6). ``@task_handler`` works on Django views.
``TaskQueueBackend`` (Django >= 6.0's ``django.tasks``, or the ``django-tasks`` backport on
Django 5.2) enqueues through :mod:`taskhandler.taskqueue` and runs each task in the view of
:mod:`taskhandler.django.urls`. See ``docs/django.md``.
"""

from __future__ import annotations

from typing import Any

from ._middleware import TaskMiddleware as TaskMiddleware
from ._settings import SessionAuth as SessionAuth
from ._settings import settings_from_django as settings_from_django

__all__ = ["SessionAuth", "TaskMiddleware", "TaskQueueBackend", "settings_from_django"]


def __getattr__(name: str) -> Any:
    # The backend imports Django's tasks framework: only when it is asked for.
    if name == "TaskQueueBackend":
        from ._backend import TaskQueueBackend

        return TaskQueueBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
