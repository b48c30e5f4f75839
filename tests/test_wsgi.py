"""The WSGI TaskMiddleware: stripping, trust, 400s, outcomes, logging, isolation (SPEC §1-3, §6)."""

from __future__ import annotations

import gc
import io
import logging
import sys
import threading
from collections.abc import Iterable
from typing import Any

import pytest

from taskhandler import (
    ConfigError,
    PermanentTaskFailure,
    RetryTask,
    TaskMiddleware,
    TrustPolicy,
    User,
    current_task,
)
from taskhandler._watchdog import INTERRUPTS_SUPPORTED, default_watchdog
from taskhandler.deadline import DeadlineExceededError

TASK = {"HTTP_X_APPENGINE_QUEUENAME": "default", "HTTP_X_APPENGINE_TASKNAME": "task-1"}


class Recorder:
    """A WSGI app that records what it saw; raises or answers as told."""

    def __init__(self, status: str = "200 OK", raises: BaseException | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.status = status
        self.raises = raises

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.calls.append({"environ": dict(environ), "task": current_task()})
        if self.raises is not None:
            raise self.raises
        start_response(self.status, [("Content-Type", "text/plain")])
        return [b"ok"]


def call(
    app: Any, peer: str | None = "203.0.113.9", **environ: str
) -> tuple[str, dict[str, str], bytes]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/tasks/x",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "HTTP_HOST": "localhost",
    }
    if peer is not None:
        env["REMOTE_ADDR"] = peer
    env.update(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, dict(headers)
        return lambda data: None

    body = b"".join(app(env, start_response))
    return seen["status"], seen["headers"], body


def task_keys(environ: dict[str, Any]) -> list[str]:
    return [k for k in environ if k.upper().startswith(("HTTP_X_APPENGINE_", "HTTP_X_CLOUDTASKS_"))]


SPOOFS = [
    pytest.param({"HTTP_X_APPENGINE_QUEUENAME": "default"}, id="queue name"),
    pytest.param(TASK, id="queue and task name"),
    pytest.param({"HTTP_X_APPENGINE_TASKRETRYCOUNT": "0"}, id="retry count alone"),
    pytest.param({"HTTP_X_APPENGINE_TASKETA": "1700000000.0"}, id="eta alone"),
    pytest.param({"HTTP_X_APPENGINE_FAILFAST": "true"}, id="fail fast"),
    pytest.param(
        {"HTTP_X_CLOUDTASKS_QUEUENAME": "q", "HTTP_X_CLOUDTASKS_TASKNAME": "t"},
        id="cloud tasks names",
    ),
    pytest.param({"HTTP_X_CLOUDTASKS_TASKRETRYCOUNT": "3"}, id="cloud tasks count"),
    pytest.param({"HTTP_X_APPENGINE_USER_IS_ADMIN": "1"}, id="user is admin claim"),
    pytest.param({"HTTP_X_APPENGINE_FAKE_IS_ADMIN": "1"}, id="dev server fake admin claim"),
    pytest.param({"HTTP_X_APPENGINE_USER_IP": "0.1.0.2"}, id="platform user IP claim"),
    pytest.param({"HTTP_X_APPENGINE_USER_EMAIL": "admin@example.com"}, id="platform user email"),
    pytest.param({"HTTP_X_APPENGINE_COUNTRY": "ZZ"}, id="platform country"),
    pytest.param({"HTTP_X_APPENGINE_CRON": "true"}, id="cron claim"),
    pytest.param({"HTTP_X_APPENGINE_ANYTHING_ELSE": "x"}, id="unknown suffix"),
    pytest.param({"HTTP_X_APPENGINE_": "x"}, id="bare prefix"),
    pytest.param({"HTTP_x_appengine_queuename": "q"}, id="lower-case environ key"),
    pytest.param({"HTTP_X_AppEngine_TaskName": "t"}, id="mixed-case environ key"),
    pytest.param({"HTTP_X_APPENGINE_QUEUENAME": "a,b"}, id="joined duplicate values"),
    pytest.param({"HTTP_X_APPENGINE_QUEUENAME": "q\x00"}, id="NUL in value"),
    pytest.param(
        {
            **TASK,
            "HTTP_X_APPENGINE_TASKRETRYCOUNT": "5",
            "HTTP_X_APPENGINE_TASKEXECUTIONCOUNT": "5",
            "HTTP_X_APPENGINE_TASKETA": "0",
        },
        id="five headers",
    ),
    pytest.param(
        {**TASK, "HTTP_X_FORWARDED_FOR": "0.1.0.2"}, id="X-Forwarded-For claims the queue"
    ),
    pytest.param({**TASK, "HTTP_FORWARDED": "for=0.1.0.2"}, id="Forwarded claims the queue"),
    pytest.param({**TASK, "HTTP_X_REAL_IP": "0.1.0.2"}, id="X-Real-IP claims the queue"),
    pytest.param(
        {**TASK, "HTTP_X_APPENGINE_USER_IP": "0.1.0.2", "HTTP_X_APPENGINE_USER_IS_ADMIN": "1"},
        id="platform claims together",
    ),
]


@pytest.mark.parametrize("headers", SPOOFS)
@pytest.mark.parametrize("peer", ["203.0.113.9", "127.0.0.1", "::1", "0.1.0.3", None])
def test_untrusted_requests_lose_every_task_header(
    headers: dict[str, str], peer: str | None
) -> None:
    """From any peer but the queue, every X-AppEngine-*/X-CloudTasks-* header is gone before the app runs."""
    app = Recorder()
    status, response_headers, _ = call(TaskMiddleware(app), peer=peer, **headers)
    assert status == "200 OK"
    seen = app.calls[0]
    assert task_keys(seen["environ"]) == []
    assert seen["task"] is None
    stripped = seen["environ"]["taskhandler.stripped"]
    assert len(stripped) == len(task_keys(headers)) > 0
    assert all(name.startswith(("x-appengine-", "x-cloudtasks-")) for name in stripped)
    assert "X-Task-Outcome" not in response_headers


def test_plain_request_is_untouched() -> None:
    """A request without task headers reaches the app unchanged, with nothing recorded as stripped."""
    app = Recorder()
    call(TaskMiddleware(app), HTTP_X_OTHER="1")
    assert app.calls[0]["environ"]["HTTP_X_OTHER"] == "1"
    assert "taskhandler.stripped" not in app.calls[0]["environ"]


@pytest.mark.parametrize(
    ("policy", "peer", "extra"),
    [
        pytest.param(TrustPolicy(), "0.1.0.2", {}, id="queue address"),
        pytest.param(TrustPolicy(), "::ffff:0.1.0.2", {}, id="mapped queue address"),
        pytest.param(
            TrustPolicy(queue_sources=["127.0.0.1"]), "127.0.0.1", {}, id="configured source"
        ),
        pytest.param(
            TrustPolicy(trusted_proxies=["10.0.0.0/8"], proxy_drops_underscore_headers=True),
            "10.0.0.5",
            {"HTTP_X_FORWARDED_FOR": "0.1.0.2"},
            id="behind a trusted proxy",
        ),
        pytest.param(TrustPolicy.development(), "203.0.113.9", {}, id="development"),
        pytest.param(TrustPolicy.app_engine(), "169.254.8.1", {}, id="app engine platform"),
    ],
)
def test_trusted_requests_keep_headers_and_get_a_context(
    policy: TrustPolicy, peer: str, extra: dict[str, str]
) -> None:
    """A trusted task request keeps its headers and runs with a TaskContext."""
    app = Recorder()
    status, headers, _ = call(TaskMiddleware(app, trust=policy), peer=peer, **TASK, **extra)
    assert status == "200 OK"
    assert headers["X-Task-Outcome"] == "success"
    seen = app.calls[0]
    assert set(TASK) <= set(seen["environ"])
    assert seen["task"].queue_name == "default"
    assert seen["task"].task_name == "task-1"
    assert seen["environ"]["taskhandler.state"].context == seen["task"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({**TASK, "HTTP_X_APPENGINE_TASKRETRYCOUNT": "-1"}, id="negative count"),
        pytest.param({**TASK, "HTTP_X_APPENGINE_QUEUENAME": "a,b"}, id="duplicate queue name"),
        pytest.param({"HTTP_X_APPENGINE_TASKNAME": "t"}, id="missing queue name"),
        pytest.param({**TASK, "HTTP_X_APPENGINE_TASKETA": "soon"}, id="bad eta"),
        pytest.param(
            {**TASK, "HTTP_X_APPENGINE_TASKNAME": "caf\u00c3\u00a9"}, id="UTF-8 bytes in name"
        ),
    ],
)
def test_trusted_request_with_bad_headers_gets_400_and_app_never_runs(
    headers: dict[str, str],
) -> None:
    """Bad task headers from the queue: 400 with a one-line reason; nothing of the app runs."""
    app = Recorder()
    status, response_headers, body = call(TaskMiddleware(app), peer="0.1.0.2", **headers)
    assert status == "400 Bad Request"
    assert app.calls == []
    assert body.count(b"\n") == 1
    assert b"X-AppEngine-" in body
    assert b"Traceback" not in body
    assert response_headers["X-Task-Outcome"] == "rejected"


def test_admin_may_send_task_headers_others_may_not() -> None:
    """A signed-in admin's task headers are believed (trusted_by=admin); a plain user's are stripped."""
    users = {"admin": User("a@example.com", is_admin=True), "user": User("u@example.com")}
    app = Recorder()
    middleware = TaskMiddleware(
        app, authenticator=lambda info: users.get(info.header("x-who") or "")
    )
    call(middleware, HTTP_X_WHO="admin", **TASK)
    call(middleware, HTTP_X_WHO="user", **TASK)
    assert app.calls[0]["task"].trusted_by == "admin"
    assert app.calls[1]["task"] is None
    assert task_keys(app.calls[1]["environ"]) == []


@pytest.mark.parametrize(
    ("app", "status", "outcome"),
    [
        pytest.param(Recorder("200 OK"), "200 OK", "success", id="200 success"),
        pytest.param(Recorder("204 No Content"), "204 No Content", "success", id="204 success"),
        pytest.param(Recorder("302 Found"), "302 Found", "retry", id="redirect is a retry"),
        pytest.param(Recorder("404 Not Found"), "404 Not Found", "retry", id="404 retry"),
        pytest.param(
            Recorder("503 Service Unavailable"), "503 Service Unavailable", "retry", id="503 retry"
        ),
        pytest.param(
            Recorder(raises=ValueError("boom")),
            "500 Internal Server Error",
            "retry",
            id="exception",
        ),
        pytest.param(
            Recorder(raises=RetryTask("later", status=503)),
            "503 Service Unavailable",
            "retry",
            id="RetryTask with status",
        ),
        pytest.param(
            Recorder(raises=PermanentTaskFailure("no")),
            "200 OK",
            "permanent-failure",
            id="PermanentTaskFailure",
        ),
        pytest.param(
            Recorder(raises=DeadlineExceededError()),
            "500 Internal Server Error",
            "deadline-exceeded",
            id="DeadlineExceededError",
        ),
    ],
)
def test_outcomes_of_a_plain_app(app: Recorder, status: str, outcome: str) -> None:
    """Whatever a wrapped app answers or raises becomes a status the queue understands, with X-Task-Outcome."""
    got_status, headers, body = call(TaskMiddleware(app), peer="0.1.0.2", **TASK)
    assert (got_status, headers["X-Task-Outcome"]) == (status, outcome)
    assert b"Traceback" not in body and b"boom" not in body


def test_one_log_record_per_task_request(caplog: pytest.LogCaptureFixture) -> None:
    """Each task request logs exactly one structured INFO record; plain requests log none."""
    app = TaskMiddleware(Recorder())
    with caplog.at_level(logging.INFO, logger="taskhandler"):
        call(app, peer="0.1.0.2", **TASK, HTTP_X_APPENGINE_TASKRETRYCOUNT="2")
        call(app)
    records = [r for r in caplog.records if hasattr(r, "taskhandler")]
    assert len(records) == 1
    fields = records[0].taskhandler
    assert fields["queue_name"] == "default"
    assert fields["task_name"] == "task-1"
    assert fields["retry_count"] == 2
    assert fields["execution_count"] == 0
    assert fields["outcome"] == "success"
    assert fields["status"] == 200
    assert fields["duration"] >= 0
    assert records[0].levelno == logging.INFO


def test_exception_is_logged_with_traceback_but_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    """An unhandled exception on a final (fail-fast) attempt is logged with its traceback."""
    app = TaskMiddleware(Recorder(raises=KeyError("secret-detail")))
    with caplog.at_level(logging.INFO, logger="taskhandler"):
        _, _, body = call(app, peer="0.1.0.2", HTTP_X_APPENGINE_FAILFAST="true", **TASK)
    assert b"secret-detail" not in body
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)


def test_current_task_is_isolated_between_threads() -> None:
    """current_task() in concurrent requests on different threads sees only its own task."""
    barrier = threading.Barrier(8)
    seen: dict[str, str | None] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        barrier.wait(timeout=10)
        task = current_task()
        seen[environ["HTTP_X_APPENGINE_TASKNAME"]] = None if task is None else task.task_name
        start_response("200 OK", [])
        return [b""]

    middleware = TaskMiddleware(app)
    threads = [
        threading.Thread(
            target=call,
            args=(middleware, "0.1.0.2"),
            kwargs={"HTTP_X_APPENGINE_QUEUENAME": "q", "HTTP_X_APPENGINE_TASKNAME": f"t{i}"},
        )
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert seen == {f"t{i}": f"t{i}" for i in range(8)}
    assert current_task() is None


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"trust": "strict"}, "TrustPolicy", id="trust not a policy"),
        pytest.param({"config": {"handlers": []}}, "AppConfig", id="config not an AppConfig"),
        pytest.param({"authenticator": "cookie"}, "callable", id="authenticator not callable"),
        pytest.param({"deadline": 0}, "positive", id="zero deadline"),
        pytest.param({"deadline": 60, "grace": 60}, "smaller", id="grace not below deadline"),
        pytest.param({"grace": -1}, "negative", id="negative grace"),
    ],
)
def test_bad_settings_raise_config_error(kwargs: dict[str, Any], fragment: str) -> None:
    """Bad middleware settings raise ConfigError at construction, naming the problem."""
    with pytest.raises(ConfigError, match=fragment):
        TaskMiddleware(Recorder(), **kwargs)


def test_development_trust_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    """Development trust logs a warning when the middleware is built."""
    with caplog.at_level(logging.WARNING, logger="taskhandler"):
        TaskMiddleware(Recorder(), trust=TrustPolicy.development())
    assert any("development trust" in r.getMessage() for r in caplog.records)


def test_sign_in_page_is_served_without_access_rules() -> None:
    """An authenticator's sign-in page answers even when no access rule is configured."""
    from taskhandler import SignedCookieAuth

    app = Recorder()
    middleware = TaskMiddleware(app, authenticator=SignedCookieAuth("k" * 32))
    status, _, body = call(middleware, REQUEST_METHOD="GET", PATH_INFO="/_ah/login")
    assert status == "200 OK"
    assert b"<form" in body
    assert app.calls == []


def test_nested_middlewares_decide_once() -> None:
    """An inner TaskMiddleware defers to the outer one: one decision, one log record."""
    app = Recorder()
    inner = TaskMiddleware(app)  # strict: would strip a stranger's headers
    outer = TaskMiddleware(inner, trust=TrustPolicy.development())
    status, headers, _ = call(outer, peer="203.0.113.9", **TASK)
    assert status == "200 OK"
    assert headers["X-Task-Outcome"] == "success"
    assert app.calls[0]["task"].trusted_by == "development"


def _header_user(header: str) -> Any:
    """An authenticator: the user named by ``header`` (``"admin"`` is an administrator)."""

    def authenticate(info: Any) -> User | None:
        name = info.headers.get(header)
        if not name:
            return None
        return User(email=f"{name}@example.com", user_id=name, is_admin=name == "admin")

    return authenticate


@pytest.mark.parametrize(
    ("outer_trust", "outer_user", "inner_user", "status"),
    [
        pytest.param("development", "admin", None, "200", id="dev server sign-in counts inside"),
        pytest.param("development", None, "admin", "200", id="the app's own sign-in counts"),
        pytest.param("development", "someone", None, "403", id="dev sign-in, not an admin"),
        pytest.param("development", None, None, "302", id="nobody signed in"),
        pytest.param("strict", "admin", None, "302", id="strict outer: its sign-in does not"),
    ],
)
def test_a_nested_layer_under_the_development_server_takes_its_sign_in(
    outer_trust: str, outer_user: str | None, inner_user: str | None, status: str
) -> None:
    """Inside a development-trust layer, its signed-in user passes the inner layer's
    ``login: admin`` too (one sign-in, as on App Engine's development server); elsewhere each
    layer's own authenticator decides."""
    from taskhandler import AccessRule, AppConfig

    app = Recorder()
    rules = AppConfig(rules=[AccessRule(url="/admin/.*", login="admin")])
    inner = TaskMiddleware(app, config=rules, authenticator=_header_user("x-inner-user"))
    trust = TrustPolicy.development() if outer_trust == "development" else TrustPolicy()
    outer = TaskMiddleware(inner, trust=trust, authenticator=_header_user("x-outer-user"))
    headers = {"HTTP_X_OUTER_USER": outer_user or "", "HTTP_X_INNER_USER": inner_user or ""}
    got, _, _ = call(outer, REQUEST_METHOD="GET", PATH_INFO="/admin/panel", **headers)
    assert (len(app.calls), got[:3]) == (1 if status == "200" else 0, status)


# -- header-name plans (kept per environ shape) ---------------------------------------------


def test_a_client_inventing_header_names_is_still_stripped() -> None:
    """Header names never seen before are judged afresh every time, before and after churn."""
    inner = Recorder()
    app = TaskMiddleware(inner)
    for i in range(700):
        call(app, **{f"HTTP_X_INVENTED_{i}": "1", **TASK})
    assert all(task_keys(c["environ"]) == [] for c in inner.calls)
    status, _, _ = call(app, **TASK)
    assert status == "200 OK" and task_keys(inner.calls[-1]["environ"]) == []


@pytest.mark.parametrize("first", ["newline key", "plain keys"])
def test_a_key_with_a_newline_never_shares_a_plan(first: str) -> None:
    """Keys that join to the same text as another environ's (one of them holding a newline,
    which no server makes) are each judged on their own: both are stripped, in either order."""
    inner = Recorder()
    app = TaskMiddleware(inner)
    split = {"HTTP_X_APPENGINE_QUEUENAME": "q", "HTTP_X_APPENGINE_TASKNAME": "t"}
    joined = {"HTTP_X_APPENGINE_QUEUENAME\nHTTP_X_APPENGINE_TASKNAME": "q"}
    order = [joined, split] if first == "newline key" else [split, joined]
    for extra in order * 2:
        status, _, _ = call(app, **extra)
        assert status == "200 OK"
        assert task_keys(inner.calls[-1]["environ"]) == []
    assert len(inner.calls) == 4


def test_a_key_with_a_newline_from_the_queue_is_no_task_and_no_500() -> None:
    """From the queue, a newline key matches no task header name: the app runs without a context."""
    inner = Recorder()
    status, _, _ = call(
        TaskMiddleware(inner), peer="0.1.0.2", **{"HTTP_X_APPENGINE_QUEUENAME\nX": "q"}
    )
    assert status == "200 OK"
    assert inner.calls[0]["task"] is None


def test_case_variants_of_one_header_from_the_queue_are_refused() -> None:
    """Two environ keys for one header (another case) are copies: 400, the app never runs."""
    inner = Recorder()
    status, headers, _ = call(
        TaskMiddleware(inner), peer="0.1.0.2", **TASK, HTTP_x_appengine_queuename="other"
    )
    assert status == "400 Bad Request"
    assert headers["X-Task-Outcome"] == "rejected"
    assert inner.calls == []


@pytest.mark.skipif(not INTERRUPTS_SUPPORTED, reason="no interruption on this interpreter")
def test_a_deadline_due_at_once_never_escapes_the_middleware() -> None:
    """A deadline due the moment it is armed lands inside the request, wherever that is
    (even before the app is called): answered 500, never raised out of the middleware or
    into the thread's next work, and no task or deadline is left behind on the thread."""
    escaped: list[str] = []
    answers: list[str] = []
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    middleware = TaskMiddleware(app)

    def requests(first: int) -> None:
        for i in range(first, first + 1500):
            env = {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": "/t",
                "REMOTE_ADDR": "0.1.0.2",
                "HTTP_X_APPENGINE_QUEUENAME": "q",
                "HTTP_X_APPENGINE_TASKNAME": f"t{i}",
                "taskhandler.deadline": (0.002, 0.0019),
            }
            try:
                status, _, _ = call(middleware, peer="0.1.0.2", **env)
                with lock:
                    answers.append(status)
                if current_task() is not None:
                    escaped.append("task left set")
                sum(range(500))  # where a stray delivery would land
            except DeadlineExceededError:
                escaped.append(f"request {i}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.000001)  # switch threads as often as the interpreter can
    # An error delivered while a collector callback or a finalizer runs is swallowed by
    # Python itself (README, "What is interrupted"): collect the garbage of earlier tests
    # first and set aside other libraries' collector callbacks (hypothesis installs one).
    gc.collect()
    callbacks = gc.callbacks[:]
    gc.callbacks.clear()
    try:
        threads = [threading.Thread(target=requests, args=(k * 10_000,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(interval)
        gc.callbacks[:] = callbacks
    assert escaped == []
    assert len(answers) == 6000 and set(answers) <= {"200 OK", "500 Internal Server Error"}
    assert default_watchdog.armed_count == 0
