"""``@task_handler``: a function made into a task handler for WSGI, Flask, webapp2-style
classes and (``async def``) ASGI/Starlette (SPEC §7).

The decorated object is callable in each of those ways; each way hands it to its
adapter (``wsgi.serve_handler``, ``asgi.serve_handler``), which reads the request and
writes the response around the protocol-neutral part in :mod:`taskhandler.handler`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel

from . import asgi, wsgi
from ._decision import Settings, make_settings
from ._types import StartResponse, WSGIEnvironment
from .config import AppConfig
from .exceptions import ConfigError
from .handler import Hook
from .outcome import AttemptsCount, ErrorHook
from .trust import Authenticator, TrustPolicy

__all__ = ["AsyncTaskHandler", "TaskHandler", "task_handler"]

F = TypeVar("F", bound=Callable[..., Any])


class TaskHandler(Generic[F]):
    """A function made into a task handler by :func:`task_handler`."""

    def __init__(
        self,
        func: F,
        *,
        payload: type[BaseModel] | None = None,
        max_attempts: int | None = None,
        on_give_up: Hook | None = None,
        on_permanent_failure: Hook | None = None,
        on_error: ErrorHook | None = None,
        max_attempts_counts: AttemptsCount = "retries",
        trust: TrustPolicy | None = None,
        config: AppConfig | None = None,
        authenticator: Authenticator | None = None,
        deadline: float | None = None,
        grace: float | None = None,
    ) -> None:
        if payload is not None and not (
            isinstance(payload, type) and issubclass(payload, BaseModel)
        ):
            raise ConfigError("payload= must be a pydantic model class", value=payload)
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise ConfigError("max_attempts must be a positive integer", value=max_attempts)
        if max_attempts_counts not in ("retries", "executions"):
            raise ConfigError(
                "max_attempts_counts must be 'retries' or 'executions'", value=max_attempts_counts
            )
        for name, hook in (
            ("on_give_up", on_give_up),
            ("on_permanent_failure", on_permanent_failure),
            ("on_error", on_error),
        ):
            if hook is not None and not callable(hook):
                raise ConfigError(f"{name} must be callable", value=hook)
        functools.update_wrapper(self, func)
        self.func = func
        self.payload = payload
        self.max_attempts = max_attempts
        self.on_give_up = on_give_up
        self.on_permanent_failure = on_permanent_failure
        self.on_error = on_error
        self.max_attempts_counts: AttemptsCount = max_attempts_counts
        self.is_async = inspect.iscoroutinefunction(func)
        self._options: dict[str, Any] = {
            "trust": trust,
            "config": config,
            "authenticator": authenticator,
            "deadline": deadline,
            "grace": grace,
        }
        if any(option is not None for option in self._options.values()):
            _ = self.settings  # validate the options now, not on the first request

    @functools.cached_property
    def settings(self) -> Settings:
        """The middleware settings used when no ``TaskMiddleware`` is in front (built once)."""
        return make_settings(**self._options)

    # -- the ways it is called -------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 2 and not kwargs and isinstance(args[0], dict) and callable(args[1]):
            return self.wsgi(args[0], args[1])
        if len(args) == 3 and not kwargs and isinstance(args[0], dict) and "type" in args[0]:
            return asgi.serve_handler(self, args[0], args[1], args[2])
        if args and _is_django_request(args[0]):  # a Django view
            from .django._views import serve_view

            return serve_view(self, args[0], args[1:], kwargs)
        return self._flask_view(**kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return functools.partial(self._webapp_method, instance)

    def wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request as a WSGI application."""
        return wsgi.serve_handler(self, environ, start_response)

    def _webapp_method(self, handler_self: Any, *args: Any, **kwargs: Any) -> Any:
        """Run as a method of a webapp2-style ``RequestHandler``: write into its response."""
        if args and _is_django_request(args[0]):  # a method of a Django class-based view
            from .django._views import serve_view

            return serve_view(self, args[0], args[1:], kwargs, bound=handler_self)
        response = handler_self.response
        app = functools.partial(wsgi.serve_handler, self, bound=handler_self)
        status, headers, body = wsgi.call_wsgi(app, handler_self.request.environ)
        response.status = status
        # Replace the list whole: assigning header by header would keep only the last of
        # repeated headers such as Set-Cookie.
        response.headerlist = [(n, v) for n, v in headers if n.lower() != "content-length"]
        response.body = body

    def _flask_view(self, **_route_args: Any) -> Any:
        """Run as a Flask view: the current request's environ in, a werkzeug Response out."""
        from flask import request
        from werkzeug.wrappers import Response

        status, headers, body = wsgi.call_wsgi(self.wsgi, request.environ)
        return Response(body, status=status, headers=headers)


class AsyncTaskHandler(TaskHandler[F]):
    """An ``async def`` task handler: an ASGI 3 application in its own right.

    ``async def __call__`` is what lets servers such as uvicorn recognise it as ASGI 3,
    and lets Starlette's ``Route`` mount it as an app.
    """

    def __init__(self, func: F, **options: Any) -> None:
        super().__init__(func, **options)
        _mark_coroutine(self)  # so Django (asgiref) awaits it as an async view

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args and _is_django_request(args[0]):  # an async Django view
            from .django._views import aserve_view

            return await aserve_view(self, args[0], args[1:], kwargs)
        await asgi.serve_handler(self, *args)
        return None

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return functools.partial(self._async_method, instance)

    async def _async_method(self, handler_self: Any, request: Any, *args: Any, **kw: Any) -> Any:
        """Run as an ``async def`` method of a Django class-based view."""
        from .django._views import aserve_view

        return await aserve_view(self, request, args, kw, bound=handler_self)


def _is_django_request(obj: Any) -> bool:
    """Whether ``obj`` is a Django ``HttpRequest`` (Django is not imported for this)."""
    return any(
        cls.__name__ == "HttpRequest" and cls.__module__ == "django.http.request"
        for cls in type(obj).__mro__
    )


def _mark_coroutine(obj: Any) -> None:
    """Mark a callable object as a coroutine function, as ``asgiref``/``inspect`` read it."""
    if sys.version_info >= (3, 12):
        inspect.markcoroutinefunction(obj)
    else:  # what asgiref.sync.iscoroutinefunction looks for before 3.12
        obj._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]


def _make(func: Any, options: dict[str, Any]) -> TaskHandler[Any]:
    cls = AsyncTaskHandler if inspect.iscoroutinefunction(func) else TaskHandler
    return cls(func, **options)


@overload
def task_handler(func: F, /) -> TaskHandler[F]: ...
@overload
def task_handler(
    *,
    payload: type[BaseModel] | None = ...,
    max_attempts: int | None = ...,
    on_give_up: Hook | None = ...,
    on_permanent_failure: Hook | None = ...,
    on_error: ErrorHook | None = ...,
    max_attempts_counts: AttemptsCount = ...,
    trust: TrustPolicy | None = ...,
    config: AppConfig | None = ...,
    authenticator: Authenticator | None = ...,
    deadline: float | None = ...,
    grace: float | None = ...,
) -> Callable[[F], TaskHandler[F]]: ...
def task_handler(func: F | None = None, /, **options: Any) -> Any:
    """Make ``func(task[, payload])`` a task handler; bare or with options.

    Args:
        payload: a pydantic model filled from the JSON body, form body or query string;
            a payload that fails validation is a permanent failure (200, not retried).
        max_attempts: after this many failed deliveries, answer 200 ``given-up``.
        max_attempts_counts: ``"retries"`` (the default) counts every delivery
            (``retry_count``); ``"executions"`` counts only those that reached the app
            (``execution_count``), for queues where attempts fail before they arrive.
        on_give_up / on_permanent_failure: ``hook(task, exc)`` called before acknowledging.
        on_error: ``hook(task, exc, final)`` told of every exception the handler raised
            (``RetryTask``/``PermanentTaskFailure`` aside), ``final`` when the queue will
            not retry; for error reporters. Without it the final attempt's traceback is
            logged at ERROR; retried attempts are one WARNING line either way.
        trust / config / authenticator / deadline / grace: used when no ``TaskMiddleware``
            is in front (its decision wins when it is).

    Example::

        @task_handler(payload=CounterParams, max_attempts=5)
        def update_counter(task: TaskContext, payload: CounterParams) -> None: ...
    """
    if func is not None:
        return _make(func, options)
    return lambda f: _make(f, options)
