"""The third adapter: each conformance case through ``taskhandler.django.TaskMiddleware``.

The same requests as :class:`~.harness.WSGIAdapter` and :class:`~.harness.ASGIAdapter`
build, handed to Django's own handlers: ``WSGIHandler`` (a PEP 3333 environ, what gunicorn
gives Django) and ``ASGIHandler`` (an ASGI scope, what uvicorn gives it). Django builds its
``HttpRequest`` from them, runs the middleware named in ``MIDDLEWARE`` -- configured from
``settings.TASKHANDLER`` -- and routes every path to one view that records what it saw.

Django is configured once per process (:func:`configure`); each case runs under
``override_settings``, so the configuration of one never leaks into the next.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from taskhandler import wsgi
from taskhandler._decorator import TaskHandler, task_handler
from taskhandler.context import current_task

from .harness import (
    ASGIAdapter,
    Behaviour,
    Request,
    Result,
    Seen,
    WSGIAdapter,
    _fold,
    call_asgi,
)

MIDDLEWARE = "taskhandler.django.TaskMiddleware"
_OPTION_KEYS = {
    "trust": "TRUST",
    "config": "CONFIG",
    "authenticator": "AUTHENTICATOR",
    "deadline": "DEADLINE",
    "grace": "GRACE",
}


def configure() -> None:
    """Configure Django for this test process, once (a test settings module, in effect)."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="taskhandler-tests-" + "k" * 40,
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=None,
            USE_TZ=True,
            INSTALLED_APPS=[
                "django.contrib.auth",
                "django.contrib.contenttypes",
                "django.contrib.sessions",
            ],
            MIDDLEWARE=[],
            # A real SQLite file for the test database (pytest-django creates and removes it):
            # requests served by ASGIHandler use it from other threads.
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": os.path.join(tempfile.gettempdir(), "taskhandler-django.sqlite3"),
                    "TEST": {
                        "NAME": os.path.join(
                            tempfile.gettempdir(), f"taskhandler-django-test-{os.getpid()}.sqlite3"
                        )
                    },
                }
            },
            CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
            LOGIN_URL="/accounts/login/",
            TASKHANDLER={"AUTHENTICATOR": None},
            # Django's tasks framework checks tasks against the backend when they are defined.
            TASKS={
                "default": {
                    "BACKEND": "taskhandler.django.TaskQueueBackend",
                    "QUEUES": ["default", "mail", "urgent", "tallies"],
                    "OPTIONS": {"RESULTS": "default", "PRIORITY_QUEUES": {10: "urgent"}},
                }
            },
            DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        )
    django.setup()


class URLConf:
    """A URLconf as an object (``ROOT_URLCONF`` may be one): every path to ``view``."""

    def __init__(self, view: Callable[..., Any]) -> None:
        from django.urls import re_path

        self.urlpatterns = [re_path(r"^", view)]


def taskhandler_setting(options: dict[str, Any]) -> dict[str, Any]:
    """Middleware keywords (``trust=``, ``config=``, ...) as a ``TASKHANDLER`` setting."""
    setting: dict[str, Any] = {"AUTHENTICATOR": None}
    for name, value in options.items():
        setting[_OPTION_KEYS[name]] = value
    return setting


@contextmanager
def django_settings(view: Callable[..., Any], options: dict[str, Any] | None) -> Iterator[None]:
    """Settings for one case: the view at every path, the middleware when ``options``."""
    from django.test import override_settings

    with override_settings(
        ROOT_URLCONF=URLConf(view),
        MIDDLEWARE=[] if options is None else [MIDDLEWARE],
        TASKHANDLER=taskhandler_setting(options or {}),
    ):
        yield


async def call_django_asgi(
    app: Any, scope: dict[str, Any], body: bytes = b""
) -> tuple[int, dict[str, str], bytes, list[dict[str, Any]]]:
    """:func:`~.harness.call_asgi` with a client that stays connected until it is answered.

    Django's ``ASGIHandler`` listens for ``http.disconnect`` while the view runs and drops
    the response of a client that left, as a server's client would only once it has gone.
    """
    answered = asyncio.Event()
    incoming = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await answered.wait()
        return {"type": "http.disconnect"}

    async def app_until_answered(scope: dict[str, Any], _receive: Any, send: Any) -> None:
        async def sent(message: dict[str, Any]) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered.set()

        await app(scope, receive, sent)

    return await call_asgi(app_until_answered, scope, body)


def _seen(request: Any) -> Seen:
    meta = request.META
    return Seen(
        headers=_fold((k[5:], v) for k, v in meta.items() if k.startswith("HTTP_")),
        stripped=meta.get("taskhandler.stripped"),
        task=current_task(),
        state=meta.get("taskhandler.state"),
    )


def _response(behaviour: Behaviour) -> Any:
    from django.http import HttpResponse

    response = HttpResponse(behaviour.body, status=behaviour.status, content_type="text/plain")
    if behaviour.outcome is not None:
        response["X-Task-Outcome"] = behaviour.outcome
    return response


class DjangoWSGIAdapter(WSGIAdapter):
    """Django served over WSGI: ``WSGIHandler`` with the middleware in ``MIDDLEWARE``."""

    name = "django-wsgi"

    def view(self, behaviour: Behaviour, seen: list[Seen]) -> Callable[..., Any]:
        def view(request: Any) -> Any:
            seen.append(_seen(request))
            assert request.task is current_task()
            if behaviour.sleep:
                time.sleep(behaviour.sleep)
            if behaviour.raises is not None:
                raise behaviour.raises()
            return _response(behaviour)

        return view

    def django_app(self) -> Any:
        from django.core.handlers.wsgi import WSGIHandler

        return WSGIHandler()

    def call(self, app: Any, req: Request) -> tuple[int, dict[str, str], bytes]:
        return super().call(app, req)

    def run(self, req: Request, behaviour: Behaviour | None = None, **options: Any) -> Result:
        seen: list[Seen] = []
        with django_settings(self.view(behaviour or Behaviour(), seen), options):
            status, headers, body = self.call(self.django_app(), req)
        return Result(status, headers, body, seen[0] if seen else None)

    def run_nested(self, req: Request, outer: dict[str, Any], inner: dict[str, Any]) -> Result:
        """Django (with the middleware, ``**inner``) inside ``wsgi.TaskMiddleware(**outer)``."""
        seen: list[Seen] = []
        with django_settings(self.view(Behaviour(), seen), inner):
            app = wsgi.TaskMiddleware(self.django_app(), **outer)
            status, headers, body = self.call(app, req)
        return Result(status, headers, body, seen[0] if seen else None)

    def handler(self, func: Callable[..., Any], **options: Any) -> TaskHandler[Any]:
        """``@task_handler(**options)`` on a Django function view calling ``func``."""
        return task_handler(**options)(func)

    def run_handler(
        self, handler: TaskHandler[Any], req: Request, *, middleware: dict[str, Any] | None
    ) -> Result:
        with django_settings(handler, middleware):
            status, headers, body = self.call(self.django_app(), req)
        return Result(status, headers, body, None)


class DjangoASGIAdapter(DjangoWSGIAdapter):
    """Django served over ASGI: ``ASGIHandler``, async views, the scope uvicorn builds."""

    name = "django-asgi"

    def view(self, behaviour: Behaviour, seen: list[Seen]) -> Callable[..., Any]:
        async def view(request: Any) -> Any:
            seen.append(_seen(request))
            assert request.task is current_task()
            if behaviour.sleep:
                await asyncio.sleep(behaviour.sleep)
            if behaviour.raises is not None:
                raise behaviour.raises()
            return _response(behaviour)

        return view

    def django_app(self) -> Any:
        from django.core.handlers.asgi import ASGIHandler

        return ASGIHandler()

    def call(self, app: Any, req: Request) -> tuple[int, dict[str, str], bytes]:
        scope = ASGIAdapter().scope(req)
        return asyncio.run(call_django_asgi(app, scope, req.body))[:3]

    def run_nested(self, req: Request, outer: dict[str, Any], inner: dict[str, Any]) -> Result:
        """Django (with the middleware, ``**inner``) inside ``asgi.TaskMiddleware(**outer)``."""
        from taskhandler import asgi

        seen: list[Seen] = []
        with django_settings(self.view(Behaviour(), seen), inner):
            app = asgi.TaskMiddleware(self.django_app(), **outer)
            status, headers, body = self.call(app, req)
        return Result(status, headers, body, seen[0] if seen else None)

    def handler(self, func: Callable[..., Any], **options: Any) -> TaskHandler[Any]:
        """``@task_handler(**options)`` on an ``async def`` Django view calling ``func``."""

        async def run(*args: Any) -> Any:
            await asyncio.sleep(0)
            return func(*args)

        run.__name__ = run.__qualname__ = getattr(func, "__name__", "handler")
        return task_handler(**options)(run)
