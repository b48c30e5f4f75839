"""``TaskMiddleware`` for WSGI: the request path (SPEC §1) on environ and start_response.

Task headers such as ``X-AppEngine-QueueName`` tell a handler the queue sent the request;
any client can type them, so they are believed only from the queue's address (or a
signed-in admin) and removed from every other request before the app sees it.

This module only translates: environ -> :class:`~taskhandler._request.RequestView`, the
:class:`~taskhandler._decision.Decision` -> environ changes and a response. The decision
itself is made by :func:`taskhandler._decision.decide`. ``asgi.py`` mirrors this module
function for function.
"""

from __future__ import annotations

import functools
import inspect
import io
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from werkzeug.datastructures import EnvironHeaders

from ._decision import (
    AUTH_PAGE_PREFIX,
    MiddlewareBase,
    RequestState,
    Settings,
    decide_layer,
    refusal_response,
)
from ._request import RequestView
from ._response import Response, plain_response, status_line
from ._trace import Trace, attempt, attempt_watched, publish, trace_from_headers
from ._types import StartResponse, WSGIApplication, WSGIEnvironment
from ._watchdog import arm
from .auth import cookies_of
from .context import TaskContext, current_task
from .context import _current as _current_task
from .exceptions import PermanentTaskFailure
from .handler import (
    MAX_BODY,
    Handler,
    PayloadError,
    admit,
    failure_answer,
    parse_payload,
    render,
    rendered_answer,
)
from .headers import TASK_HEADER_PREFIXES
from .outcome import (
    OUTCOME_HEADER,
    Result,
    failed_or_overran,
    failure_response,
    failure_result,
    outcome_for_status,
    outcome_of_answer,
)
from .trust import FORWARDING_HEADERS, RequestInfo

__all__ = [
    "TaskMiddleware",
    "call_wsgi",
    "request_info",
    "request_view",
    "run_task",
    "serve_handler",
]


STATE_KEY = "taskhandler.state"
STRIPPED_KEY = "taskhandler.stripped"
# (deadline_s, grace_s) for this request only, set by test clients (taskhandler.testing).
# An environ key, not a header: no network request can set it.
DEADLINE_KEY = "taskhandler.deadline"
MAX_PAGE_BODY = 64 * 1024
# Exceptions that mean "stop the process", not "the handler failed".
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


class TaskMiddleware(MiddlewareBase):
    """Trust, strip, protect, describe, time and answer task requests for a WSGI app.

    Args:
        app: the WSGI application to wrap.
        trust: who may send task headers (default: the queue's address 0.1.0.2 only).
        config: access rules and task deadline, e.g. ``load_app_yaml("app.yaml")``.
        authenticator: ``RequestInfo -> User | None``; admins may send task headers and
            pass ``login: admin``.
        deadline: task deadline in seconds (overrides the config's; default 600).
        grace: how long before the deadline ``DeadlineExceededError`` is raised (default 10 s).
        on_error: optional ``hook(task, exc, final)`` told of every exception a task request
            raised (an error reporter: Sentry, Error Reporting); a ``@task_handler``'s own
            ``on_error=`` wins. Without one, the final attempt's traceback is logged.

    Per request it puts ``environ["taskhandler.state"]`` (a ``RequestState``) and, when it
    removed headers, ``environ["taskhandler.stripped"]`` (their lower-case names).

    Example::

        app.wsgi_app = TaskMiddleware(app.wsgi_app, config=load_app_yaml("app.yaml"))
    """

    app: WSGIApplication

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        settings = self.settings
        outer = environ.get(STATE_KEY)
        keys = _keys(environ)
        if not self.decides_plain_requests and (outer is not None or not keys.marked):
            # No task header, no rule, no page: nothing to decide.
            if outer is None:
                environ[STATE_KEY] = self.undecided(request_info, environ)
                if keys.traced:
                    return _traced(self.app, environ, start_response)
            return self.app(environ, start_response)

        user = self.user_of(request_info, environ)
        view = request_view(environ, keys)

        # The authenticator's own pages (sign-in, sign-out) answer before anything else.
        if settings.serves_pages and environ.get("PATH_INFO", "").startswith(AUTH_PAGE_PREFIX):
            page = serve_page(settings, environ)
            if page is not None:
                return respond(start_response, page)

        # Steps 1-4: who is asking, which headers go, the access rules, the task. Inside
        # another TaskMiddleware, trust and stripping were decided there already.
        nested = outer if isinstance(outer, RequestState) else None
        decision, user = decide_layer(view, settings, user, nested)
        stripped = (
            nested.stripped if nested is not None else remove_headers(environ, keys, decision.strip)
        )
        environ[STATE_KEY] = RequestState(settings, decision, user, stripped)
        if decision.refusal is not None:
            return respond(start_response, refusal_response(decision.refusal))

        # Steps 5-6: a task runs under its deadline, and its outcome becomes the status.
        if decision.context is None or outer is not None:
            if keys.traced and outer is None:
                return _traced(self.app, environ, start_response)
            return self.app(environ, start_response)
        return run_task(self.app, environ, start_response, decision.context, settings)


def _traced(
    app: WSGIApplication, environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    """Call ``app`` with the request's trace current (tasks it adds carry it on)."""
    with publish(environ_trace(environ)):
        return app(environ, start_response)


def environ_trace(environ: WSGIEnvironment) -> Trace | None:
    """The trace the request's headers name (``traceparent``, ``X-Cloud-Trace-Context``)."""
    return trace_from_headers(
        environ.get("HTTP_TRACEPARENT"), environ.get("HTTP_X_CLOUD_TRACE_CONTEXT")
    )


# -- environ -> request view --------------------------------------------------------------


class _Keys(NamedTuple):
    """The environ keys of note: task headers in any spelling, odd forwarding spellings."""

    task: tuple[tuple[str, str], ...]
    """``(environ key, header name)`` of every task header."""
    odd: tuple[tuple[str, str], ...]
    """``(environ key, header name)`` of every odd forwarding header spelling."""
    marked: bool
    """Whether the request has a header of either kind."""
    odd_names: tuple[str, ...]
    """The names removed from every request (the odd spellings)."""
    untrusted_names: tuple[str, ...]
    """The names removed from an untrusted request (the odd spellings and task headers)."""
    traced: bool = False
    """Whether the request has a trace header (``traceparent``, ``X-Cloud-Trace-Context``)."""


# Forwarding header keys as PEP 3333 servers make them (the only ones ever read).
_FORWARDING_KEYS = frozenset(
    "HTTP_" + name.upper().replace("-", "_") for name in FORWARDING_HEADERS
)


# The cache holds at most 512 lists of names of at most this many characters in all.
_MAX_CACHED_NAMES = 4096


class _NotKept(Exception):
    """Names too long in all for the cache (an exception: lru_cache never keeps one)."""


@functools.lru_cache(maxsize=512)
def _classify_keys(keys: tuple[str, ...]) -> _Keys:
    """Sort an environ's keys; a server sends the same names request after request.

    Measured only when the cache does not know them: too long in all, they are not kept.
    """
    if sum(map(len, keys)) > _MAX_CACHED_NAMES:
        raise _NotKept
    return _sort_keys(keys)


def _sort_keys(keys: tuple[str, ...]) -> _Keys:
    """The keys of note among an environ's (see :class:`_Keys`)."""
    task: list[tuple[str, str]] = []
    odd: list[tuple[str, str]] = []
    for key in keys:
        if key[:5].upper() != "HTTP_":
            continue
        folded = key.upper().replace("-", "_")
        name = key[5:].lower().replace("_", "-")
        if name.startswith(TASK_HEADER_PREFIXES):
            task.append((key, name))  # any case, "-" or "_": a gateway may keep dashes
        elif folded in _FORWARDING_KEYS and key != folded:
            odd.append((key, name))  # HTTP_X-Forwarded-For, http_x_forwarded_for: never read
    odd_names = tuple(dict.fromkeys(name for _, name in odd))
    untrusted_names = tuple(dict.fromkeys(name for _, name in odd + task))
    traced = "HTTP_TRACEPARENT" in keys or "HTTP_X_CLOUD_TRACE_CONTEXT" in keys
    return _Keys(tuple(task), tuple(odd), bool(task or odd), odd_names, untrusted_names, traced)


def _keys(environ: WSGIEnvironment) -> _Keys:
    keys = tuple(environ)
    try:
        return _classify_keys(keys)
    except _NotKept:  # an environ like no other: sorted, not kept
        return _sort_keys(keys)


def request_view(environ: WSGIEnvironment, keys: _Keys | None = None) -> RequestView:
    """The request as the steps of the request path see it."""
    if keys is None:
        keys = _keys(environ)
    script_name = environ.get("SCRIPT_NAME", "")
    path_info = environ.get("PATH_INFO", "")
    path, path_error = _text_path(script_name + path_info)
    if path_info and not path_info.startswith("/"):
        # gunicorn cuts a SCRIPT_NAME header's prefix mid-segment (/xadmin -> admin), and
        # frameworks route "admin/panel" as "/admin/panel": no rule would see that path.
        path_error = "request path below the mount prefix does not start with '/'"
    prefix = _text_path(script_name)[0] if script_name else ""
    return RequestView(  # by position, in the order of the fields: half the cost
        environ.get("REMOTE_ADDR"),  # peer
        environ.get("REQUEST_METHOD", "GET"),  # method
        environ.get("wsgi.url_scheme", "http"),  # scheme
        _host(environ),  # host
        path,
        path_error,
        (prefix,) if prefix else (),  # prefixes
        environ.get("QUERY_STRING", ""),  # query_string
        _Headers(environ),  # headers
        tuple([(name, environ[key]) for key, name in keys.task]),  # task_headers
        not _drops_underscore_headers(environ.get("SERVER_SOFTWARE", "")),  # folded
    )


# Servers that drop request headers whose names hold "_" (so X_Forwarded_For never reaches
# the environ): gunicorn (since 22, its default header_map=drop), waitress, werkzeug, and
# mod_wsgi behind Apache 2.4. Every other WSGI server may fold "_" into "-" (cheroot,
# wsgiref and the WSGI modes of hypercorn, granian and uvicorn do).
_DROPPING_SERVERS = ("gunicorn/", "waitress", "werkzeug/", "apache/")


def _drops_underscore_headers(server_software: str) -> bool:
    return server_software.lower().startswith(_DROPPING_SERVERS)


def request_info(environ: WSGIEnvironment) -> RequestInfo:
    """The protocol-neutral view of a WSGI request (for authenticators)."""
    headers = {name.lower(): value for name, value in EnvironHeaders(environ).items()}
    path, _ = _text_path(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
    return RequestInfo(
        method=environ.get("REQUEST_METHOD", "GET"),
        scheme=environ.get("wsgi.url_scheme", "http"),
        host=_host(environ),
        path=path or "/",
        query_string=environ.get("QUERY_STRING", ""),
        headers=headers,
        cookies=cookies_of(environ.get("HTTP_COOKIE", "")),
        client=environ.get("REMOTE_ADDR"),
    )


class _Headers(Mapping[str, str]):
    """The environ's headers by lower-case dash-spelled name, PEP 3333 keys only."""

    __slots__ = ("_environ",)

    def __init__(self, environ: WSGIEnvironment) -> None:
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        value: str = self._environ[_environ_key(name)]
        return value

    def get(self, name: str, default: Any = None) -> Any:  # without raising KeyError
        return self._environ.get(_environ_key(name), default)

    def __iter__(self) -> Iterator[str]:
        for key in self._environ:
            if key.startswith("HTTP_") and key.isupper() and "-" not in key:
                yield key[5:].lower().replace("_", "-")

    def __len__(self) -> int:
        return sum(1 for _ in self)


@functools.lru_cache(maxsize=64)  # the names the steps look up: a few constants
def _environ_key(name: str) -> str:
    """``x-forwarded-for`` -> ``HTTP_X_FORWARDED_FOR``."""
    return "HTTP_" + name.upper().replace("-", "_")


def _text_path(raw: str) -> tuple[str, str | None]:
    """A PEP 3333 path (bytes as latin-1 text) as UTF-8 text, or the reason it is not."""
    if raw.isascii():  # the usual path: the same text either way
        return raw, None
    try:
        return raw.encode("latin-1").decode("utf-8"), None
    except UnicodeError:
        return "", "request path is not valid UTF-8"


def _host(environ: WSGIEnvironment) -> str:
    host = environ.get("HTTP_HOST")
    if host:
        return str(host)
    name, port = environ.get("SERVER_NAME", "localhost"), str(environ.get("SERVER_PORT", ""))
    default = "443" if environ.get("wsgi.url_scheme") == "https" else "80"
    return name if port in ("", default) else f"{name}:{port}"


# -- decision -> environ and response ------------------------------------------------------


def remove_headers(environ: WSGIEnvironment, keys: _Keys, strip: bool) -> tuple[str, ...]:
    """Step 2 applied: odd forwarding spellings go always, task headers when ``strip``.

    Returns the removed names, also kept under ``environ["taskhandler.stripped"]``.
    """
    if strip:
        removed, names = keys.odd + keys.task, keys.untrusted_names
    else:
        removed, names = keys.odd, keys.odd_names
    if not removed:
        return ()
    for key, _ in removed:
        environ.pop(key, None)
    environ[STRIPPED_KEY] = list(names)
    return names


def respond(start_response: StartResponse, response: Response) -> list[bytes]:
    """Answer with a response the middleware made itself."""
    start_response(status_line(response.status), list(response.headers))
    return [response.body]


def serve_page(settings: Settings, environ: WSGIEnvironment) -> Response | None:
    """The authenticator's page for this request (sign-in, sign-out), or ``None``."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if not 0 <= length <= MAX_PAGE_BODY:
        return plain_response(400, "bad or too large request body", no_store=True)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)  # the app still reads it if no page answers
    page = settings.authenticator.serve(request_info(environ), body)  # type: ignore[union-attr]
    if page is None:
        return None
    return Response(page.status, tuple(page.headers), page.body)


# -- steps 5 and 6: the task runs --------------------------------------------------------


def run_task(
    app: WSGIApplication,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    ctx: TaskContext,
    settings: Settings,
) -> list[bytes]:
    """Run ``app`` as a task request: current task, deadline armed, outcome mapped, one log record.

    The request's trace (``traceparent``, ``X-Cloud-Trace-Context``) is current meanwhile.
    """
    trace = environ_trace(environ)
    if trace is None and not attempt_watched(settings.on_error):
        return _run_task(app, environ, start_response, ctx, settings)  # nothing to publish
    with attempt(ctx, trace, settings.on_error):
        return _run_task(app, environ, start_response, ctx, settings)


def _run_task(
    app: WSGIApplication,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    ctx: TaskContext,
    settings: Settings,
) -> list[bytes]:
    """:func:`run_task` under the request's trace.

    The response is buffered (the queue reads only the status) so that the deadline covers
    the whole body and a failure while producing it still becomes a clean 500.
    """
    response: list[Any] = []  # status and headers, once the app starts its response
    body: list[bytes] = []
    write = body.append

    def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if response and exc_info is None:
            raise AssertionError("start_response called twice without exc_info")
        response[:] = (status, headers)
        return write

    override = environ.get(DEADLINE_KEY)
    result: Result | None = None
    token = _current_task.set(ctx)
    deadline, grace = override if override else (settings.deadline, settings.grace)
    try:
        # The error may be delivered from the moment arm() returns until disarm() is entered,
        # so all that runs in between (attaching the deadline included) is inside the try
        # whose finally disarms. Between arm() returning and that try there is no point where
        # the interpreter delivers it: a plain call of a Python function, a store, the try.
        armed = arm(deadline, grace)
        try:
            try:
                ctx._attach_deadline(armed)
                chunks: Iterable[bytes] = app(environ, capture)
                try:
                    body.extend(chunks)
                finally:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()
            finally:
                armed.disarm()
            if not response:
                raise RuntimeError("the application returned without calling start_response")
        except _PASS_THROUGH:
            raise
        except BaseException as exc:
            result = failure_result(ctx, exc)
    finally:
        _current_task.reset(token)

    path = functools.partial(_log_path, environ)
    result = failed_or_overran(ctx, result, armed, path)
    if result is not None:
        return respond(start_response, failure_response(result))

    status_text, headers = response
    try:
        status = int(status_text.split(" ", 1)[0])
    except ValueError:
        status = 500
        status_text = status_line(500)
    declared = _declared_outcome(headers)
    outcome = outcome_of_answer(ctx, status, declared, armed, path)
    if declared is None:
        headers = [*headers, (OUTCOME_HEADER, outcome)]
    start_response(status_text, headers)
    return body if len(body) == 1 else [b"".join(body)]


_OUTCOME_NAME = OUTCOME_HEADER.lower()


def _declared_outcome(headers: list[tuple[str, str]]) -> str | None:
    """The app's own ``X-Task-Outcome``, if it set one."""
    for name, value in headers:
        if name.lower() == _OUTCOME_NAME:
            return value
    return None


def _log_path(environ: WSGIEnvironment) -> str:
    """The request path for the log record (worked out only if a record is written)."""
    return str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))


# -- @task_handler on a WSGI request ------------------------------------------------------


def serve_handler(
    handler: Handler, environ: WSGIEnvironment, start_response: StartResponse, bound: Any = None
) -> Iterable[bytes]:
    """Serve a ``@task_handler`` (SPEC §7): admit the request, then run the handler.

    Behind a ``TaskMiddleware`` it uses the middleware's decision; on its own it applies
    the handler's ``trust=``/``config=`` through a middleware of its own. ``bound`` is the
    ``RequestHandler`` instance when the handler is a webapp2-style method.
    """
    state = environ.get(STATE_KEY)
    if not isinstance(state, RequestState):
        inner = functools.partial(serve_handler, handler, bound=bound)
        middleware: TaskMiddleware = TaskMiddleware.with_settings(inner, handler.settings)
        return middleware(environ, start_response)
    admitted = admit(handler, state)
    if isinstance(admitted, Response):
        return respond(start_response, admitted)
    run = functools.partial(_call_handler, handler, bound=bound)
    if admitted is state.context:
        return run(environ, start_response)  # the middleware runs it under the deadline
    return run_task(run, environ, start_response, admitted, state.settings)


def _call_handler(
    handler: Handler, environ: WSGIEnvironment, start_response: StartResponse, bound: Any = None
) -> Iterable[bytes]:
    """Call the handler function with its arguments and answer with what it gave."""
    ctx = current_task()
    assert ctx is not None, "run_task publishes the context first"
    try:
        args = _arguments(handler, ctx, environ)
        value = handler.func(*args) if bound is None else handler.func(bound, *args)
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
        return respond(start_response, failure_answer(handler, ctx, PermanentTaskFailure(str(exc))))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        return respond(start_response, failure_answer(handler, ctx, exc))
    if callable(rendered):
        return rendered(environ, _with_outcome(start_response))  # a framework response
    return respond(start_response, rendered_answer(*rendered))


def _arguments(handler: Handler, ctx: TaskContext, environ: WSGIEnvironment) -> tuple[Any, ...]:
    if handler.payload is None:
        return (ctx,)
    payload = parse_payload(
        handler.payload,
        environ.get("REQUEST_METHOD", "GET"),
        environ.get("CONTENT_TYPE", ""),
        _read_body(environ),
        environ.get("QUERY_STRING", ""),
    )
    return ctx, payload


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


def _with_outcome(start_response: StartResponse) -> StartResponse:
    """A ``start_response`` that adds ``X-Task-Outcome`` when the response has none."""

    def wrapped(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        code = int(status.split(" ", 1)[0])
        if _declared_outcome(headers) is None:
            headers = [*headers, (OUTCOME_HEADER, outcome_for_status(code))]
        return start_response(status, headers, exc_info)

    return wrapped


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
