"""taskhandler.django: the middleware, @task_handler views and Django's session (SPEC §18).

Requests go through Django's own handlers -- ``WSGIHandler`` with a PEP 3333 environ and
``ASGIHandler`` with an ASGI scope, as gunicorn and uvicorn give them -- built from the same
:class:`~tests.conformance.harness.Request` the conformance suite uses. The conformance suite
itself (tests/conformance/) runs every shared case on the Django adapter too; this file pins
what is Django's own: settings, the session, ``request.task``, views of every kind, CSRF.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from taskhandler import (
    AccessRule,
    AppConfig,
    ConfigError,
    DeadlineExceededError,
    TaskContext,
    current_task,
    task_handler,
)
from taskhandler._trace import current_trace, outgoing_traceparent
from taskhandler._watchdog import INTERRUPTS_SUPPORTED
from tests.conformance.django_adapter import URLConf, call_django_asgi, configure
from tests.conformance.harness import ASGIAdapter, Request, WSGIAdapter

configure()

from django.contrib.auth import get_user_model  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.urls import include, path  # noqa: E402
from django.views import View  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from taskhandler.django import SessionAuth, TaskMiddleware, settings_from_django  # noqa: E402
from taskhandler.django._settings import settings_from_mapping  # noqa: E402

QUEUE = "0.1.0.2"
STRANGER = "203.0.113.9"
TASK = [("X-AppEngine-QueueName", "default"), ("X-AppEngine-TaskName", "task-1")]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "taskhandler.django.TaskMiddleware",
]
RULES = AppConfig(
    rules=[
        AccessRule(url=r"/admin-only/.*", login="admin"),
        AccessRule(url=r"/signed-in/.*", login="required"),
        AccessRule(url=r"/tasks/.*", login="admin"),
    ]
)
ran: list[Any] = []


# -- views -------------------------------------------------------------------------------


def _seen(request: Any) -> dict[str, Any]:
    task = request.task
    current = current_task()
    return {
        "task": task.task_name if task is not None else None,
        "current": current.task_name if current is not None else None,
        "trusted_by": task.trusted_by if task is not None else None,
        "headers": sorted(k.lower() for k in request.headers if "appengine" in k.lower()),
        "meta": sorted(k for k in request.META if "APPENGINE" in str(k).upper()),
        "stripped": request.META.get("taskhandler.stripped"),
    }


def echo(request: Any, **_: Any) -> Any:
    return JsonResponse(_seen(request))


async def aecho(request: Any, **_: Any) -> Any:
    await asyncio.sleep(0)
    return JsonResponse(_seen(request))


def post_form(request: Any) -> Any:
    """A plain POST view under CsrfViewMiddleware."""
    return HttpResponse("posted")


class Counter(BaseModel):
    amount: int
    note: str = ""


@task_handler(payload=Counter)
def count(task: TaskContext, payload: Counter) -> dict[str, Any]:
    return {"task": task.task_name, "amount": payload.amount, "current": _name()}


@task_handler(payload=Counter)
async def acount(task: TaskContext, payload: Counter) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"task": task.task_name, "amount": payload.amount, "current": _name()}


@task_handler
def with_request(request: Any, task: TaskContext, pk: int) -> dict[str, Any]:
    return {"pk": pk, "path": request.path, "task": task.task_name}


@task_handler
def returns_response(task: TaskContext) -> Any:
    return HttpResponse("made here", status=202)


class CountView(View):
    @task_handler(payload=Counter)
    def post(self, task: TaskContext, payload: Counter) -> dict[str, Any]:
        return {"view": type(self).__name__, "amount": payload.amount, "path": self.request.path}


class AsyncCountView(View):
    @task_handler(payload=Counter)
    async def post(self, task: TaskContext, payload: Counter) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"view": type(self).__name__, "amount": payload.amount, "current": _name()}


def _name() -> str | None:
    current = current_task()
    return current.task_name if current is not None else None


def busy_view(request: Any) -> Any:
    """Runs Python code until the deadline stops it; records where it was stopped."""
    thread = threading.current_thread().name
    give_up = time.monotonic() + 10  # a failing test must not spin forever
    try:
        while time.monotonic() < give_up:
            sum(range(1000))
    except DeadlineExceededError:
        ran.append(("stopped in the view's thread", thread))
        raise
    return HttpResponse("too late")


def sleepy_view(request: Any) -> Any:
    time.sleep(0.5)  # past the hard deadline: interrupted, or answered as an overrun
    return HttpResponse("too late")


async def abusy_view(request: Any) -> Any:
    try:
        await asyncio.sleep(10)
    except DeadlineExceededError:
        ran.append(("stopped at the await", None))
        raise
    return HttpResponse("too late")


@task_handler
def busy_handler(task: TaskContext) -> None:
    thread = threading.current_thread().name
    give_up = time.monotonic() + 10
    try:
        while time.monotonic() < give_up:
            sum(range(1000))
    except DeadlineExceededError:
        ran.append(("handler stopped in its thread", thread))
        raise


def raises_view(request: Any) -> Any:
    raise ValueError("boom")


def traced(request: Any) -> Any:
    """What a view sees of the request's trace, and what a task it added would carry."""
    trace = current_trace()
    return JsonResponse(
        {"trace_id": trace.trace_id if trace else None, "outgoing": outgoing_traceparent()}
    )


async def atraced(request: Any) -> Any:
    await asyncio.sleep(0)
    return traced(request)


def reported(task: TaskContext, exc: BaseException, final: bool) -> None:
    """An ``on_error`` hook (``TASKHANDLER["ON_ERROR"]``): what an error reporter is told."""
    ran.append(("reported", task.task_name, type(exc).__name__, final))


urls = URLConf(echo)
urls.urlpatterns = [
    path("tasks/echo", echo),
    path("tasks/aecho", aecho),
    path("tasks/count", count),
    path("tasks/acount", acount),
    path("tasks/item/<int:pk>", with_request),
    path("tasks/response", returns_response),
    path("tasks/cbv", CountView.as_view()),
    path("tasks/acbv", AsyncCountView.as_view()),
    path("tasks/busy", busy_view),
    path("tasks/abusy", abusy_view),
    path("tasks/sleepy", sleepy_view),
    path("tasks/busy-handler", busy_handler),
    path("tasks/raises", raises_view),
    path("tasks/traced", traced),
    path("tasks/atraced", atraced),
    path("plain/traced", traced),
    path("plain/atraced", atraced),
    path("admin-only/echo", echo),
    path("signed-in/echo", echo),
    path("plain/echo", echo),
    path("plain/aecho", aecho),
    path("plain/form", post_form),
    path("plain/exempt", csrf_exempt(post_form)),
    path("", include("taskhandler.django.urls")),
]


# -- calling Django ------------------------------------------------------------------------


def call(kind: str, req: Request) -> tuple[int, dict[str, str], bytes]:
    """One request through Django's WSGI or ASGI handler (built under the current settings)."""
    if kind == "wsgi":
        from django.core.handlers.wsgi import WSGIHandler

        return WSGIAdapter().call(WSGIHandler(), req)
    from django.core.handlers.asgi import ASGIHandler

    scope = ASGIAdapter().scope(req)
    return asyncio.run(call_django_asgi(ASGIHandler(), scope, req.body))[:3]


def project(**taskhandler: Any) -> Any:
    """Settings for a test: the URLs above, the middleware, ``TASKHANDLER``."""
    return override_settings(
        ROOT_URLCONF=urls,
        MIDDLEWARE=MIDDLEWARE,
        TASKHANDLER={"AUTHENTICATOR": "session", **taskhandler},
    )


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    ran.clear()
    yield
    ran.clear()


KINDS = pytest.mark.parametrize("kind", ["wsgi", "asgi"])
# Python 3.13 lets an exception injected into a thread skip except/finally blocks, so there
# the watchdog only keeps time and a sync view is answered as an overrun when it returns.
INTERRUPTS = pytest.mark.skipif(
    not INTERRUPTS_SUPPORTED, reason="the watchdog does not interrupt threads on this Python"
)


# -- settings.TASKHANDLER ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        pytest.param({"APP_YML": "app.yaml"}, "unknown key 'APP_YML'", id="misspelt key"),
        pytest.param({"TRUST": "lenient"}, "TRUST", id="unknown trust word"),
        pytest.param({"TRUST": {"queue_sources": ["300.1.1.1"]}}, "queue_sources", id="bad CIDR"),
        pytest.param({"TRUST": {"queues": ["0.1.0.2"]}}, "TRUST", id="unknown trust keyword"),
        pytest.param({"AUTHENTICATOR": 42}, "AUTHENTICATOR", id="authenticator not callable"),
        pytest.param({"AUTHENTICATOR": "no.such.module.Auth"}, "cannot import", id="bad path"),
        pytest.param({"DEADLINE": "600"}, "DEADLINE", id="deadline as text"),
        pytest.param({"DEADLINE": 5, "GRACE": 10}, "grace", id="grace beyond deadline"),
        pytest.param({"APP_YAML": "/nonexistent/app.yaml"}, "app.yaml", id="missing app.yaml"),
        pytest.param({"APP_YAML": "a.yaml", "WEB_XML": "web.xml"}, "one of", id="two configs"),
        pytest.param({"CONFIG": {"rules": []}}, "AppConfig", id="config not an AppConfig"),
        pytest.param([("TRUST", "strict")], "must be a dict", id="not a dict"),
        pytest.param({"ON_ERROR": 42}, "ON_ERROR", id="error hook not callable"),
        pytest.param({"ON_ERROR": "no.such.module.hook"}, "cannot import", id="bad hook path"),
        pytest.param({"ON_ERROR": "os.sep"}, "ON_ERROR", id="hook path to a string"),
        pytest.param({"ON_ERROR": "collections.OrderedDict"}, "not a class", id="hook a class"),
    ],
)
def test_bad_settings_fail_at_construction(setting: Any, message: str) -> None:
    """A bad TASKHANDLER setting is a ConfigError naming it, when the middleware is built."""
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping(setting)


@pytest.mark.parametrize("key", ["ON_ERROR", "AUTHENTICATOR"])
def test_a_dotted_path_to_no_callable_is_named_in_the_error(key: str) -> None:
    """The error for a dotted path to something not callable carries the path given."""
    with pytest.raises(ConfigError, match=key) as raised:
        settings_from_mapping({key: "os.sep"})
    assert raised.value.value == "os.sep"


def test_settings_read_app_yaml_trust_and_deadline(tmp_path: Any) -> None:
    """APP_YAML gives the rules and deadline; TRUST words and dicts give a TrustPolicy."""
    app_yaml = tmp_path / "app.yaml"
    app_yaml.write_text(
        "runtime: python312\nbasic_scaling:\n  max_instances: 1\n"
        "handlers:\n- url: /tasks/.*\n  script: auto\n  login: admin\n"
    )
    settings = settings_from_mapping(
        {"APP_YAML": app_yaml, "TRUST": {"queue_sources": ["10.0.0.0/8"]}, "GRACE": 30}
    )
    assert [rule.url for rule in settings.rules] == ["/tasks/.*"]
    assert (settings.deadline, settings.grace) == (86400.0, 30.0)
    assert settings.trust.source("10.1.2.3", {}.get) == "queue"
    assert isinstance(settings.authenticator, SessionAuth)
    assert settings_from_mapping({"TRUST": "app_engine"}).trust.mode == "app_engine"
    assert settings_from_mapping({"AUTHENTICATOR": None}).authenticator is None


def test_the_middleware_reads_the_setting_when_django_builds_it() -> None:
    """Django builds the middleware from MIDDLEWARE; a bad setting stops it there."""
    from django.core.handlers.wsgi import WSGIHandler

    with (
        override_settings(MIDDLEWARE=MIDDLEWARE, TASKHANDLER={"DEADLINE": -1}),
        pytest.raises(ConfigError, match="deadline"),
    ):
        WSGIHandler()
    with override_settings(TASKHANDLER={"DEADLINE": 120}):
        assert settings_from_django().deadline == 120.0
        assert TaskMiddleware(lambda r: None).settings.deadline == 120.0


# -- trust, stripping, request.task --------------------------------------------------------


@KINDS
@pytest.mark.parametrize("route", ["/plain/echo", "/plain/aecho"], ids=["sync view", "async view"])
def test_the_queue_task_reaches_views_as_request_task(kind: str, route: str) -> None:
    """A queue request's context is request.task and current_task() in sync and async views."""
    with project(AUTHENTICATOR=None):
        status, headers, body = call(kind, Request(path=route, headers=TASK, peer=QUEUE))
    assert (status, headers["x-task-outcome"]) == (200, "success")
    seen = json.loads(body)
    assert (seen["task"], seen["current"], seen["trusted_by"]) == ("task-1", "task-1", "queue")
    assert seen["headers"] == ["x-appengine-queuename", "x-appengine-taskname"]


@KINDS
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(TASK, id="dash spelling"),
        pytest.param([("x_appengine_queuename", "q"), ("X_AppEngine-TaskName", "t")], id="_"),
        pytest.param([*TASK, ("X-AppEngine-TaskName", "again")], id="two copies"),
        pytest.param([*TASK, ("X-Forwarded-For", QUEUE)], id="forwarded as the queue"),
    ],
)
def test_a_strangers_task_headers_are_gone_from_meta_and_request_headers(
    kind: str, headers: list[tuple[str, str]]
) -> None:
    """No spelling of a task header reaches META or request.headers from a stranger."""
    with project(AUTHENTICATOR=None):
        status, _, body = call(
            kind, Request(method="GET", path="/plain/echo", headers=headers, peer=STRANGER)
        )
    seen = json.loads(body)
    assert status == 200
    assert (seen["task"], seen["current"]) == (None, None)
    assert seen["headers"] == seen["meta"] == []
    assert seen["stripped"]


def test_asgi_django_meta_never_holds_underscore_headers() -> None:
    """Django's ASGIRequest drops '_' header names; the scope loses them too, when untrusted."""
    seen: dict[str, Any] = {}

    def view(request: Any) -> Any:
        seen["meta"] = sorted(k for k in request.META if k.startswith("HTTP_X"))
        seen["scope"] = sorted(n.decode() for n, _ in request.scope["headers"])
        return HttpResponse("ok")

    headers = [("x_appengine_queuename", "q"), ("x_forwarded_for", QUEUE), ("X-Other", "1")]
    with override_settings(
        ROOT_URLCONF=URLConf(view), MIDDLEWARE=MIDDLEWARE[-1:], TASKHANDLER={"AUTHENTICATOR": None}
    ):
        call("asgi", Request(headers=headers, peer=STRANGER))
    assert seen["meta"] == ["HTTP_X_OTHER"]
    assert seen["scope"] == ["host", "x-other"]


def test_request_headers_read_before_the_middleware_are_built_again() -> None:
    """A request.headers cached by a middleware in front is rebuilt after stripping."""
    seen: dict[str, Any] = {}

    def reads_headers(get_response: Any) -> Any:
        def middleware(request: Any) -> Any:
            seen["before"] = "X-AppEngine-TaskName" in request.headers
            return get_response(request)

        return middleware

    def view(request: Any) -> Any:
        seen["after"] = "X-AppEngine-TaskName" in request.headers
        return HttpResponse("ok")

    import sys

    module = sys.modules[__name__]
    module.reads_headers = reads_headers  # type: ignore[attr-defined]
    with override_settings(
        ROOT_URLCONF=URLConf(view),
        MIDDLEWARE=[f"{__name__}.reads_headers", "taskhandler.django.TaskMiddleware"],
        TASKHANDLER={"AUTHENTICATOR": None},
    ):
        call("wsgi", Request(headers=TASK, peer=STRANGER))
    assert seen == {"before": True, "after": False}


# -- Django's session: admins, login rules ------------------------------------------------


def _session_cookie(*, staff: bool = False, superuser: bool = False) -> tuple[str, str]:
    user = get_user_model().objects.create_user(
        username=f"u{staff:d}{superuser:d}", email="someone@example.com"
    )
    user.is_staff, user.is_superuser = staff, superuser
    user.save()
    client = Client()
    client.force_login(user)
    return ("Cookie", f"sessionid={client.cookies['sessionid'].value}")


@pytest.mark.django_db(transaction=True)
@KINDS
@pytest.mark.parametrize(
    ("who", "route", "status", "location"),
    [
        pytest.param(
            None,
            "/admin-only/echo",
            302,
            "/accounts/login/?next=/admin-only/echo",
            id="anonymous on admin",
        ),
        pytest.param(
            None,
            "/signed-in/echo",
            302,
            "/accounts/login/?next=/signed-in/echo",
            id="anonymous on required",
        ),
        pytest.param("user", "/admin-only/echo", 403, None, id="user on admin"),
        pytest.param("user", "/signed-in/echo", 200, None, id="user on required"),
        pytest.param("staff", "/admin-only/echo", 200, None, id="staff is admin"),
        pytest.param("superuser", "/admin-only/echo", 200, None, id="superuser is admin"),
        pytest.param(None, "/plain/echo", 200, None, id="no rule"),
    ],
)
def test_login_rules_with_djangos_session(
    kind: str, who: str | None, route: str, status: int, location: str | None
) -> None:
    """login: rules judge Django's session user; sign-in goes to LOGIN_URL with next=."""
    headers = []
    if who is not None:
        headers.append(_session_cookie(staff=who == "staff", superuser=who == "superuser"))
    with project(CONFIG=RULES):
        got, answer, _ = call(kind, Request(method="GET", path=route, headers=headers))
    assert got == status
    assert answer.get("location") == location


@pytest.mark.django_db(transaction=True)
@KINDS
@pytest.mark.parametrize(
    ("who", "trusted_by"),
    [
        pytest.param("staff", "admin", id="staff may send task headers"),
        pytest.param("user", None, id="a user may not"),
        pytest.param(None, None, id="nobody may not"),
    ],
)
def test_staff_may_send_task_headers(kind: str, who: str | None, trusted_by: str | None) -> None:
    """A staff user's task headers are believed (trusted_by admin); anyone else's go."""
    headers = list(TASK)
    if who is not None:
        headers.append(_session_cookie(staff=who == "staff"))
    with project():
        status, _, body = call(kind, Request(method="GET", path="/plain/echo", headers=headers))
    assert status == 200
    assert json.loads(body)["trusted_by"] == trusted_by


@pytest.mark.parametrize(
    "middleware",
    [
        pytest.param(MIDDLEWARE[-1:], id="alone"),
        pytest.param([MIDDLEWARE[-1], *MIDDLEWARE[:-1]], id="before the auth middleware"),
    ],
)
def test_the_session_authenticator_needs_djangos_auth_middleware(middleware: list[str]) -> None:
    """Without AuthenticationMiddleware in front the session cannot be read: refused at start."""
    from django.core.handlers.wsgi import WSGIHandler

    with (
        override_settings(MIDDLEWARE=middleware, TASKHANDLER={"AUTHENTICATOR": "session"}),
        pytest.raises(ConfigError, match=r"after django\.contrib\.auth"),
    ):
        WSGIHandler()


@KINDS
def test_a_path_that_is_not_utf8_is_judged_as_django_routes_it(kind: str) -> None:
    """Bytes that are not UTF-8 under a protected prefix do not slip past the rules."""
    with project(CONFIG=RULES, AUTHENTICATOR=None):
        status, _, _ = call(kind, Request(path="/tasks/x", raw_path=b"/tasks/\xff"))
    assert status in (302, 400, 401, 403)


# -- CSRF ---------------------------------------------------------------------------------


@KINDS
@pytest.mark.parametrize(
    ("headers", "peer", "status"),
    [
        pytest.param(TASK, QUEUE, 200, id="the queue needs no CSRF token"),
        pytest.param(TASK, STRANGER, 403, id="a stranger's task headers do not exempt"),
        pytest.param([], STRANGER, 403, id="an ordinary POST is checked"),
    ],
)
def test_csrf_is_not_asked_of_the_queue(
    kind: str, headers: list[tuple[str, str]], peer: str, status: int
) -> None:
    """CsrfViewMiddleware lets believed task requests through and checks every other POST."""
    with project(AUTHENTICATOR=None):
        got, _, _ = call(kind, Request(path="/plain/form", headers=headers, peer=peer))
    assert got == status


# -- @task_handler views ------------------------------------------------------------------

JSON = [("Content-Type", "application/json")]


@KINDS
@pytest.mark.parametrize(
    ("route", "expected"),
    [
        pytest.param(
            "/tasks/count", {"task": "task-1", "amount": 3, "current": "task-1"}, id="function"
        ),
        pytest.param(
            "/tasks/acount",
            {"task": "task-1", "amount": 3, "current": "task-1"},
            id="async function",
        ),
        pytest.param(
            "/tasks/cbv", {"view": "CountView", "amount": 3, "path": "/tasks/cbv"}, id="class-based"
        ),
        pytest.param(
            "/tasks/acbv",
            {"view": "AsyncCountView", "amount": 3, "current": "task-1"},
            id="async class-based",
        ),
        pytest.param(
            "/tasks/item/7",
            {"pk": 7, "path": "/tasks/item/7", "task": "task-1"},
            id="request and URL kwargs",
        ),
    ],
)
@pytest.mark.parametrize("behind", [True, False], ids=["behind middleware", "on its own"])
def test_task_handler_views(kind: str, route: str, expected: dict[str, Any], behind: bool) -> None:
    """@task_handler serves Django function and class-based views, sync and async."""
    with override_settings(
        ROOT_URLCONF=urls,
        MIDDLEWARE=MIDDLEWARE[-1:] if behind else [],
        TASKHANDLER={"AUTHENTICATOR": None},
    ):
        status, headers, body = call(
            kind, Request(path=route, headers=[*TASK, *JSON], body=b'{"amount": 3}', peer=QUEUE)
        )
    assert (status, headers["x-task-outcome"]) == (200, "success")
    assert json.loads(body) == expected


@KINDS
@pytest.mark.parametrize(
    ("req", "status", "outcome"),
    [
        pytest.param(
            Request(
                path="/tasks/count", headers=[*TASK, *JSON], body=b'{"amount": "x"}', peer=QUEUE
            ),
            200,
            "permanent-failure",
            id="invalid payload",
        ),
        pytest.param(
            Request(
                method="GET", path="/tasks/count", headers=TASK, query="amount=1", peer=STRANGER
            ),
            403,
            "rejected",
            id="stranger",
        ),
        pytest.param(
            Request(path="/tasks/response", headers=TASK, peer=QUEUE),
            202,
            "success",
            id="own HttpResponse",
        ),
        pytest.param(
            Request(path="/tasks/raises", headers=TASK, peer=QUEUE), 500, "retry", id="view raises"
        ),
        pytest.param(
            Request(path="/tasks/nowhere", headers=TASK, peer=QUEUE), 404, "retry", id="no such URL"
        ),
    ],
)
def test_outcomes_of_django_views(kind: str, req: Request, status: int, outcome: str) -> None:
    """What a Django view returns or raises is the status the queue reads (SPEC §6)."""
    with project(AUTHENTICATOR=None):
        got, headers, body = call(kind, req)
    assert (got, headers["x-task-outcome"]) == (status, outcome)
    assert b"Traceback" not in body


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = ("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01")
CLOUD_TRACE = ("X-Cloud-Trace-Context", f"{TRACE_ID}/123;o=1")


@KINDS
@pytest.mark.parametrize(
    "route", ["/tasks/traced", "/tasks/atraced", "/plain/traced", "/plain/atraced"]
)
@pytest.mark.parametrize("header", [TRACEPARENT, CLOUD_TRACE], ids=["traceparent", "cloud"])
def test_views_see_the_requests_trace(kind: str, route: str, header: tuple[str, str]) -> None:
    """Task and plain requests alike: the view's logs and added tasks carry the trace (SPEC §16)."""
    if route.startswith("/tasks/"):
        req = Request(path=route, headers=[*TASK, header], peer=QUEUE)
    else:
        req = Request(method="GET", path=route, headers=[header], peer=STRANGER)
    with project(AUTHENTICATOR=None):
        status, _, body = call(kind, req)
    seen = json.loads(body)
    assert status == 200
    assert seen["trace_id"] == TRACE_ID
    assert seen["outgoing"].split("-")[1] == TRACE_ID


@KINDS
def test_no_trace_is_made_up(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a trace header (and without OpenTelemetry, whose span would be one) a task
    request publishes no trace."""
    monkeypatch.delitem(sys.modules, "opentelemetry.trace", raising=False)
    with project(AUTHENTICATOR=None):
        _, _, body = call(kind, Request(path="/tasks/traced", headers=TASK, peer=QUEUE))
    assert json.loads(body) == {"trace_id": None, "outgoing": None}


@KINDS
@pytest.mark.parametrize("hook", [reported, "tests.test_django.reported"], ids=["callable", "path"])
@pytest.mark.parametrize("fail_fast", [False, True], ids=["retried", "fail fast"])
def test_on_error_setting_tells_the_error_reporter(kind: str, hook: Any, fail_fast: bool) -> None:
    """``TASKHANDLER["ON_ERROR"]`` is told of a view's exception, final for a fail-fast task."""
    headers = [*TASK, ("X-AppEngine-FailFast", "1")] if fail_fast else TASK
    with project(AUTHENTICATOR=None, ON_ERROR=hook):
        status, got, _ = call(kind, Request(path="/tasks/raises", headers=headers, peer=QUEUE))
    assert (status, got["x-task-outcome"]) == (500, "retry")
    assert ("reported", "task-1", "ValueError", fail_fast) in ran


# -- deadlines ----------------------------------------------------------------------------


@KINDS
@pytest.mark.parametrize(
    ("route", "where"),
    [
        pytest.param(
            "/tasks/busy", "stopped in the view's thread", id="sync view", marks=INTERRUPTS
        ),
        pytest.param("/tasks/abusy", "stopped at the await", id="async view"),
        pytest.param(
            "/tasks/busy-handler",
            "handler stopped in its thread",
            id="sync handler",
            marks=INTERRUPTS,
        ),
        pytest.param("/tasks/sleepy", None, id="sync view sleeping past the deadline"),
    ],
)
def test_the_deadline_stops_views(kind: str, route: str, where: str | None) -> None:
    """DeadlineExceededError reaches the view (its thread, or its await): 500 deadline-exceeded."""
    with project(AUTHENTICATOR=None, DEADLINE=0.3, GRACE=0.2):
        status, headers, _ = call(kind, Request(path=route, headers=TASK, peer=QUEUE))
    assert (status, headers["x-task-outcome"]) == (500, "deadline-exceeded")
    if where is not None:
        assert [entry[0] for entry in ran] == [where]


# -- testing tools ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("who", "status"),
    [
        pytest.param("admin", 200, id="as_admin passes login: admin"),
        pytest.param("user", 403, id="as_user does not"),
    ],
)
def test_task_test_app_signs_in_with_a_django_session(who: str, status: int) -> None:
    """TaskTestApp.as_admin()/as_user() sign in through Django's session (sign_in helper)."""
    from django.core.handlers.wsgi import WSGIHandler

    from taskhandler.django.testing import sign_in
    from taskhandler.testing import TaskTestApp

    with project(CONFIG=RULES):
        app = TaskTestApp(WSGIHandler(), sign_in=sign_in)
        client = app.as_admin("boss@example.com") if who == "admin" else app.as_user()
        res = client.get("/admin-only/echo", status=status)
        anonymous = app.get("/admin-only/echo", status=302)
    assert anonymous.headers["Location"].startswith("/accounts/login/?next=")
    if status == 200:
        assert res.json["task"] is None


def streaming(request: Any) -> Any:
    from django.http import StreamingHttpResponse

    return StreamingHttpResponse(iter([b"part one, ", b"part two"]), status=201)


urls.urlpatterns.append(path("tasks/stream", streaming))


@KINDS
def test_a_streaming_answer_to_a_task_is_read_within_the_deadline(kind: str) -> None:
    """A StreamingHttpResponse to a task request is read under the deadline, outcome added."""
    with project(AUTHENTICATOR=None):
        status, headers, body = call(kind, Request(path="/tasks/stream", headers=TASK, peer=QUEUE))
    assert (status, headers["x-task-outcome"], body) == (201, "success", b"part one, part two")


def async_streaming(request: Any) -> Any:
    """An async stream (read by an event loop, also in sync Django) naming the task and trace."""
    from django.http import StreamingHttpResponse

    async def parts() -> Any:
        await asyncio.sleep(0)
        task, trace = current_task(), current_trace()
        yield f"task={task.task_name if task else None} ".encode()
        yield f"trace={trace.trace_id if trace else None}".encode()
        if request.GET.get("fail"):
            raise ValueError("the stream broke")

    return StreamingHttpResponse(parts())


urls.urlpatterns.append(path("tasks/astream", async_streaming))


@KINDS
@pytest.mark.parametrize("fail", [False, True], ids=["whole", "breaks"])
def test_an_async_stream_is_read_as_part_of_the_task(kind: str, fail: bool) -> None:
    """An async streaming answer is read while the task is current and its trace published;
    one that breaks is the task's failure (500, retry), told to ``ON_ERROR``."""
    query = "fail=1" if fail else ""
    req = Request(path="/tasks/astream", query=query, headers=[*TASK, TRACEPARENT], peer=QUEUE)
    with project(AUTHENTICATOR=None, ON_ERROR=reported):
        status, headers, body = call(kind, req)
    if fail:
        assert (status, headers["x-task-outcome"]) == (500, "retry")
        assert ("reported", "task-1", "ValueError", False) in ran
    else:
        assert (status, headers["x-task-outcome"]) == (200, "success")
        assert body == f"task=task-1 trace={TRACE_ID}".encode()


def call_under_outer_middleware(kind: str, req: Request) -> tuple[int, dict[str, str], bytes]:
    """``req`` through Django wrapped in the WSGI or ASGI ``TaskMiddleware``, as
    ``taskhandler serve`` runs a Django project (the outer middleware runs the task)."""
    from taskhandler import asgi as asgi_middleware
    from taskhandler import wsgi as wsgi_middleware

    if kind == "wsgi":
        from django.core.handlers.wsgi import WSGIHandler

        return WSGIAdapter().call(wsgi_middleware.TaskMiddleware(WSGIHandler()), req)
    from django.core.handlers.asgi import ASGIHandler

    app = asgi_middleware.TaskMiddleware(ASGIHandler())
    return asyncio.run(call_django_asgi(app, ASGIAdapter().scope(req), req.body))[:3]


@KINDS
@pytest.mark.parametrize("debug", [False, True], ids=["DEBUG off", "DEBUG on"])
def test_a_views_exception_is_the_tasks_failure_inside_an_outer_middleware(
    kind: str, debug: bool
) -> None:
    """Under an outer TaskMiddleware a view's exception is still the task's plain 500 (no
    Django error page, no traceback) and ``ON_ERROR`` is told of it once."""
    req = Request(path="/tasks/raises", headers=TASK, peer=QUEUE)
    with project(AUTHENTICATOR=None, ON_ERROR=reported), override_settings(DEBUG=debug):
        status, headers, body = call_under_outer_middleware(kind, req)
    assert (status, headers["x-task-outcome"]) == (500, "retry")
    assert b"Traceback" not in body and b"<html" not in body.lower()
    assert [r for r in ran if r[0] == "reported"] == [("reported", "task-1", "ValueError", False)]
