"""``TaskMiddleware`` for Django: the request path (SPEC §1) on Django's ``HttpRequest``.

The third mirror, after ``wsgi.py`` and ``asgi.py``: it only translates. A Django request
becomes a :class:`~taskhandler._request.RequestView` -- through ``wsgi.request_view`` on
the environ when Django is served over WSGI (``WSGIRequest.META`` *is* the environ), through
``asgi.request_view`` on ``request.scope`` when it is served over ASGI -- and the
:class:`~taskhandler._decision.Decision` of :func:`taskhandler._decision.decide` is applied
to ``request.META`` (and the scope) and answered with ``HttpResponse`` objects.

What it can see under ASGI: Django's ``ASGIRequest`` builds ``META`` itself from the scope,
*dropping* every header whose name holds ``_`` and joining the copies of a name with ``,``.
The decision is made on the scope, as the server gave it (every copy and spelling), so it is
the ASGI middleware's decision; the app sees ``META`` and ``request.headers``, from which
every task header is gone when the request is not trusted, whatever its spelling.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async

from .. import asgi, wsgi
from .._async_deadline import AsyncArmed, arm_async
from .._decision import (
    AUTH_PAGE_PREFIX,
    NOTHING_DECIDED,
    LazyUser,
    RequestState,
    Settings,
    UserOf,
    decide_layer,
    no_user,
    refusal_response,
)
from .._request import RequestView
from .._response import OUTCOME_HEADER, Response
from .._trace import Trace, attempt, attempt_watched, publish
from .._watchdog import Armed, arm
from ..context import TaskContext
from ..context import _current as _current_task
from ..exceptions import ConfigError
from ..headers import TASK_HEADER_PREFIXES
from ..outcome import (
    Result,
    failed_or_overran,
    failure_response,
    failure_result,
    outcome_of_answer,
)
from ..trust import FORWARDING_HEADERS, RequestInfo, User
from ._settings import LOGIN_MARK, SessionAuth, settings_from_django

__all__ = [
    "STATE_KEY",
    "STRIPPED_KEY",
    "TaskMiddleware",
    "http_response",
    "request_info",
    "request_view",
    "run_task",
    "run_task_async",
    "state_of",
    "trace_of",
]

STATE_KEY = "taskhandler.state"
STRIPPED_KEY = "taskhandler.stripped"
DEADLINE_KEY = "taskhandler.deadline"  # set by test clients only (an environ key, no header)
_RESULT_ATTR = "_taskhandler_result"
_OUTER_ATTR = "_taskhandler_outer"
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


class TaskMiddleware:
    """Trust, strip, protect, describe, time and answer task requests in a Django project.

    Configured from ``settings.TASKHANDLER`` (see :mod:`taskhandler.django`). Put it in
    ``MIDDLEWARE`` right after ``django.contrib.auth.middleware.AuthenticationMiddleware``
    (its default authenticator is Django's session). It works in sync (WSGI) and async
    (ASGI) Django alike.

    Per request it sets ``request.task`` (the :class:`~taskhandler.TaskContext`, or ``None``)
    and ``request.META["taskhandler.state"]``; ``current_task()`` works in views.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any], settings: Settings | None = None):
        self.get_response = get_response
        if settings is None:  # built by Django from MIDDLEWARE
            settings = settings_from_django()
            if isinstance(settings.authenticator, SessionAuth):
                _check_auth_middleware_first(type(self))
        self.settings = settings
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
            # Django reads process_view once; in async Django it must be a coroutine function.
            self.process_view = self._aprocess_view  # type: ignore[method-assign]

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        state, answer = self.decide(request, None)
        if answer is not None:
            return answer
        ctx = state.context
        if _outer_state(request) is not None:  # the enclosing middleware runs the task
            return self.get_response(request)
        if ctx is None:
            with publish(trace_of(request)):
                return self.get_response(request)
        return run_task(self.get_response, request, ctx, self.settings)

    async def __acall__(self, request: Any) -> Any:
        user: UserOf | None = None
        if isinstance(self.settings.authenticator, SessionAuth) and _needs_user(
            request, self.settings
        ):
            # Django's session user must not be loaded on the event loop: ask for it here.
            signed_in = await _auser(request)
            user = functools.partial(_constant, signed_in)
        state, answer = self.decide(request, user)
        if answer is not None:
            return answer
        ctx = state.context
        if _outer_state(request) is not None:  # the enclosing middleware runs the task
            return await self.get_response(request)
        if ctx is None:
            with publish(trace_of(request)):
                return await self.get_response(request)
        return await run_task_async(self.get_response, request, ctx, self.settings)

    # -- steps 1-4 -------------------------------------------------------------------------

    def decide(self, request: Any, user: UserOf | None) -> tuple[RequestState, Any]:
        """Decide about ``request`` and apply the decision; an answer when it is refused."""
        settings = self.settings
        if user is None:
            user = user_of(settings, request)
        view = request_view(request)
        if settings.serves_pages and request.path_info.startswith(AUTH_PAGE_PREFIX):
            page = _serve_page(settings, request)
            if page is not None:
                return RequestState(settings, NOTHING_DECIDED, user), page
        outer = _find_outer(request)
        setattr(request, _OUTER_ATTR, outer)
        # Inside another TaskMiddleware, trust and stripping were decided there already.
        decision, user = decide_layer(view, settings, user, outer)
        stripped = outer.stripped if outer is not None else remove_headers(request, decision.strip)
        state = RequestState(settings, decision, user, stripped)
        request.META[STATE_KEY] = state
        request.task = decision.context
        if decision.context is not None:
            # Task headers cannot be set by a cross-site form: a believed task request is no
            # forgery, and the queue sends no CSRF token. (An admin's browser request without
            # task headers keeps Django's CSRF checks.)
            request._dont_enforce_csrf_checks = True
        if decision.refusal is None:
            return state, None
        refusal = decision.refusal
        if refusal.status == 302 and (refusal.location or "").startswith(LOGIN_MARK):
            return state, _login_redirect(request)
        return state, http_response(refusal_response(refusal))

    # -- step 5 for views of the other kind -------------------------------------------------

    def process_view(self, request: Any, view: Any, args: Any, kwargs: Any) -> Any:
        """Sync Django: an ``async def`` view of a task request runs under an asyncio deadline.

        Django would run it in an event loop of its own while this thread waits in a lock,
        where the thread's deadline cannot reach it; so it is run here, with the asyncio
        deadline driver ending with the thread's deadline.
        """
        ctx = self._running(request)
        if ctx is None or not iscoroutinefunction(view):
            return None
        outer = ctx._armed_deadline()
        if not isinstance(outer, Armed):
            return None
        return async_to_sync(self._run_async_view)(
            request, view, args, kwargs, outer.remaining() + self.settings.grace
        )

    # The asyncio deadline of an async view in sync Django comes this much before the thread's
    # (which would stop this thread's wait for the view, not the view), so it lands at the
    # view's await.
    _AHEAD = 0.05

    async def _run_async_view(
        self, request: Any, view: Any, args: Any, kwargs: Any, deadline: float
    ) -> Any:
        ctx = request.task
        token = _current_task.set(ctx)
        try:
            grace = self.settings.grace
            armed = arm_async(max(deadline, 0.0), grace + min(self._AHEAD, grace / 4))
            return await armed.run(view(request, *args, **kwargs))
        except Exception as exc:
            return self._view_failed(request, exc)
        finally:
            _current_task.reset(token)

    async def _aprocess_view(self, request: Any, view: Any, args: Any, kwargs: Any) -> Any:
        """Async Django: a sync view of a task request runs under a thread deadline.

        Django would run it in a worker thread that the asyncio deadline cannot stop; so it is
        run here, in that same thread (``thread_sensitive``), with a thread deadline ending
        with the request's.
        """
        ctx = self._running(request)
        if ctx is None or iscoroutinefunction(view):
            return None
        run = sync_to_async(self._run_sync_view, thread_sensitive=True)
        return await run(request, view, args, kwargs)

    def _run_sync_view(self, request: Any, view: Any, args: Any, kwargs: Any) -> Any:
        ctx = request.task
        from django.core.handlers.base import BaseHandler

        view = BaseHandler.make_view_atomic(BaseHandler(), view)  # ATOMIC_REQUESTS
        token = _in_view_thread.set(True)
        try:
            armed = thread_deadline(ctx, force=True)
            try:
                return view(request, *args, **kwargs)
            finally:
                if armed is not None:
                    armed.disarm()
        except Exception as exc:
            return self._view_failed(request, exc)
        finally:
            _in_view_thread.reset(token)

    def _running(self, request: Any) -> TaskContext | None:
        """The task this middleware runs for ``request`` (not one an outer layer runs)."""
        ctx = getattr(request, "task", None)
        if ctx is None or _outer_state(request) is not None:
            return None
        return ctx  # type: ignore[no-any-return]

    def _view_failed(self, request: Any, exc: Exception) -> Any:
        answer = self.process_exception(request, exc)
        if answer is None:  # Django's own answers (Http404, ...): Django makes them
            raise exc
        return answer

    # -- step 6 for exceptions raised by views ---------------------------------------------

    def process_exception(self, request: Any, exception: Exception) -> Any:
        """A view's exception in a task request: the outcome's answer, ``on_error`` told.

        Django's own answers (``Http404``, ``PermissionDenied``, ``BadRequest``,
        ``SuspiciousOperation``) keep their status, which the queue also retries. Inside
        another ``TaskMiddleware`` (``taskhandler serve`` runs Django so), which runs the
        task, the answer is made here all the same: Django would otherwise make its own 500
        page of the exception, and the outer middleware would never see it.
        """
        ctx = getattr(request, "task", None)
        if ctx is None or _is_django_answer(exception):
            return None
        # This layer's hook, else the one of the attempt being run (the outer middleware's).
        result = failure_result(ctx, exception, self.settings.on_error)
        if _outer_state(request) is None:
            setattr(request, _RESULT_ATTR, result)  # for run_task's answer and its record
        return http_response(failure_response(result))


# -- the request -> request view ----------------------------------------------------------


def state_of(request: Any) -> RequestState | None:
    """The ``RequestState`` a middleware stored for ``request``, if any."""
    state = request.META.get(STATE_KEY)
    return state if isinstance(state, RequestState) else None


def _outer_state(request: Any) -> RequestState | None:
    """The state of a ``TaskMiddleware`` further out (around Django, or earlier in MIDDLEWARE)."""
    outer = getattr(request, _OUTER_ATTR, None)
    return outer if isinstance(outer, RequestState) else None


def _find_outer(request: Any) -> RequestState | None:
    """Before this middleware stores its own: the state a middleware further out stored."""
    state = request.META.get(STATE_KEY)
    scope = getattr(request, "scope", None)
    if state is None and isinstance(scope, dict):
        state = scope.get(STATE_KEY)
    return state if isinstance(state, RequestState) else None


def request_view(request: Any) -> RequestView:
    """The request as the steps of the request path see it."""
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict):
        view = asgi.request_view(scope)
        # Django routes scope["path"] minus FORCE_SCRIPT_NAME (or root_path): a prefix too.
        script = getattr(request, "script_name", "") or ""
        if script and script not in view.prefixes and view.path.startswith(script):
            view = view._replace(prefixes=(*view.prefixes, script))
        return view
    # WSGIRequest.META is the environ, but Django has replaced its PATH_INFO and SCRIPT_NAME
    # with decoded text (bytes that are not UTF-8 re-percent-encoded): the path Django
    # routes, which is the path the rules must judge.
    meta = request.META
    script = str(meta.get("SCRIPT_NAME", "") or "")
    below = str(request.path_info)
    return wsgi.request_view(meta)._replace(
        path=script + below,
        path_error=None
        if below.startswith("/")
        else "request path below the mount prefix does not start with '/'",
        prefixes=(script,) if script else (),
    )


def request_info(request: Any) -> RequestInfo:
    """The protocol-neutral view of a Django request (for authenticators)."""
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict):
        return asgi.request_info(scope)
    return wsgi.request_info(request.META)


def user_of(settings: Settings, request: Any) -> UserOf:
    """Who is signed in on ``request``: asked at most once, and only if a step needs it."""
    authenticator = settings.authenticator
    if authenticator is None:
        return no_user
    if isinstance(authenticator, SessionAuth):
        return functools.cache(functools.partial(_session_user, request))
    return LazyUser(authenticator, functools.partial(request_info, request))


_NEEDS_AUTH = (
    "taskhandler.django.TaskMiddleware reads Django's session user: put it after "
    "django.contrib.auth.middleware.AuthenticationMiddleware in MIDDLEWARE (or set "
    "TASKHANDLER['AUTHENTICATOR'] to None)"
)


def _check_auth_middleware_first(cls: type) -> None:
    """At start-up: Django's auth middleware comes before this one in ``MIDDLEWARE``."""
    from django.conf import settings
    from django.contrib.auth.middleware import AuthenticationMiddleware
    from django.utils.module_loading import import_string

    names = list(settings.MIDDLEWARE)
    classes = []
    for name in names:
        try:
            classes.append(import_string(name))
        except ImportError:
            classes.append(None)  # Django reports it itself
    mine = [i for i, c in enumerate(classes) if isinstance(c, type) and issubclass(c, cls)]
    if not mine:
        return  # built by hand (a test, @task_handler without the middleware)
    before = classes[: mine[0]]
    if not any(isinstance(c, type) and issubclass(c, AuthenticationMiddleware) for c in before):
        raise ConfigError(_NEEDS_AUTH, value=names)


def _session_user(request: Any) -> User | None:
    if not hasattr(request, "user"):
        raise ConfigError(_NEEDS_AUTH, value="MIDDLEWARE")
    return SessionAuth.user_of(request.user)


async def _auser(request: Any) -> User | None:
    auser = getattr(request, "auser", None)
    if auser is None:
        return await sync_to_async(_session_user)(request)
    return SessionAuth.user_of(await auser())


def _constant(value: User | None) -> User | None:
    return value


def _needs_user(request: Any, settings: Settings) -> bool:
    """Whether a step may ask who is signed in: there are rules, or task headers."""
    if settings.rules:
        return True
    scope = getattr(request, "scope", None)
    names = (
        (bytes(name).decode("latin-1") for name, _ in scope.get("headers", ()))
        if isinstance(scope, dict)
        else (key[5:] for key in request.META if key[:5].upper() == "HTTP_")
    )
    return any(n.lower().replace("_", "-").startswith(TASK_HEADER_PREFIXES) for n in names)


# -- decision -> request and response -----------------------------------------------------


def remove_headers(request: Any, strip: bool) -> tuple[str, ...]:
    """Step 2 applied to ``META`` (and the ASGI scope): every spelling, every copy.

    The ``_`` spellings of forwarding headers go from every request; the task headers when
    ``strip``. ``request.headers`` is built again from what is left.
    """
    removed: list[str] = []
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and "headers" in scope:
        kept = []
        for name, value in scope["headers"]:
            lowered = bytes(name).decode("latin-1").lower()
            if _goes(lowered, strip):
                removed.append(lowered.replace("_", "-"))
            else:
                kept.append((name, value))
        if removed:
            scope["headers"] = kept
    meta = request.META
    odd: list[str] = []
    task: list[str] = []
    for key in list(meta):
        if not isinstance(key, str) or key[:5].upper() != "HTTP_":
            continue
        lowered = key[5:].lower()
        if _goes(lowered, strip, key=key):
            del meta[key]
            name = lowered.replace("_", "-")
            (task if name.startswith(TASK_HEADER_PREFIXES) else odd).append(name)
    removed += odd + task  # as wsgi.py records them: odd forwarding spellings first
    names = tuple(dict.fromkeys(removed))
    if names:
        meta[STRIPPED_KEY] = list(names)
        if isinstance(scope, dict):
            scope[STRIPPED_KEY] = list(names)
        request.__dict__.pop("headers", None)  # a cached HttpHeaders built before stripping
    return names


def _goes(lowered: str, strip: bool, key: str | None = None) -> bool:
    name = lowered.replace("_", "-")
    if name.startswith(TASK_HEADER_PREFIXES):
        return strip
    if name not in FORWARDING_HEADERS:
        return False
    if key is not None:  # a META key: only HTTP_X_FORWARDED_FOR is the dash spelling's
        return key != "HTTP_" + name.upper().replace("-", "_")
    return name != lowered


def http_response(response: Response) -> Any:
    """A response the middleware made itself, as a Django ``HttpResponse``."""
    from django.http import HttpResponse

    answer = HttpResponse(response.body, status=response.status)
    for name, value in response.headers:
        answer[name] = value
    return answer


def _login_redirect(request: Any) -> Any:
    from django.conf import settings
    from django.contrib.auth.views import redirect_to_login

    answer = redirect_to_login(request.get_full_path(), settings.LOGIN_URL)
    answer["Cache-Control"] = "no-store"
    return answer


def _serve_page(settings: Settings, request: Any) -> Any:
    """An authenticator's own page (``SignedCookieAuth``'s sign-in), when it serves one."""
    try:
        body = request.body
    except Exception:  # RequestDataTooBig and the like
        return http_response(Response(400, (), b"bad or too large request body\n"))
    page = settings.authenticator.serve(request_info(request), body)  # type: ignore[union-attr]
    if page is None:
        return None
    return http_response(Response(page.status, tuple(page.headers), page.body))


def _is_django_answer(exc: BaseException) -> bool:
    from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
    from django.http import Http404

    return isinstance(exc, (Http404, PermissionDenied, BadRequest, SuspiciousOperation))


# -- steps 5 and 6: the task runs --------------------------------------------------------


def trace_of(request: Any) -> Trace | None:
    """The trace the request's headers name (``traceparent``, ``X-Cloud-Trace-Context``)."""
    return wsgi.environ_trace(request.META)  # META holds HTTP_* keys under ASGI too


def run_task(
    get_response: Callable[[Any], Any], request: Any, ctx: TaskContext, settings: Settings
) -> Any:
    """Run the rest of the request as a task: current task, deadline, outcome, one record.

    The deadline is the watchdog's (the error is raised in this thread, where a sync view
    runs). A streaming response is read while the deadline is armed. The request's trace is
    current meanwhile, and ``settings.on_error`` is told of an exception.
    """
    trace = trace_of(request)
    if trace is None and not attempt_watched(settings.on_error):
        return _run_task(get_response, request, ctx, settings)  # nothing to publish
    with attempt(ctx, trace, settings.on_error):
        return _run_task(get_response, request, ctx, settings)


def _run_task(
    get_response: Callable[[Any], Any], request: Any, ctx: TaskContext, settings: Settings
) -> Any:
    """:func:`run_task` under the request's trace."""
    override = request.META.get(DEADLINE_KEY)
    deadline, grace = override if override else (settings.deadline, settings.grace)
    token = _current_task.set(ctx)
    response: Any = None
    result: Result | None = None
    try:
        # As in wsgi.run_task: nothing between arm() returning and the try may be interrupted.
        armed = arm(deadline, grace)
        try:
            try:
                ctx._attach_deadline(armed)
                response = get_response(request)
                # A stream is read while the deadline is armed, the task current and its
                # trace published; an async one (in sync Django) through an event loop.
                if getattr(response, "streaming", False):
                    if getattr(response, "is_async", False):
                        response = async_to_sync(_read_stream)(response)
                    else:
                        response = _buffered(response, b"".join(response.streaming_content))
            finally:
                armed.disarm()
        except _PASS_THROUGH:
            raise
        except BaseException as exc:
            result = failure_result(ctx, exc)
    finally:
        _current_task.reset(token)
    return _answer(request, ctx, response, result, armed)


async def run_task_async(
    get_response: Callable[[Any], Any], request: Any, ctx: TaskContext, settings: Settings
) -> Any:
    """:func:`run_task` for async Django: the asyncio deadline driver.

    The error is raised at the ``await`` where the handler is suspended. A sync view that
    Django runs in a worker thread gets a thread deadline ending with this one as well
    (``@task_handler`` views arm it themselves; see :func:`thread_deadline`).
    """
    trace = trace_of(request)
    if trace is None and not attempt_watched(settings.on_error):
        return await _run_task_async(get_response, request, ctx, settings)
    with attempt(ctx, trace, settings.on_error):
        return await _run_task_async(get_response, request, ctx, settings)


async def _run_task_async(
    get_response: Callable[[Any], Any], request: Any, ctx: TaskContext, settings: Settings
) -> Any:
    """:func:`run_task_async` under the request's trace."""
    armed = arm_async(settings.deadline, settings.grace)
    ctx._attach_deadline(armed)
    token = _current_task.set(ctx)
    response: Any = None
    result: Result | None = None
    try:
        response = await armed.run(_whole_response(get_response, request))
    except (*_PASS_THROUGH, asyncio.CancelledError):
        raise
    except BaseException as exc:
        result = failure_result(ctx, exc)
    finally:
        _current_task.reset(token)
    return _answer(request, ctx, response, result, armed)


async def _whole_response(get_response: Callable[[Any], Any], request: Any) -> Any:
    """The rest of the request's response, a streaming one read to its end."""
    response = await get_response(request)
    if getattr(response, "streaming", False):
        response = await _read_stream(response)
    return response


async def _read_stream(response: Any) -> Any:
    chunks: list[bytes] = []
    if getattr(response, "is_async", False):
        async for chunk in response.streaming_content:
            chunks.append(bytes(chunk))
    else:
        read = sync_to_async(_read_all, thread_sensitive=False)
        chunks.extend(await read(response.streaming_content))
    return _buffered(response, b"".join(chunks))


def _read_all(chunks: Any) -> list[bytes]:
    return [bytes(chunk) for chunk in chunks]


def _buffered(response: Any, body: bytes) -> Any:
    from django.http import HttpResponse

    buffered = HttpResponse(body, status=response.status_code)
    for name, value in response.items():
        buffered[name] = value
    return buffered


def _answer(
    request: Any, ctx: TaskContext, response: Any, result: Result | None, armed: Any
) -> Any:
    """Step 6: the failure's answer, or the app's own with its ``X-Task-Outcome``; logged."""
    if result is None:
        result = getattr(request, _RESULT_ATTR, None)  # from process_exception
    path = functools.partial(_log_path, request)
    final = failed_or_overran(ctx, result, armed, path)
    if final is not None or response is None:
        return http_response(failure_response(final or Result(500, "retry", "no response")))
    declared = response.get(OUTCOME_HEADER)
    outcome = outcome_of_answer(ctx, response.status_code, declared, armed, path)
    if declared is None:
        response[OUTCOME_HEADER] = outcome
    return response


def _log_path(request: Any) -> str:
    return str(request.path)


_in_view_thread: ContextVar[bool] = ContextVar("taskhandler_django_view_thread", default=False)


def thread_deadline(ctx: TaskContext, *, force: bool = False) -> Armed | None:
    """A thread deadline ending with the request's asyncio one, for a sync view's thread.

    Under ASGI Django runs a sync view in a worker thread; the asyncio deadline raises at the
    ``await`` of that thread and cannot stop it, so the thread gets its own with the same end.
    ``None`` when the request's deadline is a thread deadline already (or there is none), or
    when the middleware armed one for this view's thread already.
    """
    if _in_view_thread.get() and not force:
        return None
    outer = ctx._armed_deadline()
    if not isinstance(outer, AsyncArmed):
        return None
    hard = outer.hard_at - time.monotonic()
    grace = outer.hard_at - outer.soft_at
    if hard > 0 and 0 <= grace < hard:
        return arm(hard, grace)
    return None
