"""Access rules: ``login:`` and ``secure:`` enforced outside App Engine (SPEC §4).

On App Engine the platform keeps strangers away from ``login: admin`` URLs. Anywhere else
the middleware has to, and a rule is only as good as the path it is matched against: if
``//tasks/x`` or ``/public/../tasks/x`` missed the ``/tasks/.*`` rule but a router or server
then normalised it to ``/tasks/x``, the protected view would run for anyone. So a path that
some component might read differently from the rule matcher is refused with 400 before any
rule is looked at (:func:`check_path`), and the rules see exactly the path the app will see
(``SCRIPT_NAME + PATH_INFO``, decoded as UTF-8).

The decision (:func:`check_access`), in order:

1. no rule matches, or the first match is ``login: optional`` without ``secure: always``
   -> no restriction;
2. a trusted request (the queue, or development trust) -> passes everything, ``secure``
   included: the queue speaks plain HTTP on the platform's internal network and would treat a
   redirect as a failure, and the development server, like App Engine's, has no HTTPS;
3. ``secure: always`` over plain HTTP -> 302 to the same URL with ``https`` (query kept), before
   anything about the user, so credentials are only ever asked for over HTTPS;
4. ``login: required``/``admin`` with nobody signed in -> 302 to the sign-in page with
   ``continue=<original URL>`` (``auth_fail_action: redirect``) or 401 (``unauthorized``);
5. ``login: admin`` and a signed-in user who is not an admin -> 403;
6. otherwise the request passes (admins pass every ``login``).

Matching is case-sensitive, as on App Engine: ``/Tasks/x`` does not match ``/tasks/.*``.

Pure: standard library and pydantic only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from .config import AccessRule
from .trust import User

__all__ = [
    "Refusal",
    "check_access",
    "check_path",
    "find_rule",
    "header_prefixes",
    "routable_paths",
    "strictest_rule",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """An eager answer instead of running the app.

    Attributes:
        status: the HTTP status (302, 400, 401 or 403).
        reason: one line saying why, safe to show to the client.
        location: the ``Location`` of a redirect.
    """

    status: int
    reason: str
    location: str | None = None


# C0 controls, DEL and C1 controls: never part of a URL path a router should see.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# A Host header we are willing to echo into a Location: a name or IP, optional port.
_HOST = re.compile(r"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
# Characters kept as they are when a path is put into a Location header.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def check_path(path: str) -> Refusal | None:
    """Refuse (400) a path that some server or router might read as a different path.

    Refused: no leading ``/``; a control character (NUL, CR, LF, DEL, ...); a backslash;
    an empty segment (``//``); a ``.`` or ``..`` segment. A trailing ``/`` is allowed.
    After this check, the path the rules match is the path the app routes.

    Example::

        >>> check_path("/public/../tasks/x")
        Refusal(status=400, reason="request path has a '..' segment", location=None)
        >>> check_path("/tasks/x") is None
        True
    """
    if not path.startswith("/"):
        return Refusal(400, "request path does not start with '/'")
    if _CONTROL.search(path):
        return Refusal(400, "request path holds a control character")
    if "\\" in path:
        return Refusal(400, "request path holds a backslash")
    if "//" in path:
        return Refusal(400, "request path has an empty segment")
    for segment in path.split("/"):
        if segment == "." or segment == "..":
            return Refusal(400, f"request path has a {segment!r} segment")
    return None


def find_rule(rules: Sequence[AccessRule], path: str) -> AccessRule | None:
    """The first rule whose regex matches the whole ``path``, else ``None``."""
    for rule in rules:
        if rule.regex.fullmatch(path) is not None:
            return rule
    return None


def routable_paths(path: str, prefixes: Iterable[str]) -> tuple[str, ...]:
    """Every path the app might route ``path`` on: the path itself and it without a prefix.

    A mount prefix may be removed between the middleware and the router: ``SCRIPT_NAME``
    (Flask routes ``PATH_INFO``), an ASGI ``root_path`` (FastAPI's own, or one a server took
    from a request header: gunicorn's ``SCRIPT_NAME`` header, daphne's ``Daphne-Root-Path``,
    ``X-Forwarded-Prefix`` under ``ProxyFix``). The rules are applied to each of these
    paths and the strictest decision wins, so a prefix can never hide a protected URL.
    A prefix that ends inside a segment counts too, as servers may cut it there.

    Example::

        >>> routable_paths("/api/tasks/x", ["/api"])
        ('/api/tasks/x', '/tasks/x')
        >>> routable_paths("/xadmin", ["/x"])
        ('/xadmin', '/admin')
    """
    paths = [path]
    for prefix in prefixes:
        prefix = prefix.rstrip("/")
        if not prefix.startswith("/") or not path.startswith(prefix):
            continue
        rest = path[len(prefix) :]
        if rest and not rest.startswith("/"):
            # Some servers cut a prefix mid-segment (gunicorn: /xadmin with SCRIPT_NAME /x
            # routes admin), and frameworks route what is left as /admin.
            rest = "/" + rest
        rest = rest or "/"
        if rest not in paths:
            paths.append(rest)
    return tuple(paths)


# Request headers from which a server or ProxyFix may take a mount prefix (SCRIPT_NAME /
# root_path): gunicorn's SCRIPT_NAME header, daphne's Daphne-Root-Path, X-Forwarded-Prefix.
PREFIX_HEADERS = ("script-name", "daphne-root-path", "x-forwarded-prefix")
_MAX_PREFIXES = 16


def header_prefixes(headers: Mapping[str, str]) -> tuple[str, ...]:
    """Mount prefixes that request headers name (each value may list several, comma-joined)."""
    found: list[str] = []
    for name in PREFIX_HEADERS:
        value = headers.get(name)
        if value:
            found.extend(part.strip() for part in value.split(",")[:_MAX_PREFIXES])
    return tuple(found)


_LOGIN_RANK = {"optional": 0, "required": 1, "admin": 2}


def strictest_rule(rules: Sequence[AccessRule], paths: Sequence[str]) -> AccessRule | None:
    """The rule that decides a request routable on any of ``paths``: the strictest match.

    Each path finds its first matching rule (App Engine semantics); of those, the one with
    the strictest ``login`` wins, and ``secure: always`` from any of them is kept.
    """
    found = [rule for rule in (find_rule(rules, path) for path in paths) if rule is not None]
    if len(found) <= 1:
        return found[0] if found else None
    strictest = max(found, key=lambda rule: _LOGIN_RANK[rule.login])
    if strictest.secure != "always" and any(rule.secure == "always" for rule in found):
        strictest = strictest.model_copy(update={"secure": "always"})
    return strictest


def _url(scheme: str, host: str, path: str, query_string: str) -> str:
    query = f"?{query_string}" if query_string else ""
    return f"{scheme}://{host}{quote(path, safe=_PATH_SAFE)}{query}"


def _safe_query(query_string: str) -> str | None:
    """The query as it may go into a Location header, or ``None`` if it cannot."""
    if _CONTROL.search(query_string) or not query_string.isascii():
        return None
    return query_string


def check_access(
    rules: Sequence[AccessRule],
    *,
    path: str,
    scheme: str,
    host: str,
    query_string: str,
    trusted: bool,
    user: Callable[[], User | None],
    login_url: str = "/_ah/login",
    enforce_secure: bool = True,
    also_routed_as: Sequence[str] = (),
) -> Refusal | None:
    """Return a :class:`Refusal` when the request may not proceed, else ``None``.

    Args:
        rules: the access rules, in order; the first whose regex full-matches ``path`` decides.
        path: the request path, already accepted by :func:`check_path`.
        scheme: ``http`` or ``https`` as the client used it (after any trusted proxy fix-up).
        host: the ``Host`` the client asked for, used to build redirect URLs.
        query_string: the raw query string, kept in redirects.
        trusted: the request is a trusted task request (development trust without task
            headers is not: the development server still asks who you are, as App Engine's did).
        user: returns the signed-in user or ``None``; only called when a rule needs it.
        login_url: the sign-in page; ``continue=<original URL>`` is added to it.
        enforce_secure: ``False`` under development trust, whose plain-HTTP server has no
            HTTPS to redirect to (App Engine's development server ignored ``secure:`` too).
        also_routed_as: other paths the app may route this request on (see
            :func:`routable_paths`); the strictest rule over all of them decides.

    The order of the checks is in the module docstring.

    Example::

        rules = [AccessRule(url=r"/tasks/.*", login="admin")]
        check_access(rules, path="/tasks/x", scheme="http", host="localhost",
                     query_string="", trusted=False, user=lambda: None)
        # Refusal(status=302, reason="sign-in required",
        #         location="/_ah/login?continue=http%3A%2F%2Flocalhost%2Ftasks%2Fx")
    """
    rule = (
        strictest_rule(rules, (path, *also_routed_as)) if also_routed_as else find_rule(rules, path)
    )
    if rule is None or not rule.protected or trusted:
        return None

    redirect_needed = enforce_secure and rule.secure == "always" and scheme != "https"
    if redirect_needed or rule.login != "optional":
        if _HOST.fullmatch(host) is None:
            return Refusal(400, "the Host header is not a valid host name")
        query = _safe_query(query_string)
        if query is None:
            return Refusal(400, "the query string holds a control or non-ASCII character")

    if redirect_needed:
        return Refusal(302, "this URL requires HTTPS", _url("https", host, path, query_string))

    if rule.login == "optional":
        return None
    signed_in = user()
    if signed_in is None:
        if rule.auth_fail_action == "unauthorized":
            return Refusal(401, "sign-in required")
        separator = "&" if "?" in login_url else "?"
        target = urlencode({"continue": _url(scheme, host, path, query_string)})
        return Refusal(302, "sign-in required", f"{login_url}{separator}{target}")
    if rule.login == "admin" and not signed_in.is_admin:
        return Refusal(403, "administrators only")
    return None
