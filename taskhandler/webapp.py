"""The part of webapp2 that task code uses, on webob (SPEC §8).

Code written for App Engine's ``webapp2`` ports by changing one import::

    import taskhandler.webapp as webapp2

    class UpdateCounterHandler(webapp2.RequestHandler):
        def post(self):
            amount = int(self.request.get("amount"))
            ...

    app = webapp2.WSGIApplication([("/update_counter", UpdateCounterHandler)])

What is here: :class:`WSGIApplication` (regex routes matched against the whole path,
dispatch by HTTP method, 404 for no route, 405 with ``Allow``, 500 without a traceback
unless ``debug=True``), :class:`Route` (webapp2's ``<name:regex>`` templates),
:class:`RequestHandler` (``self.request.get()``, ``self.response.write()``/``.out.write()``,
``abort``, ``redirect``, ``error``), and :class:`TaskRequestHandler`, whose methods run only
for trusted task requests (or signed-in admins) and see the task as ``self.task``.

Inside a task request (one that ``TaskMiddleware`` trusts), an exception a handler does not
handle is not turned into a page here: it propagates to the middleware, which maps it to
the status the queue sees (``RetryTask`` -> its status, ``PermanentTaskFailure`` -> 200,
``DeadlineExceededError`` -> 500 ``deadline-exceeded``, anything else -> 500 ``retry``).

Not here: sessions, i18n, templates, ``uri_for``/named-route building, ``webapp2_extras``.
"""

from __future__ import annotations

import logging
import re
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, NoReturn
from urllib.parse import urljoin

from ._decorator import TaskHandler
from ._types import StartResponse, WSGIEnvironment
from .context import TaskContext, current_task

with warnings.catch_warnings():
    # WebOb 1.8 imports the standard library's ``cgi`` module, which warns on import from
    # Python 3.11 on. The warning is about WebOb's internals, not the caller's code.
    warnings.filterwarnings("ignore", message="'cgi' is deprecated", category=DeprecationWarning)
    import webob
    import webob.exc

__all__ = [
    "HTTPException",
    "Request",
    "RequestHandler",
    "Response",
    "Route",
    "TaskRequestHandler",
    "WSGIApplication",
    "abort",
]

log = logging.getLogger("taskhandler")

HTTPException = webob.exc.HTTPException
ALLOWED_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")
_TEMPLATE_VARIABLE = re.compile(r"<([^:>]*)(?::([^>]*))?>")


class Request(webob.Request):  # type: ignore[misc]  # webob ships no type hints
    """A webob request with webapp2's ``get()``, ``get_all()`` and ``arguments()``.

    ``route_args``/``route_kwargs`` hold what the matched route captured; ``app`` is the
    :class:`WSGIApplication` serving the request.
    """

    app: WSGIApplication | None = None
    route: Route | None = None
    route_args: tuple[str, ...] = ()
    route_kwargs: dict[str, str] = {}

    def get(self, argument_name: str, default_value: Any = "", allow_multiple: bool = False) -> Any:
        """The first query or form value named ``argument_name``, else ``default_value``.

        As in webapp2: with ``allow_multiple=True`` every value, as a list (``[]`` when
        there is none and no ``default_value`` was given). Prefer :meth:`get_all` for lists.

        Example: for ``/t?a=1&a=2``, ``get("a") == "1"``, ``get("b") == ""``,
        ``get("b", "x") == "x"``, ``get("a", allow_multiple=True) == ["1", "2"]``.
        """
        values = self.get_all(argument_name)
        if values:
            return values if allow_multiple else values[0]
        if allow_multiple and not default_value:
            return []
        return default_value

    def get_all(self, argument_name: str, default_value: list[Any] | None = None) -> list[Any]:
        """Every query and form value named ``argument_name`` (query first), else the default.

        An uploaded file is returned as its content, as webapp2 does.
        """
        values = [_field_value(value) for value in self.params.getall(argument_name)]
        if not values:
            return [] if default_value is None else default_value
        return values

    def arguments(self) -> list[str]:
        """The distinct names of the query and form arguments, in order of appearance."""
        return list(dict.fromkeys(self.params.keys()))


def _field_value(value: Any) -> Any:
    # A multipart upload arrives as a FieldStorage; webapp2 hands out its content.
    return value.value if hasattr(value, "filename") and hasattr(value, "value") else value


class Response(webob.Response):  # type: ignore[misc]  # webob ships no type hints
    """A webob response with webapp2's ``write()`` for any value, ``out``, ``set_status``
    and ``clear()``. Starts as ``200 OK``, ``text/html; charset=utf-8``, empty."""

    default_charset = "utf-8"
    charset: str | None

    @property
    def out(self) -> Response:
        """The response itself, so webapp's ``self.response.out.write(...)`` works."""
        return self

    def write(self, text: Any) -> None:
        """Append ``text`` to the body; bytes as they are, anything else as its ``str()``."""
        if not isinstance(text, (bytes, str)):
            text = str(text)
        if isinstance(text, str) and not self.charset:
            self.charset = self.default_charset
        super().write(text)

    def set_status(self, code: int, message: str | None = None) -> None:
        """Set the status from a code and an optional reason phrase."""
        self.status = f"{code} {message}" if message else code

    def clear(self) -> None:
        """Empty the body."""
        self.body = b""

    def has_error(self) -> bool:
        """True for a 4xx or 5xx status."""
        return bool(self.status_int >= 400)


def abort(code: int, *args: Any, **kwargs: Any) -> NoReturn:
    """Raise the webob HTTP exception for ``code`` (e.g. ``abort(404)``); stops the handler.

    Keyword arguments go to the exception, e.g. ``abort(405, headers=[("Allow", "GET")])``
    or ``abort(403, detail="...")``. An unknown code raises ``KeyError``.
    """
    cls = webob.exc.status_map.get(code)
    if cls is None:
        raise KeyError(f"no HTTP exception is defined for status {code!r}")
    raise cls(*args, **kwargs)


class Route:
    """A route: a path template, the handler class, and optional method and name rules.

    The template is webapp2's: literal text, ``<name>`` (one path segment, passed as a
    keyword argument), ``<name:regex>`` and ``<:regex>`` (passed positionally). It must
    match the whole path. A ``(regex, Handler)`` tuple in :class:`WSGIApplication`'s routes
    is a plain regex instead, whose groups are passed positionally.

    Args:
        template: the path template.
        handler: a :class:`RequestHandler` subclass.
        name: a name for the route (informational).
        methods: the HTTP methods this route answers; others get 405 (default: all).
        handler_method: the method of the handler to call instead of the HTTP verb's.

    Example::

        Route("/tasks/<kind>/<n:\\d+>", CountHandler, methods=["POST"])
    """

    def __init__(
        self,
        template: str,
        handler: type[RequestHandler],
        name: str | None = None,
        methods: Sequence[str] | None = None,
        handler_method: str | None = None,
    ) -> None:
        self.template = template
        self.handler = handler
        self.name = name
        self.methods = None if methods is None else frozenset(m.upper() for m in methods)
        self.handler_method = handler_method
        self.regex = re.compile(_template_regex(template), re.DOTALL)

    @classmethod
    def simple(cls, regex: str, handler: type[RequestHandler]) -> Route:
        """A route from a plain regex, as ``(regex, Handler)`` tuples give."""
        route = cls.__new__(cls)
        route.template = regex
        route.handler = handler
        route.name = None
        route.methods = None
        route.handler_method = None
        route.regex = re.compile(regex, re.DOTALL)
        return route

    def match(self, path: str) -> tuple[tuple[str, ...], dict[str, str]] | None:
        """The positional and keyword arguments for ``path``, or None if it does not match."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        kwargs = {k: v for k, v in found.groupdict().items() if v is not None}
        if kwargs:
            return (), kwargs
        return tuple(v for v in found.groups() if v is not None), {}

    def __repr__(self) -> str:
        return f"Route({self.template!r}, {self.handler.__qualname__})"


def _template_regex(template: str) -> str:
    parts: list[str] = []
    last = 0
    for found in _TEMPLATE_VARIABLE.finditer(template):
        parts.append(re.escape(template[last : found.start()]))
        name, pattern = found.group(1), found.group(2) or "[^/]+"
        parts.append(f"(?P<{name}>{pattern})" if name else f"({pattern})")
        last = found.end()
    parts.append(re.escape(template[last:]))
    return "".join(parts)


def _handler_methods(handler: RequestHandler) -> list[str]:
    return [m for m in ALLOWED_METHODS if callable(getattr(handler, m.lower(), None))]


class RequestHandler:
    """Base class for handlers: define ``get``/``post``/...; use ``self.request``/``self.response``.

    :class:`WSGIApplication` makes one instance per request, then calls :meth:`dispatch`,
    which calls the method named after the HTTP verb with the route's arguments.
    """

    request: Request
    response: Response
    app: WSGIApplication | None = None

    def __init__(self, request: Request | None = None, response: Response | None = None) -> None:
        if request is not None and response is not None:
            self.initialize(request, response)

    def initialize(self, request: Request, response: Response) -> None:
        """Attach this handler to a request and its response."""
        self.request = request
        self.response = response
        self.app = request.app

    def dispatch(self) -> Any:
        """Call the handler method for the request's verb (405 with ``Allow`` when missing)."""
        request = self.request
        route = request.route
        name = route.handler_method if route is not None and route.handler_method else None
        method = getattr(self, name or request.method.lower().replace("-", "_"), None)
        if name is None and request.method.upper() not in ALLOWED_METHODS:
            method = None
        if method is None:
            self.abort(405, headers=[("Allow", ", ".join(_handler_methods(self)))])
        args, kwargs = request.route_args, request.route_kwargs
        try:
            return method(*(() if kwargs else args), **kwargs)
        except Exception as exc:
            return self.handle_exception(exc, self.app.debug if self.app is not None else False)

    def handle_exception(self, exception: Exception, debug: bool) -> Any:
        """Called with an exception a handler method raised; re-raises it by default.

        Override to turn some errors into responses. ``abort()`` exceptions arrive here too.
        """
        raise exception

    def abort(self, code: int, *args: Any, **kwargs: Any) -> NoReturn:
        """Stop the handler with HTTP status ``code`` (see :func:`abort`)."""
        abort(code, *args, **kwargs)

    def error(self, code: int) -> None:
        """Clear the response and set its status to ``code``; the handler goes on."""
        self.response.status = code
        self.response.clear()

    def redirect(
        self,
        uri: str,
        permanent: bool = False,
        abort: bool = False,
        code: int | None = None,
        body: str | bytes | None = None,
    ) -> Response:
        """Redirect to ``uri`` (resolved against the request URL): 302, or 301 if permanent.

        With ``abort=True`` the handler stops here.
        """
        if code is None:
            code = 301 if permanent else 302
        if not 300 <= code < 400:
            raise ValueError(f"a redirect needs a 3xx status, got {code}")
        location = urljoin(self.request.url, uri)
        if abort:
            raise webob.exc.status_map[code](location=location)
        response = self.response
        response.status = code
        response.headers["Location"] = location
        response.clear()
        if body is not None:
            response.write(body)
        return response


def _run_as_task(handler: TaskRequestHandler, task: TaskContext) -> Any:
    """Dispatch a :class:`TaskRequestHandler` once the task gate has let the request in."""
    handler.task = task
    try:
        returned = RequestHandler.dispatch(handler)
    except HTTPException as exc:
        return exc  # abort()/redirect(abort=True): the exception is the response
    return returned if isinstance(returned, webob.Response) else handler.response


class TaskRequestHandler(RequestHandler):
    """A handler whose methods run only for task requests; the task is ``self.task``.

    The gate is ``@task_handler``'s: a request that is not a trusted task gets 403
    (``X-Task-Outcome: rejected``) and no method runs; a signed-in admin without task
    headers runs it with a context of queue ``default`` and a generated task name. What
    a method raises becomes the status the queue sees (SPEC §6). Without a
    ``TaskMiddleware`` in front, the strict default trust applies.

    Example::

        class CountHandler(TaskRequestHandler):
            def post(self):
                if self.task.retry_count > 3:
                    raise PermanentTaskFailure("gave up")
                ...
    """

    task: TaskContext
    _task_gate: ClassVar[TaskHandler[Any]] = TaskHandler(_run_as_task)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)

        # One gate per class, so that logs name the handler class that refused a request.
        def run(handler: TaskRequestHandler, task: TaskContext) -> Any:
            return _run_as_task(handler, task)

        run.__qualname__ = f"{cls.__qualname__}.dispatch"
        run.__module__ = cls.__module__
        cls._task_gate = TaskHandler(run)

    def dispatch(self) -> Any:
        """Let only task requests (and admins) in, then dispatch by verb with ``self.task`` set."""
        self._task_gate()  # bound like any decorated method: runs _run_as_task(self, task)
        return self.response


class WSGIApplication:
    """A WSGI application routing paths to :class:`RequestHandler` classes.

    Args:
        routes: ``(regex, HandlerClass)`` tuples (the regex must match the whole path,
            ``SCRIPT_NAME + PATH_INFO``) or :class:`Route` objects; the first match wins.
        debug: show the traceback in the body of a 500 (never for task requests, whose
            errors go to ``TaskMiddleware``). Keep it False where strangers can connect.

    ``error_handlers`` maps a status to ``handler(request, response, exception)``, whose
    return value (a response, or None to use ``response``) replaces the error page.

    Example::

        app = WSGIApplication([("/tasks/count", CountHandler)])
        wrapped = TaskMiddleware(app, config=load_app_yaml("app.yaml"))
    """

    request_class: ClassVar[type[Request]] = Request
    response_class: ClassVar[type[Response]] = Response

    def __init__(
        self,
        routes: Iterable[tuple[str, type[RequestHandler]] | Route] | None = None,
        debug: bool = False,
    ) -> None:
        self.debug = debug
        self.routes: list[Route] = []
        self.error_handlers: dict[int, Callable[[Request, Response, BaseException], Any]] = {}
        for route in routes or ():
            self.add_route(route)

    def add_route(self, route: tuple[str, type[RequestHandler]] | Route) -> None:
        """Append a route (a ``(regex, HandlerClass)`` tuple or a :class:`Route`)."""
        if isinstance(route, Route):
            self.routes.append(route)
            return
        if (
            not isinstance(route, tuple)
            or len(route) != 2
            or not isinstance(route[0], str)
            or not (isinstance(route[1], type) and issubclass(route[1], RequestHandler))
        ):
            from .exceptions import ConfigError

            raise ConfigError("a route is (regex, RequestHandler subclass) or a Route", value=route)
        try:
            self.routes.append(Route.simple(route[0], route[1]))
        except re.error as exc:
            from .exceptions import ConfigError

            raise ConfigError(f"route regex does not compile: {exc}", value=route[0]) from None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = self.request_class(environ)
        request.app = self
        response = self.response_class()
        try:
            answer = self._dispatch(request, response)
        except HTTPException as exc:
            answer = self._error(request, response, exc, exc)
        except Exception as exc:
            if current_task() is not None:
                raise  # TaskMiddleware maps it to the status the queue sees
            log.error("%s %s raised", request.method, request.path_info, exc_info=exc)
            answer = self._error(request, response, exc, self._internal_error(exc))
        result: Iterable[bytes] = answer(environ, start_response)
        return result

    def _dispatch(self, request: Request, response: Response) -> Any:
        try:
            path = request.script_name + request.path_info
        except UnicodeDecodeError:
            raise webob.exc.HTTPBadRequest("the path is not valid UTF-8") from None
        refused_methods: set[str] = set()
        for route in self.routes:
            found = route.match(path)
            if found is None:
                continue
            if route.methods is not None and request.method.upper() not in route.methods:
                refused_methods |= route.methods
                continue
            request.route = route
            request.route_args, request.route_kwargs = found
            handler = route.handler(request, response)
            returned = handler.dispatch()
            if returned is None or returned is handler.response:
                return handler.response
            if isinstance(returned, webob.Response):
                return returned
            raise TypeError(
                f"{route.handler.__qualname__}.dispatch returned {type(returned).__name__}, "
                "not a response"
            )
        if refused_methods:
            raise webob.exc.HTTPMethodNotAllowed(
                headers=[("Allow", ", ".join(m for m in ALLOWED_METHODS if m in refused_methods))]
            )
        raise webob.exc.HTTPNotFound()

    def _error(self, request: Request, response: Response, exc: BaseException, default: Any) -> Any:
        code = exc.code if isinstance(exc, HTTPException) else 500
        handler = self.error_handlers.get(code)
        if handler is None:
            return default
        response.status = code
        response.clear()
        try:
            returned = handler(request, response, exc)
        except HTTPException as raised:
            return raised
        except Exception as raised:
            log.error("error handler for %d raised", code, exc_info=raised)
            return self._internal_error(raised)
        return response if returned is None else returned

    def _internal_error(self, exc: BaseException) -> Response:
        response = self.response_class(status=500, content_type="text/plain")
        if self.debug:
            response.text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        else:
            response.text = "500 Internal Server Error\n"
        return response
