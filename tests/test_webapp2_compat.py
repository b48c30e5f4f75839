"""``taskhandler.webapp`` against what ported webapp2 apps rely on, as webapp2 3.0 behaves.

Written in the spirit of webapp2's own ``tests/`` (handler, response, routing and misc
suites): each table row is one behaviour a ported app or its tests depend on. Requests go
through ``Request.blank(...).get_response(app)`` or ``app.get_response``; lazy handlers are
real modules written to a temporary directory and imported on first use.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webob
import webob.exc

from taskhandler.exceptions import ConfigError
from taskhandler.webapp import (
    HTTPException,
    ImportStringError,
    RedirectHandler,
    Request,
    RequestHandler,
    Response,
    Route,
    TaskRequestHandler,
    WSGIApplication,
    abort,
    cached_property,
    get_app,
    get_request,
    import_string,
    redirect,
    redirect_to,
    uri_for,
)
from taskhandler.wsgi import TaskMiddleware

QUEUE_PEER = "0.1.0.2"
TASK_HEADERS = {"X-AppEngine-QueueName": "work", "X-AppEngine-TaskName": "task-7"}


# -- handlers of every kind -------------------------------------------------------------


class Home(RequestHandler):
    def get(self, *args: Any, **kwargs: Any) -> None:
        self.response.write(f"home {args} {sorted(kwargs.items())}")

    def post(self, *args: Any, **kwargs: Any) -> None:
        self.response.write("home post")


class AllVerbs(Home):
    def put(self) -> None:
        self.response.write("put")

    def delete(self) -> None:
        self.response.write("delete")

    def head(self) -> None:
        self.response.write("head body is dropped")

    def options(self) -> None:
        self.response.write("options")

    def trace(self) -> None:
        self.response.write("trace")

    def patch(self) -> None:
        self.response.write("patch")


class WebDav(RequestHandler):
    def propfind(self) -> None:
        self.response.write("propfind")

    def version_control(self) -> None:
        self.response.write("version-control")


class Bare:
    """Not a RequestHandler: built as ``cls(request, response)``, then ``dispatch()``."""

    def __init__(self, request: Request, response: Response) -> None:
        self.response = response
        response.write("bare class")

    def dispatch(self) -> Response:
        return self.response


class BareReturningNone:
    """A bare class whose ``dispatch()`` returns nothing: the app's response is sent."""

    def __init__(self, request: Request, response: Response) -> None:
        self.response = response

    def dispatch(self) -> None:
        self.response.write(f"bare none {self.response.headers['Cache-Control']}")


def view(request: Request, *args: Any, **kwargs: Any) -> Response:
    return Response(f"view {args} {sorted(kwargs.items())} {request.path}")


def view_returning_string(request: Request) -> str:
    return "not a response"


def view_returning_wsgi_app(request: Request) -> Any:
    return webob.exc.HTTPAccepted()


def view_aborting(request: Request) -> None:
    abort(409)


class Custom(RequestHandler):
    def custom(self) -> None:
        self.response.write("custom method")


APP = WSGIApplication(
    [
        ("/bare", Bare),
        ("/bare-none", BareReturningNone),
        (r"/view/(\d+)", view),
        (r"/optional(?:/(a))?/(b)", view),
        ("/string", view_returning_string),
        ("/wsgi", view_returning_wsgi_app),
        ("/abort-view", view_aborting),
        Route("/kw-view/<name>", view),
        Route("/", Home, name="home"),
        Route("/verbs", AllVerbs),
        Route("/webdav", WebDav),
        Route("/colon", "tests.test_webapp2_compat.Custom:custom"),
        Route("/dotted", "tests.test_webapp2_compat.Home"),
        Route("/dotted-view/<x>", "tests.test_webapp2_compat.view"),
        Route("/defaults/<a>", Home, defaults={"b": "2", "a": "default"}),
        Route(r"/defaults-positional/<:\d+>", Home, defaults={"b": "2"}),
        Route(r"/mixed/<:\d+>/<name>", Home),
        Route(r"/unnamed/<:\d+>/<:\w+>", Home),
        Route(r"/inner-group/<:(19|20)\d\d>", Home),
        Route("/https-only", Home, schemes=["https"]),
        Route("/build-only/<x>", Home, name="build-only", build_only=True),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        pytest.param("GET", "/bare", 200, b"bare class", id="class that is not a RequestHandler"),
        pytest.param(
            "GET", "/bare-none", 200, b"bare none no-cache", id="bare dispatch returning None"
        ),
        pytest.param("GET", "/view/7", 200, b"view ('7',) [] /view/7", id="function, regex group"),
        pytest.param(
            "GET", "/kw-view/bob", 200, b"view () [('name', 'bob')] /kw-view/bob", id="function kw"
        ),
        pytest.param(
            "GET",
            "/optional/b",
            200,
            b"view (None, 'b') [] /optional/b",
            id="group that took no part is None",
        ),
        pytest.param("GET", "/string", 500, None, id="function returning a string is a 500"),
        pytest.param("GET", "/wsgi", 202, None, id="function returning a WSGI app"),
        pytest.param("GET", "/abort-view", 409, None, id="function calling abort"),
        pytest.param("GET", "/colon", 200, b"custom method", id="'module.Class:method'"),
        pytest.param("POST", "/colon", 200, b"custom method", id="handler method for any verb"),
        pytest.param("GET", "/dotted", 200, b"home () []", id="'module.Class'"),
        pytest.param(
            "GET", "/dotted-view/1", 200, b"view () [('x', '1')] /dotted-view/1", id="'module.func'"
        ),
        pytest.param(
            "GET", "/defaults/z", 200, b"home () [('a', 'z'), ('b', '2')]", id="defaults and path"
        ),
        pytest.param(
            "GET",
            "/defaults-positional/5",
            200,
            b"home () [('b', '2')]",
            id="defaults turn positional arguments off",
        ),
        pytest.param(
            "GET", "/mixed/5/x", 200, b"home () [('name', 'x')]", id="named drops unnamed"
        ),
        pytest.param("GET", "/unnamed/5/x", 200, b"home ('5', 'x') []", id="unnamed in order"),
        pytest.param(
            "GET", "/inner-group/1999", 200, b"home ('1999',) []", id="groups inside a variable"
        ),
        pytest.param("GET", "/https-only", 404, None, id="scheme refused"),
        pytest.param("GET", "/build-only/x", 404, None, id="build_only never matches"),
    ],
)
def test_handler_kinds(method: str, path: str, status: int, body: bytes | None) -> None:
    """Classes, bare classes, functions and dotted names dispatch as in webapp2."""
    response = APP.get_response(path, method=method)
    assert response.status_int == status
    if body is not None:
        assert response.body == body


def test_scheme_allowed() -> None:
    """A route limited to https answers an https request."""
    response = APP.get_response("https://example.com/https-only")
    assert (response.status_int, response.text) == (200, "home () []")


@pytest.mark.parametrize(
    ("method", "path", "status", "body", "allow"),
    [
        pytest.param("GET", "/verbs", 200, b"home () []", None, id="GET"),
        pytest.param("POST", "/verbs", 200, b"home post", None, id="POST"),
        pytest.param("PUT", "/verbs", 200, b"put", None, id="PUT"),
        pytest.param("DELETE", "/verbs", 200, b"delete", None, id="DELETE"),
        pytest.param("HEAD", "/verbs", 200, b"", None, id="HEAD sends no body"),
        pytest.param("OPTIONS", "/verbs", 200, b"options", None, id="OPTIONS"),
        pytest.param("TRACE", "/verbs", 200, b"trace", None, id="TRACE"),
        pytest.param("PATCH", "/verbs", 200, b"patch", None, id="PATCH"),
        pytest.param("PUT", "/", 405, None, "GET, POST", id="405 lists methods sorted"),
        pytest.param("TRACE", "/", 405, None, "GET, POST", id="TRACE the handler lacks"),
        pytest.param("FOOBAR", "/verbs", 501, None, None, id="unknown verb"),
        pytest.param("FOOBAR", "/nowhere", 501, None, None, id="unknown verb before routing"),
        pytest.param("PROPFIND", "/webdav", 501, None, None, id="WebDAV verb not allowed"),
        pytest.param("get", "/verbs", 501, None, None, id="verbs are case-sensitive"),
    ],
)
def test_verbs(method: str, path: str, status: int, body: bytes | None, allow: str | None) -> None:
    """Each allowed verb reaches its method; 405 with ``Allow`` if missing, 501 if unknown."""
    response = APP.get_response(path, method=method)
    assert response.status_int == status
    if body is not None:
        assert response.body == body
    if allow is not None:
        assert response.headers["Allow"] == allow


@pytest.mark.parametrize(
    ("method", "body"),
    [
        pytest.param("PROPFIND", b"propfind", id="PROPFIND"),
        pytest.param("VERSION-CONTROL", b"version-control", id="dash becomes underscore"),
    ],
)
def test_extra_allowed_methods(method: str, body: bytes) -> None:
    """Adding verbs to ``app.allowed_methods`` dispatches them to their methods."""
    app = WSGIApplication([("/webdav", WebDav)])
    app.allowed_methods = {*app.allowed_methods, "PROPFIND", "VERSION-CONTROL"}
    assert (app.get_response("/webdav", method=method).body) == body
    assert WSGIApplication([("/webdav", WebDav)]).get_response("/webdav").status_int == 405


# -- lazy (string) handlers ---------------------------------------------------------------

LAZY_MODULE = """
import taskhandler.webapp as webapp2

IMPORTED = True


class Worker(webapp2.RequestHandler):
    def post(self):
        self.response.write("lazy worker " + self.request.get("n"))

    def special(self):
        self.response.write("lazy special")


def page(request, *args, **kwargs):
    return webapp2.Response("lazy page")


def not_found(request, response, exception):
    response.write("lazy 404 page")


NOT_A_HANDLER = 42
"""


@pytest.fixture
def lazy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real module on ``sys.path`` that nothing has imported yet; its name is returned."""
    name = f"lazy_handlers_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(LAZY_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("kind", "spec", "handler_method", "method", "status", "body"),
    [
        pytest.param("tuple", "{m}.Worker", None, "POST", 200, b"lazy worker 1", id="tuple class"),
        pytest.param("Route", "{m}.Worker", None, "POST", 200, b"lazy worker 1", id="Route class"),
        pytest.param(
            "Route", "{m}.Worker:special", None, "GET", 200, b"lazy special", id="class:method"
        ),
        pytest.param(
            "Route", "{m}.Worker", "special", "GET", 200, b"lazy special", id="handler_method"
        ),
        pytest.param("tuple", "{m}.page", None, "GET", 200, b"lazy page", id="function"),
        pytest.param("tuple", "{m}.Missing", None, "GET", 500, None, id="missing name"),
        pytest.param("tuple", "{m}.NOT_A_HANDLER", None, "GET", 500, None, id="not a handler"),
        pytest.param("tuple", "{m}_absent.Worker", None, "GET", 500, None, id="missing module"),
    ],
)
def test_lazy_handlers(
    lazy_module: str,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    spec: str,
    handler_method: str | None,
    method: str,
    status: int,
    body: bytes | None,
) -> None:
    """A dotted-name handler is imported on the first request, not when the app is built;
    one that cannot be imported is a logged 500 without a traceback in the page."""
    handler = spec.format(m=lazy_module)
    route: Any = (
        ("/x", handler) if kind == "tuple" else Route("/x", handler, handler_method=handler_method)
    )
    app = WSGIApplication([route])
    assert lazy_module not in sys.modules
    post = {"n": "1"} if method == "POST" else None
    response = app.get_response("/x", method=method, POST=post)
    assert response.status_int == status
    if body is not None:
        assert response.body == body
        assert lazy_module in sys.modules
    else:
        assert b"Traceback" not in response.body
        assert any(r.exc_info for r in caplog.records)


def test_lazy_error_handler(lazy_module: str) -> None:
    """``app.error_handlers`` may name its handler as a dotted string."""
    app = WSGIApplication([("/", Home)])
    app.error_handlers[404] = f"{lazy_module}.not_found"
    response = app.get_response("/missing")
    assert (response.status_int, response.body) == (404, b"lazy 404 page")


# Wrong on purpose: what a route is refused for.
NOT_CALLABLE: list[Any] = [Home(), 42]
NOT_A_MAPPING: Any = [("a", 1)]
NOT_A_TEMPLATE: Any = b"/x"


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: WSGIApplication([("/x", "not a name")]), id="string with spaces"),
        pytest.param(lambda: WSGIApplication([("/x", "a..b")]), id="empty dotted part"),
        pytest.param(lambda: WSGIApplication([("/x", object)]), id="class without dispatch"),
        pytest.param(lambda: WSGIApplication([("/x", NOT_CALLABLE[0])]), id="handler instance"),
        pytest.param(lambda: WSGIApplication([("/x", NOT_CALLABLE[1])]), id="not callable"),
        pytest.param(lambda: WSGIApplication([("/(x", Home)]), id="bad regex"),
        pytest.param(lambda: Route("/<x:(>", Home), id="bad variable regex"),
        pytest.param(lambda: Route("/x", "m.C:meth", handler_method="meth"), id="two methods"),
        pytest.param(lambda: Route("/x", Home, build_only=True), id="build_only without name"),
        pytest.param(lambda: Route("/x", Home, methods="POST"), id="methods as one string"),
        pytest.param(
            lambda: Route("/x", Home, defaults=NOT_A_MAPPING), id="defaults not a mapping"
        ),
        pytest.param(lambda: Route(NOT_A_TEMPLATE, Home), id="bytes template"),
    ],
)
def test_bad_routes_are_config_errors(build: Any) -> None:
    """A route that can never work is refused when the app is built."""
    with pytest.raises(ConfigError):
        build()


def test_route_without_handler_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    """A route kept only for URL building answers 500 if it is ever matched."""
    response = WSGIApplication([Route("/x", None, name="x")]).get_response("/x")
    assert response.status_int == 500
    assert any(r.exc_info and r.exc_info[0] is LookupError for r in caplog.records)


# -- redirects -----------------------------------------------------------------------------


def redirect_target(handler: RequestHandler, *args: Any, **kwargs: Any) -> str:
    return handler.uri_for("home", _fragment=handler.request.path)


class CookieThenRedirect(RequestHandler):
    """Sets a cookie and a header, then redirects as the query says."""

    def get(self) -> None:
        self.response.set_cookie("session", "abc")
        self.response.headers.add_header("X-Kept", "yes")
        self.response.write("dropped body")
        code = int(self.request.get("code", "302"))
        self.redirect("/next", abort=self.request.get("abort") == "1", code=code, body="moved")
        self.response.headers["X-After"] = "ran"


class RedirectToNamed(RequestHandler):
    def get(self) -> None:
        self.redirect_to("item", kind="book", n=7, page="2", _fragment="top")


REDIRECTS = WSGIApplication(
    [
        Route("/", Home, name="home"),
        Route(r"/items/<kind>/<n:\d+>", Home, name="item"),
        Route("/old", RedirectHandler, defaults={"_uri": "/new"}),
        Route("/old-temp", RedirectHandler, defaults={"_uri": "/new", "_permanent": False}),
        Route("/old-303", RedirectHandler, defaults={"_uri": "/new", "_code": 303}),
        Route("/old-callable", RedirectHandler, defaults={"_uri": redirect_target}),
        Route("/old-default", RedirectHandler),
        Route("/old-absolute", RedirectHandler, defaults={"_uri": "https://example.org/x"}),
        ("/cookie", CookieThenRedirect),
        ("/to-named", RedirectToNamed),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "status", "location"),
    [
        pytest.param("GET", "/old", 301, "http://localhost/new", id="permanent by default"),
        pytest.param("GET", "/old-temp", 302, "http://localhost/new", id="_permanent False"),
        pytest.param("GET", "/old-303", 303, "http://localhost/new", id="_code"),
        pytest.param(
            "GET", "/old-callable", 301, "http://localhost/#/old-callable", id="_uri callable"
        ),
        pytest.param("GET", "/old-default", 301, "http://localhost/", id="no _uri goes to /"),
        pytest.param("GET", "/old-absolute", 301, "https://example.org/x", id="absolute URI kept"),
        pytest.param(
            "GET",
            "/to-named",
            302,
            "http://localhost/items/book/7?page=2#top",
            id="redirect_to a named route",
        ),
    ],
)
def test_redirect_handler(method: str, path: str, status: int, location: str) -> None:
    """``RedirectHandler`` and ``redirect_to`` answer with the route defaults' target."""
    response = REDIRECTS.get_response(path, method=method)
    assert (response.status_int, response.headers["Location"]) == (status, location)
    assert response.body == b""


def test_redirect_handler_is_get_only() -> None:
    """A POST to a RedirectHandler route is a 405 allowing GET."""
    response = REDIRECTS.get_response("/old", method="POST")
    assert (response.status_int, response.headers["Allow"]) == (405, "GET")


@pytest.mark.parametrize(
    ("query", "status", "body", "after"),
    [
        pytest.param("", 302, b"moved", "ran", id="redirect, handler goes on"),
        pytest.param("?code=307", 307, b"moved", "ran", id="307"),
        pytest.param("?abort=1", 302, None, None, id="abort=True stops the handler"),
        pytest.param("?abort=1&code=303", 303, None, None, id="abort with 303"),
        pytest.param("?abort=1&code=301", 301, None, None, id="abort with 301"),
    ],
)
def test_redirect_keeps_headers_already_set(
    query: str, status: int, body: bytes | None, after: str | None
) -> None:
    """A redirect, aborted or not, keeps the cookie and headers set before it."""
    response = REDIRECTS.get_response(f"/cookie{query}")
    assert response.status_int == status
    assert response.headers["Location"] == "http://localhost/next"
    assert response.headers.getall("Set-Cookie") == ["session=abc; Path=/"]
    assert response.headers["X-Kept"] == "yes"
    assert response.headers.getall("Location") == ["http://localhost/next"]
    assert response.headers.get("X-After") == after
    if body is not None:
        assert response.body == body
    else:
        assert b"dropped body" not in response.body
        assert b"http://localhost/next" in response.body


def test_task_handler_redirect_abort_keeps_cookie() -> None:
    """In a TaskRequestHandler, ``redirect(abort=True)`` keeps the cookie too."""

    class Work(TaskRequestHandler):
        def post(self) -> None:
            self.response.set_cookie("seen", "1")
            self.redirect("/done", abort=True)

    app = TaskMiddleware(WSGIApplication([("/work", Work)]))
    response = app_response(app, "/work", method="POST", headers=TASK_HEADERS)
    assert response.status_int == 302
    assert response.headers.getall("Set-Cookie") == ["seen=1; Path=/"]
    assert response.headers["Location"] == "http://localhost/done"


def app_response(app: Any, path: str, **kwargs: Any) -> Any:
    """The response of any WSGI app to a request from the queue's address."""
    return Request.blank(path, remote_addr=QUEUE_PEER, **kwargs).get_response(app)


@pytest.mark.parametrize(
    ("kwargs", "status", "location", "body"),
    [
        pytest.param({}, 302, "http://localhost/base/next", b"", id="relative to the request"),
        pytest.param({"permanent": True}, 301, "http://localhost/base/next", b"", id="permanent"),
        pytest.param(
            {"code": 308, "body": "Weee"},
            308,
            "http://localhost/base/next",
            b"Weee",
            id="308 with a body",
        ),
    ],
)
def test_module_redirect_inside_a_handler(
    kwargs: dict[str, Any], status: int, location: str, body: bytes
) -> None:
    """``redirect()`` called from a function handler finds the request being served."""

    def go(request: Request) -> Response:
        return redirect("next", **kwargs)

    response = WSGIApplication([("/base/here", go)]).get_response("/base/here")
    assert (response.status_int, response.headers["Location"], response.body) == (
        status,
        location,
        body,
    )
    assert response.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    ("code", "error"),
    [
        pytest.param(300, ValueError, id="300 is not a redirect"),
        pytest.param(304, ValueError, id="304 is not a redirect"),
        pytest.param(200, ValueError, id="200"),
        pytest.param(399, ValueError, id="399"),
    ],
)
def test_redirect_refuses_codes(code: int, error: type[Exception]) -> None:
    """Only codes a client follows make a redirect."""
    with pytest.raises(error):
        redirect("http://example.com/", code=code)


def test_redirect_outside_a_request() -> None:
    """An absolute redirect needs no request; a relative one outside a request is an error."""
    response = redirect("http://www.google.com/", code=301, body="Weee")
    assert (response.status_int, response.body) == (301, b"Weee")
    assert response.headers["Location"] == "http://www.google.com/"
    with pytest.raises(RuntimeError):
        redirect("/relative")


# -- building URLs -------------------------------------------------------------------------

BUILD = WSGIApplication(
    [
        Route("/", Home, name="home"),
        Route("/methods", Home, name="methods"),
        Route(r"/<year:\d{4}>/<month:\d{1,2}>/<name>", None, name="article"),
        Route(r"/<:\d{4}>/<month:\d{2}>", None, name="mixed"),
        Route(r"/y/<year:\d{4}>/<month:\d{2}>", None, name="defaults", defaults={"month": 10}),
        Route("/escape/<name:.*>", Home, name="escape"),
        Route("/50%/<x>", None, name="percent"),
        ("/simple", Home),
    ]
)


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "url"),
    [
        pytest.param("home", (), {}, "/", id="plain"),
        pytest.param("home", (), {"foo": "bar"}, "/?foo=bar", id="extra keyword to query"),
        pytest.param("home", (), {"b": "2", "a": "1"}, "/?a=1&b=2", id="query sorted"),
        pytest.param("home", (), {"_fragment": "my-anchor"}, "/#my-anchor", id="fragment"),
        pytest.param("home", (), {"_full": True}, "http://localhost:80/", id="full"),
        pytest.param("home", (), {"_scheme": "https"}, "https://localhost:80/", id="scheme"),
        pytest.param(
            "methods", (), {"_netloc": "example.com"}, "http://example.com/methods", id="netloc"
        ),
        pytest.param(
            "article",
            (),
            {"year": "2010", "month": "07", "name": "test", "foo": "bar", "_fragment": "a"},
            "/2010/07/test?foo=bar#a",
            id="variables, query and fragment",
        ),
        pytest.param(
            "article", (), {"year": 2010, "month": 7, "name": "t"}, "/2010/7/t", id="ints"
        ),
        pytest.param("mixed", (2010,), {"month": "10"}, "/2010/10", id="positional"),
        pytest.param("mixed", ("1999", "x"), {"month": "07"}, "/1999/07", id="extra args ignored"),
        pytest.param("defaults", (), {"year": "2010"}, "/y/2010/10", id="default fills a variable"),
        pytest.param("escape", (), {"name": "with space"}, "/escape/with%20space", id="quoted"),
        pytest.param("escape", (), {"name": "a/b"}, "/escape/a/b", id="slash kept"),
        pytest.param("percent", (), {"x": "1"}, "/50%25/1", id="literal percent"),
    ],
)
def test_uri_for(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], url: str) -> None:
    """``uri_for`` builds a route's URL as webapp2's router does."""
    request = Request.blank("http://localhost:80/")
    request.app = BUILD
    assert uri_for(name, request, *args, **kwargs) == url


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "error"),
    [
        pytest.param("nope", (), {}, KeyError, id="unknown name"),
        pytest.param("article", (), {"year": "2010", "month": "7"}, KeyError, id="missing"),
        pytest.param("mixed", (), {"month": "07"}, KeyError, id="missing positional"),
        pytest.param(
            "article", (), {"year": "201", "month": "7", "name": "x"}, ValueError, id="no match"
        ),
        pytest.param(
            "article", (), {"year": "2010", "month": "7", "name": "a/b"}, ValueError, id="slash"
        ),
    ],
)
def test_uri_for_errors(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """A missing or mismatched argument, or an unknown name, is an error, never a bad URL."""
    request = Request.blank("/")
    request.app = BUILD
    with pytest.raises(error):
        uri_for(name, request, *args, **kwargs)


def test_uri_for_inside_a_handler_and_outside() -> None:
    """Inside a request ``uri_for`` needs no request; outside one it says so."""

    class Links(RequestHandler):
        def get(self) -> None:
            self.response.write(f"{uri_for('methods')} {self.uri_for('home', _full=True)}")

    app = WSGIApplication(
        [("/links", Links), Route("/methods", Home, name="methods"), Route("/", Home, name="home")]
    )
    assert app.get_response("/links").text == "/methods http://localhost:80/"
    with pytest.raises(RuntimeError):
        uri_for("methods")
    with pytest.raises(NotImplementedError):
        Route.simple("/x", Home).build(None, (), {})


def test_set_globals_for_tests() -> None:
    """``app.set_globals`` lets tests call ``uri_for``/``redirect_to`` outside a request."""
    request = Request.blank("/")
    request.app = BUILD
    BUILD.set_globals(app=BUILD, request=request)
    try:
        assert (get_app(), get_request()) == (BUILD, request)
        assert uri_for("methods") == "/methods"
        response = redirect_to("methods", _code=301, _body="Weee")
        assert (response.status_int, response.headers["Location"]) == (
            301,
            "http://localhost/methods",
        )
    finally:
        BUILD.clear_globals()
    with pytest.raises(RuntimeError):
        get_request()


def test_each_thread_sees_its_own_request() -> None:
    """``get_request()`` in concurrent requests on other threads is each one's own."""

    def echo(request: Request) -> Response:
        barrier.wait(timeout=10)
        return Response(get_request().get("n"))

    app = WSGIApplication([("/echo", echo)])
    barrier = threading.Barrier(8)
    results: dict[int, str] = {}

    def one(n: int) -> None:
        results[n] = app.get_response(f"/echo?n={n}").text

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {n: str(n) for n in range(8)}


# -- responses -----------------------------------------------------------------------------


def fresh() -> Response:
    return Response()


def headers_after(steps: Any) -> Response:
    response = Response()
    response.headers = []
    steps(response.headers)
    return response


@pytest.mark.parametrize(
    ("steps", "name", "values"),
    [
        pytest.param(
            lambda h: h.add_header("Content-Disposition", "attachment", filename="bud.gif"),
            "content-disposition",
            ['attachment; filename="bud.gif"'],
            id="add_header with a parameter",
        ),
        pytest.param(
            lambda h: h.add_header("Content-Disposition", "attachment", filename=None),
            "Content-Disposition",
            ["attachment; filename"],
            id="parameter without value",
        ),
        pytest.param(
            lambda h: h.add_header("X-A", "v", max_age="1"),
            "x-a",
            ['v; max-age="1"'],
            id="underscore becomes dash",
        ),
        pytest.param(
            lambda h: h.add_header("Set-Cookie", "", foo=";"),
            "set-cookie",
            ['; foo=";"'],
            id="empty value",
        ),
        pytest.param(
            lambda h: h.add_header("X-Q", None, q='say "hi"\\'),
            "x-q",
            ['q="say \\"hi\\"\\\\"'],
            id="quotes and backslashes escaped",
        ),
        pytest.param(
            lambda h: (h.add_header("Set-Cookie", "a=1"), h.add_header("set-cookie", "b=2")),
            "SET-COOKIE",
            ["a=1", "b=2"],
            id="get_all keeps every value in order",
        ),
        pytest.param(lambda h: None, "x-missing", [], id="get_all of nothing"),
    ],
)
def test_header_helpers(steps: Any, name: str, values: list[str]) -> None:
    """``headers.add_header`` and ``headers.get_all`` behave as ``wsgiref.headers.Headers``."""
    assert headers_after(steps).headers.get_all(name) == values


def test_headers_as_text_and_assignment() -> None:
    """``str(headers)`` is the wire form; headers can be set from a dict or list, not a str."""
    response = headers_after(lambda h: h.add_header("foo", "bar", baz="spam"))
    assert str(response.headers) == 'foo: bar; baz="spam"\r\n\r\n'
    response.headers = {"Set-Cookie": "foo=bar;"}
    assert response.headers.get_all("set-cookie") == ["foo=bar;"]
    response.headers = [("x", "y")]
    assert list(response.headers.items()) == [("x", "y")]
    with pytest.raises(TypeError):
        response.headers = "foo"  # type: ignore[assignment]


class CacheHeaders(RequestHandler):
    def get(self, how: str) -> None:
        if how == "own":
            self.response.headers["Cache-Control"] = "public, max-age=60"
        if how == "new-response":
            self.response = Response("fresh", status=201)


CACHE = WSGIApplication([("/c/(.*)", CacheHeaders)])


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(fresh, ["no-cache"], id="new Response"),
        pytest.param(lambda: Response("x", status=404), ["no-cache"], id="with body and status"),
        pytest.param(lambda: CACHE.get_response("/c/plain"), ["no-cache"], id="handler response"),
        pytest.param(
            lambda: CACHE.get_response("/c/own"), ["public, max-age=60"], id="handler replaces it"
        ),
        pytest.param(
            lambda: CACHE.get_response("/c/new-response"), ["no-cache"], id="handler's new response"
        ),
        pytest.param(
            lambda: Response(headerlist=[("Content-Type", "text/plain")]),
            [],
            id="given header list kept as is",
        ),
        pytest.param(
            lambda: Request.blank("/").get_response(webob.exc.HTTPNoContent()),
            [],
            id="another app's response read back unchanged",
        ),
        pytest.param(lambda: CACHE.get_response("/nowhere"), [], id="error pages are webob's"),
    ],
)
def test_cache_control_default(make: Any, expected: list[str]) -> None:
    """Responses a handler writes say ``Cache-Control: no-cache`` unless it says otherwise."""
    assert make().headers.getall("Cache-Control") == expected


def with_status(value: Any) -> Response:
    response = Response()
    response.status = value
    return response


def with_message(message: str) -> Response:
    response = Response()
    response.status_message = message
    return response


def with_set_status(code: int, message: str | None = None) -> Response:
    response = Response()
    response.set_status(code, message)
    return response


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        pytest.param(fresh, "200 OK", "OK", id="new response"),
        pytest.param(lambda: with_status("200 OK"), "200 OK", "OK", id="from text"),
        pytest.param(lambda: with_message("Weee"), "200 Weee", "Weee", id="set the message"),
        pytest.param(lambda: with_status(404), "404 Not Found", "Not Found", id="from int"),
        pytest.param(lambda: with_status("403 Wooo"), "403 Wooo", "Wooo", id="own message"),
        pytest.param(lambda: with_status("404"), "404 Not Found", "Not Found", id="code only"),
        pytest.param(
            lambda: with_set_status(503, "Busy"), "503 Busy", "Busy", id="set_status with message"
        ),
        pytest.param(lambda: with_set_status(204), "204 No Content", "No Content", id="set_status"),
        pytest.param(
            lambda: with_status(299), "299 Success", "Success", id="unknown code: generic reason"
        ),
    ],
)
def test_status_message(make: Any, status: str, message: str) -> None:
    """``response.status_message`` reads and sets the reason phrase."""
    response = make()
    assert (response.status, response.status_message) == (status, message)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        pytest.param(404, "Not Found", id="404"),
        pytest.param(500, "Internal Server Error", id="500"),
        pytest.param(302, "Found", id="302 as webob names it"),
        pytest.param(9999, None, id="unknown code"),
        pytest.param(299, None, id="unassigned code"),
    ],
)
def test_http_status_message(code: int, message: str | None) -> None:
    """``Response.http_status_message(code)`` is the standard reason; KeyError for none."""
    if message is None:
        with pytest.raises(KeyError):
            Response.http_status_message(code)
    else:
        assert Response.http_status_message(code) == message


def test_status_must_be_text_or_int() -> None:
    """Setting the status to anything else is a TypeError."""
    with pytest.raises(TypeError):
        with_status(())


# -- requests and helpers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "args", "expected"),
    [
        pytest.param("", ("n",), 0, id="missing gives default 0"),
        pytest.param("n=5", ("n",), 5, id="integer"),
        pytest.param("n=-5", ("n",), -5, id="negative"),
        pytest.param("n=abc", ("n", None, None, 7), 7, id="not an integer gives the default"),
        pytest.param("n=500", ("n", 1, 100), 100, id="clamped to max"),
        pytest.param("n=0", ("n", 1, 100), 1, id="clamped to min"),
        pytest.param("", ("n", 1, 100, 500), 100, id="default clamped too"),
        pytest.param("", ("n", 1, 100, None), None, id="None default"),
        pytest.param("n=x", ("n", 1, 100, None), None, id="bad value, None default"),
        pytest.param("n=1.5", ("n",), 0, id="float is not an integer"),
    ],
)
def test_get_range(query: str, args: tuple[Any, ...], expected: int | None) -> None:
    """``request.get_range`` parses an integer argument and clamps it."""
    assert Request.blank(f"/?{query}").get_range(*args) == expected


def test_request_webapp_names() -> None:
    """``request["name"]``, ``request.uri`` and ``request.query`` are webapp's spellings."""
    request = Request.blank("/p?a=1&a=2")
    assert (request["a"], request["b"], request.uri, request.query) == (
        "1",
        "",
        "http://localhost/p?a=1&a=2",
        "a=1&a=2",
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("webob", webob, id="module"),
        pytest.param("webob.exc", webob.exc, id="submodule"),
        pytest.param("webob.exc.HTTPFound", webob.exc.HTTPFound, id="attribute"),
        pytest.param("tests.test_webapp2_compat.view", view, id="function"),
    ],
)
def test_import_string(name: str, expected: Any) -> None:
    """``import_string`` imports a module, submodule or attribute by dotted name."""
    assert import_string(name) is expected


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("asdfg_not_a_module", id="missing module"),
        pytest.param("webob.asdfg", id="missing attribute"),
        pytest.param("webob.exc.HTTPFound.nope", id="missing nested attribute"),
        pytest.param("", id="empty"),
    ],
)
def test_import_string_failures(name: str) -> None:
    """A name that cannot be imported is ``ImportStringError`` naming it, or None if silent."""
    assert import_string(name, silent=True) is None
    with pytest.raises(ImportStringError) as caught:
        import_string(name)
    assert caught.value.import_name == name
    assert repr(name) in str(caught.value)


def test_cached_property() -> None:
    """``cached_property`` computes once per instance and is visible on the class."""
    calls: list[int] = []

    class Thing:
        @cached_property
        def value(self) -> int:
            calls.append(1)
            return len(calls)

    assert isinstance(Thing.__dict__["value"], cached_property)
    first, second = Thing(), Thing()
    assert (first.value, first.value, second.value) == (1, 1, 2)


@pytest.mark.parametrize(
    ("code", "exception"),
    [
        pytest.param(200, webob.exc.HTTPOk, id="200"),
        pytest.param(301, webob.exc.HTTPMovedPermanently, id="301"),
        pytest.param(304, webob.exc.HTTPNotModified, id="304"),
        pytest.param(403, webob.exc.HTTPForbidden, id="403"),
        pytest.param(404, webob.exc.HTTPNotFound, id="404"),
        pytest.param(501, webob.exc.HTTPNotImplemented, id="501"),
        pytest.param(504, webob.exc.HTTPGatewayTimeout, id="504"),
        pytest.param(0, KeyError, id="0"),
        pytest.param(999999, KeyError, id="too large"),
        pytest.param("foo", KeyError, id="not a number"),
    ],
)
def test_abort(code: Any, exception: type[BaseException]) -> None:
    """``abort(code)`` raises webob's exception for the code; KeyError for none."""
    with pytest.raises(exception):
        abort(code)
    if exception is not KeyError:
        assert issubclass(exception, HTTPException)


@pytest.mark.parametrize(
    ("kwargs", "status", "body"),
    [
        pytest.param({}, 200, b"home () []", id="GET"),
        pytest.param({"method": "POST"}, 200, b"home post", id="method"),
        pytest.param({"POST": {"a": "1"}}, 200, b"home post", id="POST form"),
        pytest.param({"base_url": "http://example.com/mount"}, 404, None, id="base_url"),
    ],
)
def test_get_response(kwargs: dict[str, Any], status: int, body: bytes | None) -> None:
    """``app.get_response(path, **kwargs)`` builds ``Request.blank`` and runs the app."""
    response = APP.get_response("/", **kwargs)
    assert isinstance(response, Response)
    assert response.status_int == status
    if body is not None:
        assert response.body == body
