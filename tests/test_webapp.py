"""``taskhandler.webapp``: webapp2's routing, request, response and errors, and task handlers.

Requests are webob requests handed straight to the WSGI app; task requests come from the
queue's address (0.1.0.2) through a real ``TaskMiddleware``.
"""

from __future__ import annotations

from typing import Any

import pytest

from taskhandler.context import TaskContext, current_task
from taskhandler.deadline import DeadlineExceededError
from taskhandler.exceptions import ConfigError, PermanentTaskFailure, RetryTask
from taskhandler.trust import RequestInfo, User
from taskhandler.webapp import (
    Request,
    RequestHandler,
    Response,
    Route,
    TaskRequestHandler,
    WSGIApplication,
    abort,
)
from taskhandler.wsgi import TaskMiddleware

QUEUE_PEER = "0.1.0.2"
STRANGER = "203.0.113.7"
TASK_HEADERS = {"X-AppEngine-QueueName": "work", "X-AppEngine-TaskName": "task-7"}


def header_user(info: RequestInfo) -> User | None:
    """Stand-in for a sign-in system: the ``X-Test-User`` header names the user."""
    who = info.header("x-test-user")
    return None if who is None else User(f"{who}@example.com", is_admin=who == "admin")


class Echo(RequestHandler):
    """Answers with the handler method, its arguments and ``x``."""

    def get(self, *args: str, **kwargs: str) -> None:
        self.response.write(f"get {args} {sorted(kwargs.items())}")

    def post(self, *args: str, **kwargs: str) -> None:
        self.response.write(f"post {args} {sorted(kwargs.items())}")

    def custom(self, *args: str, **kwargs: str) -> None:
        self.response.write("custom")


class GetOnly(RequestHandler):
    def get(self) -> None:
        self.response.write("only get")


def call(app: Any, path: str = "/", **kwargs: Any) -> Any:
    """One request to ``app`` (``method=``, ``headers=``, ``POST=``... as for ``Request.blank``)."""
    return Request.blank(path, **kwargs).get_response(app)


ROUTES = WSGIApplication(
    [
        (r"/echo", Echo),
        (r"/items/(\d+)", Echo),
        (r"/both/(\w+)/(\w+)", Echo),
        Route("/named/<kind>/<n:\\d+>", Echo),
        Route("/positional/<:\\d+>", Echo),
        Route("/post-only", Echo, methods=["POST"]),
        Route("/custom", Echo, handler_method="custom"),
        (r"/get-only", GetOnly),
        (r"/echo", GetOnly),
        (r"/.*\.txt", GetOnly),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        pytest.param("GET", "/echo", 200, "get () []", id="exact path"),
        pytest.param("POST", "/echo", 200, "post () []", id="dispatch by method"),
        pytest.param("GET", "/echo/", 404, None, id="trailing slash is another path"),
        pytest.param("GET", "/echoes", 404, None, id="regex must match the whole path"),
        pytest.param("GET", "/x/echo", 404, None, id="no match in the middle"),
        pytest.param("GET", "/items/42", 200, "get ('42',) []", id="regex groups positional"),
        pytest.param("GET", "/items/4x", 404, None, id="group must match"),
        pytest.param("GET", "/both/a/b", 200, "get ('a', 'b') []", id="two groups in order"),
        pytest.param(
            "GET", "/named/book/7", 200, "get () [('kind', 'book'), ('n', '7')]", id="named"
        ),
        pytest.param("GET", "/named/book/x", 404, None, id="named variable regex"),
        pytest.param("GET", "/named/a/b/7", 404, None, id="default variable is one segment"),
        pytest.param("GET", "/positional/12", 200, "get ('12',) []", id="unnamed variable"),
        pytest.param("POST", "/post-only", 200, "post () []", id="route method allowed"),
        pytest.param("GET", "/post-only", 405, None, id="route method refused"),
        pytest.param("GET", "/custom", 200, "custom", id="handler_method"),
        pytest.param("GET", "/echo", 200, "get () []", id="first match wins"),
        pytest.param("GET", "/notes/a.txt", 200, "only get", id="regex suffix"),
        pytest.param("GET", "/nothing", 404, None, id="no route"),
        pytest.param("PUT", "/get-only", 405, None, id="method the handler lacks"),
        pytest.param("TRACE", "/echo", 405, None, id="TRACE the handler lacks"),
        pytest.param("DISPATCH", "/echo", 501, None, id="verb naming a handler attribute"),
        pytest.param("FOOBAR", "/nothing", 501, None, id="unknown verb before routing"),
    ],
)
def test_routing(method: str, path: str, status: int, text: str | None) -> None:
    """Routes full-match the path in order; the verb picks the method; 404/405/501 otherwise."""
    response = call(ROUTES, path, method=method)
    assert response.status_int == status
    if text is not None:
        assert response.text == text


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        pytest.param("PUT", "/get-only", "GET", id="handler with get only"),
        pytest.param("DELETE", "/echo", "GET, POST", id="handler with get and post"),
        pytest.param("GET", "/post-only", "POST", id="route restricted to POST"),
    ],
)
def test_405_lists_allowed_methods(method: str, path: str, allow: str) -> None:
    """A 405 carries ``Allow`` with the methods that would have worked."""
    response = call(ROUTES, path, method=method)
    assert (response.status_int, response.headers["Allow"]) == (405, allow)


def test_routes_match_script_name_plus_path_info() -> None:
    """A mounted app matches the whole path, as app.yaml URLs do."""
    response = call(ROUTES, "/echo", environ={"SCRIPT_NAME": "/items", "PATH_INFO": "/42"})
    assert response.text == "get ('42',) []"


def test_undecodable_path_is_400() -> None:
    """A path that is not UTF-8 is refused instead of crashing."""
    response = call(ROUTES, "/", environ={"PATH_INFO": "/\xff"})
    assert response.status_int == 400


@pytest.mark.parametrize(
    "route",
    [
        pytest.param(("/x",), id="one-tuple"),
        pytest.param(("/x", object), id="not a handler class"),
        pytest.param(("/x", Echo()), id="handler instance"),
        pytest.param(("/(x", Echo), id="bad regex"),
        pytest.param("/x", id="bare string"),
    ],
)
def test_bad_route_is_config_error(route: Any) -> None:
    """A route that cannot work raises ConfigError at construction."""
    with pytest.raises(ConfigError):
        WSGIApplication([route])


def get_value(path: str, how: Any, **kwargs: Any) -> Any:
    """What ``how(request)`` returns inside a handler for a request to ``path``."""
    seen: list[Any] = []

    class Capture(RequestHandler):
        def get(self) -> None:
            seen.append(how(self.request))

        post = get

    call(WSGIApplication([(r"/.*", Capture)]), path, **kwargs)
    return seen[0]


@pytest.mark.parametrize(
    ("path", "post", "how", "expected"),
    [
        pytest.param("/?a=1", None, lambda r: r.get("a"), "1", id="query value"),
        pytest.param("/", {"a": "2"}, lambda r: r.get("a"), "2", id="form value"),
        pytest.param("/?a=1&a=2", None, lambda r: r.get("a"), "1", id="first of several"),
        pytest.param("/?a=q", {"a": "f"}, lambda r: r.get("a"), "q", id="query before form"),
        pytest.param("/", None, lambda r: r.get("a"), "", id="missing is empty string"),
        pytest.param("/", None, lambda r: r.get("a", "d"), "d", id="default_value"),
        pytest.param("/", None, lambda r: r.get("a", default_value=None), None, id="None default"),
        pytest.param("/?a=", None, lambda r: r.get("a", "d"), "", id="empty value is a value"),
        pytest.param(
            "/?a=1&a=2",
            None,
            lambda r: r.get("a", allow_multiple=True),
            ["1", "2"],
            id="allow_multiple",
        ),
        pytest.param(
            "/?a=1", None, lambda r: r.get("a", allow_multiple=True), ["1"], id="multiple of one"
        ),
        pytest.param(
            "/", None, lambda r: r.get("a", allow_multiple=True), [], id="multiple of none"
        ),
        pytest.param(
            "/",
            None,
            lambda r: r.get("a", "d", allow_multiple=True),
            "d",
            id="multiple of none with default",
        ),
        pytest.param(
            "/?a=q", {"a": "f"}, lambda r: r.get_all("a"), ["q", "f"], id="get_all query and form"
        ),
        pytest.param("/", None, lambda r: r.get_all("a"), [], id="get_all missing"),
        pytest.param("/", None, lambda r: r.get_all("a", ["x"]), ["x"], id="get_all default"),
        pytest.param(
            "/?b=1&a=2&b=3", {"c": "4"}, lambda r: r.arguments(), ["b", "a", "c"], id="arguments"
        ),
        pytest.param("/?n=%C3%A9t%C3%A9", None, lambda r: r.get("n"), "été", id="UTF-8 decoded"),
        pytest.param(
            "/", {"f": ("note.txt", b"file body")}, lambda r: r.get("f"), b"file body", id="upload"
        ),
    ],
)
def test_request_get(path: str, post: dict[str, Any] | None, how: Any, expected: Any) -> None:
    """``request.get``/``get_all``/``arguments`` behave as webapp2's do."""
    kwargs: dict[str, Any] = {} if post is None else {"POST": post}
    assert get_value(path, how, **kwargs) == expected


class Writer(RequestHandler):
    """Exercises the response API; the path says how."""

    def get(self, how: str) -> None:
        response = self.response
        if how == "write":
            response.write("a")
            response.out.write("b")
            response.write(3)
            response.write(b"!")
        elif how == "status-int":
            response.status = 201
        elif how == "set-status":
            response.set_status(299, "Fine")
        elif how == "header":
            response.headers["X-Thing"] = "yes"
            response.set_cookie("one", "1")
            response.set_cookie("two", "2")
        elif how == "error":
            response.write("lost")
            self.error(503)
        elif how == "abort":
            self.abort(409, detail="busy")
        elif how == "abort-fn":
            abort(410)
        elif how == "redirect":
            self.redirect("/elsewhere?x=1")
        elif how == "redirect-permanent":
            self.redirect("next", permanent=True)
        elif how == "redirect-abort":
            self.redirect("/stop", abort=True)
            response.write("not reached")
        elif how == "redirect-303":
            self.redirect("https://example.com/x", code=303)
        elif how == "app":
            response.write(str(self.app is self.request.app and self.app is not None))


WRITER = WSGIApplication([("/w/(.*)", Writer)])


@pytest.mark.parametrize(
    ("how", "status", "body", "headers"),
    [
        pytest.param("write", 200, b"ab3!", {}, id="write and out.write"),
        pytest.param("status-int", 201, b"", {}, id="status from int"),
        pytest.param("set-status", 299, b"", {}, id="set_status with message"),
        pytest.param("header", 200, b"", {"X-Thing": "yes"}, id="headers"),
        pytest.param("error", 503, b"", {}, id="error clears the body"),
        pytest.param("abort", 409, None, {}, id="abort"),
        pytest.param("abort-fn", 410, None, {}, id="module abort"),
        pytest.param(
            "redirect",
            302,
            b"",
            {"Location": "http://localhost/elsewhere?x=1"},
            id="redirect resolves against the request URL",
        ),
        pytest.param(
            "redirect-permanent",
            301,
            b"",
            {"Location": "http://localhost/w/next"},
            id="permanent relative redirect",
        ),
        pytest.param(
            "redirect-abort", 302, None, {"Location": "http://localhost/stop"}, id="redirect abort"
        ),
        pytest.param(
            "redirect-303", 303, b"", {"Location": "https://example.com/x"}, id="redirect code"
        ),
        pytest.param("app", 200, b"True", {}, id="self.app is the application"),
    ],
)
def test_response_api(how: str, status: int, body: bytes | None, headers: dict[str, str]) -> None:
    """``self.response``, ``abort``, ``error`` and ``redirect`` answer as in webapp2."""
    response = call(WRITER, f"/w/{how}")
    assert response.status_int == status
    if body is not None:
        assert response.body == body
    for name, value in headers.items():
        assert response.headers[name] == value


def test_repeated_headers_survive() -> None:
    """Two cookies set by a handler both reach the client."""
    response = call(WRITER, "/w/header")
    assert sorted(response.headers.getall("Set-Cookie")) == ["one=1; Path=/", "two=2; Path=/"]


class Crash(RequestHandler):
    """Raises what the path names."""

    def get(self, what: str) -> None:
        self.response.write("partial output")
        if what == "value":
            raise ValueError("secret-database-password")
        if what == "retry":
            raise RetryTask("later", status=503)
        if what == "permanent":
            raise PermanentTaskFailure("never")
        if what == "deadline":
            raise DeadlineExceededError()
        if what == "context":
            task = current_task()
            self.response.write(task.task_name if task is not None else "no task")

    post = get


class Handled(Crash):
    """Turns its own errors into a page."""

    def handle_exception(self, exception: Exception, debug: bool) -> None:
        self.response.status = 502
        self.response.text = f"handled {type(exception).__name__}"


def crash_app(debug: bool = False) -> WSGIApplication:
    return WSGIApplication([("/crash/(.*)", Crash), ("/handled/(.*)", Handled)], debug=debug)


def test_exception_is_500_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """An unhandled error is a 500 whose body shows nothing of it; the log has the traceback."""
    response = call(crash_app(), "/crash/value")
    assert response.status_int == 500
    assert b"secret" not in response.body
    assert b"Traceback" not in response.body
    assert b"partial output" not in response.body
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)


def test_debug_shows_traceback() -> None:
    """With ``debug=True`` a 500 shows the traceback, as webapp2 does."""
    response = call(crash_app(debug=True), "/crash/value")
    assert response.status_int == 500
    assert b"Traceback" in response.body
    assert b"secret-database-password" in response.body


def test_handle_exception_override() -> None:
    """A handler's ``handle_exception`` may turn an error into its own response."""
    response = call(crash_app(), "/handled/value")
    assert (response.status_int, response.text) == (502, "handled ValueError")


@pytest.mark.parametrize(
    ("status", "path"),
    [
        pytest.param(404, "/missing", id="404"),
        pytest.param(500, "/crash/value", id="500"),
        pytest.param(405, "/crash/x", id="405"),
    ],
)
def test_error_handlers(status: int, path: str) -> None:
    """``app.error_handlers[status]`` renders that error's page."""
    app = crash_app()

    def page(request: Request, response: Response, exc: BaseException) -> None:
        response.write(f"custom {status} {type(exc).__name__}")

    app.error_handlers[status] = page
    response = call(app, path, method="PUT" if status == 405 else "GET")
    assert response.status_int == status
    assert response.text.startswith(f"custom {status}")


def test_failing_error_handler_is_plain_500() -> None:
    """An error handler that fails still yields a clean 500."""
    app = crash_app()

    def page(request: Request, response: Response, exc: BaseException) -> None:
        raise RuntimeError("handler bug")

    app.error_handlers[404] = page
    response = call(app, "/missing")
    assert response.status_int == 500
    assert b"handler bug" not in response.body


@pytest.mark.parametrize(
    ("what", "status", "outcome"),
    [
        pytest.param("value", 500, "retry", id="error -> retry"),
        pytest.param("retry", 503, "retry", id="RetryTask status"),
        pytest.param("permanent", 200, "permanent-failure", id="PermanentTaskFailure"),
        pytest.param("deadline", 500, "deadline-exceeded", id="DeadlineExceededError"),
        pytest.param("context", 200, "success", id="current_task is set"),
    ],
)
@pytest.mark.parametrize("debug", [False, True], ids=["debug off", "debug on"])
def test_task_request_errors_go_to_the_middleware(
    what: str, status: int, outcome: str, debug: bool
) -> None:
    """In a task request a plain handler's exception reaches TaskMiddleware, which maps it."""
    app = TaskMiddleware(crash_app(debug=debug))
    response = call(app, f"/crash/{what}", headers=TASK_HEADERS, remote_addr=QUEUE_PEER)
    assert (response.status_int, response.headers["X-Task-Outcome"]) == (status, outcome)
    assert b"Traceback" not in response.body
    assert b"secret" not in response.body
    if what == "context":
        assert response.body == b"partial outputtask-7"


class Work(TaskRequestHandler):
    """A task handler class; the payload's ``do`` says what to do."""

    runs: list[TaskContext] = []

    def post(self) -> None:
        Work.runs.append(self.task)
        do = self.request.get("do")
        if do == "retry":
            raise RetryTask("later", status=429)
        if do == "permanent":
            raise PermanentTaskFailure("bad data")
        if do == "crash":
            raise ValueError("secret")
        if do == "deadline":
            raise DeadlineExceededError()
        if do == "status":
            self.response.set_status(503)
            return
        if do == "abort":
            self.abort(404)
        if do == "cookies":
            self.response.set_cookie("one", "1")
            self.response.set_cookie("two", "2")
        self.response.write(f"{self.task.queue_name}/{self.task.task_name}/{self.task.trusted_by}")


@pytest.fixture
def work_runs() -> list[TaskContext]:
    Work.runs = []
    return Work.runs


def work_app(middleware: bool = True) -> Any:
    app = WSGIApplication([("/work", Work)])
    return TaskMiddleware(app, authenticator=header_user) if middleware else app


@pytest.mark.parametrize(
    ("do", "status", "outcome", "text"),
    [
        pytest.param("", 200, "success", "work/task-7/queue", id="runs with self.task"),
        pytest.param("retry", 429, "retry", None, id="RetryTask"),
        pytest.param("permanent", 200, "permanent-failure", None, id="PermanentTaskFailure"),
        pytest.param("crash", 500, "retry", None, id="error"),
        pytest.param("deadline", 500, "deadline-exceeded", None, id="deadline"),
        pytest.param("status", 503, "retry", None, id="own status"),
        pytest.param("abort", 404, "retry", None, id="abort"),
    ],
)
@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "standalone"])
def test_task_request_handler_outcomes(
    work_runs: list[TaskContext],
    middleware: bool,
    do: str,
    status: int,
    outcome: str,
    text: str | None,
) -> None:
    """A TaskRequestHandler's result becomes the SPEC §6 status, with or without middleware."""
    response = call(
        work_app(middleware),
        "/work",
        headers=TASK_HEADERS,
        remote_addr=QUEUE_PEER,
        POST={"do": do},
    )
    assert (response.status_int, response.headers["X-Task-Outcome"]) == (status, outcome)
    assert len(work_runs) == 1
    assert b"secret" not in response.body
    if text is not None:
        assert response.text == text


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"remote_addr": STRANGER}, id="stranger"),
        pytest.param({"remote_addr": STRANGER, "headers": TASK_HEADERS}, id="spoofed headers"),
        pytest.param({"remote_addr": QUEUE_PEER}, id="queue address, no headers"),
        pytest.param(
            {"remote_addr": STRANGER, "headers": {**TASK_HEADERS, "X-Test-User": "bob"}},
            id="non-admin user",
        ),
    ],
)
@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "standalone"])
def test_task_request_handler_rejects_non_tasks(
    work_runs: list[TaskContext], middleware: bool, kwargs: dict[str, Any]
) -> None:
    """A request that is not a trusted task gets 403 ``rejected`` and no method runs."""
    response = call(work_app(middleware), "/work", method="POST", **kwargs)
    assert (response.status_int, response.headers["X-Task-Outcome"]) == (403, "rejected")
    assert work_runs == []


def test_spoofed_headers_are_stripped_before_the_handler() -> None:
    """A stranger's task headers are removed and recorded, not just ignored."""
    request = Request.blank("/work", method="POST", headers=TASK_HEADERS, remote_addr=STRANGER)
    request.get_response(work_app())
    assert sorted(request.environ["taskhandler.stripped"]) == [
        "x-appengine-queuename",
        "x-appengine-taskname",
    ]
    assert "HTTP_X_APPENGINE_QUEUENAME" not in request.environ


def test_admin_runs_task_handler_from_a_browser(work_runs: list[TaskContext]) -> None:
    """An admin without task headers runs it as queue ``default`` with a generated name."""
    response = call(
        work_app(), "/work", method="POST", remote_addr=STRANGER, headers={"X-Test-User": "admin"}
    )
    assert (response.status_int, response.headers["X-Task-Outcome"]) == (200, "success")
    (task,) = work_runs
    assert (task.queue_name, task.trusted_by) == ("default", "admin")
    assert task.task_name.startswith("manual-")
    assert response.text == f"default/{task.task_name}/admin"


def test_task_request_handler_405(work_runs: list[TaskContext]) -> None:
    """A task with a verb the class lacks gets 405 with ``Allow``."""
    response = call(work_app(), "/work", method="PUT", headers=TASK_HEADERS, remote_addr=QUEUE_PEER)
    assert (response.status_int, response.headers["Allow"]) == (405, "POST")
    assert work_runs == []


def test_task_request_handler_keeps_repeated_headers(work_runs: list[TaskContext]) -> None:
    """Cookies set by a task handler all survive the task gate."""
    response = call(
        work_app(), "/work", headers=TASK_HEADERS, remote_addr=QUEUE_PEER, POST={"do": "cookies"}
    )
    assert sorted(response.headers.getall("Set-Cookie")) == ["one=1; Path=/", "two=2; Path=/"]


def test_concurrent_task_requests_see_their_own_task() -> None:
    """``self.task`` and ``current_task()`` never leak between requests on other threads."""
    import threading

    app = work_app()
    results: dict[str, str] = {}
    barrier = threading.Barrier(8)

    def one(n: int) -> None:
        barrier.wait(timeout=10)
        headers = {"X-AppEngine-QueueName": "work", "X-AppEngine-TaskName": f"t-{n}"}
        response = call(app, "/work", headers=headers, remote_addr=QUEUE_PEER, POST={"do": ""})
        results[f"t-{n}"] = response.text

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {f"t-{n}": f"work/t-{n}/queue" for n in range(8)}
