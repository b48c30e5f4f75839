"""The request path as one pure decision (SPEC §1, steps 1-4), shared by both adapters.

The WSGI and ASGI middlewares gather the same plain data from their protocol (peer
address, the task-prefixed headers, a header lookup, the path, a lazy user) and call
:func:`decide`; they only differ in how they apply the answer. One decision, two adapters.

Pure: standard library and pydantic only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import access
from .access import Refusal
from .config import AccessRule, AppConfig
from .context import TaskContext
from .deadline import DEFAULT_GRACE, resolve_deadline
from .exceptions import ConfigError, InvalidTaskHeaders
from .headers import TASK_FIELD_NAMES, parse_task_fields
from .trust import Authenticator, RequestInfo, TrustedBy, TrustPolicy, User

__all__ = ["Decision", "RequestState", "Settings", "decide", "make_settings"]

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


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a request: refuse it, or strip or not and run with a context."""

    refusal: Refusal | None
    strip: bool
    trusted_by: TrustedBy | None
    context: TaskContext | None


def decide(
    state: RequestState,
    *,
    peer: str | None,
    task_headers: Mapping[str, str] | Callable[[], Mapping[str, str]],
    header: Callable[[str], str | None],
    path: str | Refusal | Callable[[], str | Refusal],
    scheme: str,
    host: str,
    query_string: str,
) -> Decision:
    """Steps 1-4 of the request path for one request.

    Args:
        state: this request's state (settings, lazy user); updated with the decision.
        peer: the immediate peer address.
        task_headers: every ``X-AppEngine-*``/``X-CloudTasks-*`` header, by lower-case
            dash-spelled name or by WSGI environ key, several copies joined with ``,``; or a
            callable producing them (called only when the request may be trusted, so a
            spoofed request costs no parsing).
        header: looks up any other request header by lower-case name.
        path: the decoded request path, a refusal for an undecodable one, or a callable
            producing either (only called when access rules exist).
    """
    settings = state.settings
    trusted_by: TrustedBy | None = None
    strip = False
    if callable(task_headers) or task_headers:
        trusted_by = settings.trust.source(peer, header)
        if trusted_by is None and settings.authenticator is not None and state.is_admin():
            trusted_by = "admin"
        strip = trusted_by is None
    elif settings.trust.mode == "development":
        trusted_by = "development"
    state.trusted_by = trusted_by

    context: TaskContext | None = None
    values: Mapping[str, str] = {}
    if not strip:
        values = task_headers() if callable(task_headers) else task_headers
    if values and not TASK_FIELD_NAMES.isdisjoint(values):
        assert trusted_by is not None  # narrowing: not stripped means trusted
        try:
            context = TaskContext._from_parsed(parse_task_fields(values), trusted_by)
        except InvalidTaskHeaders as exc:
            return Decision(Refusal(400, str(exc)), strip, trusted_by, None)
    state.context = context

    if settings.rules:
        text = path() if callable(path) else path
        if isinstance(text, Refusal):
            return Decision(text, strip, trusted_by, context)
        refusal = access.check_path(text) or access.check_access(
            settings.rules,
            path=text,
            scheme=scheme,
            host=host,
            query_string=query_string,
            trusted=context is not None,
            user=state.user,
            login_url=settings.login_url,
            enforce_secure=settings.trust.mode != "development",
        )
        if refusal is not None:
            return Decision(refusal, strip, trusted_by, context)
    return Decision(None, strip, trusted_by, context)


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
