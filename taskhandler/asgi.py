"""``TaskMiddleware`` for ASGI: the request path (SPEC §1) on scope, receive and send.

The mirror of ``wsgi.py``, function for function; the decision itself is made by
:func:`taskhandler._decision.decide`, so both middlewares decide alike by construction.

ASGI specifics:

- Header names arrive as bytes, possibly several entries per name, and ``_`` spellings
  (``x_appengine_queuename``) arrive as names of their own: every copy of every spelling
  of a task header is removed from an untrusted request, so nothing further in (an
  ASGI-to-WSGI bridge folding ``_`` into ``-``, say) can bring one back, and forwarding
  headers are read only in their exact dash spelling. The caller's header list is never
  changed in place: the scope gets a new list.
- ``lifespan`` and ``websocket`` scopes pass through untouched.
- The path the access rules see is ``scope["path"]``, the full request path (it includes
  ``root_path``, as uvicorn and Starlette put it; ``root_path`` is prepended for a server
  that keeps the two apart). The rules also see it without ``root_path`` and without a
  ``root_path`` the wrapped app strips itself (``FastAPI(root_path=...)``). A path whose
  raw bytes are not UTF-8 is refused with 400, as under WSGI.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple
from urllib.parse import unquote_to_bytes

from ._async_deadline import AsyncArmed, arm_async
from ._decision import (
    AUTH_PAGE_PREFIX,
    MiddlewareBase,
    RequestState,
    Settings,
    decide_layer,
    refusal_response,
)
from ._request import RequestView
from ._response import OUTCOME_HEADER, Response, plain_response
from ._trace import Trace, attempt, attempt_watched, publish, trace_from_headers
from ._types import ASGIApplication, Message, Receive, Scope, Send
from ._watchdog import arm
from .auth import cookies_of
from .context import TaskContext
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
    Result,
    failed_or_overran,
    failure_response,
    failure_result,
    outcome_for_status,
    outcome_of_answer,
)
from .trust import FORWARDING_HEADERS, RequestInfo
from .wsgi import call_wsgi

__all__ = [
    "TaskMiddleware",
    "endpoint",
    "request_info",
    "request_view",
    "run_task",
    "serve_handler",
]


STATE_KEY = "taskhandler.state"
STRIPPED_KEY = "taskhandler.stripped"
MAX_PAGE_BODY = 64 * 1024
_OUTCOME_NAME = OUTCOME_HEADER.lower().encode("latin-1")
# Extensions that let an app hand the body to the server directly: a buffered task
# response cannot pass them on, so task requests do not advertise them.
_SEND_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopysend")
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)


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
        on_error: optional ``hook(task, exc, final)`` told of every exception a task request
            raised (an error reporter: Sentry, Error Reporting); a ``@task_handler``'s own
            ``on_error=`` wins. Without one, the final attempt's traceback is logged.

    Per request it puts ``scope["taskhandler.state"]`` (a ``RequestState``) and, when it
    removed headers, ``scope["taskhandler.stripped"]`` (their lower-case names).

    Example::

        app = Starlette(routes=[Route("/tasks/count", update_counter, methods=["POST"])])
        app = TaskMiddleware(app, config=load_app_yaml("app.yaml"))
    """

    app: ASGIApplication

    def _adopt(self, app: Any, settings: Settings) -> None:
        super()._adopt(app, settings)
        # Where a root_path the app strips itself is found: the chain of apps is fixed.
        self._root_path_app = _root_path_app(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            start = getattr(self.settings.trust.oidc, "start", None)
            if scope["type"] == "lifespan" and callable(start):
                start()  # fetch the OIDC certificates before the first task arrives
            await self.app(scope, receive, send)  # lifespan, websocket: not ours to judge
            return
        settings = self.settings
        outer = scope.get(STATE_KEY)
        names = _names(scope)
        if not self.decides_plain_requests and (outer is not None or not names.marked):
            # No task header, no rule, no page: nothing to decide.
            if outer is None:
                scope[STATE_KEY] = self.undecided(request_info, scope)
                if not _TRACE_NAMES.isdisjoint(names.present):
                    await _traced(self.app, scope, receive, send)
                    return
            await self.app(scope, receive, send)
            return

        user = self.user_of(request_info, scope)
        view = request_view(scope, self._root_path_app, names)

        # The authenticator's own pages (sign-in, sign-out) answer before anything else.
        if settings.serves_pages and _app_path(scope).startswith(AUTH_PAGE_PREFIX):
            page, receive = await serve_page(settings, scope, receive)
            if page is not None:
                await respond(send, page)
                return

        # Steps 1-4: who is asking, which headers go, the access rules, the task. Inside
        # another TaskMiddleware, trust and stripping were decided there already.
        nested = outer if isinstance(outer, RequestState) else None
        decision, user = decide_layer(view, settings, user, nested)
        stripped = (
            nested.stripped if nested is not None else remove_headers(scope, names, decision.strip)
        )
        scope[STATE_KEY] = RequestState(settings, decision, user, stripped)
        if decision.refusal is not None:
            await respond(send, refusal_response(decision.refusal))
            return

        # Steps 5-6: a task runs under its deadline, and its outcome becomes the status.
        if decision.context is None or outer is not None:
            if outer is None and not _TRACE_NAMES.isdisjoint(names.present):
                await _traced(self.app, scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        await run_task(self.app, scope, receive, send, decision.context, settings)


_TRACE_NAMES = frozenset(("traceparent", "x-cloud-trace-context"))


# -- scope -> request view ----------------------------------------------------------------


class _Names(NamedTuple):
    """A request's header names in the order sent, sorted once per list of names."""

    task: tuple[tuple[int, str], ...]
    """``(position, header name)`` of every task header in any spelling, the name lower case
    with ``_`` spelled ``-``."""
    odd: tuple[tuple[int, str], ...]
    """``(position, header name)`` of every ``_`` spelling of a forwarding header."""
    marked: bool
    """Whether the request has a header of either kind."""
    present: frozenset[str]
    """Every name lower case as sent: a header not among them is not looked for."""
    odd_names: tuple[str, ...]
    """The names removed from every request (the odd spellings)."""
    untrusted_names: tuple[str, ...]
    """The names removed from an untrusted request (the odd spellings and task headers)."""
    kept: tuple[int, ...]
    """The positions of the headers every request keeps."""
    kept_if_untrusted: tuple[int, ...]
    """The positions of the headers an untrusted request keeps."""


# The cache holds at most 512 lists of names of at most this many bytes in all.
_MAX_CACHED_NAMES = 4096


class _NotKept(Exception):
    """Names too long in all for the cache (an exception: lru_cache never keeps one)."""


@functools.lru_cache(maxsize=512)
def _classify_names(names: tuple[bytes, ...]) -> _Names:
    """Sort a request's header names; a server sends the same names request after request.

    Measured only when the cache does not know them: too long in all, they are not kept.
    """
    if sum(map(len, names)) > _MAX_CACHED_NAMES:
        raise _NotKept
    return _sort_names(names)


def _sort_names(names: tuple[bytes, ...]) -> _Names:
    """The names of note among a request's (see :class:`_Names`)."""
    task: list[tuple[int, str]] = []
    odd: list[tuple[int, str]] = []
    present: set[str] = set()
    for position, name in enumerate(names):
        lowered = _text(name).lower()
        present.add(lowered)
        folded = lowered.replace("_", "-")
        if folded.startswith(TASK_HEADER_PREFIXES):
            task.append((position, folded))
        elif folded in FORWARDING_HEADERS and folded != lowered:
            odd.append((position, folded))  # x_forwarded_for: never read, always removed
    odd_at = {position for position, _ in odd}
    untrusted_at = odd_at | {position for position, _ in task}
    return _Names(
        tuple(task),
        tuple(odd),
        bool(task or odd),
        frozenset(present),
        tuple(dict.fromkeys(name for _, name in odd)),
        tuple(dict.fromkeys(name for _, name in sorted(odd + task))),
        tuple(p for p in range(len(names)) if p not in odd_at),
        tuple(p for p in range(len(names)) if p not in untrusted_at),
    )


def _names(scope: Scope) -> _Names:
    headers = scope["headers"]
    if not isinstance(headers, list | tuple):  # ASGI promises an iterable only
        headers = scope["headers"] = list(headers)
    names = tuple([name for name, _ in headers])
    try:
        return _classify_names(names)
    except (_NotKept, TypeError, ValueError):  # like no other, a bytearray or memoryview name
        return _sort_names(names)


def request_view(scope: Scope, app: Any = None, names: _Names | None = None) -> RequestView:
    """The request as the steps of the request path see it.

    ``app`` is the wrapped app: a ``root_path`` of its own (``FastAPI(root_path=...)``)
    is a mount prefix it strips before routing.
    """
    if names is None:
        names = _names(scope)
    path, path_error = _text_path(scope)
    root = scope.get("root_path") or ""
    below = _app_path(scope)
    if below and not below.startswith("/"):
        # A root_path cut mid-segment (/xadmin -> admin): no rule would see the routed path.
        path_error = "request path below the mount prefix does not start with '/'"
    own_root = _own_root_path(app)
    prefixes = (
        tuple(p for p in (root, own_root) if isinstance(p, str) and p) if root or own_root else ()
    )
    headers = scope["headers"]
    client = scope.get("client")
    return RequestView(  # by position, in the order of the fields: half the cost
        client[0] if client else None,  # peer
        scope.get("method", "GET"),  # method
        scope.get("scheme", "http"),  # scheme
        _host(scope),  # host
        path,
        path_error,
        prefixes,
        _text(scope.get("query_string", b"")),  # query_string
        _Headers(headers, names.present),  # headers
        tuple([(name, _text(headers[at][1])) for at, name in names.task]),  # task_headers
    )


def _own_root_path(app: Any) -> str:
    """A ``root_path`` the wrapped app strips by itself (``FastAPI(root_path=...)``).

    Looked for down the chain of ``.app`` attributes that ASGI middleware keep, so another
    middleware between this one and FastAPI does not hide it. Read on every request (an
    app may set it after it was wrapped); the middleware starts the walk where
    :func:`_root_path_app` found the first app that has one.
    """
    for _ in range(_MAX_UNWRAP):
        if app is None:
            return ""
        root = getattr(app, "root_path", None)
        if isinstance(root, str) and root:
            return root
        app = getattr(app, "app", None)
    return ""


def _root_path_app(app: Any) -> Any:
    """The first app down the chain of ``.app`` attributes with a ``root_path``, or ``None``."""
    for _ in range(_MAX_UNWRAP):
        if app is None or isinstance(getattr(app, "root_path", None), str):
            return app
        app = getattr(app, "app", None)
    return None


_MAX_UNWRAP = 16


def request_info(scope: Scope) -> RequestInfo:
    """The protocol-neutral view of an ASGI request (for authenticators)."""
    grouped: dict[str, list[str]] = {}
    for name, value in scope.get("headers", ()):
        grouped.setdefault(_text(name).lower().replace("_", "-"), []).append(_text(value))
    headers = {key: ", ".join(values) for key, values in grouped.items()}
    path, _ = _text_path(scope)
    client = scope.get("client")
    return RequestInfo(
        method=scope.get("method", "GET"),
        scheme=scope.get("scheme", "http"),
        host=_host(scope),
        path=path or "/",
        query_string=_text(scope.get("query_string", b"")),
        headers=headers,
        cookies=cookies_of(headers.get("cookie", "")),
        client=client[0] if client else None,
    )


class _Headers(Mapping[str, str]):
    """The scope's headers by lower-case name, exact spelling, copies joined with ``,``.

    Grouped on first use, in one pass however many lines came. Given the request's names
    (``present``), a name it does not carry is answered without grouping.
    """

    __slots__ = ("_grouped", "_headers", "_present")

    def __init__(self, headers: Any, present: frozenset[str] | None = None) -> None:
        self._headers = headers
        self._present = present
        self._grouped: dict[str, str] | None = None

    def _group(self) -> dict[str, str]:
        if self._grouped is None:
            lists: dict[str, list[str]] = {}
            for name, value in self._headers:
                lists.setdefault(_text(name).lower(), []).append(_text(value))
            self._grouped = {name: ",".join(values) for name, values in lists.items()}
        return self._grouped

    def __getitem__(self, name: str) -> str:
        if self._present is not None and name not in self._present:
            raise KeyError(name)
        return self._group()[name]

    def get(self, name: str, default: Any = None) -> Any:  # without raising KeyError
        if self._present is not None and name not in self._present:
            return default
        return self._group().get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._group())

    def __len__(self) -> int:
        return len(self._group())


def _text_path(scope: Scope) -> tuple[str, str | None]:
    """The full request path as text, or the reason it cannot be used.

    ``scope["path"]`` already holds the percent-decoded path the app routes, including
    ``root_path`` (uvicorn, Starlette); for a server that keeps ``root_path`` apart it is
    prepended. Servers decode undecodable bytes to U+FFFD, which would let two different
    URLs look alike, so when one appears ``raw_path`` is decoded strictly.
    """
    path = scope.get("path")
    if not isinstance(path, str):
        return "", "request path is missing"
    root = scope.get("root_path") or ""
    if root and not path.startswith(root):
        path = root + path
    if path.isascii():  # the usual path: nothing to check
        return path, None
    if "\ufffd" in path:
        raw = scope.get("raw_path")
        if isinstance(raw, bytes):
            try:
                unquote_to_bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                return "", "request path is not valid UTF-8"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "", "request path is not valid UTF-8"
    return path, None


def _app_path(scope: Scope) -> str:
    """The path below ``root_path`` (``PATH_INFO`` in WSGI terms)."""
    path: str = scope.get("path", "")
    root = scope.get("root_path") or ""
    return path[len(root) :] if root and path.startswith(root) else path


def _host(scope: Scope) -> str:
    """The ``Host`` the client asked for, else the server's name and port."""
    for name, value in scope["headers"]:
        if bytes(name).lower() == b"host" and value:  # bytes(): the same object for bytes
            return _text(value)
    server = scope.get("server")
    if not server:
        return "localhost"
    name, port = server[0], server[1]
    if port is None:
        return str(name)
    default = 443 if scope.get("scheme") in ("https", "wss") else 80
    return str(name) if int(port) == default else f"{name}:{port}"


def _text(value: bytes) -> str:
    # bytes() only for what is not bytes already (a bytearray, a memoryview).
    return (value if type(value) is bytes else bytes(value)).decode("latin-1")


# -- decision -> scope and response -------------------------------------------------------


def remove_headers(scope: Scope, names: _Names, strip: bool) -> tuple[str, ...]:
    """Step 2 applied: odd forwarding spellings go always, task headers when ``strip``.

    The scope gets a new header list (the caller's is left as it was). Returns the removed
    names, also kept under ``scope["taskhandler.stripped"]``.
    """
    if strip:
        removed, kept = names.untrusted_names, names.kept_if_untrusted
    else:
        removed, kept = names.odd_names, names.kept
    if not removed:
        return ()
    headers = scope["headers"]
    scope["headers"] = [headers[at] for at in kept]
    scope[STRIPPED_KEY] = list(removed)
    return removed


async def respond(send: Send, response: Response) -> None:
    """Answer with a response the middleware made itself."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [
                (n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in response.headers
            ],
        }
    )
    await send({"type": "http.response.body", "body": response.body})


async def serve_page(
    settings: Settings, scope: Scope, receive: Receive
) -> tuple[Response | None, Receive]:
    """The authenticator's page for this request (or ``None``), and the ``receive`` to go on."""
    body = await _read_all(receive, MAX_PAGE_BODY)
    if body is None:
        return plain_response(400, "bad or too large request body", no_store=True), receive
    page = settings.authenticator.serve(request_info(scope), body)  # type: ignore[union-attr]
    if page is None:
        return None, _replay(body, receive)  # the app still reads the body
    return Response(page.status, tuple(page.headers), page.body), receive


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


# -- steps 5 and 6: the task runs --------------------------------------------------------


async def run_task(
    app: ASGIApplication,
    scope: Scope,
    receive: Receive,
    send: Send,
    ctx: TaskContext,
    settings: Settings,
) -> None:
    """Run ``app`` as a task request: current task, deadline armed, outcome mapped, one log record.

    The request's trace (``traceparent``, ``X-Cloud-Trace-Context``) is current meanwhile.
    """
    trace = _scope_trace(scope)
    if trace is None and not attempt_watched(settings.on_error):
        await _run_task(app, scope, receive, send, ctx, settings)  # nothing to publish
        return
    with attempt(ctx, trace, settings.on_error):
        await _run_task(app, scope, receive, send, ctx, settings)


def _scope_trace(scope: Scope) -> Trace | None:
    """The trace the request's headers name, or ``None``."""
    if _TRACE_NAMES.isdisjoint(_names(scope).present):
        return None  # the usual case, told by the names sorted once per set of names
    traceparent = cloud = None
    for name, value in scope["headers"]:
        lowered = bytes(name).lower()
        if lowered == b"traceparent":
            traceparent = _text(value)
        elif lowered == b"x-cloud-trace-context":
            cloud = _text(value)
    return trace_from_headers(traceparent, cloud)


async def _traced(app: ASGIApplication, scope: Scope, receive: Receive, send: Send) -> None:
    """Call ``app`` with the request's trace current (tasks it adds carry it on)."""
    with publish(_scope_trace(scope)):
        await app(scope, receive, send)


async def _run_task(
    app: ASGIApplication,
    scope: Scope,
    receive: Receive,
    send: Send,
    ctx: TaskContext,
    settings: Settings,
) -> None:
    """:func:`run_task` under the request's trace.

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
        result = failure_result(ctx, exc)
    finally:
        _current_task.reset(token)

    path = functools.partial(_log_path, scope)
    result = failed_or_overran(ctx, result, armed, path)
    if result is not None:
        await respond(send, failure_response(result))
        return

    message = start[0]
    status = int(message.get("status", 500))
    headers = list(message.get("headers", ()))
    declared = _declared_outcome(headers)
    outcome = outcome_of_answer(ctx, status, declared, armed, path)
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


def _declared_outcome(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The app's own ``X-Task-Outcome``, if it set one."""
    for name, value in headers:
        if name.lower() == _OUTCOME_NAME:
            return _text(value)
    return None


def _log_path(scope: Scope) -> str:
    """The request path for the log record (worked out only if a record is written)."""
    path, _ = _text_path(scope)
    return path or str(scope.get("path", ""))


# -- @task_handler on an ASGI request -----------------------------------------------------


async def serve_handler(handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve a ``@task_handler`` (SPEC §7): admit the request, then run the handler.

    Behind a ``TaskMiddleware`` it uses the middleware's decision; on its own it applies
    the handler's ``trust=``/``config=`` through a middleware of its own. ``lifespan`` is
    answered (nothing to start); a websocket is closed.
    """
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
        return
    if kind != "http":
        await send({"type": "websocket.close", "code": 1008})
        return
    state = scope.get(STATE_KEY)
    if not isinstance(state, RequestState):
        inner = functools.partial(serve_handler, handler)
        await TaskMiddleware.with_settings(inner, handler.settings)(scope, receive, send)
        return
    admitted = admit(handler, state)
    if isinstance(admitted, Response):
        await respond(send, admitted)
        return
    run = functools.partial(_call_handler, handler)
    if admitted is state.context:
        await run(scope, receive, send)  # the middleware runs it under the deadline
        return
    await run_task(run, scope, receive, send, admitted, state.settings)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _call_handler(handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
    """Call the handler function with its arguments and answer with what it gave."""
    ctx = _current_task.get()
    assert ctx is not None, "run_task publishes the context first"
    try:
        args = await _arguments(handler, ctx, scope, receive)
        if handler.is_async:
            value = await handler.func(*args)
        else:
            # A plain function would block the event loop: it runs in a worker thread,
            # with this context (current_task()) copied into it.
            value = await asyncio.to_thread(_in_thread, handler.func, args, ctx)
        rendered = render(value)
    except PayloadError as exc:
        await respond(send, failure_answer(handler, ctx, PermanentTaskFailure(str(exc))))
        return
    except _PASS_THROUGH:
        raise
    except BaseException as exc:
        await respond(send, failure_answer(handler, ctx, exc))
        return
    if not callable(rendered):
        await respond(send, rendered_answer(*rendered))
        return
    response: Any = rendered
    if inspect.iscoroutinefunction(type(response).__call__):
        await response(scope, receive, _with_outcome(send))  # a Starlette/FastAPI response
        return
    await _send_wsgi_response(response, scope, send)


async def _arguments(
    handler: Handler, ctx: TaskContext, scope: Scope, receive: Receive
) -> tuple[Any, ...]:
    if handler.payload is None:
        return (ctx,)
    headers = _Headers(scope["headers"])
    try:
        length = int(headers.get("content-length") or 0)
    except ValueError:
        raise PayloadError("bad Content-Length") from None
    body = None if length > MAX_BODY else await _read_all(receive, MAX_BODY)
    if body is None:
        raise PayloadError(f"body larger than {MAX_BODY} bytes")
    payload = parse_payload(
        handler.payload,
        scope.get("method", "GET"),
        headers.get("content-type") or "",
        body,
        _text(scope.get("query_string", b"")),
    )
    return ctx, payload


def _in_thread(func: Callable[..., Any], args: tuple[Any, ...], ctx: TaskContext) -> Any:
    """Call a plain handler function in a worker thread, under the request's deadline.

    The request's asyncio deadline raises at the ``await`` of the thread, which cannot stop
    the thread itself; a thread deadline with the same end lets the function stop too.
    """
    outer = ctx._armed_deadline()
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
    """A ``send`` that adds ``X-Task-Outcome`` when the response has none."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if _declared_outcome(headers) is None:
                outcome = outcome_for_status(int(message["status"]))
                headers.append((_OUTCOME_NAME, outcome.encode("latin-1")))
                message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def _send_wsgi_response(response: Any, scope: Scope, send: Send) -> None:
    """Send a werkzeug/webob response object (a WSGI app) an async handler returned."""
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
    status_text, headers, body = call_wsgi(response, environ)
    status = int(status_text.split(" ", 1)[0])
    declared = next((v for n, v in headers if n.lower() == OUTCOME_HEADER.lower()), None)
    kept = [(n, v) for n, v in headers if n.lower() != OUTCOME_HEADER.lower()]
    outcome = declared if declared is not None else outcome_for_status(status)
    await respond(send, Response(status, (*kept, (OUTCOME_HEADER, outcome)), body))


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
            await serve_handler(handler, scope, receive, send)

    async def run(request: Request) -> Response:
        return HandlerResponse()

    # Real classes, not the strings of postponed annotations: frameworks resolve these
    # against the module globals, where the lazily imported names do not live.
    run.__annotations__ = {"request": Request, "return": Response}
    run.__name__ = run.__qualname__ = getattr(handler, "__name__", "task_endpoint")
    run.__doc__ = getattr(handler, "__doc__", None)
    return run
