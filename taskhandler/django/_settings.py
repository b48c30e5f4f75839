"""``settings.TASKHANDLER``: the Django middleware's configuration, read and validated once.

Keys (all optional)::

    TASKHANDLER = {
        "TRUST": "strict",          # or "app_engine", "development", a TrustPolicy, or
                                    # {"queue_sources": [...], "trusted_proxies": [...]}
        "APP_YAML": BASE_DIR / "app.yaml",   # login:/secure: rules and the task deadline
        "WEB_XML": None,            # or a web.xml with <security-constraint>s
        "DEADLINE": None,           # seconds; overrides app.yaml's scaling
        "GRACE": None,              # seconds before the deadline the error is raised
        "CONFIG": None,             # or an AppConfig (instead of APP_YAML / WEB_XML)
        "AUTHENTICATOR": "session", # Django's session (staff/superuser = admin), None, a
                                    # callable RequestInfo -> User | None, or its dotted path
        "ON_ERROR": None,           # a function (task, exc, final) -> None, or its dotted
                                    # path: told of a task's exceptions (an error reporter)
    }

An unknown key, a file that does not load or a value of the wrong kind is a ``ConfigError``
naming it, raised when Django builds the middleware (at start-up), never a silent default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .._decision import Settings, make_settings
from ..config import AppConfig, load_app_yaml, load_web_xml
from ..exceptions import ConfigError
from ..trust import RequestInfo, TrustPolicy, User

__all__ = ["SETTING", "SessionAuth", "settings_from_django", "settings_from_mapping"]

SETTING = "TASKHANDLER"
_KEYS = frozenset(
    ("TRUST", "APP_YAML", "WEB_XML", "CONFIG", "DEADLINE", "GRACE", "AUTHENTICATOR", "ON_ERROR")
)
# Where a `login:` rule's redirect points while the middleware works it out: replaced by
# Django's LOGIN_URL (resolved when a redirect is made, as it may be a URL name) and `next=`.
LOGIN_MARK = "/_taskhandler/django-login"


class SessionAuth:
    """Who is signed in, from Django's session: staff or superuser is an administrator.

    It reads ``request.user`` (set by ``django.contrib.auth``'s ``AuthenticationMiddleware``,
    which must come before ``TaskMiddleware`` in ``MIDDLEWARE``). ``login:`` rules redirect to
    ``settings.LOGIN_URL`` with ``next=``, as ``@login_required`` does.
    """

    login_url = LOGIN_MARK

    def __call__(self, info: RequestInfo) -> User | None:
        # Used through the Django request (user_of_request), never a RequestInfo.
        return None

    @staticmethod
    def user_of(django_user: Any) -> User | None:
        """A Django user as a :class:`~taskhandler.trust.User` (``None`` when anonymous)."""
        if django_user is None or not getattr(django_user, "is_authenticated", False):
            return None
        email = getattr(django_user, "email", "") or str(django_user.get_username())
        return User(
            email=email,
            user_id=str(django_user.pk),
            is_admin=bool(
                getattr(django_user, "is_staff", False)
                or getattr(django_user, "is_superuser", False)
            ),
        )

    def __repr__(self) -> str:
        return "SessionAuth()"


def settings_from_django() -> Settings:
    """The middleware settings from ``django.conf.settings.TASKHANDLER``."""
    from django.conf import settings

    return settings_from_mapping(getattr(settings, SETTING, None) or {})


def settings_from_mapping(options: Mapping[str, Any]) -> Settings:
    """Validate a ``TASKHANDLER`` mapping into the middleware's settings."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"settings.{SETTING} must be a dict", value=options)
    unknown = sorted(str(key) for key in options if key not in _KEYS)
    if unknown:
        raise ConfigError(
            f"settings.{SETTING}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})",
            value=unknown[0],
        )
    return make_settings(
        _trust(options.get("TRUST")),
        _config(options),
        _authenticator(options.get("AUTHENTICATOR", "session")),
        _number("DEADLINE", options.get("DEADLINE")),
        _number("GRACE", options.get("GRACE")),
        _callable("ON_ERROR", options.get("ON_ERROR"), "(task, exc, final) -> None"),
    )


def _trust(value: Any) -> TrustPolicy:
    if value is None or value == "strict":
        return TrustPolicy()
    if isinstance(value, TrustPolicy):
        return value
    if value == "app_engine":
        return TrustPolicy.app_engine()
    if value == "development":
        return TrustPolicy.development()
    if isinstance(value, Mapping):
        try:
            return TrustPolicy(**value)
        except TypeError as exc:
            raise ConfigError(f"settings.{SETTING}['TRUST']: {exc}", value=value) from None
    raise ConfigError(
        f"settings.{SETTING}['TRUST'] must be 'strict', 'app_engine', 'development', a "
        "TrustPolicy or a dict of its keywords",
        value=value,
    )


def _config(options: Mapping[str, Any]) -> AppConfig | None:
    given = [key for key in ("CONFIG", "APP_YAML", "WEB_XML") if options.get(key) is not None]
    if len(given) > 1:
        raise ConfigError(
            f"settings.{SETTING}: give one of CONFIG, APP_YAML and WEB_XML", value=given
        )
    if not given:
        return None
    key = given[0]
    value = options[key]
    if key == "CONFIG":
        if not isinstance(value, AppConfig):
            raise ConfigError(f"settings.{SETTING}['CONFIG'] must be an AppConfig", value=value)
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"settings.{SETTING}[{key!r}] must be a path", value=value)
    path = os.fspath(value)
    return load_app_yaml(path) if key == "APP_YAML" else load_web_xml(path)


def _authenticator(value: Any) -> Any:
    if value == "session":
        return SessionAuth()
    if value is None or value is False:
        return None
    return _callable("AUTHENTICATOR", value, "RequestInfo -> User | None", classes="made")


def _callable(key: str, value: Any, signature: str, *, classes: str = "refused") -> Any:
    """A callable setting given as itself or its dotted path.

    A class named by its path is instantiated when ``classes="made"`` (an authenticator
    class), refused otherwise (a hook is a function, not a class to construct).
    """
    if value is None:
        return None
    given = value
    if isinstance(value, str):
        from django.utils.module_loading import import_string

        try:
            value = import_string(value)
        except ImportError as exc:
            raise ConfigError(
                f"settings.{SETTING}[{key!r}]: cannot import ({exc})", value=given
            ) from None
    if isinstance(value, type):
        if classes != "made":
            raise ConfigError(
                f"settings.{SETTING}[{key!r}] must be a function {signature}, not a class",
                value=given,
            )
        if isinstance(given, str):
            value = value()
    if not callable(value):
        raise ConfigError(
            f"settings.{SETTING}[{key!r}] must be a callable {signature} or its dotted path",
            value=given,
        )
    return value


def _number(key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"settings.{SETTING}[{key!r}] must be a number of seconds", value=value)
    return float(value)
