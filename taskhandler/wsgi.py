"""``TaskMiddleware`` for WSGI: adapts the pure request path to environ/start_response.

Task headers such as ``X-AppEngine-QueueName`` tell a handler the queue sent the
request; any client can type them, so they are believed only from the queue's address
(or a signed-in admin) and removed from every other request before the app sees it.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable
from typing import Any

from werkzeug.datastructures import EnvironHeaders
from werkzeug.http import parse_cookie

from ._types import StartResponse, WSGIApplication, WSGIEnvironment
from .access import Refusal, request_path_wsgi
from .context import TaskContext
from .context import _current as _current_task
from .deadline import arm
from .headers import ENVIRON_PREFIXES, FieldPlan, collect, parse_task_headers
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
    Location,
    MiddlewareBase,
    RequestState,
    Settings,
    check_rules,
    decide,
    refusal_body,
)
from .trust import FORWARDING_HEADERS, RequestInfo

__all__ = ["TaskMiddleware", "request_info", "run_task"]

log = logging.getLogger("taskhandler")

STATE_KEY = "taskhandler.state"
STRIPPED_KEY = "taskhandler.stripped"
# (deadline_s, grace_s) for this request only, set by test clients (taskhandler.testing).
# An environ key, not a header: no network request can set it.
DEADLINE_KEY = "taskhandler.deadline"
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


def _header_name(key: str) -> str:
    """``HTTP_X_APPENGINE_QUEUENAME`` -> ``x-appengine-queuename``, as stripped names are kept."""
    return key[5:].lower().replace("_", "-")


# Every task header key in any case, found in "\n" + the joined environ keys in one C pass.
# Dashes are accepted too: no PEP 3333 server makes ``HTTP_X-AppEngine-TaskName``, but a
# gateway might, and such a key must go like any other spelling.
_TASK_KEY_RE = re.compile(r"\n(HTTP_X[-_](?:APPENGINE|CLOUDTASKS)[-_][^\n]*)", re.IGNORECASE)
# Forwarding header keys in a spelling other than PEP 3333's (``HTTP_X-Forwarded-For``,
# ``http_x_forwarded_for``): never read, always removed.
_FORWARDING_KEYS = frozenset(
    "HTTP_" + name.upper().replace("-", "_") for name in FORWARDING_HEADERS
)
_FORWARDING_KEY_RE = re.compile(
    r"\n(HTTP_(?:X[-_]FORWARDED[-_](?:FOR|PROTO|HOST|PREFIX)|FORWARDED|X[-_]REAL[-_]IP))(?=\n)",
    re.IGNORECASE,
)


class _KeyPlan:
    """What an environ's key names alone say about its task headers.

    Attributes:
        keys: the environ keys of every ``X-AppEngine-*``/``X-CloudTasks-*`` header, any case.
        stripped: the same as lower-case dash-spelled names (``taskhandler.stripped``).
    """

    __slots__ = ("_fields", "_planned", "keys", "odd", "odd_stripped", "stripped")

    def __init__(self, keys: tuple[str, ...], odd: tuple[str, ...] = ()) -> None:
        self.keys = keys
        self.stripped = tuple(map(_header_name, keys))
        self.odd = odd
        """Forwarding header keys in an odd spelling: removed from every request."""
        self.odd_stripped = tuple(map(_header_name, odd))
        self._planned = False  # how to parse them is worked out on the first trusted request
        self._fields: FieldPlan | None = None

    def task_fields(self, environ: WSGIEnvironment) -> dict[str, Any] | None:
        """The request's task header values parsed into ``TaskContext`` fields (see ``decide``)."""
        if not self._planned:
            # PEP 3333 keys are upper case, one per header; anything else (case variants,
            # two spellings of one field) is collected the long way, below.
            keys = self.keys
            self._fields = FieldPlan.of(keys) if "".join(keys).isupper() else None
            self._planned = True
        if self._fields is not None:
            return self._fields.parse(environ)
        # Case variants of one name count as copies of one header, joined and refused.
        values = [environ[key] for key in self.keys]
        return parse_task_headers(collect(zip(self.stripped, values, strict=True)))


_NO_TASK_HEADERS = _KeyPlan(())
# A server sends the same header names request after request: plans are kept by the joined
# key names, up to a bound (a client inventing names each time only ever misses).
_PLANS: dict[str, _KeyPlan] = {}
_PLANS_MAX = 512
_PLAN_KEY_MAX = 4096  # longer joined names (many or long header names) are not kept


def _plan(environ: WSGIEnvironment) -> _KeyPlan:
    joined = "\n" + "\n".join(environ)
    plan = _PLANS.get(joined)
    # Every task header key starts a line of the joined names, so a plan without task keys
    # holds for any environ whose names join the same way. One with task keys holds only
    # when no key has a newline in it (no server makes one; then the lines are the keys).
    if plan is not None and (not plan.keys or joined.count("\n") == len(environ)):
        return plan
    if joined.count("\n") != len(environ):
        keys = [k for k in environ if k.upper().replace("-", "_").startswith(ENVIRON_PREFIXES)]
        odd = [k for k in environ if _odd_forwarding(k)]
        # ambiguous: not kept
        return _KeyPlan(tuple(keys), tuple(odd)) if keys or odd else _NO_TASK_HEADERS
    keys = _TASK_KEY_RE.findall(joined)
    odd = [key for key in _FORWARDING_KEY_RE.findall(joined) if key not in _FORWARDING_KEYS]
    plan = _KeyPlan(tuple(keys), tuple(odd)) if keys or odd else _NO_TASK_HEADERS
    if len(joined) <= _PLAN_KEY_MAX:
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[joined] = plan
    return plan


def _odd_forwarding(key: str) -> bool:
    """True for a forwarding header key that is not in PEP 3333's exact spelling."""
    return key not in _FORWARDING_KEYS and key.upper().replace("-", "_") in _FORWARDING_KEYS


def _header(environ: WSGIEnvironment) -> Any:
    """``lower-case dash-spelled name -> value`` over the environ's PEP 3333 keys."""
    return lambda name: environ.get("HTTP_" + name.upper().replace("-", "_"))


def _locate(environ: WSGIEnvironment) -> Location:
    script_name = environ.get("SCRIPT_NAME", "")
    prefix = request_path_wsgi(script_name, "") if script_name else ""
    return Location(
        request_path_wsgi(script_name, environ.get("PATH_INFO", "")),
        environ.get("wsgi.url_scheme", "http"),
        _host(environ),
        environ.get("QUERY_STRING", ""),
        (prefix,) if isinstance(prefix, str) and prefix else (),
    )


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
        settings = self.settings
        outer = environ.get(STATE_KEY)
        if isinstance(outer, RequestState):
            return self._nested(outer, environ, start_response)
        state = environ[STATE_KEY] = RequestState(settings, request_info, environ)
        plan = _plan(environ)
        if plan.odd:
            # "_" spellings of forwarding headers are never read, whoever sent them.
            for key in plan.odd:
                del environ[key]
            environ[STRIPPED_KEY] = list(plan.odd_stripped)
            state.stripped = plan.odd_stripped
        if not plan.keys and self._plain_fast:
            return self.app(environ, start_response)  # the common case: nothing to decide

        if settings.serves_pages and environ.get("PATH_INFO", "").startswith(AUTH_PAGE_PREFIX):
            page = self._auth_page(environ, state)
            if page is not None:
                return page(start_response)  # type: ignore[no-any-return]

        refusal, strip = decide(
            state,
            peer=environ.get("REMOTE_ADDR"),
            task_fields=(lambda: plan.task_fields(environ)) if plan.keys else None,
            header=_header(environ),
            locate=lambda: _locate(environ),
        )
        if strip:
            for key in plan.keys:
                del environ[key]
            environ[STRIPPED_KEY] = [*plan.odd_stripped, *plan.stripped]
            state.stripped = (*plan.odd_stripped, *plan.stripped)
        if refusal is not None:
            headers, body = refusal_body(refusal)
            return _respond(start_response, refusal.status, headers, body)
        if state.context is None:
            return self.app(environ, start_response)
        return run_task(self.app, environ, start_response, state.context, settings)

    def _nested(
        self, outer: RequestState, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Inside another ``TaskMiddleware``: its trust decision stands, these rules apply too.

        One decision per request about trust and stripping, the outermost one (e.g. the
        development server around an app that brings its own middleware); but this layer's
        access rules, authenticator and sign-in pages still guard what is behind it.
        """
        settings = self.settings
        if not settings.rules and not settings.serves_pages:
            return self.app(environ, start_response)
        state = outer.inner(settings)
        if settings.serves_pages and environ.get("PATH_INFO", "").startswith(AUTH_PAGE_PREFIX):
            page = self._auth_page(environ, state)
            if page is not None:
                return page(start_response)  # type: ignore[no-any-return]
        if settings.rules:
            refusal, _ = check_rules(
                state, environ.get("REMOTE_ADDR"), _header(environ), lambda: _locate(environ)
            )
            if refusal is not None:
                headers, body = refusal_body(refusal)
                return _respond(start_response, refusal.status, headers, body)
        return self.app(environ, start_response)

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
            result = failure(ctx, exc)
    finally:
        _current_task.reset(token)

    result = conclude(ctx, result, armed, _Path(environ))
    if result is not None:
        headers, payload = failure_response(result)
        start_response(status_line(result.status), headers)
        return [payload]

    status_text, headers = response
    try:
        status = int(status_text.split(" ", 1)[0])
    except ValueError:
        status = 500
        status_text = status_line(500)
    declared = None
    for name, value in headers:
        if name.lower() == OUTCOME_HEADER_LOWER:
            declared = value
            break
    outcome = app_outcome(ctx, status, declared, armed, _Path(environ))
    if declared is None:
        headers = [*headers, (OUTCOME_HEADER, outcome)]
    start_response(status_text, headers)
    return body if len(body) == 1 else [b"".join(body)]


class _Path:
    """The request path for the log record, worked out only if a record is written."""

    __slots__ = ("environ",)

    def __init__(self, environ: WSGIEnvironment) -> None:
        self.environ = environ

    def __call__(self) -> str:
        environ = self.environ
        return str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
