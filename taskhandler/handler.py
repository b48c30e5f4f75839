"""``@task_handler``'s protocol-neutral part: who may run it, its arguments, its answer.

The decorated function receives a :class:`TaskContext` (and a validated payload when
``payload=`` names a pydantic model); what it returns or raises becomes the status the
queue sees (SPEC §6). The adapters (``wsgi.serve_handler``, ``asgi.serve_handler``) read
the request and write the response; everything they decide is here.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError

from ._decision import RequestState, Settings, synthetic_context
from ._response import OUTCOME_HEADER, Response, plain_response
from ._trace import current_attempt
from ._types import WSGIApplication
from .context import TaskContext
from .exceptions import PermanentTaskFailure, RetryTask
from .outcome import (
    AttemptsCount,
    ErrorHook,
    Result,
    failure_response,
    give_up,
    outcome_for_status,
    report_failure,
    result_for_exception,
)

__all__ = [
    "MAX_BODY",
    "Handler",
    "PayloadError",
    "admit",
    "failure_answer",
    "finish",
    "parse_payload",
    "render",
    "rendered_answer",
]

log = logging.getLogger("taskhandler")

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


class Handler(Protocol):
    """What the adapters need of a ``@task_handler`` object."""

    @property
    def func(self) -> Callable[..., Any]: ...
    @property
    def payload(self) -> type[BaseModel] | None: ...
    @property
    def max_attempts(self) -> int | None: ...
    @property
    def on_give_up(self) -> Hook | None: ...
    @property
    def on_permanent_failure(self) -> Hook | None: ...
    @property
    def on_error(self) -> ErrorHook | None: ...
    @property
    def max_attempts_counts(self) -> AttemptsCount: ...
    @property
    def is_async(self) -> bool: ...
    @property
    def settings(self) -> Settings:
        """The handler's own middleware settings, for when no ``TaskMiddleware`` is in front."""
        ...


def admit(handler: Handler, state: RequestState) -> TaskContext | Response:
    """Who may run a task handler: the context to run with, or a 403.

    A trusted task request runs with its own context. An administrator (or anyone under
    development trust) opening the URL without task headers runs it with a synthetic
    context (queue ``default``, a generated name), as on App Engine; the adapter then arms
    a deadline for it. Anyone else gets 403 ``rejected`` and nothing runs.
    """
    if state.context is not None:
        return state.context
    if state.trusted_by == "development" or state.is_admin():
        return synthetic_context(
            "development" if state.trusted_by == "development" else "admin",
            f"manual-{uuid.uuid4().hex}",
        )
    log.warning(
        "task handler %s refused a request that is not a task",
        getattr(handler.func, "__qualname__", handler.func),
    )
    return plain_response(403, "this URL only accepts task requests", outcome="rejected")


def failure_answer(handler: Handler, ctx: TaskContext, exc: BaseException) -> Response:
    """The answer when a handler raised: logged, hooks called, the outcome's status."""
    return failure_response(finish(handler, ctx, exc))


def rendered_answer(status: int, headers: list[tuple[str, str]], body: bytes) -> Response:
    """The answer for what a handler returned (see :func:`render`), with its outcome."""
    return Response(
        status,
        (
            *headers,
            ("Content-Length", str(len(body))),
            (OUTCOME_HEADER, outcome_for_status(status)),
        ),
        body,
    )


def finish(handler: Handler, ctx: TaskContext, exc: BaseException) -> Result:
    """The result for a raised exception, with the give-up rule and the hooks applied.

    A hook that itself fails turns the answer into a retry (500): the task is not
    acknowledged until its dead-letter or failure record has been written.
    """
    first = result_for_exception(exc)
    result = give_up(first, ctx, handler.max_attempts, _counts(handler))
    if isinstance(exc, Exception) and not isinstance(exc, RetryTask | PermanentTaskFailure):
        final = result.outcome == "given-up" or ctx.fail_fast
        report_failure(ctx, exc, final, _on_error(handler), first.reason)
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


def _counts(handler: Handler) -> AttemptsCount:
    """What the handler's ``max_attempts`` counts (objects made before the option: retries)."""
    return getattr(handler, "max_attempts_counts", "retries")


def _on_error(handler: Handler) -> ErrorHook | None:
    """The handler's ``on_error``, else the middleware's for this attempt."""
    own: ErrorHook | None = getattr(handler, "on_error", None)
    if own is not None:
        return own
    current = current_attempt()
    return None if current is None else current.on_error
