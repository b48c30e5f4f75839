"""Hostile input against the access rules, end to end through real servers on 127.0.0.1.

The app (tests/data/access_app.py) is Flask behind TaskMiddleware with the rules of
tests/data/access_app.yaml (``/tasks/.*`` is ``login: admin``). Its router merges nothing,
and a catch-all view normalises dot segments, backslashes and repeated slashes the way
static servers and proxies do, so any spelling of ``/tasks/x`` that slipped past the rules
would run the protected view. Every protected view appends to a log file first; each case
checks that file from outside the server process.

The path table runs under gunicorn, waitress and the werkzeug server (WSGI), and under
uvicorn with the ASGI twin of the app (tests/data/access_asgi.py, Starlette behind the ASGI
middleware). The servers disagree about slashes, dots, absolute-form targets and
undecodable bytes (that is the point), so a case lists every status that is an acceptable
refusal; the log file is the verdict.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from taskhandler.auth import DEFAULT_MAX_AGE, SignedCookieAuth
from tests.servers import raw_request, serve, status_of

pytestmark = pytest.mark.slow

NEW_KEY = "new-signing-key-" + "n" * 32
OLD_KEY = "old-signing-key-" + "o" * 32
RETIRED_KEY = "retired-signing-key-" + "r" * 32
COOKIE = "taskhandler_signin"
LOGIN = "/_ah/login?continue="


class Server:
    """A running server and the log its protected views write to."""

    def __init__(self, kind: str, base_url: str, log: Path) -> None:
        self.kind = kind
        self.base_url = base_url
        self.host = base_url.removeprefix("http://")
        self.log = log

    def runs(self) -> int:
        """How many times a protected view has run so far."""
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0

    def send(self, method: str, target: bytes, headers: dict[str, str], body: bytes = b"") -> bytes:
        lines = [f"{method} ".encode() + target + b" HTTP/1.1", f"Host: {self.host}".encode()]
        lines += [f"{name}: {value}".encode("latin-1") for name, value in headers.items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}".encode())
        lines.append(b"Connection: close")
        return raw_request(self.base_url, b"\r\n".join(lines) + b"\r\n\r\n" + body)


def _start(kind: str, tmp: Path) -> Iterator[Server]:
    log = tmp / f"{kind}-views.log"
    env = {"TH_ACCESS_LOG": str(log), "TH_ACCESS_KEYS": f"{NEW_KEY},{OLD_KEY}"}
    target, extra = "tests.data.access_app:app", ()
    if kind == "uvicorn":
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default, which would let any
        # local client claim the queue's address; the docs say to switch it off like this.
        target, extra = "tests.data.access_asgi:app", ("--no-proxy-headers",)
    with serve(kind, target, env=env, extra=extra) as base_url:
        yield Server(kind, base_url, log)


@pytest.fixture(scope="module", params=["gunicorn", "waitress", "werkzeug", "uvicorn"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Each server, started once per module (uvicorn serves the ASGI twin of the app)."""
    yield from _start(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module", params=["gunicorn", "waitress"])
def cookie_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """gunicorn and waitress, for the cookie and redirect cases."""
    yield from _start(request.param, tmp_path_factory.mktemp(f"{request.param}-cookies"))


def _headers(response: bytes) -> dict[str, list[str]]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    found: dict[str, list[str]] = {}
    for line in head:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    return found


def _cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={value}"}


def _signed(
    email: str = "admin@example.com",
    *,
    admin: bool = True,
    key: str = NEW_KEY,
    salt: str | None = None,
    clock: Callable[[], float] = time.time,
    max_age: int = DEFAULT_MAX_AGE,
) -> str:
    extra = {} if salt is None else {"salt": salt}
    auth = SignedCookieAuth(key, clock=clock, max_age=max_age, **extra)
    return auth.cookie_value(email, admin=admin)


def _flipped_admin_flag() -> str:
    """A non-admin's genuine cookie with the payload swapped for an admin one."""
    _payload, timestamp, signature = _signed("user@example.com", admin=False).split(".")
    forged = json.dumps({"e": "user@example.com", "a": True}, separators=(",", ":"))
    payload = base64.urlsafe_b64encode(forged.encode()).decode().rstrip("=")
    return f"{payload}.{timestamp}.{signature}"


# (target, extra headers, acceptable statuses, where a 302 may point)
PATH_CASES = [
    pytest.param(b"/tasks/x", {}, {302}, LOGIN, id="plain protected URL asks for sign-in"),
    pytest.param(b"/tasks/", {}, {302}, LOGIN, id="protected prefix with empty rest"),
    pytest.param(b"//tasks/x", {}, {302, 400}, LOGIN, id="leading double slash"),
    pytest.param(b"///tasks/x", {}, {302, 400}, LOGIN, id="leading triple slash"),
    pytest.param(b"/public//../tasks/x", {}, {400}, None, id="empty segment before dot-dot"),
    pytest.param(b"/%2Ftasks/x", {}, {302, 400}, LOGIN, id="encoded slash makes an empty segment"),
    pytest.param(b"/%2ftasks/x", {}, {302, 400}, LOGIN, id="lower-case encoded slash"),
    pytest.param(b"/./tasks/x", {}, {302, 400}, LOGIN, id="dot segment in front"),
    pytest.param(b"/%2e/tasks/x", {}, {400}, None, id="encoded dot segment"),
    pytest.param(b"/public/../tasks/x", {}, {400}, None, id="dot-dot out of a public prefix"),
    pytest.param(b"/public/%2e%2e/tasks/x", {}, {400}, None, id="encoded dot-dot"),
    pytest.param(b"/public/%2E%2E/tasks/x", {}, {400}, None, id="upper-case encoded dot-dot"),
    pytest.param(b"/public/.%2e/tasks/x", {}, {400}, None, id="half-encoded dot-dot"),
    pytest.param(b"/public/..%2ftasks/x", {}, {400}, None, id="dot-dot then encoded slash"),
    pytest.param(b"/tasks/x/..", {}, {400}, None, id="trailing dot-dot"),
    pytest.param(b"/secure/../tasks/x", {}, {400}, None, id="dot-dot out of another rule"),
    pytest.param(b"/public%0A/../tasks/x", {}, {400}, None, id="encoded LF in the path"),
    pytest.param(b"/tasks/x%0D", {}, {400}, None, id="encoded CR in the path"),
    pytest.param(b"/public%00/../tasks/x", {}, {400}, None, id="encoded NUL in the path"),
    pytest.param(b"/tasks/x%00.css", {}, {400}, None, id="NUL before an extension"),
    pytest.param(b"/tasks/%7F", {}, {400}, None, id="encoded DEL"),
    pytest.param(b"/tasks/%C2%85", {}, {400}, None, id="C1 control NEL as UTF-8"),
    pytest.param(b"/public/..\\tasks\\x", {}, {400}, None, id="raw backslashes"),
    pytest.param(b"/public/..%5Ctasks%5Cx", {}, {400}, None, id="encoded backslashes"),
    pytest.param(b"/public%5C..%5C..%5Ctasks/x", {}, {400}, None, id="encoded backslash dot-dot"),
    pytest.param(b"tasks/x", {}, {400}, None, id="no leading slash"),
    pytest.param(b"*", {}, {400, 404}, None, id="asterisk-form target"),
    pytest.param(b"http://127.0.0.1/tasks/x", {}, {302}, LOGIN, id="absolute-form target"),
    pytest.param(
        b"http://evil.example/tasks/x", {}, {302, 400}, LOGIN, id="absolute-form other host"
    ),
    pytest.param(
        b"http://127.0.0.1//tasks/x", {}, {302, 400}, LOGIN, id="absolute-form double slash"
    ),
    pytest.param(
        b"http://127.0.0.1/public/../tasks/x", {}, {400}, None, id="absolute-form dot-dot"
    ),
    pytest.param(b"/%74asks/x", {}, {302}, LOGIN, id="percent-encoded letter"),
    pytest.param(b"/tasks%2Fx", {}, {302}, LOGIN, id="encoded slash inside the rule"),
    pytest.param(b"/tasks/t%C3%A2che", {}, {302}, LOGIN, id="UTF-8 name under the rule"),
    pytest.param(b"/t%C3%A2sks/x", {}, {404}, None, id="UTF-8 look-alike prefix"),
    pytest.param(b"/tasks/%FF", {}, {302, 400}, LOGIN, id="invalid UTF-8 byte"),
    pytest.param(b"/public/..%C0%AFtasks/x", {}, {200, 400}, None, id="overlong UTF-8 slash"),
    pytest.param(
        b"/public/..%EF%BC%8Ftasks/x", {}, {200}, None, id="fullwidth solidus is not a slash"
    ),
    pytest.param(b"/Tasks/x", {}, {404}, None, id="case variant is another URL"),
    pytest.param(b"/TASKS/x", {}, {404}, None, id="upper-case variant is another URL"),
    pytest.param(b"/tasks./x", {}, {404}, None, id="trailing dot on the prefix"),
    pytest.param(b"/tasks", {}, {404}, None, id="bare prefix without slash"),
    pytest.param(b"/public/..;/tasks/x", {}, {200}, None, id="dot-dot with path parameter"),
    pytest.param(b"/public/%252e%252e/tasks/x", {}, {200}, None, id="double-encoded dot-dot"),
    pytest.param(
        b"/tasks/x", {"SCRIPT_NAME": "/tas"}, {302, 400}, LOGIN, id="SCRIPT_NAME splits prefix"
    ),
    pytest.param(
        b"/tasks/x", {"SCRIPT_NAME": "/tasks"}, {302}, LOGIN, id="SCRIPT_NAME is the prefix"
    ),
    pytest.param(
        b"/tasks/x",
        {"X-AppEngine-User-Is-Admin": "1"},
        {302},
        LOGIN,
        id="stranger sends X-AppEngine-User-Is-Admin",
    ),
    pytest.param(
        b"/tasks/x",
        {"X-AppEngine-Fake-Is-Admin": "1"},
        {302},
        LOGIN,
        id="stranger sends X-AppEngine-Fake-Is-Admin",
    ),
    pytest.param(
        b"/tasks/x",
        {"X_AppEngine_User_Is_Admin": "1"},
        {302},
        LOGIN,
        id="underscore spelling of the admin header",
    ),
    pytest.param(
        b"/tasks/x",
        {"X-AppEngine-User-Email": "admin@example.com", "X-AppEngine-User-Id": "1"},
        {302},
        LOGIN,
        id="stranger sends X-AppEngine-User-Email",
    ),
    pytest.param(
        b"/tasks/x",
        {"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "t1"},
        {302},
        LOGIN,
        id="forged task headers",
    ),
    pytest.param(
        b"/tasks/x",
        {"X-Forwarded-For": "0.1.0.2", "X-AppEngine-QueueName": "default"},
        {302},
        LOGIN,
        id="forged queue address in X-Forwarded-For",
    ),
    pytest.param(
        b"/tasks/x",
        {
            "X-Forwarded-For": "0.1.0.2",
            "X-Real-IP": "0.1.0.2",
            "Forwarded": "for=0.1.0.2",
            "X-AppEngine-QueueName": "default",
            "X-AppEngine-TaskName": "t1",
        },
        {302},
        LOGIN,
        id="complete forged task from the queue's address",
    ),
    pytest.param(b"/members/x", {}, {401}, None, id="login required with unauthorized action"),
    pytest.param(b"/secure/x", {}, {302}, "https://", id="secure always over plain HTTP"),
    pytest.param(b"/static/../tasks/x", {}, {400}, None, id="dot-dot out of a static_dir"),
]


@pytest.mark.parametrize(("target", "headers", "statuses", "location"), PATH_CASES)
def test_no_spelling_reaches_the_protected_view(
    server: Server,
    target: bytes,
    headers: dict[str, str],
    statuses: set[int],
    location: str | None,
) -> None:
    """A stranger never runs a protected view, whatever the spelling of its URL."""
    before = server.runs()
    response = server.send("GET", target, headers)
    status = status_of(response)
    assert status in statuses, response[:400]
    if status == 302:
        assert location is not None
        assert _headers(response)["location"][0].startswith(location)
    assert server.runs() == before, f"protected view ran on {server.kind} for {target!r}"


def test_post_to_protected_url_is_refused_too(server: Server) -> None:
    """The rules cover every method: a stranger's POST is sent to sign in, not run."""
    before = server.runs()
    response = server.send(
        "POST",
        b"/tasks/x",
        {"Content-Type": "application/x-www-form-urlencoded"},
        b"amount=1",
    )
    assert status_of(response) == 302
    assert server.runs() == before


def test_signed_in_admin_runs_the_view(server: Server) -> None:
    """Control: the same server does run the protected view for an admin, so the log works."""
    before = server.runs()
    response = server.send("GET", b"/tasks/x", _cookie(_signed()))
    assert status_of(response) == 200, response[:400]
    assert server.runs() == before + 1


def test_admin_cookie_does_not_unlock_odd_spellings(server: Server) -> None:
    """The path rules hold for admins too: ``/public/../tasks/x`` is 400 for everyone."""
    before = server.runs()
    response = server.send("GET", b"/public/../tasks/x", _cookie(_signed()))
    assert status_of(response) == 400
    assert server.runs() == before


now = time.time()

# (cookie value, expected status, whether the view runs)
COOKIE_CASES = [
    pytest.param(_signed(), 200, True, id="valid admin cookie"),
    pytest.param(_signed(key=OLD_KEY), 200, True, id="rotation: old key still verifies"),
    pytest.param(_signed("user@example.com", admin=False), 403, False, id="signed-in non-admin"),
    pytest.param(_signed(key=RETIRED_KEY), 302, False, id="rotation: retired key refused"),
    pytest.param(_signed(key="x" * 40), 302, False, id="cookie signed with another key"),
    pytest.param(_signed(salt="another.salt"), 302, False, id="cookie signed with another salt"),
    pytest.param(
        _signed(clock=lambda: now - DEFAULT_MAX_AGE - 60), 302, False, id="expired cookie"
    ),
    pytest.param(_signed(clock=lambda: now + 3600), 302, False, id="cookie dated in the future"),
    pytest.param(
        _signed(max_age=10 * DEFAULT_MAX_AGE, clock=lambda: now - 2 * DEFAULT_MAX_AGE),
        302,
        False,
        id="issuer's longer max_age is not the server's",
    ),
    pytest.param("eyJlIjoiYUBiLmMiLCJhIjp0cnVlfQ.Zz.AAAA", 302, False, id="forged cookie"),
    pytest.param(_signed()[:-4], 302, False, id="truncated signature"),
    pytest.param(_flipped_admin_flag(), 302, False, id="admin flag flipped in the payload"),
    pytest.param("", 302, False, id="empty cookie"),
    pytest.param("x" * 5000, 302, False, id="oversized cookie"),
]


@pytest.mark.parametrize(("value", "status", "runs"), COOKIE_CASES)
def test_cookie_cases(cookie_server: Server, value: str, status: int, runs: bool) -> None:
    """Only a current, correctly signed admin cookie opens ``login: admin``."""
    before = cookie_server.runs()
    response = cookie_server.send("GET", b"/tasks/x", _cookie(value))
    assert status_of(response) == status, response[:400]
    assert cookie_server.runs() == before + (1 if runs else 0)


# (continue value, expected Location; "{host}" is the server's host:port)
CONTINUE_CASES = [
    pytest.param("/tasks/x?a=1", "/tasks/x?a=1", id="relative path kept"),
    pytest.param("http://{host}/tasks/x", "/tasks/x", id="same-site absolute URL made relative"),
    pytest.param("https://{host}/tasks/x", "/tasks/x", id="same host over https"),
    pytest.param("//evil.example/", "/", id="scheme-relative other host"),
    pytest.param("///evil.example/", "/", id="triple slash"),
    pytest.param("/\\evil.example/", "/", id="slash backslash"),
    pytest.param("\\\\evil.example/", "/", id="double backslash"),
    pytest.param("https://evil.example/", "/", id="other host"),
    pytest.param("http://{host}@evil.example/", "/", id="our host as user-info"),
    pytest.param("http://{host}//evil.example/", "/", id="same host then double slash"),
    pytest.param("javascript:alert(1)", "/", id="javascript scheme"),
    pytest.param("data:text/html,hi", "/", id="data scheme"),
    pytest.param("http:evil.example", "/", id="scheme without slashes"),
    pytest.param("evil.example/x", "/", id="no leading slash"),
    pytest.param("/\t/evil.example", "/", id="tab that browsers drop"),
    pytest.param(" //evil.example", "/", id="leading space"),
    pytest.param("/x\r\nSet-Cookie: a=b", "/", id="header injection"),
    pytest.param("/t\u00e2che", "/", id="non-ASCII falls back"),
    pytest.param("", "/", id="empty continue"),
]


def _sign_in(server: Server, continue_to: str) -> bytes:
    form = server.send("GET", b"/_ah/login", {})
    assert status_of(form) == 200
    csrf = next(
        c.split(";", 1)[0] for c in _headers(form)["set-cookie"] if c.startswith(f"{COOKIE}_csrf=")
    )
    body = urlencode(
        {
            "email": "admin@example.com",
            "admin": "True",
            "continue": continue_to,
            "csrf": csrf.split("=", 1)[1],
        }
    ).encode()
    return server.send(
        "POST",
        b"/_ah/login",
        {"Content-Type": "application/x-www-form-urlencoded", "Cookie": csrf},
        body,
    )


@pytest.mark.parametrize(("value", "expected"), CONTINUE_CASES)
def test_sign_in_never_redirects_off_site(cookie_server: Server, value: str, expected: str) -> None:
    """After sign-in the user goes back to a same-site path, never to another site."""
    response = _sign_in(cookie_server, value.format(host=cookie_server.host))
    assert status_of(response) == 302, response[:400]
    assert _headers(response)["location"] == [expected]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("/tasks/x", "/tasks/x", id="relative path kept"),
        pytest.param("//evil.example/", "/", id="scheme-relative other host"),
        pytest.param("https://evil.example/", "/", id="other host"),
    ],
)
def test_sign_out_never_redirects_off_site(
    cookie_server: Server, value: str, expected: str
) -> None:
    """Signing out from ``/_ah/logout?continue=`` clears the cookie and stays on the site."""
    target = b"/_ah/logout?" + urlencode({"continue": value}).encode()
    page = cookie_server.send("GET", target, _cookie(_signed()))
    assert status_of(page) == 200
    assert f'name="continue" value="{expected}"'.encode() in page
    csrf = next(
        c.split(";", 1)[0] for c in _headers(page)["set-cookie"] if c.startswith(f"{COOKIE}_csrf=")
    )
    response = cookie_server.send(
        "POST",
        b"/_ah/logout",
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"{COOKIE}={_signed()}; {csrf}",
        },
        urlencode({"continue": value, "csrf": csrf.split("=", 1)[1]}).encode(),
    )
    assert status_of(response) == 302
    headers = _headers(response)
    assert headers["location"] == [expected]
    assert any(c.startswith(f"{COOKIE}=;") for c in headers["set-cookie"])


def test_cross_site_sign_in_post_is_refused(cookie_server: Server) -> None:
    """A sign-in form posted from another origin sets no cookie (login CSRF)."""
    body = urlencode({"email": "evil@example.com", "admin": "True", "csrf": "x" * 43}).encode()
    response = cookie_server.send(
        "POST",
        b"/_ah/login",
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": "https://evil.example",
            "Cookie": f"{COOKIE}_csrf={'x' * 43}",
        },
        body,
    )
    assert status_of(response) == 403
    assert "set-cookie" not in _headers(response)
