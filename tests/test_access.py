"""The pure access core: the request path, the path rules and the decision table (SPEC §4)."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.test import Client, EnvironBuilder

from taskhandler.access import Refusal, check_access, check_path, find_rule
from taskhandler.config import AccessRule, AppConfig
from taskhandler.trust import RequestInfo, TrustPolicy, User
from taskhandler.wsgi import TaskMiddleware, request_view

ADMIN = User("admin@example.com", "1", is_admin=True)
MEMBER = User("member@example.com", "2", is_admin=False)


def _wsgi(text: str) -> str:
    """A path as a PEP 3333 server puts it in the environ (UTF-8 bytes as latin-1)."""
    return text.encode("utf-8").decode("latin-1")


@pytest.mark.parametrize(
    ("script_name", "path_info", "expected"),
    [
        pytest.param("", "/tasks/x", "/tasks/x", id="plain"),
        pytest.param("/tasks", "/x", "/tasks/x", id="mounted app keeps the full path"),
        pytest.param("", _wsgi("/t\u00e2che"), "/t\u00e2che", id="UTF-8 decoded"),
        pytest.param("", _wsgi("/\u4efb\u52a1"), "/\u4efb\u52a1", id="CJK decoded"),
        pytest.param("", "", "", id="empty"),
    ],
)
def test_request_path_wsgi(script_name: str, path_info: str, expected: str) -> None:
    """The rule path is SCRIPT_NAME + PATH_INFO, decoded as UTF-8."""
    view = request_view({"SCRIPT_NAME": script_name, "PATH_INFO": path_info})
    assert (view.path, view.path_error) == (expected, None)


@pytest.mark.parametrize(
    ("script_name", "path_info"),
    [
        pytest.param("", "/tasks/\xff", id="invalid UTF-8 byte"),
        pytest.param("", "/\xc0\xaf", id="overlong UTF-8 slash"),
        pytest.param("", "/\xed\xa0\x80", id="UTF-8 surrogate"),
        pytest.param("", "/t\u00e2che", id="not a WSGI latin-1 string"),
        pytest.param("/tas", "ks/x", id="SCRIPT_NAME splitting a segment"),
    ],
)
def test_request_path_wsgi_refuses_undecodable(script_name: str, path_info: str) -> None:
    """A path that is not UTF-8 is refused with 400 before any rule."""
    view = request_view({"SCRIPT_NAME": script_name, "PATH_INFO": path_info})
    assert view.path_error in (
        "request path is not valid UTF-8",
        "request path below the mount prefix does not start with '/'",
    )


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/", id="root"),
        pytest.param("/tasks/x", id="plain"),
        pytest.param("/tasks/", id="trailing slash"),
        pytest.param("/tasks/x.y", id="dot inside a name"),
        pytest.param("/tasks/...", id="three dots is a name"),
        pytest.param("/tasks/.hidden", id="dotfile"),
        pytest.param("/tasks/a..b", id="two dots inside a name"),
        pytest.param("/t\u00e2che/\u4efb\u52a1", id="non-ASCII"),
        pytest.param("/a;b=c/d", id="path parameter"),
        pytest.param("/a%2e%2e/b", id="literal percent is text"),
    ],
)
def test_check_path_accepts(path: str) -> None:
    """Ordinary paths pass the path rules."""
    assert check_path(path) is None


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        pytest.param("", "start with", id="empty"),
        pytest.param("tasks/x", "start with", id="no leading slash"),
        pytest.param("*", "start with", id="asterisk"),
        pytest.param("//tasks/x", "empty segment", id="leading double slash"),
        pytest.param("/tasks//x", "empty segment", id="inner double slash"),
        pytest.param("/tasks/x//", "empty segment", id="trailing double slash"),
        pytest.param("/.", "'.'", id="dot at the end"),
        pytest.param("/./tasks/x", "'.'", id="dot segment"),
        pytest.param("/tasks/x/.", "'.'", id="trailing dot segment"),
        pytest.param("/..", "'..'", id="dot-dot at root"),
        pytest.param("/public/../tasks/x", "'..'", id="dot-dot segment"),
        pytest.param("/tasks/x/..", "'..'", id="trailing dot-dot"),
        pytest.param("/tasks/x\x00", "control", id="NUL"),
        pytest.param("/tasks\n/x", "control", id="LF"),
        pytest.param("/tasks\r/x", "control", id="CR"),
        pytest.param("/tasks\t/x", "control", id="tab"),
        pytest.param("/tasks/\x7f", "control", id="DEL"),
        pytest.param("/tasks/\x85", "control", id="C1 NEL"),
        pytest.param("/public\\..\\tasks", "backslash", id="backslash"),
    ],
)
def test_check_path_refuses(path: str, fragment: str) -> None:
    """Every spelling a server or router might read differently is refused with 400."""
    refusal = check_path(path)
    assert refusal is not None
    assert refusal.status == 400
    assert fragment in refusal.reason


def test_first_matching_rule_wins() -> None:
    """Rules are tried in order; the first full match decides, later ones are not consulted."""
    rules = [
        AccessRule(url=r"/tasks/open"),
        AccessRule(url=r"/tasks/.*", login="admin"),
    ]
    assert find_rule(rules, "/tasks/open") is rules[0]
    assert find_rule(rules, "/tasks/other") is rules[1]
    assert find_rule(rules, "/tasks") is None
    assert find_rule(rules, "/tasks/open/x") is rules[1]


@pytest.mark.parametrize(
    ("url", "path", "matches"),
    [
        pytest.param("/tasks/.*", "/tasks/a\nb", True, id="dot matches newline"),
        pytest.param("/tasks/.*", "/Tasks/x", False, id="case-sensitive"),
        pytest.param("/tasks", "/tasks/x", False, id="full match, not prefix"),
        pytest.param("/tasks/.*", "/x/tasks/y", False, id="anchored at the start"),
    ],
)
def test_matching_semantics(url: str, path: str, matches: bool) -> None:
    """Rules use re.fullmatch with DOTALL, case-sensitively, as App Engine does."""
    assert AccessRule(url=url).matches(path) is matches


def _user(user: User | None) -> Callable[[], User | None]:
    return lambda: user


def _decide(
    rule: AccessRule,
    *,
    user: User | None = None,
    trusted: bool = False,
    scheme: str = "http",
    path: str = "/p/x",
    query: str = "",
    host: str = "example.com",
) -> Refusal | None:
    return check_access(
        [rule],
        path=path,
        scheme=scheme,
        host=host,
        query_string=query,
        trusted=trusted,
        user=_user(user),
    )


ADMIN_RULE = AccessRule(url="/p/.*", login="admin")
REQUIRED_RULE = AccessRule(url="/p/.*", login="required")
UNAUTH_ADMIN = AccessRule(url="/p/.*", login="admin", auth_fail_action="unauthorized")
SECURE_RULE = AccessRule(url="/p/.*", secure="always")
SECURE_ADMIN = AccessRule(url="/p/.*", login="admin", secure="always")

# (rule, user, trusted, scheme, expected status or None)
DECISIONS = [
    pytest.param(AccessRule(url="/p/.*"), None, False, "http", None, id="optional: anyone"),
    pytest.param(ADMIN_RULE, None, True, "http", None, id="admin: the queue passes"),
    pytest.param(ADMIN_RULE, ADMIN, False, "http", None, id="admin: an admin passes"),
    pytest.param(ADMIN_RULE, MEMBER, False, "http", 403, id="admin: a non-admin is forbidden"),
    pytest.param(ADMIN_RULE, None, False, "http", 302, id="admin: nobody is sent to sign in"),
    pytest.param(UNAUTH_ADMIN, None, False, "http", 401, id="admin: unauthorized action"),
    pytest.param(UNAUTH_ADMIN, MEMBER, False, "http", 403, id="admin: unauthorized non-admin"),
    pytest.param(REQUIRED_RULE, MEMBER, False, "http", None, id="required: any user passes"),
    pytest.param(REQUIRED_RULE, ADMIN, False, "http", None, id="required: an admin passes"),
    pytest.param(REQUIRED_RULE, None, False, "http", 302, id="required: nobody signs in"),
    pytest.param(REQUIRED_RULE, None, True, "http", None, id="required: the queue passes"),
    pytest.param(SECURE_RULE, None, False, "http", 302, id="secure: http is redirected"),
    pytest.param(SECURE_RULE, None, False, "https", None, id="secure: https passes"),
    pytest.param(SECURE_RULE, None, True, "http", None, id="secure: the queue is not redirected"),
    pytest.param(SECURE_ADMIN, ADMIN, False, "http", 302, id="secure first even for an admin"),
    pytest.param(SECURE_ADMIN, MEMBER, False, "https", 403, id="secure admin over https"),
    pytest.param(
        AccessRule(url="/p/.*", secure="never"),
        None,
        False,
        "https",
        None,
        id="never: no downgrade",
    ),
    pytest.param(
        AccessRule(url="/p/.*", secure="default"), None, False, "http", None, id="default secure"
    ),
]


@pytest.mark.parametrize(("rule", "user", "trusted", "scheme", "status"), DECISIONS)
def test_decision_table(
    rule: AccessRule, user: User | None, trusted: bool, scheme: str, status: int | None
) -> None:
    """Each rule/user/source combination gets exactly the status SPEC §4 gives it."""
    refusal = _decide(rule, user=user, trusted=trusted, scheme=scheme)
    assert (None if refusal is None else refusal.status) == status


def test_sign_in_redirect_carries_the_original_url() -> None:
    """Nobody signed in: 302 to the login URL with continue=<original URL>, query included."""
    refusal = _decide(ADMIN_RULE, path="/p/t\u00e2che", query="a=1&b=%20")
    assert refusal is not None
    assert refusal.location is not None
    url = urlsplit(refusal.location)
    assert url.path == "/_ah/login"
    assert parse_qs(url.query) == {"continue": ["http://example.com/p/t%C3%A2che?a=1&b=%20"]}


def test_login_url_with_query_gets_continue_appended() -> None:
    """A login URL that has a query already gets ``&continue=``."""
    refusal = check_access(
        [ADMIN_RULE],
        path="/p/x",
        scheme="https",
        host="example.com",
        query_string="",
        trusted=False,
        user=_user(None),
        login_url="https://idp.example/login?app=1",
    )
    assert refusal is not None
    assert refusal.location == (
        "https://idp.example/login?app=1&continue=https%3A%2F%2Fexample.com%2Fp%2Fx"
    )


def test_secure_redirect_keeps_path_and_query() -> None:
    """``secure: always`` over HTTP goes to the same URL with https, query kept."""
    refusal = _decide(SECURE_RULE, path="/p/x y", query="a=1&b=2", host="example.com:8080")
    assert refusal == Refusal(
        302, "this URL requires HTTPS", "https://example.com:8080/p/x%20y?a=1&b=2"
    )


@pytest.mark.parametrize(
    ("host", "query"),
    [
        pytest.param("evil.example/x", "", id="slash in Host"),
        pytest.param("a@evil.example", "", id="user-info in Host"),
        pytest.param("example.com\r\nSet-Cookie: a", "", id="CRLF in Host"),
        pytest.param("", "", id="empty Host"),
        pytest.param("example.com", "a=\r\nb", id="CRLF in query"),
        pytest.param("example.com", "a=\u00e9", id="non-ASCII query"),
    ],
)
def test_redirect_refuses_what_it_cannot_echo(host: str, query: str) -> None:
    """A redirect is never built from a Host or query that could break the Location header."""
    refusal = _decide(ADMIN_RULE, host=host, query=query)
    assert refusal is not None
    assert refusal.status == 400
    assert refusal.location is None


def test_user_is_not_asked_when_no_rule_needs_it() -> None:
    """The authenticator is asked only when a matching rule needs a user."""
    asked: list[bool] = []

    def user() -> User | None:
        asked.append(True)
        return None

    rules = [AccessRule(url="/p/.*", login="admin"), AccessRule(url="/.*", secure="always")]
    for path, scheme in [("/other", "https"), ("/other", "http")]:
        check_access(
            rules, path=path, scheme=scheme, host="h", query_string="", trusted=False, user=user
        )
    check_access(
        rules, path="/p/x", scheme="http", host="h", query_string="", trusted=True, user=user
    )
    assert asked == []
    check_access(
        rules, path="/p/x", scheme="http", host="h", query_string="", trusted=False, user=user
    )
    assert asked == [True]


# --------------------------------------------------------------------------- through the middleware


def _view(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ran"]


@pytest.mark.parametrize(
    ("authenticator", "status"),
    [
        pytest.param(lambda request: None, 302, id="callable saying nobody"),
        pytest.param(lambda request: MEMBER, 403, id="callable saying a member"),
        pytest.param(lambda request: ADMIN, 200, id="callable saying an admin"),
        pytest.param(
            lambda request: ADMIN if request.header("x-test-user") == "admin" else None,
            200,
            id="callable reading the request",
        ),
    ],
)
def test_plain_callable_is_an_authenticator(
    authenticator: Callable[[RequestInfo], User | None], status: int
) -> None:
    """Any callable RequestInfo -> User | None works as the middleware's authenticator."""
    app = TaskMiddleware(
        _view,
        config=AppConfig(rules=[AccessRule(url="/tasks/.*", login="admin")]),
        authenticator=authenticator,
    )
    response = Client(app).get("/tasks/x", headers={"X-Test-User": "admin"})
    assert response.status_code == status


@pytest.mark.parametrize(
    ("script_name", "path_info", "status"),
    [
        pytest.param("/tasks", "/x", 302, id="mounted under the protected prefix"),
        pytest.param("/tas", "ks/x", 400, id="SCRIPT_NAME splits the prefix"),
        pytest.param("/public", "/../tasks/x", 400, id="dot-dot across the mount"),
        pytest.param("/public/", "/x", 400, id="slash on both sides of the mount"),
        pytest.param("", "/public/x", 200, id="open URL"),
    ],
)
def test_middleware_matches_the_whole_path(script_name: str, path_info: str, status: int) -> None:
    """The middleware matches SCRIPT_NAME + PATH_INFO, so a mount cannot hide a prefix."""
    app = TaskMiddleware(
        _view,
        config=AppConfig(rules=[AccessRule(url="/tasks/.*", login="admin")]),
        authenticator=lambda request: None,
    )
    environ = EnvironBuilder(path="/").get_environ()
    environ["SCRIPT_NAME"] = script_name
    environ["PATH_INFO"] = path_info
    started: list[str] = []
    body = b"".join(app(environ, lambda s, h, e=None: started.append(s)))  # type: ignore[misc]
    assert int(started[0].split()[0]) == status
    assert (body == b"ran") is (status == 200)


def test_trusted_queue_request_passes_login_admin() -> None:
    """A task request from the queue's address reaches a ``login: admin`` URL with no user."""
    app = TaskMiddleware(
        _view,
        trust=TrustPolicy(queue_sources=["127.0.0.1"]),
        config=AppConfig(rules=[AccessRule(url="/tasks/.*", login="admin", secure="always")]),
        authenticator=lambda request: None,
    )
    headers = {"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "t1"}
    response = Client(app).post(
        "/tasks/x", headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"}
    )
    assert response.status_code == 200
    stranger = Client(app).post(
        "/tasks/x", headers=headers, environ_base={"REMOTE_ADDR": "203.0.113.9"}
    )
    assert stranger.status_code == 302


# --------------------------------------------------------------------------- property


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="/.a\\%\x00\n\u00e9\u2215", max_size=14))
def test_accepted_paths_are_already_normal(path: str) -> None:
    """Any path check_path accepts is unchanged by normalisation, so rule and router agree."""
    if check_path(path) is not None:
        return
    normal = posixpath.normpath(path.replace("\\", "/"))
    if path.endswith("/") and normal != "/":
        normal += "/"
    assert normal == path
    rule = AccessRule(url="/a/.*", login="admin")
    assert rule.matches(path) is rule.matches(normal)
