"""``@task_handler``: turn a function into a task handler for WSGI, Flask, webapp2-style
classes and (``async def``) ASGI/Starlette (SPEC §7).

The decorated function receives a :class:`TaskContext` (and a validated payload when
``payload=`` names a pydantic model); what it returns or raises becomes the status the
queue sees (SPEC §6). With a ``TaskMiddleware`` in front it uses the middleware's
decision; without one it applies its own ``trust=``/``config=`` (strict by default).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar, overload
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError

from ._types import StartResponse, WSGIApplication, WSGIEnvironment
from .config import AppConfig
from .context import TaskContext, current_task
from .exceptions import ConfigError, PermanentTaskFailure, RetryTask
from .outcome import (
    OUTCOME_HEADER,
    Result,
    failure_response,
    give_up,
    outcome_for_status,
    result_for_exception,
    status_line,
)
from .pipeline import RequestState, synthetic_context
from .trust import Authenticator, TrustPolicy

__all__ = ["AsyncTaskHandler", "TaskHandler", "task_handler"]

log = logging.getLogger("taskhandler")

F = TypeVar("F", bound=Callable[..., Any])
Hook = Callable[[TaskContext, BaseException], Any]
MAX_BODY = 1024 * 1024  # Cloud Tasks' limit; App Engine push tasks stop at 100 KiB
_QUERY_METHODS = frozenset(("GET", "HEAD", "DELETE"))


class PayloadError(Exception):
    """The request body or query does not fit the handler's payload model."""


def parse_payload(
    model: type[BaseModel], method: str, content_type: str, body: bytes, query_string: str
) -> BaseModel:
    """Fill ``model`` from a JSON body, a form body (``params``) or the query string.

    GET/HEAD/DELETE tasks carry their params in the query string; POST/PUT tasks in a
    form-encoded body (``params=``) or as a raw ``payload=`` that is read as JSON.
    """
    mime = content_type.split(";", 1)[0].strip().lower()
    try:
        if method.upper() in _QUERY_METHODS and not body:
            data: Any = _pairs(parse_qsl(query_string, keep_blank_values=True))
        elif mime == "application/x-www-form-urlencoded":
            text = body.decode("utf-8")
            data = _pairs(parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text)))
        elif mime in (
            "",
            "application/json",
            "application/octet-stream",
            "text/plain",
        ) or mime.endswith("+json"):
            data = (
                json.loads(body)
                if body
                else _pairs(parse_qsl(query_string, keep_blank_values=True))
            )
        else:
            raise PayloadError(f"unsupported payload content type {mime!r}")
        return model.model_validate(data)
    except (ValueError, UnicodeError, ValidationError) as exc:
        raise PayloadError(_one_line(exc)) from exc


def _pairs(pairs: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    """Form/query pairs to a dict; a repeated name becomes a list (a model decides if that fits)."""
    out: dict[str, str | list[str]] = {}
    for name, value in pairs:
        seen = out.get(name)
        if seen is None:
            out[name] = value
        elif isinstance(seen, list):
            seen.append(value)
        else:
            out[name] = [seen, value]
    return out


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        if not errors:
            return "invalid payload"
        loc = ".".join(str(part) for part in errors[0]["loc"]) or "payload"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"invalid payload: {loc}: {errors[0]['msg']}{more}"
    return f"invalid payload: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def render(value: Any) -> tuple[int, list[tuple[str, str]], bytes] | WSGIApplication:
    """Map what a handler returned to (status, headers, body), or a response to run as WSGI."""
    if value is None:
        return 200, [("Content-Type", "text/plain; charset=utf-8")], b""
    if isinstance(value, bool):
        raise TypeError("a task handler returned a bool; return None, a body or a status")
    if isinstance(value, int):
        return value, [("Content-Type", "text/plain; charset=utf-8")], b""
    if isinstance(value, str):
        return 200, [("Content-Type", "text/plain; charset=utf-8")], value.encode()
    if isinstance(value, bytes):
        return 200, [("Content-Type", "application/octet-stream")], value
    if isinstance(value, BaseModel):
        return 200, [("Content-Type", "application/json")], value.model_dump_json().encode()
    if isinstance(value, (dict, list)):
        return 200, [("Content-Type", "application/json")], json.dumps(value, default=str).encode()
    if isinstance(value, tuple) and 2 <= len(value) <= 3 and isinstance(value[1], int):
        inner = render(value[0])
        if callable(inner):
            raise TypeError("a task handler returned a (response, status) tuple; return one")
        _, headers, body = inner
        extra = (
            list(value[2].items() if isinstance(value[2], dict) else value[2])
            if len(value) == 3
            else []
        )
        return value[1], [*headers, *extra], body
    if callable(value) and (hasattr(value, "status_code") or hasattr(value, "status_int")):
        return value  # type: ignore[no-any-return]  # a werkzeug/Flask/webob response is a WSGI app
    raise TypeError(f"a task handler returned {type(value).__name__}, which is not a response")


def finish(handler: TaskHandler[Any], ctx: TaskContext, exc: BaseException) -> Result:
    """The result for a raised exception, with the give-up rule and the hooks applied.

    A hook that itself fails turns the answer into a retry (500): the task is not
    acknowledged until its dead-letter or failure record has been written.
    """
    result = give_up(result_for_exception(exc), ctx, handler.max_attempts)
    hook: Hook | None = None
    if result.outcome == "given-up":
        hook = handler.on_give_up
        log.warning("task %s/%s given up: %s", ctx.queue_name, ctx.task_name, result.reason)
    elif result.outcome == "permanent-failure":
        hook = handler.on_permanent_failure
        log.error("task %s/%s failed permanently: %s", ctx.queue_name, ctx.task_name, result.reason)
    if hook is not None:
        try:
            hook(ctx, exc)
        except Exception as hook_exc:
            log.error(
                "task %s/%s: %s hook failed",
                ctx.queue_name,
                ctx.task_name,
                result.outcome,
                exc_info=hook_exc,
            )
            return Result(500, "retry", f"{result.outcome} hook failed: {type(hook_exc).__name__}")
    return result


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
        functools.update_wrapper(self, func)
        self.func = func
        self.payload = payload
        self.max_attempts = max_attempts
        self.on_give_up = on_give_up
        self.on_permanent_failure = on_permanent_failure
        self.is_async = inspect.iscoroutinefunction(func)
        self._options: dict[str, Any] = {
            "trust": trust,
            "config": config,
            "authenticator": authenticator,
            "deadline": deadline,
            "grace": grace,
        }
        self._standalone: Any = None
        if any(value is not None for value in self._options.values()):
            self._standalone_app()  # validate the options now, not on the first request

    # -- the ways it is called -------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 2 and not kwargs and isinstance(args[0], dict) and callable(args[1]):
            return self.wsgi(args[0], args[1])
        if len(args) == 3 and not kwargs and isinstance(args[0], dict) and "type" in args[0]:
            from .asgi import handle_asgi

            return handle_asgi(self, args[0], args[1], args[2])
        return self._flask_view(**kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return functools.partial(self._webapp_method, instance)

    def wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request as a WSGI application."""
        if not isinstance(environ.get("taskhandler.state"), RequestState):
            return self._standalone_app()(environ, start_response)  # type: ignore[no-any-return]
        return self._gate(environ, start_response, self._run_wsgi)

    # -- internals -------------------------------------------------------------------------

    def _standalone_app(self) -> Any:
        if self._standalone is None:
            from .wsgi import TaskMiddleware

            self._standalone = TaskMiddleware(
                lambda environ, start_response: self._gate(environ, start_response, self._run_wsgi),
                **self._options,
            )
        return self._standalone

    def _gate(
        self, environ: WSGIEnvironment, start_response: StartResponse, run: WSGIApplication
    ) -> Iterable[bytes]:
        """Refuse a request that is not a trusted task; give an admin a synthetic context."""
        state: RequestState = environ["taskhandler.state"]
        if state.context is not None:
            return run(environ, start_response)
        if state.trusted_by == "development" or state.is_admin():
            from .wsgi import run_task

            ctx = synthetic_context(
                "development" if state.trusted_by == "development" else "admin",
                f"manual-{uuid.uuid4().hex}",
            )
            state.context = ctx
            return run_task(run, environ, start_response, ctx, state.settings)
        log.warning(
            "task handler %s refused a request that is not a task",
            getattr(self.func, "__qualname__", self.func),
        )
        body = b"this URL only accepts task requests\n"
        start_response(
            "403 Forbidden",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                (OUTCOME_HEADER, "rejected"),
            ],
        )
        return [body]

    def _arguments(self, ctx: TaskContext, environ: WSGIEnvironment) -> tuple[Any, ...]:
        if self.payload is None:
            return (ctx,)
        body = _read_body(environ)
        payload = parse_payload(
            self.payload,
            environ.get("REQUEST_METHOD", "GET"),
            environ.get("CONTENT_TYPE", ""),
            body,
            environ.get("QUERY_STRING", ""),
        )
        return ctx, payload

    def _run_wsgi(
        self, environ: WSGIEnvironment, start_response: StartResponse, bound: Any = None
    ) -> Iterable[bytes]:
        ctx = current_task()
        assert ctx is not None
        try:
            args = self._arguments(ctx, environ)
            value = self.func(*args) if bound is None else self.func(bound, *args)
            if value is None and bound is not None:
                # A webapp2-style method writes into self.response (status included).
                value = getattr(bound, "response", None)
            if inspect.isawaitable(value):
                close = getattr(value, "close", None)
                if close is not None:
                    close()
                raise TypeError("an async task handler must be served by ASGI")
            rendered = render(value)
        except PayloadError as exc:
            result = finish(self, ctx, PermanentTaskFailure(str(exc)))
            return _plain(start_response, result)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            if isinstance(exc, Exception) and not isinstance(exc, RetryTask | PermanentTaskFailure):
                log.error("task %s/%s raised", ctx.queue_name, ctx.task_name, exc_info=exc)
            return _plain(start_response, finish(self, ctx, exc))
        if callable(rendered):
            return rendered(environ, _with_outcome(start_response))
        status, headers, body = rendered
        start_response(
            status_line(status),
            [
                *headers,
                ("Content-Length", str(len(body))),
                (OUTCOME_HEADER, outcome_for_status(status)),
            ],
        )
        return [body]

    def _webapp_method(self, handler_self: Any, *args: Any, **kwargs: Any) -> None:
        """Run as a method of a webapp2-style ``RequestHandler``: write into its response."""
        response = handler_self.response
        inner = functools.partial(self._run_wsgi, bound=handler_self)
        environ = handler_self.request.environ
        if not isinstance(environ.get("taskhandler.state"), RequestState):
            from .wsgi import TaskMiddleware

            app: Any = TaskMiddleware(lambda e, sr: self._gate(e, sr, inner), **self._options)
        else:
            app = lambda e, sr: self._gate(e, sr, inner)  # noqa: E731
        status, headers, body = call_wsgi(app, environ)
        response.status = status
        # Replace the list whole: assigning header by header would keep only the last of
        # repeated headers such as Set-Cookie.
        response.headerlist = [(n, v) for n, v in headers if n.lower() != "content-length"]
        response.body = body

    def _flask_view(self, **_route_args: Any) -> Any:
        """Run as a Flask view: the current request's environ in, a werkzeug Response out."""
        from flask import request
        from werkzeug.wrappers import Response

        status, headers, body = call_wsgi(self.wsgi, request.environ)
        return Response(body, status=status, headers=headers)


def call_wsgi(app: Any, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes]:
    """Call a WSGI app in-process; return its status line, headers and whole body."""
    captured: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured[:] = [status, headers]
        return lambda data: None

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return captured[0], captured[1], body


def _read_body(environ: WSGIEnvironment) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise PayloadError("bad Content-Length") from None
    if length < 0 or length > MAX_BODY:
        raise PayloadError(f"body larger than {MAX_BODY} bytes")
    if length == 0:
        return b""
    data: bytes = environ["wsgi.input"].read(length)
    return data


def _plain(start_response: StartResponse, result: Result) -> list[bytes]:
    headers, body = failure_response(result)
    start_response(status_line(result.status), headers)
    return [body]


def _with_outcome(start_response: StartResponse) -> StartResponse:
    def wrapped(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        code = int(status.split(" ", 1)[0])
        if not any(name.lower() == OUTCOME_HEADER.lower() for name, _ in headers):
            headers = [*headers, (OUTCOME_HEADER, outcome_for_status(code))]
        return start_response(status, headers, exc_info)

    return wrapped


class AsyncTaskHandler(TaskHandler[F]):
    """An ``async def`` task handler: an ASGI 3 application in its own right.

    ``async def __call__`` is what lets servers such as uvicorn recognise it as ASGI 3,
    and lets Starlette's ``Route`` mount it as an app.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from .asgi import handle_asgi

        await handle_asgi(self, scope, receive, send)


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
        on_give_up / on_permanent_failure: ``hook(task, exc)`` called before acknowledging.
        trust / config / authenticator / deadline / grace: used when no ``TaskMiddleware``
            is in front (its decision wins when it is).

    Example::

        @task_handler(payload=CounterParams, max_attempts=5)
        def update_counter(task: TaskContext, payload: CounterParams) -> None: ...
    """
    if func is not None:
        return _make(func, options)
    return lambda f: _make(f, options)
