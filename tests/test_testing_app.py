"""TaskTestApp: task requests the default trust believes, signed-in copies, outcomes, deadlines."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import flask
import pytest

from taskhandler import task_handler
from taskhandler.auth import SignedCookieAuth
from taskhandler.config import AccessRule, AppConfig
from taskhandler.context import TaskContext, current_task
from taskhandler.deadline import DeadlineExceededError, check_deadline
from taskhandler.exceptions import ConfigError, PermanentTaskFailure, RetryTask
from taskhandler.testing import TaskTestApp, TaskTestResponse
from taskhandler.trust import RequestInfo, User
from taskhandler.wsgi import TaskMiddleware

with warnings.catch_warnings():  # webob imports the deprecated cgi module
    warnings.filterwarnings("ignore", "'cgi' is deprecated", DeprecationWarning)
    import webtest

KEY = "k" * 32


def echo(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A plain WSGI app telling what it received, and the task the middleware saw."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    task = current_task()
    seen = {
        "task": None if task is None else task.model_dump(mode="json"),
        "remaining": None if task is None else task.time_remaining(),
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ.get("QUERY_STRING", ""),
        "content_type": environ.get("CONTENT_TYPE", ""),
        "body": environ["wsgi.input"].read(length).decode() if length else "",
        "peer": environ.get("REMOTE_ADDR"),
        "user_agent": environ.get("HTTP_USER_AGENT"),
        "task_headers": sorted(k for k in environ if k.startswith("HTTP_X_APPENGINE_")),
    }
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


@pytest.fixture
def app() -> TaskTestApp:
    return TaskTestApp(TaskMiddleware(echo))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {"task_name": "count-1"},
            {"queue_name": "default", "task_name": "count-1", "retry_count": 0},
            id="defaults",
        ),
        pytest.param(
            {"task_name": "t", "queue_name": "mail", "retry_count": 3},
            {"queue_name": "mail", "retry_count": 3, "execution_count": 3},
            id="execution count follows retry count",
        ),
        pytest.param(
            {"task_name": "t", "retry_count": 3, "execution_count": 1},
            {"retry_count": 3, "execution_count": 1},
            id="execution count given",
        ),
        pytest.param(
            {"task_name": "t", "previous_response": 503, "retry_reason": "overloaded"},
            {"previous_response": 503, "retry_reason": "overloaded"},
            id="previous response and reason",
        ),
        pytest.param(
            {"task_name": "t", "eta": datetime(2030, 1, 2, 3, 4, 5, 500000, timezone.utc)},
            {"eta": "2030-01-02T03:04:05.500000Z"},
            id="eta",
        ),
    ],
)
def test_post_task_sends_what_the_queue_sends(
    app: TaskTestApp, kwargs: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Every task field given to post_task reaches the handler's TaskContext, trusted."""
    seen = app.post_task("/tasks/x", **kwargs).json
    assert seen["task"]["trusted_by"] == "queue"
    for name, value in expected.items():
        assert seen["task"][name] == value, name
    assert seen["peer"] == "0.1.0.2"
    assert seen["user_agent"].startswith("AppEngine-Google")


def test_task_headers_round_trip(app: TaskTestApp) -> None:
    """The handler's context equals the one the headers were built from."""
    eta = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    seen = app.post_task("/t", task_name="n", queue_name="q", retry_count=2, eta=eta).json
    sent = TaskContext(queue_name="q", task_name="n", retry_count=2, execution_count=2, eta=eta)
    assert TaskContext.model_validate({**seen["task"], "eta": eta}) == sent
    assert "HTTP_X_APPENGINE_TASKETA" in seen["task_headers"]


def test_generated_task_names_are_unique_and_valid(app: TaskTestApp) -> None:
    """Without task_name, each request gets a new valid name, as the queue gives one."""
    names = {app.post_task("/t").json["task"]["task_name"] for _ in range(5)}
    assert len(names) == 5
    for name in names:
        TaskContext(queue_name="default", task_name=name)


def test_eta_defaults_to_now(app: TaskTestApp) -> None:
    """App Engine always sends TaskETA; without eta= it is the time of sending."""
    before = datetime.now(timezone.utc).replace(microsecond=0)
    eta = datetime.fromisoformat(app.post_task("/t").json["task"]["eta"].replace("Z", "+00:00"))
    assert before <= eta <= datetime.now(timezone.utc)


@pytest.mark.parametrize(
    ("kwargs", "method", "query", "content_type", "body"),
    [
        pytest.param(
            {"params": {"name": "a", "n": ["1", "2"]}},
            "POST",
            "",
            "application/x-www-form-urlencoded",
            "name=a&n=1&n=2",
            id="params in a POST body",
        ),
        pytest.param(
            {"params": {"name": "a b"}, "method": "get"},
            "GET",
            "name=a+b",
            "",
            "",
            id="params in a GET query",
        ),
        pytest.param(
            {"params": [("x", "1")], "method": "DELETE"},
            "DELETE",
            "x=1",
            "",
            "",
            id="params in a DELETE query",
        ),
        pytest.param(
            {"payload": b"\x00raw"},
            "POST",
            "",
            "application/octet-stream",
            "\x00raw",
            id="bytes payload",
        ),
        pytest.param(
            {"payload": "héllo", "method": "PUT"},
            "PUT",
            "",
            "text/plain; charset=utf-8",
            "héllo",
            id="text payload",
        ),
        pytest.param(
            {"json": {"amount": 2}},
            "POST",
            "",
            "application/json",
            '{"amount": 2}',
            id="json body",
        ),
        pytest.param({}, "POST", "", "", "", id="no body"),
    ],
)
def test_body_is_encoded_as_taskqueue_add_would(
    app: TaskTestApp,
    kwargs: dict[str, Any],
    method: str,
    query: str,
    content_type: str,
    body: str,
) -> None:
    """params, payload and json become the body or query string a queued task carries."""
    seen = app.post_task("/tasks/x", **kwargs).json
    assert (seen["method"], seen["query"], seen["content_type"], seen["body"]) == (
        method,
        query,
        content_type,
        body,
    )


def test_url_query_is_kept(app: TaskTestApp) -> None:
    """A query string in the URL stays, and GET params are appended to it."""
    assert app.post_task("/t?a=1", params={"b": "2"}, method="GET").json["query"] == "a=1&b=2"


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"params": {"a": "1"}, "payload": b"x"}, id="params and payload"),
        pytest.param({"payload": "x", "json": {}}, id="payload and json"),
        pytest.param({"payload": "x", "method": "GET"}, id="payload on a GET"),
        pytest.param({"json": [1], "method": "HEAD"}, id="json on a HEAD"),
    ],
)
def test_refuses_a_task_the_queue_would_refuse(app: TaskTestApp, kwargs: dict[str, Any]) -> None:
    """Body arguments that cannot go together fail before anything is sent."""
    with pytest.raises(ValueError, match="post_task"):
        app.post_task("/t", **kwargs)


def test_invalid_task_field_fails_at_the_call() -> None:
    """A task name the queue would refuse fails in the test, not as a puzzling 400."""
    with pytest.raises(ValueError, match="task_name"):
        TaskTestApp(TaskMiddleware(echo)).post_task("/t", task_name="bad name")


def test_headers_replace_generated_ones(app: TaskTestApp) -> None:
    """headers= overrides a generated header, e.g. to send a malformed one on purpose."""
    res = app.post_task("/t", headers={"X-AppEngine-TaskRetryCount": "-1"}, status=400)
    assert res.task_outcome == "rejected"
    assert "TaskRetryCount" in res.text


def test_ordinary_requests_are_not_trusted(app: TaskTestApp) -> None:
    """get/post stay client requests: spoofed task headers are stripped before the app."""
    seen = app.post("/t", headers={"X-AppEngine-QueueName": "default"}).json
    assert seen["task"] is None
    assert seen["task_headers"] == []


OUTCOMES = {
    "return": lambda: None,
    "retry": lambda: (_ for _ in ()).throw(RetryTask("later", status=503)),
    "permanent": lambda: (_ for _ in ()).throw(PermanentTaskFailure("bad input")),
    "deadline": lambda: (_ for _ in ()).throw(DeadlineExceededError()),
    "crash": lambda: (_ for _ in ()).throw(KeyError("boom")),
}


@pytest.mark.parametrize(
    ("behaviour", "status", "outcome"),
    [
        pytest.param("return", 200, "success", id="success"),
        pytest.param("retry", 503, "retry", id="RetryTask"),
        pytest.param("permanent", 200, "permanent-failure", id="PermanentTaskFailure"),
        pytest.param("deadline", 500, "deadline-exceeded", id="DeadlineExceededError"),
        pytest.param("crash", 500, "retry", id="unexpected exception"),
    ],
)
def test_task_outcome(behaviour: str, status: int, outcome: str) -> None:
    """Responses expose X-Task-Outcome as .task_outcome."""

    @task_handler
    def handler(task: TaskContext) -> None:
        OUTCOMES[behaviour]()

    res = TaskTestApp(handler).post_task("/t", expect_errors=True)
    assert isinstance(res, TaskTestResponse)
    assert (res.status_int, res.task_outcome) == (status, outcome)


def test_unexpected_status_fails_loudly() -> None:
    """A failing task raises webtest.AppError unless status= or expect_errors= says so."""

    @task_handler
    def handler(task: TaskContext) -> None:
        raise RetryTask("not yet")

    app = TaskTestApp(handler)
    with pytest.raises(webtest.AppError, match="500"):
        app.post_task("/t")
    assert app.post_task("/t", status=500).task_outcome == "retry"
    assert app.post_task("/t", expect_errors=True).status_int == 500
    with pytest.raises(webtest.AppError, match="not 200"):
        app.post_task("/t", status=200)


def test_ordinary_request_to_a_task_handler_is_rejected() -> None:
    """A @task_handler with no middleware applies its own trust: a plain POST gets 403."""

    @task_handler
    def handler(task: TaskContext) -> None:
        return None

    app = TaskTestApp(handler)
    assert app.post("/t", status=403).task_outcome == "rejected"
    assert app.post_task("/t").task_outcome == "success"


def flask_app(wrap: bool) -> Any:
    web = flask.Flask(__name__)

    @task_handler
    def count(task: TaskContext) -> dict[str, Any]:
        return {"task_name": task.task_name, "trusted_by": task.trusted_by}

    web.add_url_rule("/tasks/count", view_func=count, methods=["POST"])
    if wrap:
        web.wsgi_app = TaskMiddleware(web.wsgi_app)  # type: ignore[method-assign]
    return web


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: flask_app(wrap=False), id="Flask view, no middleware"),
        pytest.param(lambda: flask_app(wrap=True), id="Flask app behind TaskMiddleware"),
    ],
)
def test_works_with_flask(make: Any) -> None:
    """post_task reaches @task_handler views of a Flask app, with or without the middleware."""
    res = TaskTestApp(make()).post_task("/tasks/count", task_name="c-1")
    assert res.json == {"task_name": "c-1", "trusted_by": "queue"}
    assert res.task_outcome == "success"


# -- deadlines ----------------------------------------------------------------------------


def cooperative(task: TaskContext) -> str:
    """Works in small steps, checking the deadline between them, for at most 2 s."""
    end = time.monotonic() + 2
    while time.monotonic() < end:
        check_deadline()
        time.sleep(0.002)
    return "finished"


def stubborn(task: TaskContext) -> str:
    """Swallows the deadline error and keeps going past the hard deadline."""
    try:
        cooperative(task)
    except DeadlineExceededError:
        time.sleep(0.03)
    return "finished late"


@pytest.mark.parametrize(
    "func",
    [
        pytest.param(cooperative, id="handler stopped at its soft deadline"),
        pytest.param(stubborn, id="handler that overran its deadline"),
    ],
)
def test_deadline_is_tested_in_milliseconds(func: Any) -> None:
    """post_task(deadline=) runs one request under a short task deadline."""
    app = TaskTestApp(task_handler(func))
    res = app.post_task("/t", deadline=0.05, status=500)
    assert res.task_outcome == "deadline-exceeded"


def test_deadline_default_for_a_client() -> None:
    """TaskTestApp(deadline=) applies to every post_task; the context reports it."""
    app = TaskTestApp(TaskMiddleware(echo), deadline=5)
    assert 0 < app.post_task("/t").json["remaining"] <= 4.5  # grace: a tenth of it
    assert 10 < app.post_task("/t", deadline=60).json["remaining"] <= 54


def test_no_deadline_leaves_the_configured_one(app: TaskTestApp) -> None:
    """Without deadline= a task runs under the middleware's deadline (600 s by default)."""
    assert app.post_task("/t").json["remaining"] > 500


def test_network_cannot_set_the_test_deadline(app: TaskTestApp) -> None:
    """Only the environ key shortens a deadline: no header spelling of it has any effect."""
    res = app.post_task(
        "/t",
        headers={"Taskhandler-Deadline": "0.01", "taskhandler.deadline": "0.01"},
    )
    assert res.json["remaining"] > 500


@pytest.mark.parametrize(
    ("deadline", "match"),
    [
        pytest.param(0, "positive", id="zero"),
        pytest.param(-1, "positive", id="negative"),
        pytest.param("1", "number of seconds", id="text"),
        pytest.param(True, "number of seconds", id="bool"),
    ],
)
def test_bad_deadline_is_a_config_error(deadline: Any, match: str, app: TaskTestApp) -> None:
    """A deadline the middleware would refuse fails at the call, naming the value."""
    with pytest.raises(ConfigError, match=match):
        app.post_task("/t", deadline=deadline)
    with pytest.raises(ConfigError, match=match):
        TaskTestApp(TaskMiddleware(echo), deadline=deadline)


def test_deadline_on_an_app_without_taskhandler_fails_loudly() -> None:
    """deadline= on an app no middleware runs cannot be honoured, so it says so."""

    def plain(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    with pytest.raises(AssertionError, match="deadline was not applied"):
        TaskTestApp(plain).post_task("/t", deadline=0.05)


# -- signed-in clients ----------------------------------------------------------------------


RULES = AppConfig(
    rules=[
        AccessRule(url=r"/admin/.*", login="admin"),
        AccessRule(url=r"/account/.*", login="required"),
    ]
)


@pytest.fixture
def guarded() -> TaskTestApp:
    return TaskTestApp(TaskMiddleware(echo, config=RULES, authenticator=SignedCookieAuth(KEY)))


@pytest.mark.parametrize(
    ("who", "path", "status"),
    [
        pytest.param("nobody", "/admin/x", 302, id="nobody on login admin"),
        pytest.param("user", "/admin/x", 403, id="user on login admin"),
        pytest.param("admin", "/admin/x", 200, id="admin on login admin"),
        pytest.param("nobody", "/account/x", 302, id="nobody on login required"),
        pytest.param("user", "/account/x", 200, id="user on login required"),
        pytest.param("admin", "/account/x", 200, id="admin on login required"),
    ],
)
def test_signed_in_copies(guarded: TaskTestApp, who: str, path: str, status: int) -> None:
    """as_user()/as_admin() sign in through the app's SignedCookieAuth."""
    client = {"nobody": guarded, "user": guarded.as_user(), "admin": guarded.as_admin()}[who]
    assert client.get(path, status=status).status_int == status


def test_as_admin_is_a_copy(guarded: TaskTestApp) -> None:
    """Signing in returns a new client; the original stays signed out."""
    admin = guarded.as_admin("boss@example.com")
    assert admin.user == User(email="boss@example.com", is_admin=True)
    assert guarded.user is None
    guarded.get("/admin/x", status=302)
    admin.get("/admin/x", status=200)


def test_copies_keep_the_client_settings() -> None:
    """A signed-in copy keeps extra_environ, deadline and queue address of its original."""
    app = TaskTestApp(
        TaskMiddleware(echo, authenticator=SignedCookieAuth(KEY)),
        extra_environ={"HTTP_X_FROM": "setup"},
        deadline=5,
    )
    app.extra_environ["HTTP_X_LATER"] = "added after"
    admin = app.as_admin()
    assert (admin.deadline, admin.queue_address) == (5, "0.1.0.2")
    assert admin.extra_environ == {"HTTP_X_FROM": "setup", "HTTP_X_LATER": "added after"}
    assert admin.post_task("/t").json["remaining"] <= 4.5


def test_admin_may_send_task_headers(guarded: TaskTestApp) -> None:
    """An admin's ordinary request may carry task headers (testing a handler by hand)."""
    headers = {"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "by-hand"}
    assert guarded.as_admin().post("/t", headers=headers).json["task"]["trusted_by"] == "admin"
    assert guarded.as_user().post("/t", headers=headers).json["task"] is None


def test_admin_runs_a_task_handler_without_task_headers() -> None:
    """An admin opening a @task_handler URL gets a synthetic context, trusted_by admin."""

    @task_handler(authenticator=SignedCookieAuth(KEY))
    def handler(task: TaskContext) -> dict[str, str]:
        return {"queue_name": task.queue_name, "trusted_by": task.trusted_by}

    app = TaskTestApp(handler)
    assert app.as_admin().post("/t").json == {"queue_name": "default", "trusted_by": "admin"}
    assert app.as_user().post("/t", status=403).task_outcome == "rejected"


def header_auth(request: RequestInfo) -> User | None:
    """Stands in for an identity-aware proxy's header (a fake: no proxy runs here)."""
    email = request.header("x-test-user")
    if not email:
        return None
    return User(email=email, is_admin=request.header("x-test-admin") == "1")


def header_sign_in(user: User) -> Mapping[str, str]:
    return {"X-Test-User": user.email, "X-Test-Admin": "1" if user.is_admin else "0"}


def session_auth(request: RequestInfo) -> User | None:
    """Stands in for a framework's session cookie."""
    email = request.cookies.get("session")
    return None if not email else User(email=email, is_admin=email.startswith("admin"))


def test_sign_in_may_set_a_cookie() -> None:
    """A Cookie header from sign_in= goes into the client's cookie jar and is sent."""
    app = TaskTestApp(
        TaskMiddleware(echo, config=RULES, authenticator=session_auth),
        sign_in=lambda user: {"Cookie": f"session={user.email}; other=1"},
    )
    admin = app.as_admin()
    admin.get("/admin/x", status=200)
    assert set(admin.cookies) == {"session", "other"}
    app.as_user().get("/admin/x", status=403)


def test_sign_in_plugs_any_authenticator() -> None:
    """sign_in= tells a client how to sign in to an authenticator of the app's own."""
    app = TaskTestApp(
        TaskMiddleware(echo, config=RULES, authenticator=header_auth), sign_in=header_sign_in
    )
    app.get("/admin/x", status=302)
    app.as_user().get("/admin/x", status=403)
    app.as_admin().get("/admin/x", status=200)


@pytest.mark.parametrize(
    ("app", "match"),
    [
        pytest.param(
            lambda: TaskTestApp(TaskMiddleware(echo)), "no SignedCookieAuth", id="no authenticator"
        ),
        pytest.param(
            lambda: TaskTestApp(TaskMiddleware(echo, authenticator=header_auth)),
            "no SignedCookieAuth",
            id="authenticator without a way to sign in",
        ),
        pytest.param(
            lambda: TaskTestApp(
                TaskMiddleware(echo, authenticator=header_auth),
                sign_in=lambda user: {"X-Test-User": user.email},
            ),
            "does not recognise the test sign-in",
            id="sign_in the authenticator rejects",
        ),
    ],
)
def test_sign_in_that_cannot_work_fails_at_once(app: Any, match: str) -> None:
    """A client that could not sign in says why at as_admin(), not as a 302 later."""
    with pytest.raises(ConfigError, match=match):
        app().as_admin()


def test_explicit_authenticator_is_the_one_signed_in_with() -> None:
    """authenticator= overrides the one found in the app (here: a key the app does not know)."""
    wrapped = TaskMiddleware(echo, config=RULES, authenticator=SignedCookieAuth(KEY))
    TaskTestApp(wrapped).as_admin().get("/admin/x", status=200)
    TaskTestApp(wrapped, authenticator=SignedCookieAuth("z" * 32)).as_admin().get(
        "/admin/x", status=302
    )


def test_not_collected_as_a_test_class() -> None:
    """pytest does not try to collect TaskTestApp because of its name."""
    assert TaskTestApp.__test__ is False
