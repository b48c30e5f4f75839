"""What each protocol can see that the other cannot: ASGI keeps every header spelling apart,
a WSGI environ may hold keys no PEP 3333 server makes. Plus the pure helpers behind them."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest

from taskhandler import TrustPolicy, asgi, wsgi
from taskhandler.access import routable_paths
from taskhandler.context import current_task
from taskhandler.headers import collect
from taskhandler.trust import forwarded_addresses, parse_address

QUEUE = "0.1.0.2"
PROXY = "127.0.0.1"


def _asgi_run(headers: list[tuple[bytes, bytes]], peer: str, trust: TrustPolicy) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["headers"] = [name for name, _ in scope["headers"]]
        seen["task"] = current_task()
        seen["stripped"] = scope.get("taskhandler.stripped")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": "/x",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost"), *headers],
        "client": (peer, 1234),
        "server": ("localhost", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    asyncio.run(asgi.TaskMiddleware(app, trust=trust)(scope, receive, send))
    return seen


TASK = [(b"x-appengine-queuename", b"default"), (b"x-appengine-taskname", b"t-1")]


@pytest.mark.parametrize(
    "name",
    [b"x_forwarded_for", b"X_Forwarded_For", b"x-forwarded_for", b"x_forwarded-for", b"x_real_ip"],
)
def test_asgi_underscore_forwarding_header_is_never_read(name: bytes) -> None:
    """Behind a trusted proxy, ``X_Forwarded_For: 0.1.0.2`` never makes a stranger the queue."""
    trust = TrustPolicy(trusted_proxies=[PROXY])
    seen = _asgi_run(
        [*TASK, (b"x-forwarded-for", b"198.51.100.7"), (name, QUEUE.encode())], PROXY, trust
    )
    assert seen["task"] is None
    assert name not in seen["headers"]
    assert name.decode().lower().replace("_", "-") in seen["stripped"]


def test_asgi_underscore_forwarding_header_is_removed_from_a_plain_request() -> None:
    """Every ``_`` spelling of a forwarding header goes, even without task headers or rules."""
    seen = _asgi_run([(b"x_forwarded_proto", b"https")], "198.51.100.7", TrustPolicy())
    assert seen["headers"] == [b"host"]
    assert seen["stripped"] == ["x-forwarded-proto"]


def test_asgi_exact_forwarding_header_from_a_trusted_proxy_names_the_queue() -> None:
    """Positive control: the dash spelling from a trusted proxy is walked as before."""
    trust = TrustPolicy(trusted_proxies=[PROXY])
    seen = _asgi_run([*TASK, (b"x-forwarded-for", QUEUE.encode())], PROXY, trust)
    assert seen["task"] is not None


def _wsgi_run(extra: dict[str, str], peer: str, trust: TrustPolicy) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen["keys"] = {k for k in environ if k.upper().startswith("HTTP_")}
        seen["task"] = current_task()
        seen["stripped"] = environ.get("taskhandler.stripped")
        start_response("200 OK", [])
        return [b""]

    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/x",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "REMOTE_ADDR": peer,
        "HTTP_HOST": "localhost",
        **extra,
    }
    wsgi.TaskMiddleware(app, trust=trust)(environ, lambda status, headers: None)
    return seen


@pytest.mark.parametrize(
    "key",
    [
        "HTTP_X-AppEngine-TaskName",
        "HTTP_X-APPENGINE-QUEUENAME",
        "http_x_appengine_taskname",
        "HTTP_x-cloudtasks-taskname",
        "HTTP_X_AppEngine-TaskRetryCount",
    ],
)
def test_wsgi_task_keys_no_server_makes_are_stripped(key: str) -> None:
    """A gateway's odd environ key for a task header goes like any other spelling."""
    seen = _wsgi_run({key: "x"}, "198.51.100.7", TrustPolicy())
    assert key not in seen["keys"]
    assert seen["task"] is None


@pytest.mark.parametrize(
    "key",
    ["HTTP_X-Forwarded-For", "http_x_forwarded_for", "HTTP_X_Forwarded_For", "HTTP_X-Real-IP"],
)
def test_wsgi_forwarding_keys_no_server_makes_are_never_read(key: str) -> None:
    """``HTTP_X-Forwarded-For: 0.1.0.2`` from a trusted proxy does not make the queue."""
    trust = TrustPolicy(trusted_proxies=[PROXY])
    seen = _wsgi_run(
        {key: QUEUE, "HTTP_X_APPENGINE_QUEUENAME": "q", "HTTP_X_APPENGINE_TASKNAME": "t"},
        PROXY,
        trust,
    )
    assert seen["task"] is None
    assert key not in seen["keys"]


@pytest.mark.parametrize(
    ("path", "prefixes", "expected"),
    [
        pytest.param("/a/b", [], ("/a/b",), id="no prefix"),
        pytest.param("/a/b", ["/a"], ("/a/b", "/b"), id="one prefix"),
        pytest.param("/a/b", ["/a/"], ("/a/b", "/b"), id="trailing slash"),
        pytest.param("/a", ["/a"], ("/a", "/"), id="whole path"),
        pytest.param("/ab/c", ["/a"], ("/ab/c", "/b/c"), id="cut inside a segment"),
        pytest.param("/a/b", ["a"], ("/a/b",), id="relative prefix ignored"),
        pytest.param("/a/b", ["/x", "/a", "/a"], ("/a/b", "/b"), id="repeats once"),
        pytest.param("/a/b/c", ["/a", "/a/b"], ("/a/b/c", "/b/c", "/c"), id="nested prefixes"),
    ],
)
def test_routable_paths(path: str, prefixes: list[str], expected: tuple[str, ...]) -> None:
    """Each prefix that ends at a segment boundary adds the path below it."""
    assert routable_paths(path, prefixes) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"x-forwarded-for": "1.2.3.4, [::1] , junk"}, ["1.2.3.4", "::1"], id="xff"),
        pytest.param({"x-real-ip": "5.6.7.8"}, ["5.6.7.8"], id="x-real-ip"),
        pytest.param(
            {"forwarded": 'for="[2001:db8::1]:80", for=9.9.9.9:1'},
            ["2001:db8::1", "9.9.9.9"],
            id="forwarded",
        ),
        pytest.param({"forwarded": "for=_hidden;by=1.1.1.1"}, [], id="obfuscated node"),
        pytest.param({"x-forwarded-for": "1.1.1.1%eth0"}, [], id="zone id"),
    ],
)
def test_forwarded_addresses(headers: dict[str, str], expected: list[str]) -> None:
    """Every address a forwarding header names, in any position."""
    assert [str(a) for a in forwarded_addresses(headers.get)] == expected


@pytest.mark.parametrize(
    ("text", "hop", "expected"),
    [
        ("0.1.0.2", False, "0.1.0.2"),
        (" 0.1.0.2", False, None),
        (" 0.1.0.2 ", True, "0.1.0.2"),
        ("[::1]", False, None),
        ("[::1]", True, "::1"),
        ("::ffff:0.1.0.2", False, "0.1.0.2"),
        ("fe80::1%eth0", True, None),
    ],
)
def test_parse_address(text: str, hop: bool, expected: str | None) -> None:
    """A peer must be exactly an address; a hop may carry spaces and brackets."""
    address = parse_address(text, hop=hop)
    assert (None if address is None else str(address)) == expected


def test_many_copies_of_one_header_are_joined_in_linear_work() -> None:
    """100,000 copies of one header are grouped and joined once (not one join per copy)."""
    count = 100_000
    grouped = collect(("X-AppEngine-TaskName", "v") for _ in range(count))
    assert grouped == {"x-appengine-taskname": ",".join(["v"] * count)}
    scope = {"headers": [(b"x-foo", b"a")] * count, "path": "/", "client": None}
    info = asgi.request_info(scope)
    assert info.headers["x-foo"] == ", ".join(["a"] * count)


def test_asgi_lifespan_starts_the_oidc_certificate_fetch() -> None:
    """An ASGI app's start-up warms the OIDC verifier, so the first task finds certificates."""

    class Verifier:
        started = 0

        def verifies(self, authorization: str | None) -> bool:
            return False

        def start(self) -> None:
            self.started += 1

    verifier = Verifier()
    passed: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        passed.append(scope["type"])

    middleware = asgi.TaskMiddleware(app, trust=TrustPolicy(oidc=verifier))  # type: ignore[arg-type]
    asyncio.run(middleware({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert verifier.started == 1
    assert passed == ["lifespan"]


def test_asgi_finds_a_framework_root_path_behind_other_middleware() -> None:
    """``TaskMiddleware(GZipMiddleware(FastAPI(root_path="/api")))``: the rules still see
    the path below ``/api``."""

    class Framework:
        root_path = "/api"

    class Middleware:
        def __init__(self, app: object) -> None:
            self.app = app

    scope = {"type": "http", "path": "/api/admin", "root_path": "", "headers": []}
    view = asgi.request_view(scope, Middleware(Middleware(Framework())))
    assert view.prefixes == ("/api",)


def test_an_inner_layers_admin_runs_a_task_handler_by_hand() -> None:
    """Nested middlewares: an administrator known only to the inner layer's authenticator
    opens a task handler's URL and it runs with a synthetic context."""
    from taskhandler import SignedCookieAuth, task_handler

    auth = SignedCookieAuth("k" * 40)
    ran: list[str] = []

    @task_handler
    def handler(task: Any) -> None:
        ran.append(task.trusted_by)

    app = wsgi.TaskMiddleware(wsgi.TaskMiddleware(handler, authenticator=auth))
    cookie = auth.cookie_value("a@example.com", admin=True)
    got: list[str] = []
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/tasks/x",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "HTTP_HOST": "localhost",
        "HTTP_COOKIE": f"{auth.cookie_name}={cookie}",
        "REMOTE_ADDR": "203.0.113.9",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
    }
    b"".join(app(environ, lambda status, headers: got.append(status)))
    assert got == ["200 OK"]
    assert ran == ["admin"]
