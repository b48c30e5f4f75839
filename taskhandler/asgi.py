"""``TaskMiddleware`` for ASGI: the same decisions as the WSGI middleware over scope/receive/send.

Task headers such as ``X-AppEngine-QueueName`` tell a handler the queue sent the
request; any client can type them, so they are believed only from the queue's address
(or a signed-in admin) and removed from every other request before the app sees it.
The decision itself is :func:`taskhandler.pipeline.decide`, shared with the WSGI
middleware; this module only reads the plain data it needs from the ASGI scope and
applies the answer.

ASGI specifics:

- Header names arrive as bytes, possibly several entries per name, and underscore
  spellings (``x_appengine_queuename``) arrive as names of their own. Names are compared
  after ``lower().replace("_", "-")``; every copy of every spelling is removed from an
  untrusted request, so nothing further in (an ASGI-to-WSGI bridge folding ``_`` into
  ``-``, say) can bring one back. The caller's header list is never changed in place: the
  scope gets a new list.
- ``lifespan`` and ``websocket`` scopes pass through untouched.
- The path the access rules see is ``scope["path"]``, the full request path the app
  routes (it includes ``root_path``, as uvicorn and Starlette put it; ``root_path`` is
  prepended for a server that keeps the two apart). A path whose raw bytes are not UTF-8
  is refused with 400, as under WSGI.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from werkzeug.http import parse_cookie

from ._types import ASGIApplication, Message, Receive, Scope, Send
from .access import Refusal
from .context import TaskContext
from .context import _current as _current_task
from .deadline import AsyncArmed, arm, arm_async
from .exceptions import PermanentTaskFailure, RetryTask
from .headers import TASK_HEADER_PREFIXES, FieldPlan, collect, parse_task_headers
from .outcome import (
    OUTCOME_HEADER,
    OUTCOME_HEADER_LOWER,
    Result,
    app_outcome,
    conclude,
    failure,
    failure_response,
    outcome_for_status,
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
    synthetic_context,
)
from .trust import FORWARDING_HEADERS, RequestInfo

__all__ = ["TaskMiddleware", "endpoint", "handle_asgi", "request_info", "request_path", "run_task"]

log = logging.getLogger("taskhandler")

STATE_KEY = "taskhandler.state"
STRIPPED_KEY = "taskhandler.stripped"
_OUTCOME_NAME = OUTCOME_HEADER_LOWER.encode("latin-1")
_MAX_PAGE_BODY = 64 * 1024
MAX_BODY = 1024 * 1024  # as handler.MAX_BODY: Cloud Tasks' limit
# Extensions that let an app hand the body to the server directly: a buffered task
# response cannot pass them on, so task requests do not advertise them.
_SEND_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopysend")
_NOT_A_TASK = b"this URL only accepts task requests\n"
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _norm(name: bytes) -> str:
    return name.decode("latin-1").lower().replace("_", "-")


def _header_lookup(headers: Iterable[tuple[bytes, bytes]]) -> Callable[[str], str | None]:
    """``lower-case name -> value`` over ASGI headers; copies joined with ``,`` as WSGI servers do.

    Names are compared in their exact dash spelling (any case): an ``_`` spelling of a
    forwarding header is never read. The headers are grouped on the first look-up only
    (strict trust without proxies looks up little), in one pass however many lines came.
    """
    grouped: dict[str, str] | None = None

    def header(name: str) -> str | None:
        nonlocal grouped
        if grouped is None:
            lists: dict[str, list[str]] = {}
            for key, value in headers:
                lists.setdefault(_text(key).lower(), []).append(_text(value))
            grouped = {key: ",".join(values) for key, values in lists.items()}
        return grouped.get(name)

    return header


@dataclass(frozen=True, slots=True)
class _HeaderPlan:
    """What a request's header names alone say about its task and forwarding headers."""

    task: tuple[int, ...]
    """Positions in ``scope["headers"]`` of every task header, every spelling and copy."""
    stripped: tuple[str, ...]
    """Their names, lower case, ``_`` spelled ``-``, each once (``taskhandler.stripped``)."""
    kept: tuple[int, ...]
    """Positions of the headers an untrusted request keeps."""
    fields: FieldPlan | None
    """How to parse them; ``None`` when a name comes twice or a field in both spellings."""
    odd: tuple[int, ...] = ()
    """Positions of ``_`` spellings of forwarding headers: removed from every request."""
    odd_stripped: tuple[str, ...] = ()
    """Their names, lower case, as sent."""
    kept_trusted: tuple[int, ...] = ()
    """Positions of the headers a trusted request keeps (all but ``odd``)."""


_NO_TASK_HEADERS = _HeaderPlan((), (), (), None)
# A server sends the same header names request after request: plans are kept by the exact
# names, up to a bound (a client inventing names each time only ever misses).
_PLANS: dict[tuple[bytes, ...], _HeaderPlan] = {}
_PLANS_MAX = 512
_PLAN_NAMES_MAX = 4096  # longer names all told (many or long headers) are not kept


def _plan(headers: Sequence[tuple[bytes, bytes]]) -> _HeaderPlan:
    names = tuple([pair[0] for pair in headers])
    try:
        plan = _PLANS.get(names)
    except TypeError:  # a name that is not bytes (a bytearray): judged on its own, not kept
        return _make_plan(names)
    if plan is None:
        plan = _make_plan(names)
        if sum(map(len, names)) <= _PLAN_NAMES_MAX:
            if len(_PLANS) >= _PLANS_MAX:
                _PLANS.clear()
            _PLANS[names] = plan
    return plan


def _make_plan(names: tuple[bytes, ...]) -> _HeaderPlan:
    lowered = [_text(name).lower() for name in names]
    normalized = [name.replace("_", "-") for name in lowered]
    task = tuple(i for i, name in enumerate(normalized) if name.startswith(TASK_HEADER_PREFIXES))
    odd = tuple(
        i for i, name in enumerate(normalized) if name in FORWARDING_HEADERS and name != lowered[i]
    )
    if not task and not odd:
        return _NO_TASK_HEADERS
    spelled = [normalized[i] for i in task]
    stripped = tuple(dict.fromkeys(spelled))
    fields = FieldPlan.of(spelled) if len(stripped) == len(spelled) else None
    is_task, is_odd = set(task), set(odd)
    return _HeaderPlan(
        task,
        stripped,
        tuple(i for i in range(len(names)) if i not in is_task and i not in is_odd),
        fields,
        odd,
        tuple(dict.fromkeys(lowered[i] for i in odd)),
        tuple(i for i in range(len(names)) if i not in is_odd),
    )


def _task_fields(
    headers: Sequence[tuple[bytes, bytes]], plan: _HeaderPlan
) -> dict[str, Any] | None:
    """The request's task header values parsed into ``TaskContext`` fields (see ``decide``)."""
    if plan.fields is not None:
        return plan.fields.parse(
            {name: _text(headers[i][1]) for name, i in zip(plan.stripped, plan.task, strict=True)}
        )
    # Copies of one name (and its "_" spelling) are joined and refused, as in WSGI.
    return parse_task_headers(
        collect((_text(headers[i][0]), _text(headers[i][1])) for i in plan.task)
    )


def _host(scope: Scope) -> str:
    """The ``Host`` the client asked for, else the server's name and port."""
    for name, value in scope["headers"]:
        if name.lower() == b"host" and value:
            return _text(value)
    server = scope.get("server")
    if not server:
        return "localhost"
    name, port = server[0], server[1]
    if port is None:
        return str(name)
    default = 443 if scope.get("scheme") in ("https", "wss") else 80
    return str(name) if int(port) == default else f"{name}:{port}"


def request_path(scope: Scope) -> str | Refusal:
    """The full request path of an ASGI request as text, or a 400 :class:`Refusal`.

    ``scope["path"]`` already holds the percent-decoded path the app routes, including
    ``root_path`` (uvicorn, Starlette); for a server that keeps ``root_path`` apart it is
    prepended. Servers decode undecodable bytes to U+FFFD, which would let two different
    URLs look alike, so when one appears ``raw_path`` is decoded strictly: not UTF-8 -> 400,
    the same answer the WSGI middleware gives.

    Example::

        >>> request_path({"path": "/tasks/t\\u00e2che", "root_path": ""})
        '/tasks/tâche'
    """
    path = scope.get("path")
    if not isinstance(path, str):
        return Refusal(400, "request path is missing")
    root = scope.get("root_path") or ""
    if root and not path.startswith(root):
        path = root + path
    if "\ufffd" in path:
        raw = scope.get("raw_path")
        if isinstance(raw, bytes):
            try:
                unquote_to_bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                return Refusal(400, "request path is not valid UTF-8")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return Refusal(400, "request path is not valid UTF-8")
    return path


def _app_path(scope: Scope) -> str:
    """The path below ``root_path`` (``PATH_INFO`` in WSGI terms)."""
    path: str = scope.get("path", "")
    root = scope.get("root_path") or ""
    return path[len(root) :] if root and path.startswith(root) else path


def request_info(scope: Scope) -> RequestInfo:
    """The protocol-neutral view of an ASGI request (for authenticators)."""
    grouped: dict[str, list[str]] = {}
    for name, value in scope.get("headers", ()):
        grouped.setdefault(_norm(name), []).append(_text(value))
    headers = {key: ", ".join(values) for key, values in grouped.items()}
    path = request_path(scope)
    client = scope.get("client")
    return RequestInfo(
        method=scope.get("method", "GET"),
        scheme=scope.get("scheme", "http"),
        host=_host(scope),
        path=path if isinstance(path, str) else "/",
        query_string=_text(scope.get("query_string", b"")),
        headers=headers,
        cookies=dict(parse_cookie(headers.get("cookie", ""))),
        client=client[0] if client else None,
    )


def _locate(scope: Scope, own_root: str) -> Location:
    """Where the request goes, with the mount prefixes the app may strip before routing."""
    root = scope.get("root_path") or ""
    prefixes = tuple(p for p in (root, own_root) if isinstance(p, str) and p)
    return Location(
        request_path(scope),
        scope.get("scheme", "http"),
        _host(scope),
        _text(scope.get("query_string", b"")),
        prefixes,
    )


async def _respond(send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_all(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or ``None`` when it is larger than ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message.get("type")
        if kind == "http.disconnect":
            raise ConnectionError("the client disconnected while sending the body")
        if kind != "http.request":
            continue
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` back once, then defers to the server's."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


class TaskMiddleware(MiddlewareBase):
    """Trust, strip, protect, describe, time and answer task requests for an ASGI app.

    The same keywords and the same decisions as :class:`taskhandler.wsgi.TaskMiddleware`.

    Args:
        app: the ASGI application to wrap (Starlette, FastAPI, any ASGI 3 app).
        trust: who may send task headers (default: the queue's address 0.1.0.2 only).
        config: access rules and task deadline, e.g. ``load_app_yaml("app.yaml")``.
        authenticator: ``RequestInfo -> User | None``; admins may send task headers and
            pass ``login: admin``.
        deadline: task deadline in seconds (overrides the config's; default 600).
        grace: how long before the deadline ``DeadlineExceededError`` is raised (default 10 s).

    Per request it puts ``scope["taskhandler.state"]`` (a ``RequestState``) and, for a
    stripped request, ``scope["taskhandler.stripped"]`` (the lower-case, dash-spelled names
    removed).

    Example::

        app = Starlette(routes=[Route("/tasks/count", update_counter, methods=["POST"])])
        app = TaskMiddleware(app, config=load_app_yaml("app.yaml"))
    """

    app: ASGIApplication

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan, websocket: not ours to judge
            return
        outer = scope.get(STATE_KEY)
        if isinstance(outer, RequestState):
            await self._nested(outer, scope, receive, send)
            return
        settings = self.settings
        state = RequestState(settings, request_info, scope)
        scope[STATE_KEY] = state
        headers = scope["headers"]
        if not isinstance(headers, list | tuple):  # ASGI promises an iterable; plans index it
            headers = scope["headers"] = list(headers)
        plan = _plan(headers)
        if plan.odd:
            # "_" spellings of forwarding headers are never read, whoever sent them.
            scope["headers"] = [headers[i] for i in plan.kept_trusted]
            scope[STRIPPED_KEY] = list(plan.odd_stripped)
            state.stripped = plan.odd_stripped
        if not plan.task and self._plain_fast:
            await self.app(scope, receive, send)  # the common case: nothing to decide
            return

        if settings.serves_pages and _app_path(scope).startswith(AUTH_PAGE_PREFIX):
            go_on = await self._auth_page(scope, receive, send, state)
            if go_on is None:
                return
            receive = go_on

        refusal, strip = decide(
            state,
            peer=scope["client"][0] if scope.get("client") else None,
            task_fields=(lambda: _task_fields(headers, plan)) if plan.task else None,
            header=_header_lookup(scope["headers"]),
            locate=lambda: _locate(scope, self._own_root),
        )
        if strip:
            # A new list: the caller's is left as it was.
            scope["headers"] = [headers[i] for i in plan.kept]
            scope[STRIPPED_KEY] = [*plan.odd_stripped, *plan.stripped]
            state.stripped = (*plan.odd_stripped, *plan.stripped)
        if refusal is not None:
            extra, body = refusal_body(refusal)
            await _respond(send, refusal.status, extra, body)
            return
        if state.context is None:
            await self.app(scope, receive, send)
            return
        await run_task(self.app, scope, receive, send, state.context, settings)

    @property
    def _own_root(self) -> str:
        """A ``root_path`` the wrapped app strips by itself (``FastAPI(root_path=...)``)."""
        root = getattr(self.app, "root_path", "")
        return root if isinstance(root, str) else ""

    async def _nested(
        self, outer: RequestState, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Inside another ``TaskMiddleware``: its trust decision stands, these rules apply too.

        One decision per request about trust and stripping, the outermost one; but this
        layer's access rules, authenticator and sign-in pages still guard what is behind it.
        """
        settings = self.settings
        if not settings.rules and not settings.serves_pages:
            await self.app(scope, receive, send)
            return
        state = outer.inner(settings)
        if settings.serves_pages and _app_path(scope).startswith(AUTH_PAGE_PREFIX):
            go_on = await self._auth_page(scope, receive, send, state)
            if go_on is None:
                return
            receive = go_on
        if settings.rules:
            refusal, _ = check_rules(
                state,
                scope["client"][0] if scope.get("client") else None,
                _header_lookup(scope["headers"]),
                lambda: _locate(scope, self._own_root),
            )
            if refusal is not None:
                extra, body = refusal_body(refusal)
                await _respond(send, refusal.status, extra, body)
                return
        await self.app(scope, receive, send)

    async def _auth_page(
        self, scope: Scope, receive: Receive, send: Send, state: RequestState
    ) -> Receive | None:
        """Serve the authenticator's sign-in/out page; the ``receive`` to go on with, or None."""
        serve = getattr(self.settings.authenticator, "serve", None)
        if serve is None:
            return receive
        body = await _read_all(receive, _MAX_PAGE_BODY)
        if body is None:
            extra, text = refusal_body(Refusal(400, "bad or too large request body"))
            await _respond(send, 400, extra, text)
            return None
        page = serve(state.request_info(), body)
        if page is None:
            return _replay(body, receive)
        await _respond(send, page.status, list(page.headers), page.body)
        return None


async def run_task(
    app: ASGIApplication,
    scope: Scope,
    receive: Receive,
    send: Send,
    ctx: TaskContext,
    settings: Settings,
) -> None:
    """Run ``app`` as a task request: current task, deadline armed, outcome mapped, one log record.

    The response is buffered until the app returns (the queue reads only the status), so
    that the deadline covers all of it and a failure at any point still becomes a clean 500.
    """
    start: list[Message] = []
    rest: list[Message] = []

    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            if start:
                raise RuntimeError("http.response.start sent twice")
            start.append(message)
        elif not start:
            raise RuntimeError(f"{message['type']} sent before http.response.start")
        else:
            rest.append(message)

    extensions = scope.get("extensions")
    if extensions and any(name in extensions for name in _SEND_EXTENSIONS):
        scope["extensions"] = {k: v for k, v in extensions.items() if k not in _SEND_EXTENSIONS}

    armed = arm_async(settings.deadline, settings.grace)
    ctx._attach_deadline(armed)
    token = _current_task.set(ctx)
    result: Result | None = None
    try:
        # DeadlineExceededError is raised at the await where the app is suspended.
        await armed.run(app(scope, receive, capture))
        if not start:
            raise RuntimeError("the application returned without sending a response")
    except _PASS_THROUGH:
        raise
    except BaseException as exc:
        result = failure(ctx, exc)
    finally:
        _current_task.reset(token)

    def path() -> str:
        found = request_path(scope)
        return found if isinstance(found, str) else str(scope.get("path", ""))

    result = conclude(ctx, result, armed, path)
    if result is not None:
        await _plain(send, result)
        return

    message = start[0]
    status = int(message.get("status", 500))
    headers = list(message.get("headers", ()))
    declared = None
    for name, value in headers:
        if name.lower() == _OUTCOME_NAME:
            declared = _text(value)
            break
    outcome = app_outcome(ctx, status, declared, armed, path)
    if declared is None:
        headers.append((_OUTCOME_NAME, outcome.encode("latin-1")))
    await send({**message, "headers": headers})
    if len(rest) == 1 and rest[0]["type"] == "http.response.body":
        await send({**rest[0], "more_body": False})  # the usual: the whole body at once
        return
    body = [m for m in rest if m["type"] == "http.response.body"]
    await send(
        {
            "type": "http.response.body",
            "body": b"".join(m.get("body", b"") for m in body),
            "more_body": any(m["type"] != "http.response.body" for m in rest),
        }
    )
    for other in rest:
        if other["type"] != "http.response.body":
            await send(other)  # trailers and the like, after the body


async def _plain(send: Send, result: Result) -> None:
    headers, body = failure_response(result)
    await _respond(send, result.status, headers, body)


# -- @task_handler on async def functions --------------------------------------------------


async def handle_asgi(handler: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve a :class:`taskhandler.handler.TaskHandler` as an ASGI application.

    Behind a ``TaskMiddleware`` it uses the middleware's decision; on its own it applies
    the handler's ``trust=``/``config=`` options through a middleware of its own.
    ``lifespan`` is answered (nothing to start); a websocket is closed.
    """
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
        return
    if kind != "http":
        await send({"type": "websocket.close", "code": 1008})
        return
    if isinstance(scope.get(STATE_KEY), RequestState):
        await _gate(handler, scope, receive, send)
        return
    standalone = handler.__dict__.get("_asgi_standalone")
    if standalone is None:
        standalone = TaskMiddleware(functools.partial(_gate, handler), **handler._options)
        handler.__dict__["_asgi_standalone"] = standalone
    await standalone(scope, receive, send)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _gate(handler: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse a request that is not a trusted task; give an admin a synthetic context."""
    state: RequestState = scope[STATE_KEY]
    if state.context is not None:
        await _run(handler, state.context, scope, receive, send)
        return
    if state.trusted_by == "development" or state.is_admin():
        ctx = synthetic_context(
            "development" if state.trusted_by == "development" else "admin",
            f"manual-{uuid.uuid4().hex}",
        )
        state.context = ctx
        await run_task(
            functools.partial(_run, handler, ctx), scope, receive, send, ctx, state.settings
        )
        return
    log.warning(
        "task handler %s refused a request that is not a task",
        getattr(handler.func, "__qualname__", handler.func),
    )
    await _respond(
        send,
        403,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(_NOT_A_TASK))),
            (OUTCOME_HEADER, "rejected"),
        ],
        _NOT_A_TASK,
    )


async def _run(handler: Any, ctx: TaskContext, scope: Scope, receive: Receive, send: Send) -> None:
    from .handler import PayloadError, finish, parse_payload, render

    try:
        args: tuple[Any, ...] = (ctx,)
        if handler.payload is not None:
            header = _header_lookup(scope["headers"])
            try:
                length = int(header("content-length") or 0)
            except ValueError:
                raise PayloadError("bad Content-Length") from None
            body = None if length > MAX_BODY else await _read_all(receive, MAX_BODY)
            if body is None:
                raise PayloadError(f"body larger than {MAX_BODY} bytes")
            args = (
                ctx,
                parse_payload(
                    handler.payload,
                    scope.get("method", "GET"),
                    header("content-type") or "",
                    body,
                    _text(scope.get("query_string", b"")),
                ),
            )
        if handler.is_async:
            value = await handler.func(*args)
        else:
            # A plain function would block the event loop: it runs in a worker thread,
            # with this context (current_task()) copied into it.
            value = await asyncio.to_thread(_in_thread, handler.func, args, ctx)
        rendered = render(value)
    except PayloadError as exc:
        await _plain(send, finish(handler, ctx, PermanentTaskFailure(str(exc))))
        return
    except _PASS_THROUGH:
        raise
    except BaseException as exc:
        if isinstance(exc, Exception) and not isinstance(exc, RetryTask | PermanentTaskFailure):
            log.error("task %s/%s raised", ctx.queue_name, ctx.task_name, exc_info=exc)
        await _plain(send, finish(handler, ctx, exc))
        return
    if not callable(rendered):
        status, headers, body = rendered
        await _respond(
            send,
            status,
            [
                *headers,
                ("Content-Length", str(len(body))),
                (OUTCOME_HEADER, outcome_for_status(status)),
            ],
            body,
        )
        return
    response: Any = rendered
    if inspect.iscoroutinefunction(type(response).__call__):
        await response(scope, receive, _with_outcome(send))  # a Starlette/FastAPI response
        return
    await _send_wsgi_response(response, scope, send)


def _in_thread(func: Callable[..., Any], args: tuple[Any, ...], ctx: TaskContext) -> Any:
    """Call a plain handler function in a worker thread, under the request's deadline.

    The request's asyncio deadline raises at the ``await`` of the thread, which cannot stop
    the thread itself; a thread deadline with the same end lets the function stop too.
    """
    outer = ctx.__pydantic_private__.get("_deadline")  # type: ignore[union-attr]
    if isinstance(outer, AsyncArmed):
        hard = outer.hard_at - time.monotonic()
        grace = outer.hard_at - outer.soft_at
        if hard > 0 and 0 <= grace < hard:
            inner = arm(hard, grace)
            try:
                return func(*args)
            finally:
                inner.disarm()
    return func(*args)


def _with_outcome(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(name.lower() == _OUTCOME_NAME for name, _ in headers):
                outcome = outcome_for_status(int(message["status"]))
                headers.append((_OUTCOME_NAME, outcome.encode("latin-1")))
                message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def _send_wsgi_response(response: Any, scope: Scope, send: Send) -> None:
    """Send a werkzeug/webob response object (a WSGI app) an async handler returned."""
    captured: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured[:] = [status, headers]
        return lambda data: None

    environ = {
        "REQUEST_METHOD": scope.get("method", "GET"),
        "SCRIPT_NAME": "",
        "PATH_INFO": _app_path(scope),
        "QUERY_STRING": _text(scope.get("query_string", b"")),
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": scope.get("scheme", "http"),
    }
    chunks = response(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    status = int(str(captured[0]).split(" ", 1)[0])
    headers = [(n, v) for n, v in captured[1] if n.lower() != OUTCOME_HEADER_LOWER]
    outcome = next(
        (v for n, v in captured[1] if n.lower() == OUTCOME_HEADER_LOWER),
        outcome_for_status(status),
    )
    await _respond(send, status, [*headers, (OUTCOME_HEADER, outcome)], body)


def endpoint(handler: Any) -> Callable[..., Any]:
    """Adapt a task handler to a framework route that calls ``endpoint(request)``.

    Starlette and FastAPI take a ``@task_handler`` object as an ASGI app directly
    (``Route("/tasks/x", handler)``, ``app.add_route("/tasks/x", handler, methods=["POST"])``).
    FastAPI's own decorators (``@app.post``, ``add_api_route``) instead inspect the function's
    parameters and call it with them; for those, register ``endpoint(handler)``, which takes
    only the ``Request`` and answers with the handler's response (so FastAPI reads nothing
    of the body itself and the handler's ``payload=`` model does the validation).

    Example::

        api.add_api_route("/tasks/count", endpoint(update_counter), methods=["POST"])
    """
    from starlette.requests import Request
    from starlette.responses import Response

    class HandlerResponse(Response):
        """A response whose sending runs the task handler over the request's own channel."""

        def __init__(self) -> None:
            super().__init__()

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await handle_asgi(handler, scope, receive, send)

    async def run(request: Request) -> Response:
        return HandlerResponse()

    # Real classes, not the strings of postponed annotations: frameworks resolve these
    # against the module globals, where the lazily imported names do not live.
    run.__annotations__ = {"request": Request, "return": Response}
    run.__name__ = run.__qualname__ = getattr(handler, "__name__", "task_endpoint")
    run.__doc__ = getattr(handler, "__doc__", None)
    return run
