"""``TaskMiddleware`` for WSGI: adapts the pure request path to environ/start_response.

Task headers such as ``X-AppEngine-QueueName`` tell a handler the queue sent the
request; any client can type them, so they are believed only from the queue's address
(or a signed-in admin) and removed from every other request before the app sees it.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from werkzeug.datastructures import EnvironHeaders
from werkzeug.http import parse_cookie

from ._types import StartResponse, WSGIApplication, WSGIEnvironment
from .access import Refusal, request_path_wsgi
from .context import TaskContext, reset_current, set_current
from .deadline import arm
from .headers import ENVIRON_PREFIXES
from .outcome import (
    OUTCOME_HEADER,
    OUTCOME_HEADER_LOWER,
    Result,
    app_outcome,
    conclude,
    failure,
    failure_response,
    status_line,
)
from .pipeline import (
    AUTH_PAGE_PREFIX,
    MiddlewareBase,
    RequestState,
    Settings,
    decide,
    refusal_body,
)
from .trust import RequestInfo

__all__ = ["TaskMiddleware", "request_info", "run_task"]

log = logging.getLogger("taskhandler")

STATE_KEY = "taskhandler.state"
STRIPPED_KEY = "taskhandler.stripped"
# (deadline_s, grace_s) for this request only, set by test clients (taskhandler.testing).
# An environ key, not a header: no network request can set it.
DEADLINE_KEY = "taskhandler.deadline"
_MARKERS = ("\nHTTP_X_APPENGINE_", "\nHTTP_X_CLOUDTASKS_")
_MAX_PAGE_BODY = 64 * 1024
# Exceptions that mean "stop the process", not "the handler failed".
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


def request_info(environ: WSGIEnvironment) -> RequestInfo:
    """The protocol-neutral view of a WSGI request (for authenticators)."""
    headers = {name.lower(): value for name, value in EnvironHeaders(environ).items()}
    path = request_path_wsgi(environ.get("SCRIPT_NAME", ""), environ.get("PATH_INFO", ""))
    return RequestInfo(
        method=environ.get("REQUEST_METHOD", "GET"),
        scheme=environ.get("wsgi.url_scheme", "http"),
        host=_host(environ),
        path=path if isinstance(path, str) else "/",
        query_string=environ.get("QUERY_STRING", ""),
        headers=headers,
        cookies=dict(parse_cookie(environ.get("HTTP_COOKIE", ""))),
        client=environ.get("REMOTE_ADDR"),
    )


def _host(environ: WSGIEnvironment) -> str:
    host = environ.get("HTTP_HOST")
    if host:
        return str(host)
    name, port = environ.get("SERVER_NAME", "localhost"), str(environ.get("SERVER_PORT", ""))
    default = "443" if environ.get("wsgi.url_scheme") == "https" else "80"
    return name if port in ("", default) else f"{name}:{port}"


@functools.lru_cache(maxsize=256)
def _header_name(key: str) -> str:
    """``HTTP_X_APPENGINE_QUEUENAME`` -> ``x-appengine-queuename``, as stripped names are kept."""
    return key[5:].lower().replace("_", "-")


_TASK_KEY_RE = re.compile(r"\n(HTTP_X_(?:APPENGINE|CLOUDTASKS)_[^\n]*)")


def _task_keys(environ: WSGIEnvironment, joined: str, upper: str) -> tuple[list[str], list[str]]:
    """The environ keys of task headers and their upper-case spelling, found in the joined names."""
    names: list[str] = _TASK_KEY_RE.findall(upper)
    if all(map(environ.__contains__, names)):  # PEP 3333 keys are upper case: the usual road
        return names, names
    keys = [key for key in environ if key.upper().startswith(ENVIRON_PREFIXES)]
    return keys, [key.upper() for key in keys]


def _respond(
    start_response: StartResponse, status: int, headers: list[tuple[str, str]], body: bytes
) -> list[bytes]:
    start_response(status_line(status), headers)
    return [body]


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

    Example::

        app.wsgi_app = TaskMiddleware(app.wsgi_app, config=load_app_yaml("app.yaml"))
    """

    app: WSGIApplication

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if isinstance(environ.get(STATE_KEY), RequestState):
            # An outer TaskMiddleware already decided (e.g. the development server around an
            # app that brings its own): one decision per request, the outermost one.
            return self.app(environ, start_response)
        settings = self.settings
        state = RequestState(settings, request_info, environ)
        environ[STATE_KEY] = state
        # One C-level pass over the joined key names finds every task header key (any case).
        joined = "\n" + "\n".join(environ)
        upper = joined.upper()
        if _MARKERS[0] not in upper and _MARKERS[1] not in upper:
            if self._plain_fast:
                return self.app(environ, start_response)  # the common case: nothing to decide
            task_keys: list[str] = []
            names: list[str] = []
        else:
            task_keys, names = _task_keys(environ, joined, upper)

        def task_headers() -> dict[str, str]:
            values: dict[str, str] = {}
            for key, name in zip(task_keys, names, strict=True):
                value = environ[key]
                values[name] = value if name not in values else f"{values[name]},{value}"
            return values

        if settings.serves_pages and environ.get("PATH_INFO", "").startswith(AUTH_PAGE_PREFIX):
            page = self._auth_page(environ, state)
            if page is not None:
                return page(start_response)  # type: ignore[no-any-return]

        decision = decide(
            state,
            peer=environ.get("REMOTE_ADDR"),
            task_headers=task_headers if task_keys else {},
            header=lambda name: environ.get("HTTP_" + name.upper().replace("-", "_")),
            path=lambda: request_path_wsgi(
                environ.get("SCRIPT_NAME", ""), environ.get("PATH_INFO", "")
            ),
            scheme=environ.get("wsgi.url_scheme", "http"),
            host=environ.get("HTTP_HOST") or _host(environ),
            query_string=environ.get("QUERY_STRING", ""),
        )
        if decision.strip:
            stripped = [_header_name(key) for key in task_keys]
            for key in task_keys:
                del environ[key]
            environ[STRIPPED_KEY] = stripped
            state.stripped = tuple(stripped)
        if decision.refusal is not None:
            headers, body = refusal_body(decision.refusal)
            return _respond(start_response, decision.refusal.status, headers, body)
        if decision.context is None:
            return self.app(environ, start_response)
        return run_task(self.app, environ, start_response, decision.context, settings)

    def _auth_page(self, environ: WSGIEnvironment, state: RequestState) -> Any:
        serve = getattr(self.settings.authenticator, "serve", None)
        if serve is None:
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_PAGE_BODY:
            refusal = Refusal(400, "bad or too large request body")
            headers, body = refusal_body(refusal)
            return lambda sr: _respond(sr, 400, headers, body)
        data = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(data)  # the app still reads it if no page answers
        page = serve(state.request_info(), data)
        if page is None:
            return None
        return lambda sr: _respond(sr, page.status, list(page.headers), page.body)


def run_task(
    app: WSGIApplication,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    ctx: TaskContext,
    settings: Settings,
) -> list[bytes]:
    """Run ``app`` as a task request: current task, deadline armed, outcome mapped, one log record.

    The response is buffered (the queue reads only the status) so that the deadline covers
    the whole body and a failure while producing it still becomes a clean 500.
    """
    captured: list[Any] = []
    body: list[bytes] = []

    def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if captured and exc_info is None:
            raise AssertionError("start_response called twice without exc_info")
        captured[:] = [status, headers]
        return body.append

    token = set_current(ctx)
    started = time.perf_counter()
    result: Result | None = None
    deadline_s, grace_s = environ.get(DEADLINE_KEY) or (settings.deadline, settings.grace)
    armed = arm(deadline_s, grace_s)
    ctx._attach_deadline(armed)
    try:
        try:
            chunks: Iterator[bytes] | Iterable[bytes] = app(environ, capture)
            try:
                for chunk in chunks:
                    body.append(chunk)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
        finally:
            armed.disarm()
        if not captured:
            raise RuntimeError("the application returned without calling start_response")
    except _PASS_THROUGH:
        raise
    except BaseException as exc:
        result = failure(ctx, exc)
    finally:
        reset_current(token)
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    duration = time.perf_counter() - started

    result = conclude(ctx, result, armed.overran(), duration, path)
    if result is not None:
        headers, payload = failure_response(result)
        start_response(status_line(result.status), headers)
        return [payload]

    status_text, headers = captured
    try:
        status = int(status_text.split(" ", 1)[0])
    except ValueError:
        status = 500
        status_text = status_line(500)
    declared = next((v for n, v in headers if n.lower() == OUTCOME_HEADER_LOWER), None)
    outcome = app_outcome(ctx, status, declared, duration, path)
    if declared is None:
        headers = [*headers, (OUTCOME_HEADER, outcome)]
    start_response(status_text, headers)
    return [b"".join(body)] if len(body) != 1 else body
