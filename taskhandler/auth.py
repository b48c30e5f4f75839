"""Authenticators: who the user of a request is (SPEC §4), and the development sign-in pages.

An authenticator is anything callable as ``RequestInfo -> User | None``; the middleware
asks it only when an access rule needs a user, or when a request carrying task headers
might come from an admin. Built in:

- :class:`SignedCookieAuth` -- a signed, time-limited cookie set by a small sign-in page at
  ``/_ah/login`` (email and a "sign in as administrator" box, like App Engine's development
  server) and cleared by a sign-out button at ``/_ah/logout``. For development and for
  small deployments where whoever can reach the sign-in page may be an admin: the page
  asks for no password. Put a real identity provider in front (IAP, a framework session)
  for anything else, as a plain callable.
- :class:`AppEngineUserAuth` -- the platform's ``X-AppEngine-User-*`` headers, which only
  App Engine can vouch for; the middleware refuses it unless ``TrustPolicy.app_engine()``.

Pages contract: an authenticator may have ``serve(request, body) -> Page | None``; the
middleware calls it for paths starting with ``/_ah/log`` before any access rule.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from werkzeug.http import dump_cookie, parse_cookie

from ._keys import MIN_KEY_BYTES, signing_keys
from ._response import Response, plain_response
from .exceptions import ConfigError
from .trust import RequestInfo, User

__all__ = [
    "DEFAULT_MAX_AGE",
    "LOGIN_PATH",
    "LOGOUT_PATH",
    "MIN_KEY_BYTES",
    "AppEngineUserAuth",
    "Page",
    "SignedCookieAuth",
    "cookies_of",
    "is_localhost",
    "safe_redirect_target",
    "same_origin",
]

LOGIN_PATH = "/_ah/login"
LOGOUT_PATH = "/_ah/logout"
DEFAULT_MAX_AGE = 12 * 3600
DEFAULT_SALT = "taskhandler.auth.SignedCookieAuth"

# A browser stores at most ~4 KiB per cookie; anything longer is not ours.
_MAX_COOKIE_CHARS = 4096
_MAX_CONTINUE_CHARS = 2048
_MAX_FORM_BYTES = 16 * 1024
_COOKIE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Deliberately plain: one @, no spaces or controls, a dot-free domain allowed (localhost).
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f<>\"']{1,64}@[A-Za-z0-9.-]{1,190}")
_CSRF_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}")
_UNSAFE_TARGET_CHAR = re.compile(r"[\x00-\x20\x7f\\]")


Page = Response
"""A complete response an authenticator serves itself (sign-in and sign-out pages)."""


def is_localhost(host: str) -> bool:
    """Whether a ``Host`` value names this machine (``localhost``, ``127.x``, ``[::1]``).

    Browsers treat such origins as secure even over plain HTTP, which is why the sign-in
    cookie drops its ``Secure`` flag only there.
    """
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    return (
        name == "localhost"
        or name.endswith(".localhost")
        or name == "::1"
        or re.fullmatch(r"127\.\d{1,3}\.\d{1,3}\.\d{1,3}", name) is not None
    )


def safe_redirect_target(value: str | None, host: str) -> str:
    """The same-site relative URL to send a user to after sign-in/out, else ``"/"``.

    Accepted: a path starting with a single ``/`` (with query and fragment), or an absolute
    ``http``/``https`` URL on ``host`` itself, which is reduced to its path. Everything else
    falls back to ``"/"``: other hosts, ``//host`` and ``/\\host`` (browsers read both as
    another host), other schemes (``javascript:``, ``data:``), user-info tricks
    (``http://host@evil``), whitespace, control characters, backslashes and non-ASCII.
    So the sign-in page can never be used as an open redirect.

    Example::

        >>> safe_redirect_target("/tasks/x?a=1", "example.com")
        '/tasks/x?a=1'
        >>> safe_redirect_target("//evil.example/", "example.com")
        '/'
    """
    if not value or len(value) > _MAX_CONTINUE_CHARS or not value.isascii():
        return "/"
    if _UNSAFE_TARGET_CHAR.search(value):
        return "/"
    try:
        parts = urlsplit(value)
    except ValueError:
        return "/"
    if parts.scheme or parts.netloc:
        if parts.scheme.lower() not in ("http", "https") or not host:
            return "/"
        if parts.netloc.lower() != host.lower():
            return "/"
        value = urlunsplit(("", "", parts.path or "/", parts.query, parts.fragment))
        parts = urlsplit(value)
    if not value.startswith("/") or value.startswith("//"):
        return "/"
    if parts.scheme or parts.netloc:  # pragma: no cover - excluded by the checks above
        return "/"
    return value


def cookies_of(header: str) -> dict[str, str]:
    """A request's cookies from its ``Cookie`` header; one that is not UTF-8 counts as none.

    The adapters build :class:`~taskhandler.trust.RequestInfo` with it, WSGI and ASGI alike.
    """
    try:
        return dict(parse_cookie(header))
    except UnicodeError:
        return {}


def _user_id(email: str) -> str:
    """A stable numeric id for an email, as App Engine's development server makes one."""
    digest = hashlib.sha256(email.lower().encode("utf-8")).digest()
    return "1" + str(int.from_bytes(digest[:8], "big")).zfill(20)


class SignedCookieAuth:
    """Users from a signed, time-limited cookie, with a development sign-in page.

    The cookie holds the email and the admin flag, signed with itsdangerous (HMAC-SHA256,
    a salt used for nothing else) and timestamped; a cookie older than ``max_age``, dated in
    the future, signed with an unknown key or another salt is ignored (the user is nobody).
    The cookie is ``HttpOnly``, ``SameSite=Strict`` and ``Secure`` -- except over plain HTTP
    to localhost, where browsers would otherwise drop it.

    ``/_ah/login`` shows a form (email, "sign in as administrator") and on POST sets the
    cookie and redirects to ``continue``, which must be a same-site URL
    (:func:`safe_redirect_target`). ``/_ah/logout`` shows a "Sign out" button; its POST
    clears the cookie and redirects to ``continue``. A GET never signs anyone out (App
    Engine's development server did, so any page could sign its visitors out with an
    ``<img>``). Both POSTs are protected against cross-site requests by ``SameSite=Strict``,
    an ``Origin``/``Sec-Fetch-Site`` check (:func:`same_origin`) and a double-submit token
    (a ``SameSite=Strict`` cookie scoped to the page's path, echoed by the form). Sign-in
    asks for no password, so expose it only where everyone who can reach it may be an
    administrator.

    Args:
        secret_key: a key of at least 32 bytes, or a list of keys for rotation: the first
            signs new cookies, all of them verify (put the new key first, drop the old one
            after ``max_age``).
        max_age: seconds a sign-in lasts (default 12 hours); always checked.
        cookie_name: the cookie's name.
        salt: the signing salt, so these signatures are worth nothing elsewhere.
        login_url: where the middleware sends users who must sign in.
        sign_in_page: serve the development sign-in form at ``/_ah/login`` (default). Pass
            ``False`` where strangers can reach the app: the app's own sign-in then sets the
            cookie (:meth:`set_cookie_header`) and ``login_url`` points to it.
        clock: seconds since the epoch (default ``time.time``), replaceable in tests.

    Example::

        auth = SignedCookieAuth(os.environ["SIGNIN_KEY"])
        app.wsgi_app = TaskMiddleware(app.wsgi_app, config=load_app_yaml("app.yaml"),
                                      authenticator=auth)
    """

    login_url: str
    logout_url: str

    def __init__(
        self,
        secret_key: str | bytes | Sequence[str | bytes],
        *,
        max_age: float = DEFAULT_MAX_AGE,
        cookie_name: str = "taskhandler_signin",
        salt: str = DEFAULT_SALT,
        login_url: str = LOGIN_PATH,
        sign_in_page: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        keys = signing_keys(secret_key)
        if isinstance(max_age, bool) or not isinstance(max_age, int | float) or not max_age >= 1:
            raise ConfigError("max_age must be a number of seconds, at least 1", value=max_age)
        if not isinstance(cookie_name, str) or not _COOKIE_NAME.fullmatch(cookie_name):
            raise ConfigError("cookie_name must be 1-64 of [A-Za-z0-9_-]", value=cookie_name)
        if not isinstance(salt, str) or not salt:
            raise ConfigError("salt must be a non-empty string", value=salt)
        if not isinstance(login_url, str) or not login_url:
            raise ConfigError("login_url must be a non-empty string", value=login_url)
        self.max_age = int(max_age)
        self.cookie_name = cookie_name
        self.csrf_cookie_name = f"{cookie_name}_csrf"
        self.salt = salt
        self.login_url = login_url
        self.logout_url = LOGOUT_PATH
        self.sign_in_page = bool(sign_in_page)
        self._clock = clock

        class _Signer(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(clock())

        # itsdangerous signs with the last key and tries all; ours reads newest first.
        self._serializer = URLSafeTimedSerializer(
            list(reversed(keys)),
            salt=salt,
            signer=_Signer,
            signer_kwargs={"digest_method": hashlib.sha256},
        )

    def __repr__(self) -> str:
        return f"SignedCookieAuth(cookie_name={self.cookie_name!r}, max_age={self.max_age!r})"

    # -- reading ----------------------------------------------------------------------

    def __call__(self, request: RequestInfo, /) -> User | None:
        """The user whose valid cookie ``request`` carries, else ``None``."""
        value = request.cookies.get(self.cookie_name)
        if not value:
            return None
        return self.load(value)

    def load(self, value: str) -> User | None:
        """The user in a cookie value, or ``None`` when it is forged, expired or malformed."""
        if len(value) > _MAX_COOKIE_CHARS:
            return None
        try:
            data: Any = self._serializer.loads(value, max_age=self.max_age)
        except (BadSignature, ValueError, TypeError):
            return None
        if not isinstance(data, dict):
            return None
        email, admin = data.get("e"), data.get("a")
        if not isinstance(email, str) or not _EMAIL.fullmatch(email) or not isinstance(admin, bool):
            return None
        return User(email=email, user_id=_user_id(email), is_admin=admin)

    # -- writing ----------------------------------------------------------------------

    def cookie_value(self, email: str, *, admin: bool = False) -> str:
        """A signed cookie value for ``email``, e.g. to sign a test client in directly."""
        if not _EMAIL.fullmatch(email):
            raise ValueError(f"not an email address: {email!r}")
        return self._serializer.dumps({"e": email, "a": bool(admin)})

    def _secure(self, request: RequestInfo) -> bool:
        return request.scheme == "https" or not is_localhost(request.host)

    def set_cookie_header(self, request: RequestInfo, email: str, *, admin: bool = False) -> str:
        """The ``Set-Cookie`` value that signs ``email`` in for ``request``'s site."""
        return dump_cookie(
            self.cookie_name,
            self.cookie_value(email, admin=admin),
            max_age=self.max_age,
            path="/",
            secure=self._secure(request),
            httponly=True,
            samesite="Strict",
        )

    def _clear_cookie_header(self, request: RequestInfo, name: str) -> str:
        return dump_cookie(
            name,
            "",
            max_age=0,
            expires=0,
            path="/",
            secure=self._secure(request),
            httponly=True,
            samesite="Strict",
        )

    # -- pages ------------------------------------------------------------------------

    def serve(self, request: RequestInfo, body: bytes) -> Page | None:
        """Answer ``/_ah/login`` and ``/_ah/logout``; ``None`` for any other path."""
        if request.path == LOGIN_PATH and self.sign_in_page:
            if request.method in ("GET", "HEAD"):
                return self._login_form(request, head=request.method == "HEAD")
            if request.method == "POST":
                return self._login_post(request, body)
            return _method_not_allowed("GET, HEAD, POST")
        if request.path == LOGOUT_PATH:
            if request.method in ("GET", "HEAD"):
                return self._logout_form(request, head=request.method == "HEAD")
            if request.method == "POST":
                return self._logout_post(request, body)
            return _method_not_allowed("GET, HEAD, POST")
        return None

    # The double-submit token: a random value in a SameSite=Strict, HttpOnly cookie scoped
    # to the page's own path (/_ah/login or /_ah/logout), echoed by the page's form. Another
    # site can neither read the cookie nor make the browser send it.

    def _csrf_token(self, request: RequestInfo) -> tuple[str, bool]:
        token = request.cookies.get(self.csrf_cookie_name, "")
        if _CSRF_TOKEN.fullmatch(token):
            return token, False
        return secrets.token_urlsafe(32), True

    def _csrf_cookie_header(self, request: RequestInfo, token: str) -> str:
        return dump_cookie(
            self.csrf_cookie_name,
            token,
            path=request.path,
            secure=self._secure(request),
            httponly=True,
            samesite="Strict",
        )

    def _clear_csrf_cookie_header(self, request: RequestInfo) -> str:
        return dump_cookie(
            self.csrf_cookie_name,
            "",
            max_age=0,
            expires=0,
            path=request.path,
            secure=self._secure(request),
            httponly=True,
            samesite="Strict",
        )

    def _token_matches(self, request: RequestInfo, form_token: str) -> bool:
        cookie_token = request.cookies.get(self.csrf_cookie_name, "")
        return _CSRF_TOKEN.fullmatch(cookie_token) is not None and hmac.compare_digest(
            cookie_token.encode(), form_token.encode()
        )

    def _page_headers(self, request: RequestInfo) -> tuple[str, list[tuple[str, str]]]:
        """The form's token and the page's headers (setting the token cookie when new)."""
        token, new = self._csrf_token(request)
        headers = _html_headers()
        if new:
            headers.append(("Set-Cookie", self._csrf_cookie_header(request, token)))
        return token, headers

    def _login_form(
        self,
        request: RequestInfo,
        *,
        head: bool = False,
        status: int = 200,
        error: str = "",
        target: str | None = None,
        email: str = "",
    ) -> Page:
        if target is None:
            target = safe_redirect_target(_query_value(request, "continue"), request.host)
        token, headers = self._page_headers(request)
        current = self(request)
        body = _render_form(
            target=target, token=token, current=current, error=error, email=email
        ).encode("utf-8")
        return Page(status, tuple(headers), b"" if head else body)

    def _posted(
        self, request: RequestInfo, body: bytes, action: str
    ) -> tuple[dict[str, str], str, bool] | Page:
        """A same-origin form post's fields, its ``continue`` target, and whether its token
        matches; or the refusal (403 cross-site, 4xx for a body that is not a small form)."""
        if not same_origin(request):
            return _text_page(403, f"cross-site {action} refused")
        field = _read_form(request, body)
        if isinstance(field, Page):
            return field
        target = safe_redirect_target(field.get("continue"), request.host)
        return field, target, self._token_matches(request, field.get("csrf", ""))

    def _login_post(self, request: RequestInfo, body: bytes) -> Page:
        posted = self._posted(request, body, "sign-in")
        if isinstance(posted, Page):
            return posted
        field, target, token_ok = posted
        if not token_ok:
            return self._login_form(
                request, status=403, error="The form expired; please sign in again.", target=target
            )
        email = field.get("email", "").strip()
        if not _EMAIL.fullmatch(email):
            return self._login_form(
                request,
                status=400,
                error="Enter an email address such as test@example.com.",
                target=target,
                email=email,
            )
        admin = field.get("admin", "") in ("True", "true", "on", "1")
        headers = [
            ("Set-Cookie", self.set_cookie_header(request, email, admin=admin)),
            ("Set-Cookie", self._clear_csrf_cookie_header(request)),
        ]
        return _redirect(target, headers)

    def _logout_form(
        self,
        request: RequestInfo,
        *,
        head: bool = False,
        status: int = 200,
        error: str = "",
        target: str | None = None,
    ) -> Page:
        if target is None:
            target = safe_redirect_target(_query_value(request, "continue"), request.host)
        token, headers = self._page_headers(request)
        body = _render_logout(
            target=target, token=token, current=self(request), error=error
        ).encode("utf-8")
        return Page(status, tuple(headers), b"" if head else body)

    def _logout_post(self, request: RequestInfo, body: bytes) -> Page:
        posted = self._posted(request, body, "sign-out")
        if isinstance(posted, Page):
            return posted
        _, target, token_ok = posted
        if not token_ok:
            return self._logout_form(
                request, status=403, error="The form expired; please sign out again.", target=target
            )
        headers = [
            ("Set-Cookie", self._clear_cookie_header(request, self.cookie_name)),
            ("Set-Cookie", self._clear_csrf_cookie_header(request)),
        ]
        return _redirect(target, headers)


class AppEngineUserAuth:
    """Users as App Engine reports them, in ``X-AppEngine-User-Email``/``-Id``/``-Is-Admin``.

    Only App Engine removes these headers from client requests, so anywhere else anyone
    could claim to be an admin with them. The middleware therefore raises ``ConfigError``
    unless it runs with ``TrustPolicy.app_engine()`` (``requires_app_engine_trust``).

    Args:
        login_url: where users who must sign in are sent.
    """

    requires_app_engine_trust = True

    def __init__(self, *, login_url: str = LOGIN_PATH) -> None:
        self.login_url = login_url

    def __repr__(self) -> str:
        return "AppEngineUserAuth()"

    def __call__(self, request: RequestInfo, /) -> User | None:
        """The user the platform signed in, or ``None``."""
        email = (request.header("x-appengine-user-email") or "").strip()
        if not email:
            return None
        user_id = (request.header("x-appengine-user-id") or "").strip() or None
        is_admin = (request.header("x-appengine-user-is-admin") or "").strip() == "1"
        return User(email=email, user_id=user_id, is_admin=is_admin)


# --------------------------------------------------------------------------- helpers


def _query_value(request: RequestInfo, name: str) -> str | None:
    values = parse_qs(request.query_string, max_num_fields=32).get(name)
    return values[0] if values else None


def same_origin(request: RequestInfo) -> bool:
    """Whether a state-changing request may have come from the site's own pages.

    False when the browser says another site made it send the request: ``Sec-Fetch-Site``
    other than ``same-origin``/``none``, an ``Origin`` other than the request's own
    ``scheme://host``, or ``Origin: null``. A request with neither header (curl, a test
    client) passes: only browsers are made to send requests by other sites, and every
    current browser sends ``Origin`` on a POST. Check the form's token as well.
    """
    fetch_site = request.header("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.header("origin")
    if origin is not None and origin != "null":
        return origin.lower() == f"{request.scheme}://{request.host}".lower()
    return origin is None


def _html_headers() -> list[tuple[str, str]]:
    return [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Cache-Control", "no-store"),
        (
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'",
        ),
        ("X-Frame-Options", "DENY"),
        # Not "no-referrer": with it browsers post the form with "Origin: null", which
        # same_origin refuses.
        ("Referrer-Policy", "same-origin"),
    ]


def _read_form(request: RequestInfo, body: bytes) -> dict[str, str] | Page:
    """A small url-encoded form's fields (first value of each), or the error page."""
    content_type = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _text_page(415, "expected a form (application/x-www-form-urlencoded)")
    if len(body) > _MAX_FORM_BYTES:
        return _text_page(413, "form too large")
    try:
        form = parse_qs(body.decode("utf-8"), max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        return _text_page(400, "malformed form")
    return {name: values[0] for name, values in form.items()}


def _text_page(status: int, message: str) -> Page:
    return plain_response(status, message, no_store=True)


def _method_not_allowed(allow: str) -> Page:
    page = _text_page(405, "method not allowed")
    return Page(405, (*page.headers, ("Allow", allow)), page.body)


def _redirect(target: str, headers: list[tuple[str, str]]) -> Page:
    return Page(302, (*headers, ("Location", target), ("Cache-Control", "no-store")), b"")


_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in</title>
<style>body{{font-family:sans-serif;max-width:28em;margin:3em auto}}
label{{display:block;margin:.8em 0}}.error{{color:#b00}}</style></head>
<body>
<h1>Sign in</h1>
<p>Development sign-in: no password is asked.</p>
{current}{error}<form method="post" action="{action}">
<label>Email <input type="email" name="email" id="email" value="{email}" required autofocus></label>
<label><input type="checkbox" name="admin" id="admin" value="True"> Sign in as administrator</label>
<input type="hidden" name="continue" value="{target}">
<input type="hidden" name="csrf" value="{token}">
<button type="submit" id="submit-login">Sign in</button>
</form>
</body></html>
"""


def _render_form(*, target: str, token: str, current: User | None, error: str, email: str) -> str:
    signed_in = ""
    if current is not None:
        role = " (administrator)" if current.is_admin else ""
        logout = f"{LOGOUT_PATH}?{urlencode({'continue': target})}"
        signed_in = (
            f'<p id="current">Signed in as {html.escape(current.email)}{role}. '
            f'<a id="logout" href="{html.escape(logout)}">Sign out</a></p>\n'
        )
    return _FORM.format(
        current=signed_in,
        error=f'<p class="error" role="alert">{html.escape(error)}</p>\n' if error else "",
        action=html.escape(LOGIN_PATH),
        email=html.escape(email),
        target=html.escape(target),
        token=html.escape(token),
    )


_LOGOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign out</title>
<style>body{{font-family:sans-serif;max-width:28em;margin:3em auto}}.error{{color:#b00}}</style>
</head>
<body>
<h1>Sign out</h1>
{current}{error}<form method="post" action="{action}">
<input type="hidden" name="continue" value="{target}">
<input type="hidden" name="csrf" value="{token}">
<button type="submit" id="submit-logout">Sign out</button>
<a id="cancel" href="{target}">Cancel</a>
</form>
</body></html>
"""


def _render_logout(*, target: str, token: str, current: User | None, error: str) -> str:
    if current is None:
        who = '<p id="current">You are not signed in.</p>\n'
    else:
        role = " (administrator)" if current.is_admin else ""
        who = f'<p id="current">Signed in as {html.escape(current.email)}{role}.</p>\n'
    return _LOGOUT.format(
        current=who,
        error=f'<p class="error" role="alert">{html.escape(error)}</p>\n' if error else "",
        action=html.escape(LOGOUT_PATH),
        target=html.escape(target),
        token=html.escape(token),
    )
