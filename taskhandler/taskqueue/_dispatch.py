"""Delivering one task request: in-process to a WSGI or ASGI app, or over HTTP to a base URL.

Every dispatcher turns a :class:`Request` into an :class:`Outcome`: the status code when the
app answered, and otherwise why not. The queue looks only at the status: 2xx is done, anything
else (including an exception, a timeout or a refused connection) is retried.

The timeout is given with each delivery, not when the dispatcher is made: it is the task's own
dispatch deadline when it has one, else the queue's ``dispatch_timeout``; a dispatcher never waits
longer than App Engine's longest deadline, 24 hours (:data:`MAX_TIMEOUT`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import inspect
import io
import logging
import math
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

from .._types import ASGIApplication, Message, OptExcInfo, WSGIApplication
from ..exceptions import ConfigError
from ._task import MAX_DISPATCH_DEADLINE

logger = logging.getLogger("taskhandler.taskqueue")

_LEAST_WAIT = 0.001  # seconds: a socket timeout of 0 would make the socket non-blocking
MAX_TIMEOUT = MAX_DISPATCH_DEADLINE.total_seconds()
"""The longest a delivery waits (24 h): a longer timeout is cut to it (sockets and locks refuse
waits of some 1e10 s and more)."""
ASGI_GRACE = 1.0
"""Seconds past its timeout that an ASGI delivery waits for the cancelled app to finish."""
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


def _bounded(timeout: float) -> float:
    return min(timeout, MAX_TIMEOUT)


def _timed_out(timeout: float) -> Outcome:
    return _failure(f"timeout after {timeout:g}s", executed=True)


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
    ends is cancelled (``asyncio.CancelledError`` where it awaits). The delivery ends at the
    latest :data:`ASGI_GRACE` after its timeout, as a timeout, even when the app ignores the
    cancellation and keeps awaiting (it is cancelled again, and left to run on the loop).

    An app that blocks the loop (``time.sleep``, a blocking call) stalls every ASGI delivery of
    the queue until it lets go: each of them ends as a timeout meanwhile.
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
        timeout = _bounded(timeout)
        future = asyncio.run_coroutine_threadsafe(self._run(request, timeout), loop)
        try:
            code = future.result(timeout=timeout + ASGI_GRACE)
        except (asyncio.TimeoutError, concurrent.futures.TimeoutError):
            future.cancel()  # the app ignored its cancellation, or the loop is blocked
            return _timed_out(timeout)
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
            if thread.is_alive():  # an app still blocks the loop: leave it to the daemon thread
                logger.warning("an ASGI task handler still blocks the event loop at close")
            else:
                loop.close()


class _Deadline:
    """The end of one HTTP delivery, and the socket to shut down when it comes."""

    def __init__(self, ends: float, lock: threading.Condition) -> None:
        self.ends = ends
        self.expired = False
        self._lock = lock
        self._sock: socket.socket | None = None

    def left(self) -> float:
        """Seconds until the end (at least a millisecond: 0 would make a socket non-blocking)."""
        return max(self.ends - time.monotonic(), _LEAST_WAIT)

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down at the end (at once if it has come)."""
        with self._lock:
            self._sock = sock
            if self.expired:
                _shut_down(sock)

    def expire(self) -> None:
        """The end has come: shut the watched socket down (the watchdog holds the lock)."""
        self.expired = True
        if self._sock is not None:
            _shut_down(self._sock)


def _shut_down(sock: socket.socket) -> None:
    """Wake whoever waits on ``sock``: its reads see the end of the stream, its writes fail."""
    with contextlib.suppress(OSError):  # closed already: nothing waits on it
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One thread that shuts down the socket of every HTTP delivery still going at its end.

    A socket timeout bounds each read, not the exchange: a server sending a byte now and then
    would keep a delivery going for ever. Registering a deadline costs a set operation under a
    lock (a timer thread per delivery would cost about as much as a round trip on loopback);
    the thread wakes only for the earliest deadline.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._live: set[_Deadline] = set()
        self._wakes_at = math.inf
        self._thread: threading.Thread | None = None
        self._closing = False

    @contextlib.contextmanager
    def deadline(self, ends: float) -> Iterator[_Deadline]:
        """Watch a delivery that must be over at ``ends`` (``time.monotonic()``) while inside."""
        deadline = _Deadline(ends, self._changed)
        with self._changed:
            self._live.add(deadline)
            if self._thread is None:
                self._closing = False
                self._thread = threading.Thread(
                    target=self._run, name="taskhandler-queue-http-deadlines", daemon=True
                )
                self._thread.start()
            if ends < self._wakes_at:
                self._changed.notify()
        try:
            yield deadline
        finally:
            with self._changed:
                self._live.discard(deadline)
                if self._closing and not self._live:
                    self._changed.notify()

    def _run(self) -> None:
        with self._changed:
            while self._live or not self._closing:
                now = time.monotonic()
                for deadline in [d for d in self._live if d.ends <= now]:
                    self._live.discard(deadline)
                    deadline.expire()
                self._wakes_at = min((d.ends for d in self._live), default=math.inf)
                wait = self._wakes_at - now
                self._changed.wait(None if wait == math.inf else wait)
            self._thread = None
            self._wakes_at = math.inf

    def close(self) -> None:
        """Let the thread end once no delivery is watched (a later delivery starts another)."""
        with self._changed:
            self._closing = True
            self._changed.notify()
            thread = None if self._live else self._thread
        if thread is not None:
            thread.join(timeout=5)


class HttpDispatcher:
    """Sends task requests over HTTP/1.1 to ``base_url``, one keep-alive connection per thread.

    The task's relative URL is appended to the base URL's path. A timeout is an executed
    failure; a refused or broken connection is a failure that did not reach the app. Each
    delivery's ``timeout`` bounds the whole exchange: connecting, sending, and reading the
    response's head and body, however slowly the server sends them. A kept-alive connection
    the server has closed is replaced once, within what is left of the timeout.
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
        self._watchdog = _Watchdog()

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, socket.socket, bool]:
        """This thread's connection and its socket, with ``timeout``; and whether it was open."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
                return conn, conn.sock, True
        else:
            cls = (
                http.client.HTTPSConnection
                if self.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = cls(self.host, self.port, timeout=timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        conn.connect()
        return conn, conn.sock, False

    def _drop(self) -> None:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)

    def __call__(self, request: Request, *, timeout: float) -> Outcome:
        timeout = _bounded(timeout)
        headers = {
            "Host": self.netloc,
            "User-Agent": "AppEngine-Google; (+http://code.google.com/appengine)",
        }
        for name, value in request.headers:
            if name.lower() != "host":
                headers[name] = f"{headers[name]},{value}" if name in headers else value
        try:
            with self._watchdog.deadline(time.monotonic() + timeout) as deadline:
                code = self._send_and_read(request, headers, deadline)
        except ValueError:
            self._drop()
            if not deadline.expired:
                raise  # a bug: only an SSL socket shut down at the deadline says ValueError
            return _timed_out(timeout)
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            if deadline.expired or isinstance(exc, TimeoutError):
                return _timed_out(timeout)
            return _connection_failure(exc)
        if deadline.expired:  # what was read may be cut short: a head without its end is valid
            self._drop()
            return _timed_out(timeout)
        if 200 <= code < 300:
            return Outcome(status=code, reason=None, executed=True)
        return _failure(_reason_for_status(code), executed=True, status=code)

    def _send_and_read(self, request: Request, headers: dict[str, str], deadline: _Deadline) -> int:
        """Send ``request`` and read the whole response before ``deadline``; its status."""
        for attempt in (1, 2):
            conn, sock, reused = self._connection(deadline.left())
            deadline.watch(sock)
            try:
                conn.request(
                    request.method, self.prefix + request.url, body=request.body, headers=headers
                )
                response = conn.getresponse()
                response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed while idle: send once more on a
                # fresh one, in what is left of the timeout, before calling it a failure.
                if reused and attempt == 1 and not deadline.expired:
                    self._drop()
                    continue
                raise
            if response.will_close:
                self._drop()
            return response.status
        raise AssertionError("unreachable: the second attempt returns or raises")

    def close(self) -> None:
        """Close every connection, and stop the deadline watchdog."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._watchdog.close()


def _connection_failure(exc: OSError | http.client.HTTPException) -> Outcome:
    """The outcome of a delivery that failed before an answer, for a reason other than time."""
    if isinstance(exc, ConnectionRefusedError):
        return _failure("connection refused", executed=False)
    if isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
        return _failure(f"connection lost ({type(exc).__name__})", executed=False)
    reason = "connection failed" if isinstance(exc, socket.gaierror) else type(exc).__name__
    return _failure(f"connection failed ({reason})", executed=False)
