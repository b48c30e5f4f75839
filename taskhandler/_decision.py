"""The request path's decision: SPEC §1 steps 1-4 as one pure function, :func:`decide`.

Each adapter builds a :class:`~taskhandler._request.RequestView` once per request and
asks :func:`decide` what to do with it. The answer, a :class:`Decision`, says who the
request was trusted as, which headers go, whether it is refused, and the task it
describes; it changes nothing. The adapter then applies it to its protocol.

Pure: standard library and pydantic only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from . import access
from ._request import RequestView
from ._response import Response, plain_response
from .access import Refusal
from .config import AccessRule, AppConfig
from .context import TaskContext
from .deadline import DEFAULT_GRACE, resolve_deadline
from .exceptions import ConfigError, InvalidTaskHeaders
from .headers import describes_a_task
from .trust import Authenticator, RequestInfo, TrustedBy, TrustPolicy, User

__all__ = [
    "AUTH_PAGE_PREFIX",
    "NOTHING_DECIDED",
    "Decision",
    "RequestState",
    "Settings",
    "decide",
    "decide_layer",
    "decide_nested",
    "make_settings",
    "refusal_response",
    "synthetic_context",
]

log = logging.getLogger("taskhandler")

R = TypeVar("R")  # a protocol's request: a WSGI environ, an ASGI scope

AUTH_PAGE_PREFIX = "/_ah/log"  # /_ah/login and /_ah/logout


@dataclass(frozen=True, slots=True)
class Settings:
    """A middleware's validated configuration, built once at construction."""

    trust: TrustPolicy
    rules: tuple[AccessRule, ...]
    authenticator: Authenticator | None
    deadline: float
    grace: float
    login_url: str
    serves_pages: bool
    on_error: Callable[[TaskContext, BaseException, bool], Any] | None = None
    """``on_error(task, exc, final)`` for exceptions that escape the app, or ``None``."""

    @property
    def decides_plain_requests(self) -> bool:
        """Whether a request without task headers needs deciding at all.

        Not when there are no access rules, no sign-in pages to serve and no development
        trust (which makes any request a possible task): then it passes as it came.
        """
        return bool(self.rules) or self.serves_pages or self.trust.mode == "development"


def make_settings(
    trust: TrustPolicy | None,
    config: AppConfig | None,
    authenticator: Authenticator | None,
    deadline: float | None,
    grace: float | None,
    on_error: Callable[[TaskContext, BaseException, bool], Any] | None = None,
) -> Settings:
    """Validate a middleware's keywords once; ``ConfigError`` names the bad value.

    ``deadline`` overrides the config's task deadline. ``grace`` defaults to 10 s, or to a
    tenth of the deadline when the deadline is 10 s or less (short deadlines in tests).
    """
    if trust is None:
        trust = TrustPolicy()
    elif not isinstance(trust, TrustPolicy):
        raise ConfigError("trust must be a TrustPolicy", value=trust)
    if config is not None and not isinstance(config, AppConfig):
        raise ConfigError("config must be an AppConfig (see load_app_yaml)", value=config)
    if authenticator is not None and not callable(authenticator):
        raise ConfigError(
            "authenticator must be callable: RequestInfo -> User | None", value=authenticator
        )
    if getattr(authenticator, "requires_app_engine_trust", False) and trust.mode != "app_engine":
        raise ConfigError(
            "this authenticator reads X-AppEngine-User-* headers, which only App Engine can "
            "vouch for: use it with TrustPolicy.app_engine()",
            value=authenticator,
        )
    if on_error is not None and not callable(on_error):
        raise ConfigError("on_error must be callable: (task, exc, final) -> None", value=on_error)
    if deadline is None:
        deadline = config.task_deadline if config is not None else None
    if grace is None and deadline is not None and 0 < deadline <= DEFAULT_GRACE:
        grace = deadline / 10
    deadline_s, grace_s = resolve_deadline(deadline, grace)
    if trust.mode == "development":
        log.warning(
            "taskhandler: development trust: task headers are believed from any client; "
            "never use this where strangers can reach the server"
        )
    return Settings(
        trust=trust,
        rules=tuple(config.rules) if config is not None else (),
        authenticator=authenticator,
        deadline=deadline_s,
        grace=grace_s,
        login_url=str(getattr(authenticator, "login_url", "/_ah/login")),
        serves_pages=callable(getattr(authenticator, "serve", None)),
        on_error=on_error,
    )


UserOf = Callable[[], User | None]
"""Who is signed in, asked only when a step needs to know (a :class:`LazyUser`)."""


def no_user() -> User | None:
    """The user when there is no authenticator to ask: nobody."""
    return None


class LazyUser:
    """Who the authenticator says the user is, asked at most once per request."""

    __slots__ = ("_authenticator", "_info", "_known", "_user")

    def __init__(
        self, authenticator: Authenticator | None, info: Callable[[], RequestInfo]
    ) -> None:
        self._authenticator = authenticator
        self._info = info
        self._known = False
        self._user: User | None = None

    def __call__(self) -> User | None:
        if not self._known:
            self._known = True
            if self._authenticator is not None:
                self._user = self._authenticator(self._info())
        return self._user


class Decision(NamedTuple):
    """What an adapter must do with one request.

    Attributes:
        trusted_by: who the request was trusted as (step 1), or ``None``.
        strip: remove every task header before the app sees the request (step 2). (The
            ``_`` spellings of forwarding headers go from every request, whatever this says.)
        refusal: the answer instead of the app (steps 3 and 4), or ``None``.
        context: the task the request describes (step 4), or ``None``.
    """

    trusted_by: TrustedBy | None
    strip: bool
    refusal: Refusal | None
    context: TaskContext | None


# The decision for a request with nothing to decide (no task header, no rule, no page).
NOTHING_DECIDED = Decision(None, False, None, None)


def decide(view: RequestView, settings: Settings, user: UserOf) -> Decision:
    """SPEC §1 steps 1-4 for one request; mutates nothing.

    Args:
        view: the request.
        settings: the middleware's configuration.
        user: who is signed in (asked only when a step needs to know).
    """
    # 1. Who is asking?
    trusted_by = who_is_asking(view, settings, user)
    # 2. Which headers go: the task headers of a request that is not trusted.
    strip = strips_task_headers(view, trusted_by)
    # 3. May this request reach this URL?
    is_task = trusted_by is not None and describes_a_task([name for name, _ in view.task_headers])
    refusal = access_refusal(view, settings, is_task=is_task, user=user)
    # 4. The task it describes.
    context = None
    if is_task and refusal is None:
        assert trusted_by is not None
        try:
            context = TaskContext.from_headers(view.task_headers, trusted_by=trusted_by)
        except InvalidTaskHeaders as exc:
            refusal = Refusal(400, str(exc))
    return Decision(trusted_by, strip, refusal, context)


def decide_nested(
    view: RequestView, settings: Settings, outer: RequestState, user: UserOf
) -> Decision:
    """The decision of a ``TaskMiddleware`` inside another one.

    Trust and stripping are decided once, by the outermost layer; this layer's access
    rules still apply, with ``user`` as this layer's authenticator sees the request.
    """
    refusal = access_refusal(view, settings, is_task=outer.context is not None, user=user)
    return Decision(outer.trusted_by, False, refusal, outer.context)


def decide_layer(
    view: RequestView, settings: Settings, user: UserOf, outer: RequestState | None
) -> tuple[Decision, UserOf]:
    """:func:`decide` for the outermost ``TaskMiddleware``, :func:`decide_nested` for one
    inside another (``outer`` is the state the enclosing one left); with the user this
    layer judges and hands on.

    That is the outer layer's user when this layer has no authenticator. Inside the
    development server (an outer layer under development trust) it is this layer's user,
    else the one signed in on the development server's page: a developer signs in once, as
    on App Engine's development server, and not again with the app's own sign-in (Django's
    session). Development trust already lets any request act as a task, so this opens
    nothing that was shut.
    """
    if outer is None:
        return decide(view, settings, user), user
    if settings.authenticator is None:
        user = outer.user
    elif outer.settings.trust.mode == "development":
        user = functools.partial(_first_signed_in, user, outer.user)
    return decide_nested(view, settings, outer, user), user


def _first_signed_in(own: UserOf, outer: UserOf) -> User | None:
    """This layer's user, else the outer layer's."""
    signed_in = own()
    return signed_in if signed_in is not None else outer()


def who_is_asking(view: RequestView, settings: Settings, user: UserOf) -> TrustedBy | None:
    """Step 1: whether the request's task headers are believed, and why.

    A request without task headers is trusted only under development trust. Otherwise
    the trust policy judges its source (peer address, proxies, an ID token); failing that,
    a signed-in administrator may send task headers too.
    """
    trust = settings.trust
    if not view.task_headers:
        return "development" if trust.mode == "development" else None
    trusted_by = trust.source(view.peer, view.headers.get, folded=view.folded)
    if trusted_by is None and settings.authenticator is not None:
        signed_in = user()
        if signed_in is not None and signed_in.is_admin:
            trusted_by = "admin"
    return trusted_by


def strips_task_headers(view: RequestView, trusted_by: TrustedBy | None) -> bool:
    """Step 2: whether the app must not see the request's task headers."""
    return trusted_by is None and bool(view.task_headers)


def access_refusal(
    view: RequestView, settings: Settings, *, is_task: bool, user: UserOf
) -> Refusal | None:
    """Step 3: the access rules (``login:``, ``secure:``) for every path the app may route."""
    if not settings.rules:
        return None
    if view.path_error is not None:
        return Refusal(400, view.path_error)
    trust = settings.trust
    prefixes = (*view.prefixes, *access.header_prefixes(view.headers))
    return access.check_path(view.path) or access.check_access(
        settings.rules,
        path=view.path,
        scheme=trust.scheme(view.scheme, view.peer, view.headers.get, folded=view.folded),
        host=view.host,
        query_string=view.query_string,
        trusted=is_task,
        user=user,
        login_url=settings.login_url,
        enforce_secure=trust.mode != "development",
        also_routed_as=access.routable_paths(view.path, prefixes)[1:],
    )


class RequestState:
    """What the middleware decided about a request, for handlers further in.

    Stored under ``environ["taskhandler.state"]`` / ``scope["taskhandler.state"]``.
    """

    __slots__ = ("decision", "settings", "stripped", "user")

    def __init__(
        self,
        settings: Settings,
        decision: Decision,
        user: UserOf,
        stripped: tuple[str, ...] = (),
    ) -> None:
        self.stripped = stripped
        """The names of the headers removed from the request."""
        self.settings = settings
        self.decision = decision
        self.user = user

    @property
    def trusted_by(self) -> TrustedBy | None:
        """Who the request was trusted as, or ``None``."""
        return self.decision.trusted_by

    @property
    def context(self) -> TaskContext | None:
        """The task the request describes, or ``None``."""
        return self.decision.context

    def is_admin(self) -> bool:
        """True when the request is from a signed-in administrator."""
        if self.trusted_by == "admin":
            return True
        signed_in = self.user()
        return signed_in is not None and signed_in.is_admin


def synthetic_context(trusted_by: TrustedBy, task_name: str) -> TaskContext:
    """The context an admin (or development) request without task headers runs with."""
    return TaskContext(queue_name="default", task_name=task_name, trusted_by=trusted_by)


class MiddlewareBase:
    """What both middlewares do at construction: validate the keywords once (SPEC §12)."""

    def __init__(
        self,
        app: Any,
        *,
        trust: TrustPolicy | None = None,
        config: AppConfig | None = None,
        authenticator: Authenticator | None = None,
        deadline: float | None = None,
        grace: float | None = None,
        on_error: Callable[[TaskContext, BaseException, bool], Any] | None = None,
    ) -> None:
        self._adopt(app, make_settings(trust, config, authenticator, deadline, grace, on_error))

    def _adopt(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings: Settings = settings
        # Per middleware, worked out once: neither the settings nor the app change.
        self.decides_plain_requests = settings.decides_plain_requests
        self._nothing_decided = RequestState(settings, NOTHING_DECIDED, no_user)

    def user_of(self, info: Callable[[R], RequestInfo], request: R) -> UserOf:
        """Who is signed in on ``request``: the authenticator asked at most once, if at all."""
        authenticator = self.settings.authenticator
        if authenticator is None:
            return no_user
        return LazyUser(authenticator, functools.partial(info, request))

    def undecided(self, info: Callable[[R], RequestInfo], request: R) -> RequestState:
        """The state of a request with nothing to decide, for handlers further in.

        Without an authenticator there is no user to ask, so one state serves them all.
        """
        if self.settings.authenticator is None:
            return self._nothing_decided
        return RequestState(self.settings, NOTHING_DECIDED, self.user_of(info, request))

    @classmethod
    def with_settings(cls, app: Any, settings: Settings) -> Any:
        """A middleware around ``app`` with settings validated already (no warning again)."""
        middleware = cls.__new__(cls)
        middleware._adopt(app, settings)
        return middleware


def refusal_response(refusal: Refusal) -> Response:
    """The answer to a refused request: one line, never cached; 400/403 say ``rejected``."""
    return plain_response(
        refusal.status,
        refusal.reason,
        location=refusal.location,
        outcome="rejected" if refusal.status in (400, 403) else None,
        no_store=True,
    )
