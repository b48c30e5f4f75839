"""The request path as one pure decision (SPEC §1, steps 1-4), shared by both adapters.

The WSGI and ASGI middlewares gather the same plain data from their protocol (peer
address, the task-prefixed headers, a header lookup, the path, a lazy user) and call
:func:`decide`; they only differ in how they apply the answer. One decision, two adapters.

Pure: standard library and pydantic only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import access
from .access import Refusal
from .config import AccessRule, AppConfig
from .context import TaskContext
from .deadline import DEFAULT_GRACE, resolve_deadline
from .exceptions import ConfigError, InvalidTaskHeaders
from .trust import Authenticator, RequestInfo, TrustedBy, TrustPolicy, User

__all__ = [
    "Decision",
    "Location",
    "RequestState",
    "Settings",
    "check_rules",
    "decide",
    "header_prefixes",
    "make_settings",
]

log = logging.getLogger("taskhandler")

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


def make_settings(
    trust: TrustPolicy | None,
    config: AppConfig | None,
    authenticator: Authenticator | None,
    deadline: float | None,
    grace: float | None,
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
    )


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
    ) -> None:
        self.app = app
        self.settings: Settings = make_settings(trust, config, authenticator, deadline, grace)
        # Nothing to decide for a request without task headers: no rules, no pages to
        # serve, no development trust (which makes any request a possible task).
        self._plain_fast = (
            not self.settings.rules
            and self.settings.trust.mode != "development"
            and not self.settings.serves_pages
        )


class RequestState:
    """Per-request facts the middleware decided, for handlers further in.

    Stored under ``environ["taskhandler.state"]`` / ``scope["taskhandler.state"]``. Built
    for every request, so construction is two assignments; the rest are class defaults.
    """

    trusted_by: TrustedBy | None = None
    context: TaskContext | None = None
    stripped: tuple[str, ...] = ()
    _user: User | None = None
    _user_known = False

    def __init__(
        self, settings: Settings, info: Callable[..., RequestInfo], source: Any = None
    ) -> None:
        """``info(source)`` (or ``info()`` without a source) builds the RequestInfo on demand."""
        self.settings = settings
        self._info = info
        self._source = source

    def inner(self, settings: Settings) -> RequestState:
        """The state a nested ``TaskMiddleware`` judges its own rules with.

        Trust is the outermost layer's (who the request was trusted as, its context); the
        user is the inner layer's authenticator's, or the outer one's when it has none.
        """
        state = RequestState(settings, self._info, self._source)
        state.trusted_by = self.trusted_by
        state.context = self.context
        if settings.authenticator is None:
            state._user, state._user_known = self.user(), True
        return state

    def request_info(self) -> RequestInfo:
        """The neutral view of the request (built on demand)."""
        if self._source is None:
            return self._info()
        return self._info(self._source)

    def user(self) -> User | None:
        """Who the authenticator says the user is; asked at most once per request."""
        if not self._user_known:
            self._user_known = True
            authenticator = self.settings.authenticator
            self._user = None if authenticator is None else authenticator(self.request_info())
        return self._user

    def is_admin(self) -> bool:
        """True when the request is from a signed-in administrator."""
        if self.trusted_by == "admin":
            return True
        user = self.user()
        return user is not None and user.is_admin


class Decision(NamedTuple):
    """What the adapter must do with a request: refuse it, and whether to strip task headers.

    Who the request was trusted as and the task context are recorded on the
    :class:`RequestState` (``state.trusted_by``, ``state.context``).
    """

    refusal: Refusal | None
    strip: bool


class Location(NamedTuple):
    """Where a request goes, for the access rules: decoded path (or a 400), scheme, host, query.

    ``prefixes`` are mount prefixes that may be removed from the path before the app routes
    it (``SCRIPT_NAME``, ``root_path``, prefixes named by request headers): the rules see
    the path with and without each (see :func:`~taskhandler.access.routable_paths`).
    """

    path: str | Refusal
    scheme: str
    host: str
    query_string: str
    prefixes: tuple[str, ...] = ()


# Request headers from which a server or ProxyFix may take a mount prefix (SCRIPT_NAME /
# root_path): gunicorn's SCRIPT_NAME header, daphne's Daphne-Root-Path, X-Forwarded-Prefix.
PREFIX_HEADERS = ("script-name", "daphne-root-path", "x-forwarded-prefix")
_MAX_PREFIXES = 16


def header_prefixes(header: Callable[[str], str | None]) -> tuple[str, ...]:
    """Mount prefixes that request headers name (each value may list several, comma-joined)."""
    found: list[str] = []
    for name in PREFIX_HEADERS:
        value = header(name)
        if value:
            found.extend(part.strip() for part in value.split(",")[:_MAX_PREFIXES])
    return tuple(found)


# The answers that need no allocation (the usual ones).
GO_ON = Decision(None, False)
STRIP = Decision(None, True)


def decide(
    state: RequestState,
    *,
    peer: str | None,
    task_fields: Callable[[], dict[str, Any] | None] | None,
    header: Callable[[str], str | None],
    locate: Callable[[], Location],
) -> Decision:
    """Steps 1-4 of the request path for one request.

    Args:
        state: this request's state (settings, lazy user); ``trusted_by`` and ``context``
            are recorded on it.
        peer: the immediate peer address.
        task_fields: ``None`` when the request has no ``X-AppEngine-*``/``X-CloudTasks-*``
            header; else parses them into ``TaskContext`` field values (raising
            ``InvalidTaskHeaders``; ``None`` when none describes a task), called only when
            the request is trusted, so a spoofed request costs no parsing. See
            :func:`~taskhandler.headers.parse_task_headers`.
        header: looks up any other request header by lower-case, dash-spelled name.
        locate: gives the request's :class:`Location` (only called when access rules exist).
    """
    settings = state.settings
    trusted_by: TrustedBy | None = None
    if task_fields is not None:
        trusted_by = settings.trust.source(peer, header)
        if trusted_by is None:
            if settings.authenticator is None or not state.is_admin():
                return check_rules(state, peer, header, locate, STRIP) if settings.rules else STRIP
            trusted_by = "admin"
        state.trusted_by = trusted_by
        try:
            fields = task_fields()
        except InvalidTaskHeaders as exc:
            return Decision(Refusal(400, str(exc)), False)
        if fields is not None:
            state.context = TaskContext._from_parsed(fields, trusted_by)
    elif settings.trust.mode == "development":
        state.trusted_by = "development"
    return check_rules(state, peer, header, locate, GO_ON) if settings.rules else GO_ON


def check_rules(
    state: RequestState,
    peer: str | None,
    header: Callable[[str], str | None],
    locate: Callable[[], Location],
    ok: Decision = GO_ON,
) -> Decision:
    """Step 4: the access rules (``login:``, ``secure:``); ``ok`` when they let the request in.

    Also the whole decision of a ``TaskMiddleware`` nested in another: trust was decided by
    the outermost, and each layer's own rules and authenticator still apply.
    """
    settings = state.settings
    where = locate()
    path = where.path
    if isinstance(path, Refusal):
        return Decision(path, ok.strip)
    refusal = access.check_path(path) or access.check_access(
        settings.rules,
        path=path,
        scheme=settings.trust.scheme(where.scheme, peer, header),
        host=where.host,
        query_string=where.query_string,
        trusted=state.context is not None,
        user=state.user,
        login_url=settings.login_url,
        enforce_secure=settings.trust.mode != "development",
        also_routed_as=access.routable_paths(path, (*where.prefixes, *header_prefixes(header)))[1:],
    )
    return ok if refusal is None else Decision(refusal, ok.strip)


def refusal_body(refusal: Refusal) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and a one-line plain-text body for an eager refusal (no traceback, ever)."""
    body = f"{refusal.reason}\n".encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    if refusal.location is not None:
        headers.append(("Location", refusal.location))
    if refusal.status in (400, 403):
        headers.append(("X-Task-Outcome", "rejected"))
    return headers, body


def synthetic_context(trusted_by: TrustedBy, task_name: str) -> TaskContext:
    """The context an admin (or development) request without task headers runs with."""
    return TaskContext(queue_name="default", task_name=task_name, trusted_by=trusted_by)
