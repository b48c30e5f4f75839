"""One request, two protocols: build the same HTTP request as a WSGI environ and an ASGI scope.

The conformance suite describes each case once, as the request a client sends (a header
*list*: names as typed, several copies allowed) and what the app behind the middleware
does. :class:`WSGIAdapter` turns it into what a PEP 3333 server hands the app (``HTTP_``
keys, ``-`` and ``_`` folded, repeated lines joined with ``,``); :class:`ASGIAdapter` into
what an ASGI server hands it (lower-case byte names, every copy and spelling kept). Both
run the real middleware and report the same :class:`Result`, so a test asserts once and
the ``adapter`` fixture proves it on both.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_from_bytes

from taskhandler import asgi, wsgi
from taskhandler._decision import RequestState
from taskhandler._decorator import TaskHandler, task_handler
from taskhandler._response import status_line
from taskhandler.context import TaskContext, current_task

Headers = list[tuple[str, str]]


@dataclass
class Request:
    """An HTTP request as a client sends it."""

    method: str = "POST"
    path: str = "/tasks/x"
    headers: Headers = field(default_factory=list)
    peer: str | None = "203.0.113.9"
    body: bytes = b""
    query: str = ""
    scheme: str = "http"
    host: str = "localhost"
    root: str = ""
    raw_path: bytes | None = None  # the percent-decoded path bytes, when not UTF-8 text


@dataclass
class Behaviour:
    """What the app behind the middleware does: answer, raise or take its time."""

    status: int = 200
    raises: Callable[[], BaseException] | None = None
    sleep: float = 0.0
    outcome: str | None = None  # an X-Task-Outcome the app sets itself
    body: bytes = b"ok"


@dataclass
class Seen:
    """What the app saw: header names folded to lower-case dash spelling, copies joined."""

    headers: dict[str, str]
    stripped: list[str] | None
    task: TaskContext | None
    state: RequestState | None

    def task_headers(self) -> dict[str, str]:
        return {
            k: v for k, v in self.headers.items() if k.startswith(("x-appengine-", "x-cloudtasks-"))
        }


@dataclass
class Result:
    """What the client got back, and what the app saw (None when it never ran)."""

    status: int
    headers: dict[str, str]
    body: bytes
    seen: Seen | None

    @property
    def outcome(self) -> str | None:
        return self.headers.get("x-task-outcome")


def _fold(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower().replace("_", "-")
        out[key] = value if key not in out else f"{out[key]},{value}"
    return out


class WSGIAdapter:
    """Runs a case through ``taskhandler.wsgi.TaskMiddleware`` with a PEP 3333 environ."""

    name = "wsgi"

    def environ(self, req: Request) -> dict[str, Any]:
        full = req.raw_path if req.raw_path is not None else req.path.encode()
        root = req.root.encode()
        env: dict[str, Any] = {
            "REQUEST_METHOD": req.method,
            "SCRIPT_NAME": root.decode("latin-1"),
            "PATH_INFO": full[len(root) :].decode("latin-1"),
            "QUERY_STRING": req.query,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "443" if req.scheme == "https" else "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": req.scheme,
            "wsgi.input": io.BytesIO(req.body),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "HTTP_HOST": req.host,
        }
        if req.body:
            env["CONTENT_LENGTH"] = str(len(req.body))
        if req.peer is not None:
            env["REMOTE_ADDR"] = req.peer
        for name, value in req.headers:
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                env[key] = value
                continue
            key = "HTTP_" + key
            # What gunicorn, waitress and werkzeug do with a repeated header line.
            env[key] = value if key not in env or key == "HTTP_HOST" else f"{env[key]},{value}"
        return env

    def app(self, behaviour: Behaviour, seen: list[Seen]) -> Any:
        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            seen.append(
                Seen(
                    headers=_fold((k[5:], v) for k, v in environ.items() if k.startswith("HTTP_")),
                    stripped=environ.get("taskhandler.stripped"),
                    task=current_task(),
                    state=environ.get("taskhandler.state"),
                )
            )
            if behaviour.sleep:
                time.sleep(behaviour.sleep)
            if behaviour.raises is not None:
                raise behaviour.raises()
            headers = [("Content-Type", "text/plain")]
            if behaviour.outcome is not None:
                headers.append(("X-Task-Outcome", behaviour.outcome))
            start_response(status_line(behaviour.status), headers)
            return [behaviour.body]

        return app

    def call(self, app: Any, req: Request) -> tuple[int, dict[str, str], bytes]:
        got: dict[str, Any] = {}

        def start_response(status: str, headers: Headers, exc_info: Any = None) -> Any:
            got["status"], got["headers"] = status, headers
            return lambda data: None

        chunks = app(self.environ(req), start_response)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        headers = _fold_response(got["headers"])
        return int(got["status"].split(" ", 1)[0]), headers, body

    def run(self, req: Request, behaviour: Behaviour | None = None, **options: Any) -> Result:
        seen: list[Seen] = []
        app = wsgi.TaskMiddleware(self.app(behaviour or Behaviour(), seen), **options)
        status, headers, body = self.call(app, req)
        return Result(status, headers, body, seen[0] if seen else None)

    def run_nested(self, req: Request, outer: dict[str, Any], inner: dict[str, Any]) -> Result:
        """``TaskMiddleware(TaskMiddleware(app, **inner), **outer)``."""
        seen: list[Seen] = []
        app = wsgi.TaskMiddleware(
            wsgi.TaskMiddleware(self.app(Behaviour(), seen), **inner), **outer
        )
        status, headers, body = self.call(app, req)
        return Result(status, headers, body, seen[0] if seen else None)

    def handler(self, func: Callable[..., Any], **options: Any) -> TaskHandler[Any]:
        """``@task_handler(**options)`` on the plain-function spelling of ``func``."""
        return task_handler(**options)(func)

    def run_handler(
        self, handler: TaskHandler[Any], req: Request, *, middleware: dict[str, Any] | None
    ) -> Result:
        app: Any = handler if middleware is None else wsgi.TaskMiddleware(handler, **middleware)
        status, headers, body = self.call(app, req)
        return Result(status, headers, body, None)


def _fold_response(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        out.setdefault(name.lower(), value)
    return out


class ASGIAdapter:
    """Runs a case through ``taskhandler.asgi.TaskMiddleware`` with an ASGI scope.

    The scope is what uvicorn builds: lower-case byte names, every copy and spelling kept,
    ``path`` percent-decoded (undecodable bytes as U+FFFD) and including ``root_path``.
    """

    name = "asgi"

    def scope(self, req: Request) -> dict[str, Any]:
        full = req.raw_path if req.raw_path is not None else req.path.encode()
        headers = [(b"host", req.host.encode())]
        headers += [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in req.headers]
        if req.body and not any(n == b"content-length" for n, _ in headers):
            headers.append((b"content-length", str(len(req.body)).encode()))
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": req.method,
            "scheme": req.scheme,
            "path": full.decode("utf-8", "replace"),
            "raw_path": quote_from_bytes(full, safe="/:@!$&'()*+,;=-._~").encode(),
            "root_path": req.root,
            "query_string": req.query.encode("latin-1"),
            "headers": headers,
            "client": None if req.peer is None else (req.peer, 50000),
            "server": ("localhost", 443 if req.scheme == "https" else 80),
            "state": {},
        }

    def app(self, behaviour: Behaviour, seen: list[Seen]) -> Any:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            seen.append(
                Seen(
                    headers=_fold(
                        (n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]
                    ),
                    stripped=scope.get("taskhandler.stripped"),
                    task=current_task(),
                    state=scope.get("taskhandler.state"),
                )
            )
            if behaviour.sleep:
                await asyncio.sleep(behaviour.sleep)
            if behaviour.raises is not None:
                raise behaviour.raises()
            headers = [(b"content-type", b"text/plain")]
            if behaviour.outcome is not None:
                headers.append((b"x-task-outcome", behaviour.outcome.encode()))
            await send(
                {"type": "http.response.start", "status": behaviour.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": behaviour.body})

        return app

    def call(self, app: Any, req: Request) -> tuple[int, dict[str, str], bytes]:
        return asyncio.run(call_asgi(app, self.scope(req), req.body))[:3]

    def run(self, req: Request, behaviour: Behaviour | None = None, **options: Any) -> Result:
        seen: list[Seen] = []
        app = asgi.TaskMiddleware(self.app(behaviour or Behaviour(), seen), **options)
        status, headers, body = self.call(app, req)
        return Result(status, headers, body, seen[0] if seen else None)

    def run_nested(self, req: Request, outer: dict[str, Any], inner: dict[str, Any]) -> Result:
        """``TaskMiddleware(TaskMiddleware(app, **inner), **outer)``."""
        seen: list[Seen] = []
        app = asgi.TaskMiddleware(
            asgi.TaskMiddleware(self.app(Behaviour(), seen), **inner), **outer
        )
        status, headers, body = self.call(app, req)
        return Result(status, headers, body, seen[0] if seen else None)

    def handler(self, func: Callable[..., Any], **options: Any) -> TaskHandler[Any]:
        """``@task_handler(**options)`` on the ``async def`` spelling of ``func``."""

        async def run(*args: Any) -> Any:
            await asyncio.sleep(0)  # be suspended once, as real handlers are
            return func(*args)

        run.__name__ = run.__qualname__ = getattr(func, "__name__", "handler")
        return task_handler(**options)(run)

    def run_handler(
        self, handler: TaskHandler[Any], req: Request, *, middleware: dict[str, Any] | None
    ) -> Result:
        app: Any = handler if middleware is None else asgi.TaskMiddleware(handler, **middleware)
        status, headers, body = self.call(app, req)
        return Result(status, headers, body, None)


async def call_asgi(
    app: Any, scope: dict[str, Any], body: bytes = b""
) -> tuple[int, dict[str, str], bytes, list[dict[str, Any]]]:
    """Call an ASGI app once; the status, headers (lower-case names), body and every message."""
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = _fold_response(
        (n.decode("latin-1"), v.decode("latin-1")) for n, v in start.get("headers", [])
    )
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, payload, sent


Adapter = WSGIAdapter | ASGIAdapter
