"""The part of webapp2 that task code and ported apps use, on webob (SPEC §8).

Code written for App Engine's ``webapp2`` ports by changing one import::

    import taskhandler.webapp as webapp2

    class UpdateCounterHandler(webapp2.RequestHandler):
        def post(self):
            amount = int(self.request.get("amount"))
            ...

    app = webapp2.WSGIApplication([("/update_counter", UpdateCounterHandler)])

What is here, behaving as webapp2 3.0 does unless said otherwise:

- :class:`WSGIApplication`: routes tried in order, each matched against the whole path;
  ``501`` for a verb outside :attr:`WSGIApplication.allowed_methods`, ``404`` for no route,
  ``405`` with ``Allow``; ``500`` without a traceback unless ``debug=True``;
  ``error_handlers`` (callables or dotted strings); :meth:`WSGIApplication.get_response`.
- Handlers: :class:`RequestHandler` subclasses, any class built as ``cls(request, response)``
  with a ``dispatch()`` method, plain functions ``view(request, *args, **kwargs)`` returning
  a response, and dotted strings (``"handlers.Worker"``, ``"handlers.Worker:method"``)
  imported on first use.
- :class:`Route` (``<name:regex>`` templates, ``defaults``, ``methods``, ``schemes``,
  ``handler_method``, ``build_only``) and URL building: :func:`uri_for`,
  :meth:`RequestHandler.uri_for`, :func:`redirect_to`; :class:`RedirectHandler`.
- :class:`Request` (``get``, ``get_all``, ``arguments``, ``get_range``) and :class:`Response`
  (``write``/``out.write``, ``status_message``, ``Cache-Control: no-cache`` by default,
  ``headers.add_header``/``get_all``); :func:`redirect`, :func:`abort`,
  :func:`import_string`, :data:`cached_property`, :func:`get_app`, :func:`get_request`.
- :class:`TaskRequestHandler`, whose methods run only for trusted task requests (or
  signed-in admins) and see the task as ``self.task``.

Inside a task request (one that ``TaskMiddleware`` trusts), an exception a handler does not
handle is not turned into a page here: it propagates to the middleware, which maps it to
the status the queue sees (``RetryTask`` -> its status, ``PermanentTaskFailure`` -> 200,
``DeadlineExceededError`` -> 500 ``deadline-exceeded``, anything else -> 500 ``retry``).

Not here: ``app.router`` and its ``set_matcher``/``set_dispatcher``/``set_adapter`` hooks,
``app.run()`` (CGI), the old ``webapp.RequestHandler`` adapter, sessions, i18n, templates,
``webapp2_extras``. webob's own reason phrases are kept (``302 Found``, not webapp's
``302 Moved Temporarily``): webapp2 rewrote them for the whole process.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, ClassVar, NoReturn, TypeAlias
from urllib.parse import quote, urlencode, urljoin, urlsplit, urlunsplit

from ._decorator import TaskHandler
from ._types import StartResponse, WSGIEnvironment
from .context import TaskContext, current_task
from .exceptions import ConfigError

with warnings.catch_warnings():
    # WebOb 1.8 imports the standard library's ``cgi`` module, which warns on import from
    # Python 3.11 on. The warning is about WebOb's internals, not the caller's code.
    warnings.filterwarnings("ignore", message="'cgi' is deprecated", category=DeprecationWarning)
    import webob
    import webob.exc
    import webob.headers
    import webob.util

__all__ = [
    "HTTPException",
    "ImportStringError",
    "RedirectHandler",
    "Request",
    "RequestHandler",
    "Response",
    "ResponseHeaders",
    "Route",
    "SimpleRoute",
    "TaskRequestHandler",
    "WSGIApplication",
    "abort",
    "cached_property",
    "get_app",
    "get_request",
    "import_string",
    "redirect",
    "redirect_to",
    "uri_for",
]

log = logging.getLogger("taskhandler")

HTTPException = webob.exc.HTTPException
#: The verbs a :class:`WSGIApplication` dispatches; any other is answered 501. webapp2's
#: seven, plus PATCH.
ALLOWED_METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "PATCH"})
#: The codes :func:`redirect` accepts: 300 and 304 are not redirects a client follows.
REDIRECT_CODES = frozenset({301, 302, 303, 305, 307, 308})

#: What a route may name as its handler: a class, a function, or ``"module.Name[:method]"``.
HandlerSpec: TypeAlias = "str | type[Any] | Callable[..., Any]"

# webapp2's variable syntax: ``<name>``, ``<name:regex>``, ``<:regex>``. Anything else
# between angle brackets is literal text.
_TEMPLATE_VARIABLE = re.compile(r"<([a-zA-Z_]\w*)?(?::([^>]*))?>")
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
# Headers of the handler's response that a redirect with ``abort=True`` does not carry over:
# the redirect page has its own body, and its own Location.
_NOT_CARRIED = frozenset({"content-type", "content-length", "location"})

#: The application and request being served in this thread or asyncio task.
_serving: ContextVar[tuple[WSGIApplication, Request] | None] = ContextVar(
    "taskhandler.webapp.serving", default=None
)

#: webapp2's lazy property: computed on first access, then stored on the instance.
cached_property = functools.cached_property


class ImportStringError(ImportError):
    """:func:`import_string` could not import ``import_name``; ``exception`` says why."""

    def __init__(self, import_name: str, exception: BaseException) -> None:
        self.import_name = import_name
        self.exception = exception
        super().__init__(
            f"cannot import {import_name!r}: {type(exception).__name__}: {exception}",
            name=import_name,
        )


def import_string(import_name: str, silent: bool = False) -> Any:
    """The object named by ``import_name`` in dotted notation, e.g. ``"handlers.Worker"``.

    A module (``"webob.exc"``) or a module attribute (``"webob.exc.HTTPFound"``). With
    ``silent=True`` a name that cannot be imported gives ``None`` instead of raising
    :class:`ImportStringError`.
    """
    try:
        module_name, _, attribute = import_name.rpartition(".")
        if not module_name:
            return importlib.import_module(import_name)
        module = importlib.import_module(module_name)
        try:
            return getattr(module, attribute)
        except AttributeError:
            return importlib.import_module(import_name)  # a submodule not imported yet
    except (ImportError, AttributeError, ValueError) as exc:
        if silent:
            return None
        raise ImportStringError(import_name, exc) from exc


def get_app() -> WSGIApplication:
    """The :class:`WSGIApplication` serving the current request (webapp2's ``get_app``)."""
    serving = _serving.get()
    if serving is None:
        raise RuntimeError("no WSGIApplication is serving a request here")
    return serving[0]


def get_request() -> Request:
    """The :class:`Request` being served (webapp2's ``get_request``)."""
    serving = _serving.get()
    if serving is None:
        raise RuntimeError("no request is being served here")
    return serving[1]


class Request(webob.Request):  # type: ignore[misc]  # webob ships no type hints
    """A webob request with webapp2's ``get()``, ``get_all()``, ``arguments()``, ``get_range()``.

    ``route``/``route_args``/``route_kwargs`` hold the matched route and what it captured;
    ``app`` is the :class:`WSGIApplication` serving the request, ``response`` the response
    it made for the handler.
    """

    app: WSGIApplication | None = None
    response: Response | None = None
    route: Route | None = None
    route_args: tuple[Any, ...] = ()
    route_kwargs: dict[str, Any] = {}

    @property
    def uri(self) -> str:
        """The full request URL (webapp's name for ``url``)."""
        return str(self.url)

    @property
    def query(self) -> str:
        """The query string (webapp's name for ``query_string``)."""
        return str(self.query_string)

    def get(self, argument_name: str, default_value: Any = "", allow_multiple: bool = False) -> Any:
        """The first query or form value named ``argument_name``, else ``default_value``.

        As in webapp: with ``allow_multiple=True`` every value, as a list (``[]`` when
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

    def __getitem__(self, argument_name: str) -> Any:
        """``request["name"]`` is ``request.get("name")``."""
        return self.get(argument_name)

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

    def get_range(
        self,
        name: str,
        min_value: int | None = None,
        max_value: int | None = None,
        default: int | None = 0,
    ) -> int | None:
        """The integer argument ``name``, clamped to ``[min_value, max_value]``.

        A missing or non-integer value gives ``default`` (itself clamped, unless None).

        Example: for ``/list?limit=500``, ``get_range("limit", 1, 100, 20) == 100``.
        """
        value = self.get(name, default)
        if value is None:
            return None
        try:
            number: int | None = int(value)
        except (TypeError, ValueError):
            number = default
        if number is None:
            return None
        if max_value is not None:
            number = min(number, max_value)
        if min_value is not None:
            number = max(number, min_value)
        return number


def _field_value(value: Any) -> Any:
    # A multipart upload arrives as a FieldStorage; webapp2 hands out its content.
    return value.value if hasattr(value, "filename") and hasattr(value, "value") else value


class ResponseHeaders(webob.headers.ResponseHeaders):  # type: ignore[misc]
    """webob's response headers plus ``wsgiref.headers.Headers``' ``add_header`` and ``get_all``."""

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case), in order; ``[]`` if there is none."""
        return list(self.getall(name))

    def add_header(self, _name: str, _value: str | None, **_params: str | None) -> None:
        """Add a header with parameters, as ``wsgiref.headers.Headers.add_header`` does.

        Underscores in parameter names become dashes; a parameter whose value is None or
        empty is written as its bare name.

        Example: ``add_header("Content-Disposition", "attachment", filename="a.gif")`` adds
        ``Content-Disposition: attachment; filename="a.gif"``.
        """
        parts = [] if _value is None else [_value]
        for key, value in _params.items():
            key = key.replace("_", "-")
            if value:
                escaped = value.replace("\\", "\\\\").replace('"', '\\"')
                parts.append(f'{key}="{escaped}"')
            else:
                parts.append(key)
        self.add(_name, "; ".join(parts))

    def __str__(self) -> str:
        """The headers as they are sent, each line ending in CRLF, then an empty line."""
        return "\r\n".join([f"{name}: {value}" for name, value in self.items()] + ["", ""])


class Response(webob.Response):  # type: ignore[misc]  # webob ships no type hints
    """A webob response with webapp2's ``write()`` for any value, ``out``, ``set_status``,
    ``status_message``, ``clear()`` and :class:`ResponseHeaders`.

    A new response is ``200 OK``, ``text/html; charset=utf-8``, empty, with
    ``Cache-Control: no-cache`` as in webapp2 (a handler may replace it). A response built
    from a given header list (as ``Request.get_response`` builds one) keeps exactly those
    headers.
    """

    default_charset = "utf-8"
    charset: str | None
    _headers: ResponseHeaders | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given_headers = kwargs.get("headerlist") is not None or kwargs.get("headers") is not None
        super().__init__(*args, **kwargs)
        if not given_headers and "Cache-Control" not in self.headers:
            self.headers["Cache-Control"] = "no-cache"

    @property
    def headers(self) -> ResponseHeaders:
        """The headers, as a case-insensitive view of ``headerlist``."""
        if self._headers is None:
            self._headers = ResponseHeaders.view_list(self._headerlist)
        return self._headers

    @headers.setter
    def headers(self, value: Mapping[str, str] | list[tuple[str, str]]) -> None:
        if isinstance(value, Mapping):
            value = list(value.items())
        elif not isinstance(value, list):
            raise TypeError(f"response headers must be a list or a mapping, not {type(value)}")
        self.headerlist = value
        self._headers = None

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

    @property
    def status_message(self) -> str:
        """The reason phrase of the status, e.g. ``"Not Found"``; settable."""
        _, _, message = str(self.status).partition(" ")
        return message or _reason(self.status_int)

    @status_message.setter
    def status_message(self, message: str) -> None:
        self.status = f"{self.status_int} {message}"

    @staticmethod
    def http_status_message(code: int) -> str:
        """The standard reason phrase for ``code``; ``KeyError`` for a code with none."""
        message = webob.util.status_reasons.get(code)
        if not message:
            raise KeyError(f"no HTTP status message is defined for {code!r}")
        return str(message)

    def clear(self) -> None:
        """Empty the body."""
        self.body = b""

    def has_error(self) -> bool:
        """True for a 4xx or 5xx status."""
        return bool(self.status_int >= 400)


def _reason(code: int) -> str:
    try:
        return Response.http_status_message(code)
    except KeyError:
        return str(webob.util.status_generic_reasons.get(code // 100, ""))


# ``Request.blank(...).get_response(app)`` hands back this module's Response.
Request.ResponseClass = Response


def abort(code: int, *args: Any, **kwargs: Any) -> NoReturn:
    """Raise the webob HTTP exception for ``code`` (e.g. ``abort(404)``); stops the handler.

    Keyword arguments go to the exception, e.g. ``abort(405, headers=[("Allow", "GET")])``
    or ``abort(403, detail="...")``. An unknown code raises ``KeyError``.
    """
    cls = webob.exc.status_map.get(code)
    if cls is None:
        raise KeyError(f"no HTTP exception is defined for status {code!r}")
    raise cls(*args, **kwargs)


def redirect(
    uri: str,
    permanent: bool = False,
    abort: bool = False,
    code: int | None = None,
    body: str | bytes | None = None,
    request: Request | None = None,
    response: Response | None = None,
) -> Response:
    """A redirect to ``uri``: 302, 301 if ``permanent``, or ``code`` (301/302/303/305/307/308).

    A relative ``uri`` is resolved against the request URL (``request``, else the request
    being served). ``response`` is reused (its body cleared, its other headers kept); without
    one a new response is made. With ``abort=True`` the redirect is raised as an
    :class:`HTTPException` that stops the handler, carrying the headers already set on
    ``response`` (cookies included).

    Example: ``return redirect("/done")`` from a function handler.
    """
    if code is None:
        code = 301 if permanent else 302
    if code not in REDIRECT_CODES:
        raise ValueError(f"a redirect needs one of {sorted(REDIRECT_CODES)}, got {code!r}")
    if not urlsplit(uri).scheme:
        uri = urljoin((request or get_request()).url, uri)
    if abort:
        carried = [
            (name, value)
            for name, value in (response.headerlist if response is not None else ())
            if name.lower() not in _NOT_CARRIED
        ]
        _abort(code, location=uri, headers=carried)
    if response is None:
        serving = _serving.get()
        app = request.app if request is not None else serving[0] if serving else None
        response = (app.response_class if app is not None else Response)()
    else:
        response.clear()
    response.headers["Location"] = uri
    response.status = code
    if body is not None:
        response.write(body)
    return response


_abort = abort


def uri_for(_name: str, _request: Request | None = None, *args: Any, **kwargs: Any) -> str:
    """The URL of the route named ``_name``, built from ``args`` and ``kwargs``.

    Variables come from ``args`` (unnamed ``<:regex>`` ones, in order) and ``kwargs``
    (named ones, else the route's ``defaults``); other keyword arguments become the query
    string, sorted. ``_full=True`` gives an absolute URL, as do ``_scheme=``/``_netloc=``;
    ``_fragment=`` adds ``#fragment``. ``KeyError`` for an unknown name or a missing
    variable, ``ValueError`` for a value its variable's regex does not match.

    Example: ``uri_for("item", kind="book", n=7, page=2) == "/items/book/7?page=2"``.
    """
    request = _request if _request is not None else get_request()
    app = request.app if request.app is not None else get_app()
    return app.uri_for(_name, request, *args, **kwargs)


def redirect_to(
    _name: str,
    _permanent: bool = False,
    _abort: bool = False,
    _code: int | None = None,
    _body: str | bytes | None = None,
    _request: Request | None = None,
    _response: Response | None = None,
    *args: Any,
    **kwargs: Any,
) -> Response:
    """:func:`redirect` to the URL :func:`uri_for` builds for the route named ``_name``."""
    uri = uri_for(_name, _request, *args, **kwargs)
    return redirect(
        uri,
        permanent=_permanent,
        abort=_abort,
        code=_code,
        body=_body,
        request=_request,
        response=_response,
    )


def _split_handler(handler: Any) -> tuple[Any, str | None]:
    """``"module.Class:method"`` -> (``"module.Class"``, ``"method"``); others unchanged."""
    if isinstance(handler, str) and ":" in handler:
        dotted, _, method = handler.rpartition(":")
        return dotted, method
    return handler, None


def _check_handler(handler: Any, template: str) -> None:
    """Refuse, at construction, what can never be dispatched."""
    if handler is None:
        return
    if isinstance(handler, str):
        if not _DOTTED_NAME.fullmatch(handler):
            raise ConfigError(
                f"route {template!r}: a handler string is 'module.Name' or 'module.Name:method'",
                value=handler,
            )
        return
    if isinstance(handler, type):
        if not callable(getattr(handler, "dispatch", None)):
            raise ConfigError(
                f"route {template!r}: a handler class needs a dispatch() method "
                "(subclass RequestHandler)",
                value=handler,
            )
        return
    if not callable(handler) or isinstance(handler, RequestHandler):
        raise ConfigError(
            f"route {template!r}: the handler is a class, a function or a dotted name",
            value=handler,
        )


class Route:
    """A route: a path template, its handler, and optional name, defaults and rules.

    The template is webapp2's: literal text, ``<name>`` (one path segment, passed as a
    keyword argument), ``<name:regex>`` and ``<:regex>`` (passed positionally, but only
    when the route has no keyword arguments at all). It must match the whole path.

    Args:
        template: the path template.
        handler: a :class:`RequestHandler` subclass, another class with ``dispatch()``, a
            function ``view(request, *args, **kwargs)`` returning a response, or a dotted
            name imported on first use (``"pkg.handlers.Worker"``, and
            ``"pkg.handlers.Worker:method"`` for ``handler_method``). None for a route only
            used to build URLs.
        name: the name :func:`uri_for` builds URLs by.
        defaults: keyword arguments the handler receives even when the path has no such
            variable; a variable's default is used when building a URL without it.
        build_only: never matched, only used to build URLs (needs a name).
        handler_method: the handler class's method to call instead of the verb's.
        methods: the HTTP methods this route answers; others get 405 (default: all).
        schemes: the URL schemes this route answers (e.g. ``["https"]``; default: all).

    Example::

        Route("/tasks/<kind>/<n:\\d+>", CountHandler, name="count", methods=["POST"])
        Route("/old", RedirectHandler, defaults={"_uri": "/new"})
    """

    is_simple: ClassVar[bool] = False

    def __init__(
        self,
        template: str,
        handler: HandlerSpec | None = None,
        name: str | None = None,
        defaults: Mapping[str, Any] | None = None,
        build_only: bool = False,
        handler_method: str | None = None,
        methods: Sequence[str] | None = None,
        schemes: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(template, str):
            raise ConfigError("a route template is a string", value=template)
        handler, method_in_name = _split_handler(handler)
        if method_in_name is not None and handler_method:
            raise ConfigError(
                f"route {template!r}: give the method in the handler string or as "
                "handler_method=, not both",
                value=handler_method,
            )
        _check_handler(handler, template)
        if build_only and name is None:
            raise ConfigError(f"route {template!r} is build_only but has no name", value=template)
        if defaults is not None and not isinstance(defaults, Mapping):
            raise ConfigError(f"route {template!r}: defaults= is a mapping", value=defaults)
        self.template = template
        self.handler = handler
        self.name = name
        self.defaults: dict[str, Any] = dict(defaults or {})
        self.build_only = build_only
        self.handler_method = handler_method or method_in_name
        self.methods = _name_set(methods, "methods", template, str.upper)
        self.schemes = _name_set(schemes, "schemes", template, str.lower)
        self._resolved: Any = None
        self._parts: list[str | tuple[str, re.Pattern[str]]] = []
        try:
            self.regex = self._compile()
        except re.error as exc:
            raise ConfigError(
                f"route {template!r} does not compile: {exc}", value=template
            ) from None

    def _compile(self) -> re.Pattern[str]:
        pattern: list[str] = []
        last = unnamed = 0
        for found in _TEMPLATE_VARIABLE.finditer(self.template):
            literal = self.template[last : found.start()]
            name, expression = found.group(1), found.group(2) or "[^/]+"
            if not name:
                name, unnamed = f"__{unnamed}__", unnamed + 1
            pattern += [re.escape(literal), f"(?P<{name}>{expression})"]
            self._parts += [literal, (name, re.compile(expression))]
            last = found.end()
        pattern.append(re.escape(self.template[last:]))
        self._parts.append(self.template[last:])
        return re.compile("".join(pattern), re.DOTALL)

    @classmethod
    def simple(cls, regex: str, handler: HandlerSpec) -> Route:
        """A route from a plain regex, as ``(regex, handler)`` tuples give."""
        return SimpleRoute(regex, handler)

    def match(self, path: str) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """The positional and keyword arguments for ``path``, or None if it does not match.

        Keyword arguments start from ``defaults``. The handler gets the positional ones
        only when there are no keyword ones, as in webapp2.
        """
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        kwargs = dict(self.defaults)
        positional: list[tuple[int, str]] = []
        for key, value in found.groupdict().items():
            if key.startswith("__") and key.endswith("__"):
                positional.append((int(key[2:-2]), value))
            elif value is not None:
                kwargs[key] = value
        return tuple(value for _, value in sorted(positional)), kwargs

    def build(self, request: Request | None, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        """The URL for this route (see :func:`uri_for` for the arguments)."""
        query = dict(kwargs)
        scheme = query.pop("_scheme", None)
        netloc = query.pop("_netloc", None)
        fragment = query.pop("_fragment", None)
        full = query.pop("_full", False) and not scheme and not netloc
        if full or scheme or netloc:
            if request is None and not (scheme and netloc):
                raise ValueError("an absolute URL needs the request for its scheme and host")
            netloc = netloc or request.host  # type: ignore[union-attr]
            scheme = scheme or request.scheme  # type: ignore[union-attr]
        positional = {f"__{i}__": value for i, value in enumerate(args)}
        path: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                path.append(part)
                continue
            name, expression = part
            value = positional[name] if name in positional else query.pop(name, None)
            if value is None:
                value = self.defaults.get(name)
            if value is None:
                raise KeyError(f"route {self.name!r} needs argument {name.strip('_')!r}")
            text = str(value)
            if not expression.fullmatch(text):
                raise ValueError(
                    f"route {self.name!r}: {text!r} does not match <{name.strip('_')}:"
                    f"{expression.pattern}>"
                )
            path.append(text)
        return str(
            urlunsplit(
                (
                    scheme if scheme and netloc else "",
                    netloc if scheme and netloc else "",
                    quote("".join(path)),
                    urlencode(sorted((k, v) for k, v in query.items())),
                    quote(fragment) if fragment else "",
                )
            )
        )

    def resolve(self) -> Any:
        """The handler class or function, imported on first use if given as a string."""
        if self._resolved is None:
            handler = self.handler
            if handler is None:
                raise LookupError(f"route {self.template!r} has no handler (build only)")
            if isinstance(handler, str):
                handler = import_string(handler)
                _check_handler(handler, self.template)
            self._resolved = handler
        return self._resolved

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__}({self.template!r}, {self.handler!r}, name={self.name!r}, "
            f"defaults={self.defaults!r}, build_only={self.build_only!r})>"
        )


def _name_set(
    values: Sequence[str] | None, what: str, template: str, normal: Callable[[str], str]
) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"route {template!r}: {what}= is a list of strings", value=values)
    return frozenset(normal(v) for v in values)


class SimpleRoute(Route):
    """A ``(regex, handler)`` route: the regex must match the whole path; every group of it,
    named or not, is passed positionally (None for a group that did not take part)."""

    is_simple = True

    def __init__(self, template: str, handler: HandlerSpec | None = None) -> None:
        if not isinstance(template, str):
            raise ConfigError("a route regex is a string", value=template)
        handler, method = _split_handler(handler)
        _check_handler(handler, template)
        self.template = template
        self.handler = handler
        self.name = None
        self.defaults = {}
        self.build_only = False
        self.handler_method = method
        self.methods = None
        self.schemes = None
        self._resolved = None
        self._parts = []
        try:
            self.regex = re.compile(template, re.DOTALL)
        except re.error as exc:
            raise ConfigError(f"route regex does not compile: {exc}", value=template) from None

    def match(self, path: str) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """The regex's groups for ``path``, or None if it does not match."""
        found = self.regex.fullmatch(path)
        return None if found is None else (found.groups(), {})

    def build(self, request: Request | None, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        """Not possible: a plain regex cannot be reversed."""
        raise NotImplementedError("a (regex, handler) route cannot build URLs; use Route")

    def __repr__(self) -> str:
        return f"<SimpleRoute({self.template!r}, {self.handler!r})>"


def _handler_methods(handler: Any, allowed: Iterable[str]) -> list[str]:
    return sorted(m for m in allowed if callable(getattr(handler, _method_name(m), None)))


def _method_name(verb: str) -> str:
    return verb.lower().replace("-", "_")


def _allowed_methods(app: WSGIApplication | None) -> frozenset[str]:
    return frozenset(app.allowed_methods) if app is not None else ALLOWED_METHODS


class RequestHandler:
    """Base class for handlers: define ``get``/``post``/...; use ``self.request``/``self.response``.

    :class:`WSGIApplication` makes one instance per request, then calls :meth:`dispatch`,
    which calls the method named after the HTTP verb (``version_control`` for
    ``VERSION-CONTROL``) with the route's arguments.
    """

    request: Request
    response: Response
    app: WSGIApplication | None = None

    def __init__(self, request: Request | None = None, response: Response | None = None) -> None:
        if request is not None:
            self.initialize(request, response)

    def initialize(self, request: Request, response: Response | None) -> None:
        """Attach this handler to a request and its response."""
        self.request = request
        if response is not None:
            self.response = response
        self.app = request.app

    def dispatch(self) -> Any:
        """Call the handler method for the request's verb (405 with ``Allow`` when missing)."""
        request = self.request
        route = request.route
        name = route.handler_method if route is not None and route.handler_method else None
        allowed = _allowed_methods(self.app)
        method = getattr(self, name or _method_name(request.method), None)
        if name is None and request.method.upper() not in allowed:
            method = None
        if method is None:
            self.abort(405, headers=[("Allow", ", ".join(_handler_methods(self, allowed)))])
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

        With ``abort=True`` the handler stops here; headers already set (cookies) are kept.
        See :func:`redirect`.
        """
        return redirect(
            uri,
            permanent=permanent,
            abort=abort,
            code=code,
            body=body,
            request=self.request,
            response=self.response,
        )

    def uri_for(self, _name: str, *args: Any, **kwargs: Any) -> str:
        """The URL of the route named ``_name`` (see :func:`uri_for`)."""
        return uri_for(_name, self.request, *args, **kwargs)

    url_for = uri_for

    def redirect_to(
        self,
        _name: str,
        _permanent: bool = False,
        _abort: bool = False,
        _code: int | None = None,
        _body: str | bytes | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Response:
        """Redirect to the route named ``_name`` (:meth:`uri_for` and :meth:`redirect`)."""
        uri = self.uri_for(_name, *args, **kwargs)
        return self.redirect(uri, permanent=_permanent, abort=_abort, code=_code, body=_body)


class RedirectHandler(RequestHandler):
    """Redirects every GET, as the route's ``defaults`` say.

    - ``_uri``: the target, or a callable ``(handler, *args, **kwargs)`` returning it
      (default ``"/"``);
    - ``_permanent``: 301 if True (the default), else 302;
    - ``_code``: another redirect status.

    Example::

        Route("/old-url", RedirectHandler, defaults={"_uri": "/new-url"})
    """

    def get(self, *args: Any, **kwargs: Any) -> None:
        """Redirect to ``_uri``."""
        uri = kwargs.pop("_uri", "/")
        permanent = kwargs.pop("_permanent", True)
        code = kwargs.pop("_code", None)
        if callable(uri):
            uri = uri(self, *args, **kwargs)
        self.redirect(uri, permanent=permanent, code=code)


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
    """A WSGI application routing paths to handlers.

    Args:
        routes: :class:`Route` objects, or ``(regex, handler)`` tuples whose regex must match
            the whole path (``SCRIPT_NAME + PATH_INFO``) and whose groups are passed
            positionally; the first match wins. A handler is a class, a function or a
            dotted name (see :class:`Route`).
        debug: show the traceback in the body of a 500 (never for task requests, whose
            errors go to ``TaskMiddleware``). Keep it False where strangers can connect.
        config: a dictionary for the application's own settings (``app.config``).

    ``error_handlers`` maps a status to ``handler(request, response, exception)`` (or its
    dotted name), whose return value (a response, or None to use ``response``) replaces the
    error page. ``allowed_methods`` is the set of verbs dispatched at all; others get 501.

    Example::

        app = WSGIApplication([("/tasks/count", CountHandler)])
        wrapped = TaskMiddleware(app, config=load_app_yaml("app.yaml"))
    """

    allowed_methods: Iterable[str] = ALLOWED_METHODS
    request_class: ClassVar[type[Request]] = Request
    response_class: ClassVar[type[Response]] = Response

    def __init__(
        self,
        routes: Iterable[tuple[str, HandlerSpec] | Route] | None = None,
        debug: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.debug = debug
        self.config: dict[str, Any] = dict(config or {})
        self.registry: dict[str, Any] = {}
        self.routes: list[Route] = []
        self.named_routes: dict[str, Route] = {}
        self.error_handlers: dict[int, Callable[[Request, Response, BaseException], Any] | str] = {}
        for route in routes or ():
            self.add_route(route)

    def add_route(self, route: tuple[str, HandlerSpec] | Route) -> None:
        """Append a route (a ``(regex, handler)`` tuple or a :class:`Route`)."""
        if not isinstance(route, Route):
            if not isinstance(route, tuple) or len(route) != 2 or not isinstance(route[0], str):
                raise ConfigError("a route is (regex, handler) or a Route", value=route)
            route = SimpleRoute(route[0], route[1])
        if not route.build_only:
            self.routes.append(route)
        if route.name is not None:
            self.named_routes[route.name] = route

    def uri_for(
        self, _name: str, _request: Request | None = None, *args: Any, **kwargs: Any
    ) -> str:
        """The URL of the route named ``_name`` (see the module's :func:`uri_for`)."""
        route = self.named_routes.get(_name)
        if route is None:
            raise KeyError(f"no route is named {_name!r}")
        return route.build(_request, args, kwargs)

    def get_response(self, *args: Any, **kwargs: Any) -> Response:
        """This app's response to ``Request.blank(*args, **kwargs)``: a shortcut for tests.

        Example: ``app.get_response("/tasks/x", POST={"n": "1"}).status_int == 200``.
        """
        response: Response = self.request_class.blank(*args, **kwargs).get_response(self)
        return response

    def set_globals(
        self, app: WSGIApplication | None = None, request: Request | None = None
    ) -> None:
        """Make ``request`` the one :func:`get_request` and :func:`uri_for` see (for tests)."""
        _serving.set(None if app is None or request is None else (app, request))

    def clear_globals(self) -> None:
        """Undo :meth:`set_globals`."""
        _serving.set(None)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = self.request_class(environ)
        response = self.response_class()
        request.app = self
        request.response = response
        serving = _serving.set((self, request))
        try:
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
        finally:
            _serving.reset(serving)

    def _dispatch(self, request: Request, response: Response) -> Any:
        if request.method not in self.allowed_methods:
            raise webob.exc.HTTPNotImplemented()
        try:
            path = request.script_name + request.path_info
        except UnicodeDecodeError:
            raise webob.exc.HTTPBadRequest("the path is not valid UTF-8") from None
        scheme = request.scheme
        refused_methods: set[str] = set()
        for route in self.routes:
            found = route.match(path)
            if found is None or (route.schemes is not None and scheme not in route.schemes):
                continue
            if route.methods is not None and request.method.upper() not in route.methods:
                refused_methods |= route.methods
                continue
            request.route = route
            request.route_args, request.route_kwargs = found
            return self._call_handler(route, request, response)
        if refused_methods:
            raise webob.exc.HTTPMethodNotAllowed(
                headers=[("Allow", ", ".join(sorted(refused_methods)))]
            )
        raise webob.exc.HTTPNotFound()

    def _call_handler(self, route: Route, request: Request, response: Response) -> Any:
        handler = route.resolve()
        if isinstance(handler, type):
            instance = handler(request, response)
            returned = instance.dispatch()
            own = getattr(instance, "response", None)
            default = own if isinstance(own, webob.Response) else response
        else:
            args, kwargs = request.route_args, request.route_kwargs
            returned = handler(request, *(() if kwargs else args), **kwargs)
            default = response
        if returned is None:
            return default
        if isinstance(returned, webob.Response) or callable(returned):
            return returned
        name = getattr(handler, "__qualname__", repr(handler))
        raise TypeError(f"handler {name} returned {type(returned).__name__}, not a response")

    def _error(self, request: Request, response: Response, exc: BaseException, default: Any) -> Any:
        code = exc.code if isinstance(exc, HTTPException) else 500
        handler = self.error_handlers.get(code)
        if handler is None:
            return default
        response.status = code
        response.clear()
        try:
            if isinstance(handler, str):
                handler = self.error_handlers[code] = import_string(handler)
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
