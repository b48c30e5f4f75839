"""Delivering one task request: in-process to a WSGI or ASGI app, or over HTTP to a base URL.

Every dispatcher turns a :class:`Request` into an :class:`Outcome`: the status code when the
app answered, and otherwise why not. The queue looks only at the status: 2xx is done, anything
else (including an exception, a timeout or a refused connection) is retried.

The timeout is given with each delivery, not when the dispatcher is made: it is the task's own
dispatch deadline when it has one, else the queue's ``dispatch_timeout``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import inspect
import io
import logging
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from .._types import ASGIApplication, Message, OptExcInfo, WSGIApplication
from ..exceptions import ConfigError

logger = logging.getLogger("taskhandler.taskqueue")

_LEAST_WAIT = 0.001  # seconds: a socket timeout of 0 would make the socket non-blocking
QUEUE_PEER = "0.1.0.2"
"""The address App Engine's task queue sends from (REMOTE_ADDR of every in-process task)."""


@dataclass(frozen=True)
class Request:
    """A task request: method, relative URL with query, headers (with the queue's), body."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """What one attempt gave.

    Attributes:
        status: the response status, or ``None`` when there was no response.
        reason: why the attempt failed (no comma: it becomes ``X-AppEngine-TaskRetryReason``).
        executed: the request reached the app (counts in ``X-AppEngine-TaskExecutionCount``).
    """

    status: int | None
    reason: str | None
    executed: bool

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return self.status is not None and 200 <= self.status < 300


def _failure(reason: str, *, executed: bool, status: int | None = None) -> Outcome:
    return Outcome(status=status, reason=clean_reason(reason), executed=executed)


def clean_reason(reason: str) -> str:
    """A retry reason safe as one header value: printable ASCII, no comma, at most 200 chars.

    A comma would read, on the handler side, as two header lines joined by a server.
    """
    text = "".join(ch if " " <= ch < "\x7f" and ch != "," else " " for ch in reason)
    return " ".join(text.split())[:200] or "unknown"


def _reason_for_status(status: int) -> str:
    return f"HTTP {status}"


class Dispatcher(Protocol):
    """Delivers a request and reports the outcome; ``close()`` frees connections and loops.

    ``timeout`` is the seconds this delivery may wait for the app's answer; past it the attempt
    is a failure (``executed``, reason ``timeout after ...``).
    """

    def __call__(self, request: Request, *, timeout: float) -> Outcome: ...

    def close(self) -> None: ...


def is_asgi(app: object) -> bool:
    """True for an ASGI app: a coroutine function, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 - we need the method itself
    return call is not None and inspect.iscoroutinefunction(call)


def make_dispatcher(target: object) -> Dispatcher:
    """Pick the dispatcher for ``target``: a base URL string, an ASGI app or a WSGI app.

    Raises:
        ConfigError: a string that is not an ``http://`` or ``https://`` URL, or not callable.
    """
    if isinstance(target, str):
        return HttpDispatcher(target)
    if not callable(target):
        raise ConfigError("target must be a WSGI app, an ASGI app or a base URL", value=target)
    if is_asgi(target):
        return AsgiDispatcher(cast(ASGIApplication, target))
    return WsgiDispatcher(cast(WSGIApplication, target))


def _split(url: str) -> tuple[str, str]:
    path, _, query = url.partition("?")
    return path, query


class WsgiDispatcher:
    """Calls a WSGI app in the calling thread, as a server would, with peer ``0.1.0.2``.

    A WSGI call cannot be interrupted, so neither the task's dispatch deadline nor the queue's
    ``dispatch_timeout`` applies in-process: the call takes as long as the app takes.
    """

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def environ(self, request: Request) -> dict[str, Any]:
        """The PEP 3333 environ of ``request``."""
        path, query = _split(request.url)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": QUEUE_PEER,
            "CONTENT_LENGTH": str(len(request.body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(request.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "HTTP_HOST": "localhost",
        }
        for name, value in request.headers:
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
            elif key == "CONTENT_LENGTH":
                continue
            else:
                key = f"HTTP_{key}"
                environ[key] = (
                    f"{environ[key]},{value}" if key in environ and key != "HTTP_HOST" else value
                )
        return environ

    def __call__(self, request: Request, *, timeout: float) -> Outcome:
        """Call the app; ``timeout`` is not applied (a WSGI call cannot be interrupted)."""
        status: list[int] = []

        def start_response(
            status_line: str,
            headers: list[tuple[str, str]],
            exc_info: OptExcInfo | None = None,
        ) -> Callable[[bytes], object]:
            if exc_info is not None and status and exc_info[1] is not None:
                raise exc_info[1].with_traceback(exc_info[2])
            status[:] = [int(status_line.split(" ", 1)[0])]
            return lambda data: None

        try:
            result: Iterable[bytes] = self.app(self.environ(request), start_response)
            try:
                for _ in result:
                    pass
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception as exc:
            logger.exception("task handler raised %s", type(exc).__name__)
            return _failure(f"app raised {type(exc).__name__}", executed=True, status=500)
        if not status:
            return _failure("app gave no status", executed=True, status=500)
        code = status[0]
        if 200 <= code < 300:
            return Outcome(status=code, reason=None, executed=True)
        return _failure(_reason_for_status(code), executed=True, status=code)

    def close(self) -> None:
        """Nothing to free."""


class AsgiDispatcher:
    """Runs an ASGI app on one event loop owned by a thread of its own.

    All tasks share that loop, as they would in an ASGI server, so app state bound to a loop
    works. ``lifespan`` events are not sent. An app still running when the delivery's timeout
    ends is cancelled (``asyncio.CancelledError`` where it awaits).
    """

    def __init__(self, app: ASGIApplication) -> None:
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="taskhandler-queue-asgi", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def scope(self, request: Request) -> dict[str, Any]:
        """The ASGI HTTP scope of ``request``."""
        path, query = _split(request.url)
        headers = [(b"host", b"localhost")]
        headers += [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in request.headers
            if name.lower() != "host"
        ]
        headers.append((b"content-length", str(len(request.body)).encode("ascii")))
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": urllib.parse.unquote(path),
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": headers,
            "client": (QUEUE_PEER, 0),
            "server": ("localhost", 80),
            "state": {},
        }

    async def _run(self, request: Request, timeout: float) -> int | None:
        body_sent = False
        finished = asyncio.Event()
        status: list[int] = []

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[:] = [int(message["status"])]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished.set()

        try:
            await asyncio.wait_for(self.app(self.scope(request), receive, send), timeout)
        finally:
            finished.set()
        return status[0] if status else None

    def __call__(self, request: Request, *, timeout: float) -> Outcome:
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(self._run(request, timeout), loop)
        try:
            code = future.result()
        except (asyncio.TimeoutError, concurrent.futures.TimeoutError):
            return _failure(f"timeout after {timeout:g}s", executed=True)
        except Exception as exc:
            logger.exception("task handler raised %s", type(exc).__name__)
            return _failure(f"app raised {type(exc).__name__}", executed=True, status=500)
        if code is None:
            return _failure("app gave no status", executed=True, status=500)
        if 200 <= code < 300:
            return Outcome(status=code, reason=None, executed=True)
        return _failure(_reason_for_status(code), executed=True, status=code)

    def close(self) -> None:
        """Stop the loop and its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()


class HttpDispatcher:
    """Sends task requests over HTTP/1.1 to ``base_url``, one keep-alive connection per thread.

    The task's relative URL is appended to the base URL's path. A timeout is an executed
    failure; a refused or broken connection is a failure that did not reach the app. Each
    delivery's ``timeout`` bounds connecting, sending, and each wait for the answer; once the
    response's head has come, its body is read within what is left of ``timeout``.
    """

    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("target URL must be http:// or https://HOST[:PORT]", value=base_url)
        if parts.query or parts.fragment:
            raise ConfigError("target URL must not have a query or fragment", value=base_url)
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.netloc = parts.netloc
        self.prefix = parts.path.rstrip("/")
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, its timeout set to ``timeout``; and whether it is reused."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.timeout = timeout  # for a reconnect
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn, True
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=timeout)
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn, False

    def _drop(self) -> None:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)

    def __call__(self, request: Request, *, timeout: float) -> Outcome:
        headers = {
            "Host": self.netloc,
            "User-Agent": "AppEngine-Google; (+http://code.google.com/appengine)",
        }
        for name, value in request.headers:
            if name.lower() != "host":
                headers[name] = f"{headers[name]},{value}" if name in headers else value
        url = self.prefix + request.url
        ends = time.monotonic() + timeout
        for attempt in (1, 2):
            conn, reused = self._connection(timeout)
            try:
                conn.request(request.method, url, body=request.body, headers=headers)
                sock = conn.sock  # getresponse() drops it from conn when the server closes
                response = conn.getresponse()
                if sock is not None:
                    with contextlib.suppress(OSError):  # already closed: nothing left to bound
                        sock.settimeout(max(ends - time.monotonic(), _LEAST_WAIT))
                response.read()
                if response.will_close:
                    self._drop()
                code = response.status
                break
            except TimeoutError:
                self._drop()
                return _failure(f"timeout after {timeout:g}s", executed=True)
            except ConnectionRefusedError:
                self._drop()
                return _failure("connection refused", executed=False)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop()
                # A kept-alive connection the server closed while idle: send once more on a
                # fresh one before calling it a failure.
                if reused and attempt == 1:
                    continue
                return _failure(f"connection lost ({type(exc).__name__})", executed=False)
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                reason = (
                    "connection failed" if isinstance(exc, socket.gaierror) else type(exc).__name__
                )
                return _failure(f"connection failed ({reason})", executed=False)
        else:  # pragma: no cover - the loop always breaks or returns
            return _failure("connection lost", executed=False)
        if 200 <= code < 300:
            return Outcome(status=code, reason=None, executed=True)
        return _failure(_reason_for_status(code), executed=True, status=code)

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
