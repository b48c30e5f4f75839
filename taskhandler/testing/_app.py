"""``TaskTestApp``: a webtest client that sends task requests the way the queue does."""

from __future__ import annotations

import json as jsonlib
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

with warnings.catch_warnings():
    # webob (under webtest) imports the cgi module, deprecated since Python 3.11; test
    # suites run with warnings as errors should not fail on importing their test client.
    warnings.filterwarnings("ignore", "'cgi' is deprecated", DeprecationWarning)
    import webtest
from werkzeug.http import parse_cookie

from .._decorator import TaskHandler
from ..context import TaskContext
from ..deadline import DEFAULT_GRACE, resolve_deadline
from ..exceptions import ConfigError
from ..outcome import OUTCOME_HEADER
from ..trust import Authenticator, RequestInfo, User
from ..wsgi import DEADLINE_KEY, TaskMiddleware

__all__ = ["QUEUE_ADDRESS", "QUEUE_USER_AGENT", "SignIn", "TaskTestApp", "TaskTestResponse"]

QUEUE_ADDRESS = "0.1.0.2"
"""The peer address App Engine's push queue sends task requests from."""

QUEUE_USER_AGENT = "AppEngine-Google; (+http://code.google.com/appengine)"
"""The ``User-Agent`` of App Engine task requests."""

SignIn = Callable[[User], Mapping[str, str]]
"""``user -> request headers`` that make the app's authenticator recognise ``user``."""

Params = Mapping[str, Any] | Sequence[tuple[str, Any]] | str
_QUERY_METHODS = frozenset(("GET", "HEAD", "DELETE"))
_MAX_UNWRAP = 16


class TaskTestResponse(webtest.TestResponse):  # type: ignore[misc]
    """A ``webtest.TestResponse`` that also tells the task outcome."""

    @property
    def task_outcome(self) -> str | None:
        """The ``X-Task-Outcome`` header (``success``, ``retry``, ...), or ``None``."""
        value = self.headers.get(OUTCOME_HEADER)
        return None if value is None else str(value)


class _TaskTestRequest(webtest.TestRequest):  # type: ignore[misc]
    ResponseClass = TaskTestResponse


class TaskTestApp(webtest.TestApp):  # type: ignore[misc]
    """A ``webtest.TestApp`` that can send task requests the default ``TrustPolicy`` believes.

    :meth:`post_task` sends what App Engine's push queue sends: peer address ``0.1.0.2``
    and every ``X-AppEngine-*`` task header (built with :meth:`TaskContext.to_headers`),
    the queue's ``User-Agent``, and the body as ``taskqueue.add()`` would encode it. The
    ordinary webtest verbs (``get``, ``post``, ...) stay ordinary client requests, so
    tests that spoof task headers see them stripped. Every response has ``.task_outcome``.

    Works with an app wrapped in ``TaskMiddleware`` and with ``@task_handler`` apps that
    apply their own trust.

    Args:
        app: the WSGI application under test.
        authenticator: the authenticator :meth:`as_admin`/:meth:`as_user` sign in with;
            found in the app when it is wrapped in ``TaskMiddleware`` (directly, as a
            Flask ``wsgi_app``, or through ``.app`` attributes of other middleware).
        sign_in: ``user -> headers`` for an authenticator that is not a
            ``SignedCookieAuth`` (e.g. build the identity header your proxy sets).
        deadline: the task deadline, in seconds, for every :meth:`post_task` that does not
            give its own.
        queue_address: the peer address task requests come from (match a custom
            ``TrustPolicy(queue_sources=...)``).
        **kwargs: passed to ``webtest.TestApp`` (``extra_environ``, ``lint``, ...).

    Example::

        app = TaskTestApp(TaskMiddleware(wsgi_app))
        res = app.post_task("/tasks/count", params={"name": "a"}, retry_count=2)
        assert res.task_outcome == "success"
    """

    __test__ = False  # not a test class, whatever its name says
    RequestClass = _TaskTestRequest

    def __init__(
        self,
        app: Any,
        *,
        authenticator: Authenticator | None = None,
        sign_in: SignIn | None = None,
        deadline: float | None = None,
        queue_address: str = QUEUE_ADDRESS,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        if sign_in is not None and not callable(sign_in):
            raise ConfigError("sign_in must be callable: User -> headers", value=sign_in)
        if deadline is not None:
            _deadline_pair(deadline)  # validate now, not on the first request
        self.authenticator: Authenticator | None = (
            authenticator if authenticator is not None else find_authenticator(app)
        )
        self.sign_in = sign_in
        self.deadline = deadline
        self.queue_address = queue_address
        self.user: User | None = None
        self._sign_in_headers: dict[str, str] = {}
        self._options = kwargs

    # -- signed-in copies ------------------------------------------------------------

    def as_admin(self, email: str = "admin@example.com") -> TaskTestApp:
        """A copy of this client whose requests come from ``email``, signed in as an admin."""
        return self._signed_in(User(email=email, is_admin=True))

    def as_user(self, email: str = "user@example.com") -> TaskTestApp:
        """A copy of this client whose requests come from ``email``, signed in, not an admin."""
        return self._signed_in(User(email=email, is_admin=False))

    def clone(self) -> TaskTestApp:
        """A copy with the same app, options and signed-in user, and its own cookie jar."""
        options = dict(self._options)
        options.pop("cookiejar", None)  # each copy keeps its own cookies
        options["extra_environ"] = dict(self.extra_environ)
        copy = type(self)(
            self.app,
            authenticator=self.authenticator,
            sign_in=self.sign_in,
            deadline=self.deadline,
            queue_address=self.queue_address,
            **options,
        )
        if self.user is not None:
            copy._apply_user(self.user)
        return copy

    def _signed_in(self, user: User) -> TaskTestApp:
        copy = self.clone()
        copy._apply_user(user)
        return copy

    def _apply_user(self, user: User) -> None:
        authenticator = self.authenticator
        cookies: dict[str, str] = {}
        headers: dict[str, str] = {}
        if self.sign_in is not None:
            for name, value in self.sign_in(user).items():
                if str(name).lower() == "cookie":
                    # Into the cookie jar, which webtest turns into the Cookie header.
                    cookies.update(parse_cookie(str(value)))
                else:
                    headers[str(name)] = str(value)
        elif callable(getattr(authenticator, "cookie_value", None)) and isinstance(
            getattr(authenticator, "cookie_name", None), str
        ):
            # A SignedCookieAuth: mint the same cookie its sign-in page would set.
            value = authenticator.cookie_value(user.email, admin=user.is_admin)  # type: ignore[union-attr]
            cookies[authenticator.cookie_name] = value  # type: ignore[union-attr]
        else:
            raise ConfigError(
                "cannot sign a test client in: the app has no SignedCookieAuth to mint a "
                "cookie for; pass TaskTestApp(app, sign_in=lambda user: {header: value}) "
                "with the headers your authenticator reads, or authenticator=",
                value=authenticator,
            )
        if authenticator is not None:
            _check_recognised(authenticator, user, headers, cookies)
        for name, value in cookies.items():
            self.set_cookie(name, value)
        self.user = user
        self._sign_in_headers = headers

    def do_request(self, req: Any, status: Any = None, expect_errors: Any = None) -> Any:
        """Send ``req`` (every verb ends here), with the signed-in user's headers."""
        for name, value in self._sign_in_headers.items():
            if name not in req.headers:
                req.headers[name] = value
        return super().do_request(req, status=status, expect_errors=expect_errors)

    # -- task requests ---------------------------------------------------------------

    def post_task(
        self,
        url: str,
        params: Params | None = None,
        payload: str | bytes | None = None,
        json: Any = None,
        queue_name: str = "default",
        task_name: str | None = None,
        retry_count: int = 0,
        execution_count: int | None = None,
        eta: datetime | None = None,
        previous_response: int | None = None,
        retry_reason: str | None = None,
        method: str = "POST",
        deadline: float | None = None,
        status: int | str | Sequence[int] | None = None,
        expect_errors: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> TaskTestResponse:
        """Send one task request as the push queue would deliver it.

        Args:
            url: the handler's URL (a query string is kept).
            params: form fields: the body of a POST/PUT, the query string of a GET/HEAD/DELETE.
            payload: a raw body (``bytes`` as ``application/octet-stream``, ``str`` as
                UTF-8 ``text/plain``), exclusive with ``params`` and ``json``.
            json: a value sent as an ``application/json`` body.
            queue_name, task_name, retry_count, execution_count, eta, previous_response,
            retry_reason: the task headers. A unique ``task_name`` is generated when none
                is given; ``execution_count`` defaults to ``retry_count``; ``eta`` to now.
            method: the task's HTTP method.
            deadline: run this request under a task deadline of this many seconds (the
                grace is a tenth of it when it is 10 s or less), so deadline handling is
                tested in milliseconds.
            status / expect_errors: as in webtest; by default anything but 2xx/3xx raises
                ``webtest.AppError``.
            headers: extra request headers; they replace the generated ones of the same name
                (to send a malformed task header on purpose, for instance).

        Returns:
            the response; ``.task_outcome`` is its ``X-Task-Outcome`` header.
        """
        method = method.upper()
        given = [name for name, v in (("params", params), ("payload", payload)) if v is not None]
        if json is not None:
            given.append("json")
        if len(given) > 1:
            raise ValueError(f"post_task: give at most one of params, payload, json ({given})")
        if method in _QUERY_METHODS and (payload is not None or json is not None):
            raise ValueError(f"post_task: a {method} task has no body; use params=")

        context = TaskContext(
            queue_name=queue_name,
            task_name=task_name if task_name is not None else generate_task_name(),
            retry_count=retry_count,
            execution_count=retry_count if execution_count is None else execution_count,
            eta=eta if eta is not None else datetime.now(timezone.utc),
            previous_response=previous_response,
            retry_reason=retry_reason,
        )
        request_headers = {
            **context.to_headers(),
            "X-AppEngine-User-IP": self.queue_address,
            "User-Agent": QUEUE_USER_AGENT,
        }
        body: bytes = b""
        content_type: str | None = None
        if params is not None:
            encoded = params if isinstance(params, str) else urlencode(params, doseq=True)
            if method in _QUERY_METHODS:
                url = f"{url}{'&' if '?' in url else '?'}{encoded}" if encoded else url
            else:
                body = encoded.encode("utf-8")
                content_type = "application/x-www-form-urlencoded"
        elif isinstance(payload, bytes):
            body, content_type = payload, "application/octet-stream"
        elif isinstance(payload, str):
            body, content_type = payload.encode("utf-8"), "text/plain; charset=utf-8"
        elif json is not None:
            body, content_type = jsonlib.dumps(json).encode("utf-8"), "application/json"
        if headers:
            lower = {name.lower() for name in headers}
            request_headers = {k: v for k, v in request_headers.items() if k.lower() not in lower}
            request_headers.update(headers)
            if "content-type" in lower:
                content_type = None

        environ: dict[str, Any] = {"REMOTE_ADDR": self.queue_address}
        seconds = deadline if deadline is not None else self.deadline
        if seconds is not None:
            environ[DEADLINE_KEY] = _deadline_pair(seconds)
        response: TaskTestResponse = self._gen_request(
            method,
            url,
            params=body,
            headers=request_headers,
            extra_environ=environ,
            status=status,
            expect_errors=expect_errors,
            content_type=content_type,
        )
        if seconds is not None and response.task_outcome is None:
            raise AssertionError(
                f"post_task(deadline={seconds!r}): the response to {url} has no "
                f"{OUTCOME_HEADER} header, so no TaskMiddleware or @task_handler ran the "
                "request and the deadline was not applied"
            )
        return response


def generate_task_name() -> str:
    """A unique task name, as the queue gives a task added without one."""
    return f"task-{uuid.uuid4().hex}"


def _deadline_pair(seconds: float) -> tuple[float, float]:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ConfigError("deadline must be a number of seconds", value=seconds)
    grace = seconds / 10 if 0 < seconds <= DEFAULT_GRACE else None
    return resolve_deadline(seconds, grace)


def find_authenticator(app: Any) -> Authenticator | None:
    """The authenticator of the ``TaskMiddleware`` (or ``@task_handler``) serving ``app``.

    Follows Flask's ``wsgi_app`` and the ``.app`` attribute most WSGI middleware keeps.
    """
    seen: set[int] = set()
    node = app
    for _ in range(_MAX_UNWRAP):
        if node is None or id(node) in seen:
            return None
        seen.add(id(node))
        if isinstance(node, TaskMiddleware):
            return node.settings.authenticator
        if isinstance(node, TaskHandler):
            found: Authenticator | None = node._options.get("authenticator")
            return found
        wrapped = getattr(node, "wsgi_app", None)
        if wrapped is None or getattr(wrapped, "__self__", None) is node:
            wrapped = getattr(node, "app", None)
        node = wrapped
    return None


def _check_recognised(
    authenticator: Authenticator, user: User, headers: Mapping[str, str], cookies: Mapping[str, str]
) -> None:
    """Fail now, not in a confusing 302/403 later, when the app would not see ``user``."""
    info = RequestInfo(
        method="GET",
        scheme="http",
        host="localhost",
        path="/",
        query_string="",
        headers={name.lower(): value for name, value in headers.items()},
        cookies=dict(cookies),
        client="127.0.0.1",
    )
    seen = authenticator(info)
    if seen is None or seen.email != user.email or seen.is_admin != user.is_admin:
        raise ConfigError(
            f"the app's authenticator does not recognise the test sign-in of {user.email} "
            f"(admin={user.is_admin}): it saw {seen!r}",
            value=authenticator,
        )
