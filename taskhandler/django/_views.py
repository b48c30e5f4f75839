"""``@task_handler`` on Django views: function views and class-based views, sync and async.

The decorated object is a Django view (``path("tasks/count", update_counter)``, or a method
of a ``View`` subclass). Behind :class:`~taskhandler.django.TaskMiddleware` it uses the
middleware's decision; without it, it decides itself with the handler's own ``trust=`` /
``config=`` keywords, or else with ``settings.TASKHANDLER``. The protocol-neutral part --
who may run it, the payload, the answer -- is :mod:`taskhandler.handler`'s.

The function is called as ``func([request,] task[, payload], *url_args, **url_kwargs)``:
``request`` when its first parameter is named so, the payload when ``payload=`` is given,
then what the URL pattern captured. A class-based view's method gets ``self`` first (with
``self.request``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from .._decision import Settings
from .._response import OUTCOME_HEADER, Response
from ..context import TaskContext
from ..context import _current as _current_task
from ..exceptions import PermanentTaskFailure
from ..handler import (
    MAX_BODY,
    Handler,
    PayloadError,
    admit,
    failure_answer,
    parse_payload,
    render,
    rendered_answer,
)
from ..outcome import outcome_for_status
from ._middleware import (
    TaskMiddleware,
    http_response,
    run_task,
    run_task_async,
    state_of,
    thread_deadline,
)
from ._settings import settings_from_django

__all__ = ["aserve_view", "serve_view"]

_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


def serve_view(
    handler: Handler, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any], bound: Any = None
) -> Any:
    """Serve a sync ``@task_handler`` as a Django view: admit the request, then run it."""
    state = state_of(request)
    if state is None:  # no TaskMiddleware in front: one of its own, around this call
        inner = functools.partial(serve_view, handler, args=args, kwargs=kwargs, bound=bound)
        return TaskMiddleware(inner, settings=_settings(handler))(request)
    admitted = admit(handler, state)
    if isinstance(admitted, Response):
        return http_response(admitted)
    call = functools.partial(_call, handler, args=args, kwargs=kwargs, bound=bound)
    if admitted is state.context:
        return call(request)  # the middleware runs it under the deadline
    return run_task(call, request, admitted, state.settings)


async def aserve_view(
    handler: Handler, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any], bound: Any = None
) -> Any:
    """Serve an ``async def`` ``@task_handler`` as a Django view."""
    state = state_of(request)
    if state is None:
        inner = functools.partial(aserve_view, handler, args=args, kwargs=kwargs, bound=bound)
        return await TaskMiddleware(inner, settings=_settings(handler))(request)
    admitted = admit(handler, state)
    if isinstance(admitted, Response):
        return http_response(admitted)
    call = functools.partial(_acall, handler, args=args, kwargs=kwargs, bound=bound)
    if admitted is state.context:
        return await call(request)
    return await run_task_async(call, request, admitted, state.settings)


def _settings(handler: Handler) -> Settings:
    """The handler's own keywords when it was given any, else ``settings.TASKHANDLER``."""
    options = getattr(handler, "_options", {})
    if any(value is not None for value in options.values()):
        return handler.settings
    return settings_from_django()


def _call(
    handler: Handler,
    request: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    bound: Any = None,
) -> Any:
    ctx = _current_task.get()
    assert ctx is not None, "run_task publishes the context first"
    armed = thread_deadline(ctx)  # a worker thread of async Django: a deadline of its own
    try:
        try:
            value = handler.func(*_arguments(handler, ctx, request, bound), *args, **kwargs)
        finally:
            if armed is not None:
                armed.disarm()
        if inspect.isawaitable(value):
            close = getattr(value, "close", None)
            if close is not None:
                close()
            raise TypeError("an async task handler returned an awaitable to a sync caller")
        return _answer(value)
    except PayloadError as exc:
        return http_response(failure_answer(handler, ctx, PermanentTaskFailure(str(exc))))
    except _PASS_THROUGH:
        raise
    except BaseException as exc:
        return http_response(failure_answer(handler, ctx, exc))


async def _acall(
    handler: Handler,
    request: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    bound: Any = None,
) -> Any:
    ctx = _current_task.get()
    assert ctx is not None, "run_task_async publishes the context first"
    try:
        value = await handler.func(*_arguments(handler, ctx, request, bound), *args, **kwargs)
        return _answer(value)
    except PayloadError as exc:
        return http_response(failure_answer(handler, ctx, PermanentTaskFailure(str(exc))))
    except (*_PASS_THROUGH, _cancelled()):
        raise
    except BaseException as exc:
        return http_response(failure_answer(handler, ctx, exc))


def _cancelled() -> type[BaseException]:
    import asyncio

    return asyncio.CancelledError


def _arguments(handler: Handler, ctx: TaskContext, request: Any, bound: Any) -> list[Any]:
    out: list[Any] = [] if bound is None else [bound]
    if _takes_request(handler.func, bound is not None):
        out.append(request)
    out.append(ctx)
    if handler.payload is not None:
        out.append(
            parse_payload(
                handler.payload,
                request.method,
                request.META.get("CONTENT_TYPE", ""),
                _body(request),
                request.META.get("QUERY_STRING", ""),
            )
        )
    return out


@functools.lru_cache(maxsize=256)
def _takes_request(func: Callable[..., Any], bound: bool) -> bool:
    """Whether the handler's first parameter (after ``self``) is named ``request``."""
    try:
        names = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return False
    names = names[1:] if bound else names
    return bool(names) and names[0] == "request"


def _body(request: Any) -> bytes:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise PayloadError("bad Content-Length") from None
    if length < 0 or length > MAX_BODY:
        raise PayloadError(f"body larger than {MAX_BODY} bytes")
    try:
        return bytes(request.body)
    except Exception as exc:  # RequestDataTooBig, a client that went away
        raise PayloadError(f"request body unreadable: {type(exc).__name__}") from exc


def _answer(value: Any) -> Any:
    """What the handler returned, as a Django response carrying ``X-Task-Outcome``."""
    from django.http.response import HttpResponseBase

    if isinstance(value, HttpResponseBase):
        if value.get(OUTCOME_HEADER) is None:
            value[OUTCOME_HEADER] = outcome_for_status(value.status_code)
        return value
    rendered = render(value)
    if callable(rendered):
        raise TypeError("a Django task handler returned a WSGI response; return an HttpResponse")
    return http_response(rendered_answer(*rendered))
