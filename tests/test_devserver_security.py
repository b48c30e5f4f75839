"""`taskhandler serve` answers only requests addressed to a loopback name (DNS rebinding).

A page on evil.example whose DNS name is made to resolve to 127.0.0.1 can make a victim's
browser send requests to the development server, where development trust lets any request
act as a task. The server tells such requests apart by their ``Host`` header, and refuses
them before anything of the app or the console runs.

Three levels: the pure rule (``allowed_host``) as a table; the WSGI and ASGI routers in
process around a recording app and the real console; and the real ``taskhandler serve``
process on a free port, spoken to over raw sockets (so the test controls ``Host``), serving
the Flask example (WSGI, werkzeug) and the Starlette example (ASGI, uvicorn) wrapped in a
recorder that writes a line to ``TH_VIEW_LOG`` whenever a request reaches the example.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from taskhandler import taskqueue
from taskhandler._types import Receive, Scope, Send
from taskhandler.auth import SignedCookieAuth
from taskhandler.devserver import CONSOLE_PATH, QueueConsole, _AsgiRouter, _Router, allowed_host
from taskhandler.taskqueue import LocalTaskQueue
from tests.servers import ROOT, free_port, stop, wait_for_port

SECRET = "d" * 40

# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        pytest.param("127.0.0.1", True, id="127.0.0.1"),
        pytest.param("127.0.0.1:8080", True, id="127.0.0.1 with port"),
        pytest.param("127.8.9.10:1", True, id="other 127/8 address"),
        pytest.param("localhost", True, id="localhost"),
        pytest.param("localhost:8080", True, id="localhost with port"),
        pytest.param("LOCALHOST:8080", True, id="LOCALHOST (names are case-insensitive)"),
        pytest.param("app.localhost:8080", True, id="*.localhost"),
        pytest.param("a.b-c.localhost", True, id="deeper *.localhost"),
        pytest.param("[::1]", True, id="[::1]"),
        pytest.param("[::1]:8080", True, id="[::1] with port"),
        pytest.param("[0:0:0:0:0:0:0:1]:8080", True, id="[::1] spelt out"),
        pytest.param("localhost:65535", True, id="highest port"),
        pytest.param("evil.example", False, id="another name"),
        pytest.param("evil.example:8080", False, id="another name with the port"),
        pytest.param("127.0.0.1.evil.example", False, id="loopback address as a label"),
        pytest.param("localhost.evil.example", False, id="localhost as a label"),
        pytest.param("evil-localhost", False, id="localhost as a suffix"),
        pytest.param("localhost.", False, id="trailing dot"),
        pytest.param("app.localhost.", False, id="*.localhost with trailing dot"),
        pytest.param("-app.localhost", False, id="*.localhost with a bad label"),
        pytest.param("a..localhost", False, id="*.localhost with an empty label"),
        pytest.param("127.1", False, id="short IPv4 127.1"),
        pytest.param("0x7f.1", False, id="hex IPv4 0x7f.1"),
        pytest.param("0x7f000001", False, id="hex IPv4 in one number"),
        pytest.param("2130706433", False, id="IPv4 as one decimal number"),
        pytest.param("127.000.000.001", False, id="IPv4 with leading zeros"),
        pytest.param("0177.0.0.1", False, id="octal IPv4"),
        pytest.param("0.0.0.0:8080", False, id="0.0.0.0"),
        pytest.param("10.0.0.1", False, id="private address"),
        pytest.param("[::ffff:127.0.0.1]", False, id="IPv4-mapped IPv6"),
        pytest.param("[::ffff:7f00:1]:8080", False, id="IPv4-mapped IPv6 in hex"),
        pytest.param("[::1", False, id="unclosed bracket"),
        pytest.param("::1", False, id="IPv6 without brackets"),
        pytest.param("[fe80::1%25lo]", False, id="IPv6 with a zone"),
        pytest.param("[127.0.0.1]", False, id="IPv4 in brackets"),
        pytest.param("", False, id="empty Host"),
        pytest.param(None, False, id="no Host"),
        pytest.param("127.0.0.1,evil.example", False, id="two Host headers joined"),
        pytest.param("evil.example,127.0.0.1", False, id="two Host headers, loopback last"),
        pytest.param("a@127.0.0.1", False, id="user-info"),
        pytest.param("127.0.0.1:8080@evil.example", False, id="user-info the other way"),
        pytest.param("localhost:", False, id="empty port"),
        pytest.param("localhost:65536", False, id="port out of range"),
        pytest.param("localhost:123456", False, id="six-digit port"),
        pytest.param("localhost:80:80", False, id="two ports"),
        pytest.param("localhost:-1", False, id="negative port"),
        pytest.param(" localhost", False, id="leading space"),
        pytest.param("localhost ", False, id="trailing space"),
        pytest.param("local host", False, id="inner space"),
        pytest.param("localhost/x", False, id="a path"),
        pytest.param("localhost\r\nX: y", False, id="header injection"),
        pytest.param("l\u043ecalhost", False, id="Cyrillic o"),
        pytest.param("xn--lcalhost-9fg", False, id="punycode look-alike"),
        pytest.param("l" * 300, False, id="very long name"),
    ],
)
def test_allowed_host(host: str | None, allowed: bool) -> None:
    """Only loopback names in the spelling a browser sends are answered, with any port."""
    assert allowed_host(host, "127.0.0.1") is allowed


@pytest.mark.parametrize(
    ("host", "bound", "allowed"),
    [
        pytest.param("[::1]:8080", "::1", True, id="bound to ::1"),
        pytest.param("127.0.0.2:8080", "127.0.0.2", True, id="bound to 127.0.0.2"),
        pytest.param("localhost:8080", "localhost", True, id="bound to localhost"),
        pytest.param("myhost:8080", "myhost", True, id="the bind name itself"),
        pytest.param("MYHOST", "myhost", True, id="the bind name in capitals"),
        pytest.param("[::1]", "[::1]", True, id="bound with brackets"),
        pytest.param("evil.example", "myhost", False, id="another name than the bind name"),
        pytest.param("myhost.evil.example", "myhost", False, id="bind name as a label"),
        pytest.param("127.1", "127.0.0.1", False, id="short spelling of the bind address"),
    ],
)
def test_allowed_host_bind_address(host: str, bound: str, allowed: bool) -> None:
    """The address given to --host is answered too, spelt the same way."""
    assert allowed_host(host, bound) is allowed


# --------------------------------------------------------------------------- the routers


@dataclass
class Answer:
    """What a router answered, and which parts of the app it reached."""

    status: int
    body: bytes
    reached: list[str]


class _RecordingConsole(QueueConsole):
    """The real console, noting each request it gets."""

    def __init__(self, queue: LocalTaskQueue, auth: SignedCookieAuth, reached: list[str]):
        super().__init__(queue, auth)
        self.reached = reached

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.reached.append("console")
        return super().__call__(environ, start_response)


class Routers:
    """The WSGI or ASGI router around a recording app and the real console."""

    __test__ = False

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.reached: list[str] = []
        self.queue = LocalTaskQueue(self._wsgi_app, db=str(tmp / "queue.sqlite3"))
        auth = SignedCookieAuth(SECRET)
        self.admin_cookie = f"taskhandler_signin={auth.cookie_value('a@example.com', admin=True)}"
        self.console = _RecordingConsole(self.queue, auth, self.reached)
        self.wsgi = _Router(self._wsgi_app, self.console)
        self.asgi = _AsgiRouter(self._asgi_app, self.console)

    def _wsgi_app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.reached.append("app")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app ran"]

    async def _asgi_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reached.append(f"app:{scope['type']}")
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"app ran"})

    def request(
        self,
        hosts: list[str],
        path: str = "/",
        method: str = "GET",
        cookie: str = "",
        body: bytes = b"",
    ) -> Answer:
        """One HTTP request with these ``Host`` header lines (none, one or several)."""
        self.reached.clear()
        if self.kind == "wsgi":
            answer = self._wsgi_request(hosts, path, method, cookie, body)
        else:
            answer = asyncio.run(self._asgi_request(hosts, path, method, cookie, body))
        answer.reached = list(self.reached)
        return answer

    def _wsgi_request(
        self, hosts: list[str], path: str, method: str, cookie: str, body: bytes
    ) -> Answer:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8080",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
        }
        if hosts:  # as werkzeug's server does: copies joined with ","
            environ["HTTP_HOST"] = ",".join(hosts)
        if cookie:
            environ["HTTP_COOKIE"] = cookie
        status: list[str] = []
        chunks = self.wsgi(environ, lambda s, h, e=None: status.append(s))  # type: ignore[arg-type]
        return Answer(int(status[0].split()[0]), b"".join(chunks), [])

    async def _asgi_request(
        self, hosts: list[str], path: str, method: str, cookie: str, body: bytes
    ) -> Answer:
        headers = [(b"host", h.encode("latin-1")) for h in hosts]
        headers.append((b"content-type", b"application/x-www-form-urlencoded"))
        if cookie:
            headers.append((b"cookie", cookie.encode()))
        sent = await _call_asgi(self.asgi, _scope("http", path, headers, method), body)
        start = next(m for m in sent if m["type"] == "http.response.start")
        text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return Answer(start["status"], text, [])


def _scope(
    kind: str, path: str, headers: list[tuple[bytes, bytes]], method: str = "GET"
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": kind,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "scheme": "http" if kind == "http" else "ws",
    }
    if kind == "http":
        scope["method"] = method
    return scope


async def _call_asgi(app: Any, scope: dict[str, Any], body: bytes = b"") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    firsts: dict[str, dict[str, Any]] = {
        "http": {"type": "http.request", "body": body, "more_body": False},
        "websocket": {"type": "websocket.connect"},
        "lifespan": {"type": "lifespan.startup"},
    }
    first = firsts[scope["type"]]
    messages = iter([first])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.fixture(params=["wsgi", "asgi"])
def routers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Routers]:
    """The dev server's router (WSGI or ASGI) around a recording app and the console."""
    built = Routers(request.param, tmp_path)
    try:
        yield built
    finally:
        built.queue.close()


@pytest.mark.parametrize(
    ("hosts", "shown"),
    [
        pytest.param(["evil.example:8080"], "evil.example:8080", id="another name"),
        pytest.param(["127.0.0.1.evil.example"], "127.0.0.1.evil.example", id="look-alike"),
        pytest.param([], "(none)", id="no Host"),
        pytest.param([""], "(none)", id="empty Host"),
        pytest.param(
            ["127.0.0.1:8080", "evil.example"], "127.0.0.1:8080,evil.example", id="two Hosts"
        ),
        pytest.param(["a@127.0.0.1"], "a@127.0.0.1", id="user-info"),
        pytest.param(["evil\x01.example"], "evil?.example", id="control character shown as ?"),
        pytest.param(["\xe9.example"], "?.example", id="non-ASCII shown as ?"),
        pytest.param(["e" * 300], "e" * 100 + "...", id="long Host shortened"),
    ],
)
@pytest.mark.parametrize(
    "path", [pytest.param("/tasks/x", id="app"), pytest.param(CONSOLE_PATH, id="console")]
)
def test_router_refuses_foreign_host(
    routers: Routers, hosts: list[str], shown: str, path: str
) -> None:
    """A foreign Host gets a one-line 400 and reaches neither the app nor the console."""
    answer = routers.request(hosts, path, cookie=routers.admin_cookie)
    assert answer.status == 400
    assert answer.body == f"Host not allowed: {shown}\n".encode()
    assert answer.reached == []


@pytest.mark.parametrize(
    ("path", "reached"),
    [
        pytest.param("/tasks/x", "app", id="app"),
        pytest.param(CONSOLE_PATH, "console", id="console"),
    ],
)
@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.0.1:8080", id="127.0.0.1"),
        pytest.param("localhost:8080", id="localhost"),
        pytest.param("[::1]:8080", id="[::1]"),
    ],
)
def test_router_answers_loopback_host(routers: Routers, host: str, path: str, reached: str) -> None:
    """A loopback Host goes on to the app or the console as before."""
    answer = routers.request([host], path, cookie=routers.admin_cookie)
    assert answer.status == 200
    assert [r.split(":")[0] for r in answer.reached] == [reached]


@pytest.mark.parametrize(
    ("host", "status", "left"),
    [
        pytest.param("evil.example:8080", 400, 1, id="foreign Host: refused, nothing deleted"),
        pytest.param("127.0.0.1:8080", 303, 0, id="loopback Host: the action runs"),
    ],
)
def test_console_action_checks_host_first(
    routers: Routers, host: str, status: int, left: int
) -> None:
    """A console action with a valid token and admin cookie still needs a loopback Host."""
    with taskqueue.use(routers.queue):
        taskqueue.add(url="/tasks/later", name="keep-me", countdown=3600)
    form = urlencode({"token": routers.console.token, "queue": "default", "name": "keep-me"})
    answer = routers.request(
        [host], f"{CONSOLE_PATH}/delete", "POST", routers.admin_cookie, form.encode()
    )
    assert answer.status == status
    assert len(routers.queue.tasks("default")) == left


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        pytest.param(b"evil.example:8080", True, id="foreign Host"),
        pytest.param(b"127.0.0.1:8080", False, id="loopback Host"),
    ],
)
def test_asgi_websocket_checks_host(tmp_path: Path, host: bytes, refused: bool) -> None:
    """A WebSocket handshake for a foreign Host is closed before the app sees it."""
    built = Routers("asgi", tmp_path)
    try:
        sent = asyncio.run(_call_asgi(built.asgi, _scope("websocket", "/ws", [(b"host", host)])))
    finally:
        built.queue.close()
    if refused:
        assert sent == [{"type": "websocket.close", "code": 1008}]
        assert built.reached == []
    else:
        assert built.reached == ["app:websocket"]


def test_asgi_lifespan_passes_through(tmp_path: Path) -> None:
    """Lifespan events carry no Host and go on to the app."""
    built = Routers("asgi", tmp_path)
    try:
        asyncio.run(_call_asgi(built.asgi, {"type": "lifespan"}))
    finally:
        built.queue.close()
    assert built.reached == ["app:lifespan"]


# --------------------------------------------------------------------------- end to end


@dataclass(frozen=True)
class Example:
    """An example app served by `taskhandler serve`, and how to send it a task."""

    target: str
    app_yaml: str
    task_path: str
    field: str  # the form field naming the counter

    def counter(self, db: Path, name: str) -> int:
        """The example's counter ``name``, read from its own SQLite file."""
        if "flask" in self.target:
            from examples.flask_style import store

            return int(store.snapshot(db)["counters"].get(name, 0))
        from examples.starlette_style.main import Store

        return Store(db).counts().get(name, 0)


EXAMPLES = {
    "wsgi": Example(
        "tests.test_devserver_security:flask_example",
        "examples/flask_style/app.yaml",
        "/tasks/count",
        "counter",
    ),
    "asgi": Example(
        "tests.test_devserver_security:starlette_example",
        "examples/starlette_style/app.yaml",
        "/tasks/update_counter",
        "key",
    ),
}


@dataclass
class Served:
    """A running `taskhandler serve` process and the files it writes."""

    example: Example
    port: int
    db: Path
    views: Path

    def views_reached(self) -> int:
        return len(self.views.read_text().splitlines()) if self.views.exists() else 0


@pytest.fixture(scope="module", params=["wsgi", "asgi"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`taskhandler serve` (werkzeug for the Flask example, uvicorn for the Starlette one)."""
    example = EXAMPLES[request.param]
    tmp = tmp_path_factory.mktemp(f"devserver-{request.param}")
    port = free_port()
    result = Served(example, port, tmp / "example.sqlite3", tmp / "views.log")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TASKHANDLER_SECRET_KEY": SECRET,
        "EXAMPLE_DB": str(result.db),
        "TH_VIEW_LOG": str(result.views),
    }
    command = [
        sys.executable,
        "-m",
        "taskhandler.cli",
        "serve",
        example.target,
        "--app-yaml",
        example.app_yaml,
        "--port",
        str(port),
        "--db",
        str(tmp / "queue.sqlite3"),
    ]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, proc)
        yield result
    finally:
        stop(proc)


_task_names = itertools.count(1)


def _task_request(served: Served, host_lines: list[str], counter: str, version: str) -> bytes:
    """The raw request a rebinding page would send: a task for the example's counter."""
    body = f"{served.example.field}={counter}&amount=5".encode()
    head = [
        f"POST {served.example.task_path} HTTP/{version}",
        *host_lines,
        "X-AppEngine-QueueName: default",
        f"X-AppEngine-TaskName: rebind-{next(_task_names)}",
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _send(port: int, raw: bytes) -> tuple[int, bytes]:
    """Send one raw request; the status and body of the answer (the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(raw)
        received = b""
        while len(received) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.slow
@pytest.mark.parametrize(
    ("host_lines", "version", "shown"),
    [
        pytest.param(
            ["Host: evil.example:{port}"], "1.1", "evil.example:{port}", id="evil.example"
        ),
        pytest.param(
            ["Host: 127.0.0.1.evil.example:{port}"],
            "1.1",
            "127.0.0.1.evil.example:{port}",
            id="127.0.0.1.evil.example",
        ),
        pytest.param(
            ["Host: localhost.evil.example"], "1.1", "localhost.evil.example", id="localhost.evil"
        ),
        pytest.param(["Host: localhost.:{port}"], "1.1", "localhost.:{port}", id="trailing dot"),
        pytest.param(["Host: 0.0.0.0:{port}"], "1.1", "0.0.0.0:{port}", id="0.0.0.0"),
        pytest.param(["Host: 2130706433:{port}"], "1.1", "2130706433:{port}", id="one number"),
        pytest.param(["Host: a@127.0.0.1:{port}"], "1.1", "a@127.0.0.1:{port}", id="user-info"),
        pytest.param(["Host: "], "1.1", "(none)", id="empty Host"),
        pytest.param(
            ["Host: 127.0.0.1:{port}", "Host: evil.example"],
            "1.1",
            "127.0.0.1:{port},evil.example",
            id="two Host headers",
        ),
        pytest.param([], "1.0", "(none)", id="no Host, HTTP/1.0"),
        pytest.param([], "1.1", "(none)", id="no Host, HTTP/1.1"),
    ],
)
def test_serve_refuses_rebinding(
    served: Served, host_lines: list[str], version: str, shown: str
) -> None:
    """Through the real CLI process, a task sent under a foreign Host never reaches the app."""
    port = served.port
    lines = [line.format(port=port) for line in host_lines]
    views = served.views_reached()
    status, body = _send(port, _task_request(served, lines, "rebound", version))
    assert status == 400
    assert body == f"Host not allowed: {shown.format(port=port)}\n".encode()
    assert served.views_reached() == views
    assert served.example.counter(served.db, "rebound") == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.0.1:{port}", id="127.0.0.1"),
        pytest.param("localhost:{port}", id="localhost"),
        pytest.param("LocalHost", id="LocalHost without port"),
        pytest.param("app.localhost:{port}", id="app.localhost"),
        pytest.param("[::1]:{port}", id="[::1]"),
        pytest.param("localhost:9999", id="a forwarded port"),
    ],
)
def test_serve_answers_loopback_names(served: Served, host: str) -> None:
    """The same task under a loopback Host runs, so the refusals above are the Host's doing."""
    counter = f"loop-{next(_task_names)}"
    views = served.views_reached()
    line = f"Host: {host.format(port=served.port)}"
    status, body = _send(served.port, _task_request(served, [line], counter, "1.1"))
    assert status == 200, body
    assert served.views_reached() == views + 1
    assert served.example.counter(served.db, counter) == 5


# -- the apps `taskhandler serve` runs above: the examples, recording every request ---------


def _record(line: str) -> None:
    with open(os.environ["TH_VIEW_LOG"], "a", encoding="utf-8") as log:
        log.write(line + "\n")


class _RecordedFlaskExample:
    """examples/flask_style (WSGI), built on first use; each request is recorded first."""

    def __init__(self) -> None:
        self._app: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        _record(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}")
        if self._app is None:
            from examples.flask_style.main import app

            self._app = app
        return self._app(environ, start_response)  # type: ignore[no-any-return]


class _RecordedStarletteExample:
    """examples/starlette_style (ASGI), built on first use; each HTTP request is recorded."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            _record(f"{scope['method']} {scope['path']}")
        from examples.starlette_style.main import app

        await app(scope, receive, send)


flask_example = _RecordedFlaskExample()
starlette_example = _RecordedStarletteExample()


def test_console_says_when_the_queue_storage_fails(tmp_path: Path) -> None:
    """A queue database locked by another process makes a console action a 503 page naming
    the file, not a 500."""
    import sqlite3

    db = tmp_path / "queue.sqlite3"
    queue = LocalTaskQueue(lambda environ, start_response: [b""], db=str(db), busy_timeout=0.05)
    auth = SignedCookieAuth(SECRET)
    console = QueueConsole(queue, auth)
    cookie = auth.cookie_value("admin@example.com", admin=True)
    form = urlencode({"token": console.token, "queue": "default"}).encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": CONSOLE_PATH + "/purge",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8080",
        "HTTP_HOST": "localhost:8080",
        "HTTP_ORIGIN": "http://localhost:8080",
        "HTTP_COOKIE": f"{auth.cookie_name}={cookie}",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(form)),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(form),
    }
    got: list[str] = []
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        body = b"".join(console(environ, lambda status, headers: got.append(status)))
    finally:
        holder.close()
        queue.close()
    assert got == ["503 Service Unavailable"]
    assert str(db).encode() in body
