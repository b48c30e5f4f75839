"""Authenticators: the signed sign-in cookie, its pages, and the App Engine user headers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from werkzeug.test import Client

from taskhandler.auth import (
    DEFAULT_MAX_AGE,
    AppEngineUserAuth,
    Page,
    SignedCookieAuth,
    is_localhost,
    safe_redirect_target,
)
from taskhandler.config import AccessRule, AppConfig
from taskhandler.exceptions import ConfigError
from taskhandler.trust import RequestInfo, TrustPolicy, User
from taskhandler.wsgi import TaskMiddleware

KEY = "k" * 32
OTHER_KEY = "o" * 32
T0 = 1_800_000_000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _request(
    path: str = "/",
    *,
    method: str = "GET",
    query: str = "",
    cookies: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    scheme: str = "http",
    host: str = "localhost:8080",
) -> RequestInfo:
    return RequestInfo(
        method=method,
        scheme=scheme,
        host=host,
        path=path,
        query_string=query,
        headers={k.lower(): v for k, v in (headers or {}).items()},
        cookies=cookies or {},
        client="127.0.0.1",
    )


def _with_cookie(auth: SignedCookieAuth, value: str) -> RequestInfo:
    return _request(cookies={auth.cookie_name: value})


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"secret_key": "short"}, "at least 32", id="short key"),
        pytest.param({"secret_key": b"x" * 31}, "31 bytes", id="31-byte key"),
        pytest.param({"secret_key": [KEY, "short"]}, "key 2", id="short old key"),
        pytest.param({"secret_key": []}, "at least one", id="no keys"),
        pytest.param({"secret_key": [KEY, 42]}, "str or bytes", id="key of the wrong type"),
        pytest.param({"secret_key": 42}, "str, bytes or a list", id="not a key at all"),
        pytest.param({"secret_key": KEY, "max_age": 0}, "max_age", id="zero max_age"),
        pytest.param({"secret_key": KEY, "max_age": None}, "max_age", id="no max_age"),
        pytest.param({"secret_key": KEY, "max_age": True}, "max_age", id="bool max_age"),
        pytest.param({"secret_key": KEY, "cookie_name": "a b"}, "cookie_name", id="bad name"),
        pytest.param({"secret_key": KEY, "salt": ""}, "salt", id="empty salt"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], fragment: str) -> None:
    """Weak keys and bad settings raise ConfigError at construction."""
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        SignedCookieAuth(**kwargs)  # type: ignore[arg-type]


def test_error_never_shows_the_key() -> None:
    """A refused key is not echoed into the error message."""
    secret = "hunter2-but-longer"
    with pytest.raises(ConfigError) as info:
        SignedCookieAuth(secret)
    assert secret not in str(info.value)
    assert info.value.value is None


# --------------------------------------------------------------------------- cookies


def test_cookie_round_trip() -> None:
    """A cookie it issued names the user, the admin flag and a stable user id."""
    auth = SignedCookieAuth(KEY)
    user = auth(_with_cookie(auth, auth.cookie_value("ada@example.com", admin=True)))
    assert user is not None
    assert (user.email, user.is_admin) == ("ada@example.com", True)
    again = auth(_with_cookie(auth, auth.cookie_value("ADA@example.com")))
    assert again is not None
    assert again.user_id == user.user_id
    assert again.is_admin is False


def test_no_cookie_is_nobody() -> None:
    """Without the cookie, nobody is signed in."""
    assert SignedCookieAuth(KEY)(_request()) is None


@pytest.mark.parametrize(
    ("age", "valid"),
    [
        pytest.param(0, True, id="fresh"),
        pytest.param(DEFAULT_MAX_AGE, True, id="exactly max_age old"),
        pytest.param(DEFAULT_MAX_AGE + 1, False, id="one second too old"),
        pytest.param(-1, False, id="dated one second in the future"),
    ],
)
def test_max_age_is_always_checked(age: int, valid: bool) -> None:
    """A cookie is valid from its signing time until max_age later, never before."""
    clock = Clock()
    auth = SignedCookieAuth(KEY, clock=clock)
    value = auth.cookie_value("ada@example.com", admin=True)
    clock.now = T0 + age
    assert (auth(_with_cookie(auth, value)) is not None) is valid


@pytest.mark.parametrize(
    ("issuer", "verifier", "valid"),
    [
        pytest.param([KEY], [OTHER_KEY, KEY], True, id="old key still verifies after rotation"),
        pytest.param([OTHER_KEY], [OTHER_KEY, KEY], True, id="new key verifies"),
        pytest.param([OTHER_KEY], [KEY], False, id="unknown key"),
        pytest.param([KEY], [OTHER_KEY], False, id="retired key"),
    ],
)
def test_key_rotation(issuer: list[str], verifier: list[str], valid: bool) -> None:
    """With a list of keys, every key verifies and only listed keys do."""
    value = SignedCookieAuth(issuer).cookie_value("ada@example.com")
    auth = SignedCookieAuth(verifier)
    assert (auth(_with_cookie(auth, value)) is not None) is valid


def test_newest_key_signs() -> None:
    """The first key of the list signs new cookies, so dropping the old key later is safe."""
    value = SignedCookieAuth([OTHER_KEY, KEY]).cookie_value("ada@example.com")
    only_new = SignedCookieAuth(OTHER_KEY)
    assert only_new(_with_cookie(only_new, value)) is not None


def test_salt_separates_signatures() -> None:
    """A signature made with the same key for another purpose (salt) is worthless here."""
    value = SignedCookieAuth(KEY, salt="another.purpose").cookie_value("ada@example.com")
    auth = SignedCookieAuth(KEY)
    assert auth(_with_cookie(auth, value)) is None


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("e30.AAAAAA.AAAA", id="well-formed but unsigned"),
        pytest.param("x" * 5000, id="oversized"),
    ],
)
def test_malformed_cookie_is_nobody(value: str) -> None:
    """Anything that is not a cookie this authenticator signed means nobody."""
    auth = SignedCookieAuth(KEY)
    assert auth(_with_cookie(auth, value)) is None


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(["a@b.c", True], id="list payload"),
        pytest.param({"e": "a@b.c", "a": "yes"}, id="admin not a bool"),
        pytest.param({"e": 5, "a": True}, id="email not a string"),
        pytest.param({"e": "not an email", "a": True}, id="email without @"),
    ],
)
def test_signed_but_malformed_payload_is_nobody(payload: object) -> None:
    """Even a correctly signed cookie must hold the expected shape."""
    auth = SignedCookieAuth(KEY)
    value = auth._serializer.dumps(payload)
    assert auth(_with_cookie(auth, value)) is None


# --------------------------------------------------------------------------- continue targets


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("/tasks/x?a=1#top", "/tasks/x?a=1#top", id="path query fragment"),
        pytest.param("http://localhost:8080/x", "/x", id="same host absolute"),
        pytest.param("HTTPS://LOCALHOST:8080", "/", id="same host no path"),
        pytest.param("http://localhost:8081/x", "/", id="other port"),
        pytest.param("//evil.example", "/", id="scheme-relative"),
        pytest.param("/\\evil.example", "/", id="slash backslash"),
        pytest.param("/%5Cevil.example", "/%5Cevil.example", id="encoded backslash stays here"),
        pytest.param("javascript:alert(1)", "/", id="javascript"),
        pytest.param("ftp://localhost:8080/x", "/", id="ftp same host"),
        pytest.param("http://localhost:8080@evil.example/", "/", id="user-info"),
        pytest.param("/\x00x", "/", id="NUL"),
        pytest.param("/x\ny", "/", id="newline"),
        pytest.param("x", "/", id="relative without slash"),
        pytest.param("?a=1", "/", id="query only"),
        pytest.param("/" + "a" * 3000, "/", id="too long"),
        pytest.param(None, "/", id="missing"),
        pytest.param("http://[::1/", "/", id="unparsable URL"),
    ],
)
def test_safe_redirect_target(value: str | None, expected: str) -> None:
    """Only same-site paths survive as a place to go back to."""
    assert safe_redirect_target(value, "localhost:8080") == expected


@pytest.mark.parametrize(
    ("host", "local"),
    [
        pytest.param("localhost", True, id="localhost"),
        pytest.param("localhost:8080", True, id="localhost with port"),
        pytest.param("127.0.0.1:5000", True, id="IPv4 loopback"),
        pytest.param("127.8.9.10", True, id="other IPv4 loopback"),
        pytest.param("[::1]:8080", True, id="IPv6 loopback"),
        pytest.param("app.localhost", True, id="subdomain of localhost"),
        pytest.param("example.com", False, id="public name"),
        pytest.param("localhost.example.com", False, id="localhost as a label"),
        pytest.param("127.0.0.1.nip.io", False, id="loopback look-alike"),
        pytest.param("10.0.0.1:8080", False, id="private address"),
    ],
)
def test_is_localhost(host: str, local: bool) -> None:
    """Only names of this machine count as localhost."""
    assert is_localhost(host) is local


# --------------------------------------------------------------------------- pages


def _cookie_attrs(header: str) -> set[str]:
    return {part.strip().split("=", 1)[0].lower() for part in header.split(";")[1:]}


def _set_cookies(page: Page) -> list[str]:
    return [value for name, value in page.headers if name.lower() == "set-cookie"]


def _location(page: Page) -> str:
    return next(value for name, value in page.headers if name.lower() == "location")


def _sign_in(
    auth: SignedCookieAuth,
    *,
    email: str = "ada@example.com",
    admin: bool = True,
    continue_to: str = "/tasks/x",
    scheme: str = "http",
    host: str = "localhost:8080",
    headers: dict[str, str] | None = None,
) -> Page:
    form = auth.serve(_request("/_ah/login", scheme=scheme, host=host), b"")
    assert form is not None
    csrf = _set_cookies(form)[0].split(";", 1)[0].split("=", 1)[1]
    fields = {"email": email, "continue": continue_to, "csrf": csrf}
    if admin:
        fields["admin"] = "True"
    page = auth.serve(
        _request(
            "/_ah/login",
            method="POST",
            scheme=scheme,
            host=host,
            cookies={f"{auth.cookie_name}_csrf": csrf},
            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
        ),
        urlencode(fields).encode(),
    )
    assert page is not None
    return page


def test_login_form_has_the_fields() -> None:
    """GET /_ah/login shows email, the administrator box and the continue target."""
    auth = SignedCookieAuth(KEY)
    page = auth.serve(_request("/_ah/login", query="continue=%2Ftasks%2Fx%3Fa%3D1"), b"")
    assert page is not None
    assert page.status == 200
    html = page.body.decode()
    assert 'name="email"' in html
    assert 'name="admin"' in html
    assert "Sign in as administrator" in html
    assert 'name="continue" value="/tasks/x?a=1"' in html
    headers = dict(page.headers)
    assert headers["Content-Type"].startswith("text/html")
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    (csrf,) = _set_cookies(page)
    assert "Path=/_ah/login" in csrf


def test_login_form_escapes_what_it_echoes() -> None:
    """The continue value is HTML-escaped in the form."""
    auth = SignedCookieAuth(KEY)
    page = auth.serve(_request("/_ah/login", query="continue=/x%22%3E%3Cscript%3E"), b"")
    assert page is not None
    assert b"<script>" not in page.body
    assert b"/x&quot;&gt;&lt;script&gt;" in page.body


@pytest.mark.parametrize(
    ("scheme", "host", "secure"),
    [
        pytest.param("http", "localhost:8080", False, id="plain HTTP localhost"),
        pytest.param("http", "127.0.0.1:8080", False, id="plain HTTP loopback"),
        pytest.param("https", "localhost:8080", True, id="HTTPS localhost"),
        pytest.param("https", "app.example.com", True, id="HTTPS public host"),
        pytest.param("http", "app.example.com", True, id="plain HTTP public host"),
    ],
)
def test_sign_in_sets_a_hardened_cookie(scheme: str, host: str, secure: bool) -> None:
    """The cookie is HttpOnly and SameSite=Strict, and Secure except plain-HTTP localhost."""
    auth = SignedCookieAuth(KEY)
    page = _sign_in(auth, scheme=scheme, host=host)
    assert page.status == 302
    assert _location(page) == "/tasks/x"
    cookie = next(c for c in _set_cookies(page) if c.startswith(f"{auth.cookie_name}="))
    attrs = _cookie_attrs(cookie)
    assert {"httponly", "max-age", "path"} <= attrs
    assert "SameSite=Strict" in cookie
    assert ("secure" in attrs) is secure
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    user = auth(_with_cookie(auth, value))
    assert user == User("ada@example.com", user.user_id if user else None, is_admin=True)


def test_sign_in_without_the_box_is_not_admin() -> None:
    """Leaving "sign in as administrator" unticked signs in an ordinary user."""
    auth = SignedCookieAuth(KEY)
    page = _sign_in(auth, admin=False)
    value = _set_cookies(page)[0].split(";", 1)[0].split("=", 1)[1]
    user = auth(_with_cookie(auth, value))
    assert user is not None
    assert user.is_admin is False


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"Origin": "https://evil.example"}, 403, id="cross-site Origin"),
        pytest.param({"Origin": "null"}, 403, id="opaque Origin"),
        pytest.param({"Sec-Fetch-Site": "cross-site"}, 403, id="cross-site fetch"),
        pytest.param({"Sec-Fetch-Site": "same-site"}, 403, id="sibling subdomain"),
        pytest.param({"Origin": "http://localhost:8080"}, 302, id="same Origin"),
        pytest.param({"Sec-Fetch-Site": "same-origin"}, 302, id="same-origin fetch"),
        pytest.param({}, 302, id="no Origin headers"),
    ],
)
def test_sign_in_post_checks_the_origin(headers: dict[str, str], status: int) -> None:
    """A sign-in POST from another site is refused (login CSRF)."""
    page = _sign_in(SignedCookieAuth(KEY), headers=headers)
    assert page.status == status
    if status != 302:
        assert _set_cookies(page) == []


@pytest.mark.parametrize(
    ("cookie_token", "form_token"),
    [
        pytest.param(None, "t" * 43, id="no token cookie"),
        pytest.param("t" * 43, "", id="no form token"),
        pytest.param("t" * 43, "u" * 43, id="tokens differ"),
        pytest.param("short", "short", id="malformed token"),
    ],
)
def test_sign_in_post_needs_the_form_token(cookie_token: str | None, form_token: str) -> None:
    """The POST must carry the token the form's cookie holds (double submit)."""
    auth = SignedCookieAuth(KEY)
    cookies = {} if cookie_token is None else {f"{auth.cookie_name}_csrf": cookie_token}
    body = urlencode({"email": "ada@example.com", "admin": "True", "csrf": form_token}).encode()
    page = auth.serve(
        _request(
            "/_ah/login",
            method="POST",
            cookies=cookies,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        body,
    )
    assert page is not None
    assert page.status == 403
    assert not any(c.startswith(f"{auth.cookie_name}=") for c in _set_cookies(page))


@pytest.mark.parametrize(
    ("email", "status"),
    [
        pytest.param("", 400, id="empty"),
        pytest.param("no-at-sign", 400, id="no at sign"),
        pytest.param("a b@example.com", 400, id="space"),
        pytest.param("<x>@example.com", 400, id="angle brackets"),
        pytest.param("test@localhost", 302, id="dotless domain"),
    ],
)
def test_sign_in_email_is_checked(email: str, status: int) -> None:
    """The form refuses an email it could not put in a cookie or page."""
    assert _sign_in(SignedCookieAuth(KEY), email=email).status == status


@pytest.mark.parametrize(
    ("method", "content_type", "body", "status"),
    [
        pytest.param("PUT", "application/x-www-form-urlencoded", b"", 405, id="PUT"),
        pytest.param("POST", "multipart/form-data", b"", 415, id="multipart"),
        pytest.param("POST", "application/x-www-form-urlencoded", b"\xff", 400, id="not UTF-8"),
        pytest.param(
            "POST", "application/x-www-form-urlencoded", b"a=1&" * 5000, 413, id="too large"
        ),
    ],
)
def test_sign_in_refuses_odd_requests(
    method: str, content_type: str, body: bytes, status: int
) -> None:
    """Other methods and body shapes get a plain error, no cookie."""
    auth = SignedCookieAuth(KEY)
    page = auth.serve(
        _request("/_ah/login", method=method, headers={"Content-Type": content_type}), body
    )
    assert page is not None
    assert page.status == status
    assert _set_cookies(page) == []


def _signed_in_cookies(auth: SignedCookieAuth, **extra: str) -> dict[str, str]:
    return {auth.cookie_name: auth.cookie_value("ada@example.com", admin=True), **extra}


def _sign_out(
    auth: SignedCookieAuth,
    *,
    continue_to: str = "/done",
    headers: dict[str, str] | None = None,
    cookie_token: str | None = "from-the-page",
    form_token: str | None = "from-the-page",
    content_type: str = "application/x-www-form-urlencoded",
) -> Page:
    """Show the sign-out page to a signed-in user, then post its form (tokens overridable)."""
    shown = auth.serve(_request("/_ah/logout", cookies=_signed_in_cookies(auth)), b"")
    assert shown is not None
    token = _set_cookies(shown)[0].split(";", 1)[0].split("=", 1)[1]
    cookies = _signed_in_cookies(auth)
    if cookie_token is not None:
        cookies[auth.csrf_cookie_name] = token if cookie_token == "from-the-page" else cookie_token
    fields = {"continue": continue_to}
    if form_token is not None:
        fields["csrf"] = token if form_token == "from-the-page" else form_token
    page = auth.serve(
        _request(
            "/_ah/logout",
            method="POST",
            cookies=cookies,
            headers={"Content-Type": content_type, **(headers or {})},
        ),
        urlencode(fields).encode(),
    )
    assert page is not None
    return page


def _clears_sign_in(page: Page, auth: SignedCookieAuth) -> bool:
    return any(c.startswith(f"{auth.cookie_name}=;") for c in _set_cookies(page))


@pytest.mark.parametrize("method", [pytest.param("GET", id="GET"), pytest.param("HEAD", id="HEAD")])
def test_sign_out_get_only_asks(method: str) -> None:
    """GET /_ah/logout (an old link, an <img> on another site) shows a button, signs no one out."""
    auth = SignedCookieAuth(KEY)
    request = _request(
        "/_ah/logout", method=method, query="continue=%2Fdone", cookies=_signed_in_cookies(auth)
    )
    page = auth.serve(request, b"")
    assert page is not None
    assert page.status == 200
    assert not _clears_sign_in(page, auth)
    (csrf,) = _set_cookies(page)
    assert csrf.startswith(f"{auth.csrf_cookie_name}=")
    assert "Path=/_ah/logout" in csrf
    assert "SameSite=Strict" in csrf
    assert {"httponly"} <= _cookie_attrs(csrf)
    if method == "HEAD":
        assert page.body == b""
        return
    html = page.body.decode()
    assert '<form method="post" action="/_ah/logout">' in html
    assert 'name="continue" value="/done"' in html
    token = csrf.split(";", 1)[0].split("=", 1)[1]
    assert f'name="csrf" value="{token}"' in html
    assert "Signed in as ada@example.com (administrator)" in html
    assert "frame-ancestors 'none'" in dict(page.headers)["Content-Security-Policy"]


def test_sign_out_page_when_nobody_is_signed_in() -> None:
    """The sign-out page says so when nobody is signed in."""
    page = SignedCookieAuth(KEY).serve(_request("/_ah/logout"), b"")
    assert page is not None
    assert page.status == 200
    assert b"You are not signed in." in page.body


def test_sign_out_post_clears_the_cookie() -> None:
    """The sign-out form's POST expires the cookie and goes back to continue."""
    auth = SignedCookieAuth(KEY)
    page = _sign_out(auth, continue_to="/done")
    assert page.status == 302
    assert _location(page) == "/done"
    signin, csrf = _set_cookies(page)
    assert signin.startswith(f"{auth.cookie_name}=;")
    assert "Max-Age=0" in signin
    assert csrf.startswith(f"{auth.csrf_cookie_name}=;")
    assert "Path=/_ah/logout" in csrf


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("/tasks/x", "/tasks/x", id="relative path kept"),
        pytest.param("//evil.example/", "/", id="scheme-relative other host"),
        pytest.param("https://evil.example/", "/", id="other host"),
    ],
)
def test_sign_out_never_redirects_off_site(value: str, expected: str) -> None:
    """The sign-out page and its POST keep continue on the site."""
    auth = SignedCookieAuth(KEY)
    shown = auth.serve(_request("/_ah/logout", query=urlencode({"continue": value})), b"")
    assert shown is not None
    assert f'name="continue" value="{expected}"'.encode() in shown.body
    assert _location(_sign_out(auth, continue_to=value)) == expected


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        pytest.param({"headers": {"Origin": "https://evil.example"}}, 403, id="cross-site Origin"),
        pytest.param({"headers": {"Origin": "null"}}, 403, id="opaque Origin"),
        pytest.param({"headers": {"Sec-Fetch-Site": "cross-site"}}, 403, id="cross-site fetch"),
        pytest.param({"headers": {"Sec-Fetch-Site": "same-site"}}, 403, id="sibling subdomain"),
        pytest.param({"cookie_token": None}, 403, id="no token cookie"),
        pytest.param({"form_token": None}, 403, id="no form token"),
        pytest.param({"form_token": "u" * 43}, 403, id="tokens differ"),
        pytest.param({"cookie_token": "short", "form_token": "short"}, 403, id="malformed token"),
        pytest.param({"content_type": "text/plain"}, 415, id="text/plain form"),
        pytest.param({"headers": {"Origin": "http://localhost:8080"}}, 302, id="same Origin"),
        pytest.param({"headers": {"Sec-Fetch-Site": "same-origin"}}, 302, id="same-origin fetch"),
        pytest.param({}, 302, id="no Origin headers"),
    ],
)
def test_sign_out_post_needs_same_origin_and_token(overrides: dict[str, Any], status: int) -> None:
    """A sign-out POST from another site, or without the page's token, signs no one out."""
    auth = SignedCookieAuth(KEY)
    page = _sign_out(auth, **overrides)
    assert page.status == status
    assert _clears_sign_in(page, auth) is (status == 302)


def test_stale_sign_out_form_offers_a_fresh_one() -> None:
    """A POST with a stale token gets the page again (403) with a fresh form to retry."""
    auth = SignedCookieAuth(KEY)
    page = _sign_out(auth, form_token="t" * 43, continue_to="/tasks/x")
    assert page.status == 403
    assert b"The form expired; please sign out again." in page.body
    assert b'name="continue" value="/tasks/x"' in page.body


@pytest.mark.parametrize(
    "method", [pytest.param("PUT", id="PUT"), pytest.param("DELETE", id="DELETE")]
)
def test_sign_out_refuses_other_methods(method: str) -> None:
    """Methods other than GET, HEAD and POST get 405 and sign no one out."""
    auth = SignedCookieAuth(KEY)
    page = auth.serve(_request("/_ah/logout", method=method, cookies=_signed_in_cookies(auth)), b"")
    assert page is not None
    assert page.status == 405
    assert dict(page.headers)["Allow"] == "GET, HEAD, POST"
    assert _set_cookies(page) == []


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/_ah/loginx", id="longer name"),
        pytest.param("/_ah/login/", id="trailing slash"),
        pytest.param("/_ah/log", id="prefix only"),
        pytest.param("/tasks/x", id="ordinary path"),
    ],
)
def test_other_paths_are_not_served(path: str) -> None:
    """Only the two exact paths are pages; everything else goes on to the app."""
    assert SignedCookieAuth(KEY).serve(_request(path), b"") is None


def test_form_shows_who_is_signed_in() -> None:
    """A signed-in user sees who they are and a sign-out link on the sign-in page."""
    auth = SignedCookieAuth(KEY)
    request = _request(
        "/_ah/login", cookies={auth.cookie_name: auth.cookie_value("ada@example.com", admin=True)}
    )
    page = auth.serve(request, b"")
    assert page is not None
    assert b"Signed in as ada@example.com (administrator)" in page.body
    assert b"/_ah/logout?continue=%2F" in page.body


# --------------------------------------------------------------------------- AppEngineUserAuth


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, None, id="no headers"),
        pytest.param(
            {"X-AppEngine-User-Email": "a@example.com", "X-AppEngine-User-Id": "42"},
            User("a@example.com", "42", is_admin=False),
            id="user",
        ),
        pytest.param(
            {"X-AppEngine-User-Email": "a@example.com", "X-AppEngine-User-Is-Admin": "1"},
            User("a@example.com", None, is_admin=True),
            id="admin",
        ),
        pytest.param(
            {"X-AppEngine-User-Email": "a@example.com", "X-AppEngine-User-Is-Admin": "true"},
            User("a@example.com", None, is_admin=False),
            id="only 1 means admin",
        ),
        pytest.param({"X-AppEngine-User-Is-Admin": "1"}, None, id="admin flag without a user"),
    ],
)
def test_app_engine_user_headers(headers: dict[str, str], expected: User | None) -> None:
    """AppEngineUserAuth reads the platform's X-AppEngine-User-* headers."""
    assert AppEngineUserAuth()(_request(headers=headers)) == expected


def _ok(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ran"]


@pytest.mark.parametrize(
    "trust",
    [
        pytest.param(None, id="default strict trust"),
        pytest.param(TrustPolicy(queue_sources=["10.0.0.0/8"]), id="strict with sources"),
        pytest.param(TrustPolicy.development(), id="development trust"),
    ],
)
def test_app_engine_user_auth_needs_app_engine_trust(trust: TrustPolicy | None) -> None:
    """Outside TrustPolicy.app_engine() the middleware refuses AppEngineUserAuth."""
    with pytest.raises(ConfigError, match="app_engine"):
        TaskMiddleware(_ok, trust=trust, authenticator=AppEngineUserAuth())


def test_app_engine_user_auth_under_app_engine_trust() -> None:
    """On App Engine the platform's admin header opens ``login: admin``."""
    app = TaskMiddleware(
        _ok,
        trust=TrustPolicy.app_engine(),
        config=AppConfig(rules=[AccessRule(url="/tasks/.*", login="admin")]),
        authenticator=AppEngineUserAuth(),
    )
    client = Client(app)
    admin = {"X-AppEngine-User-Email": "a@example.com", "X-AppEngine-User-Is-Admin": "1"}
    assert client.get("/tasks/x", headers=admin).status_code == 200
    member = {"X-AppEngine-User-Email": "m@example.com"}
    assert client.get("/tasks/x", headers=member).status_code == 403
    assert client.get("/tasks/x").status_code == 302


# --------------------------------------------------------------------------- through the middleware


def test_sign_in_flow_through_the_middleware() -> None:
    """Protected URL -> sign-in -> back to the URL -> sign-out page -> its POST -> signed out."""
    auth = SignedCookieAuth(KEY)
    app = TaskMiddleware(
        _ok,
        config=AppConfig(rules=[AccessRule(url="/tasks/.*", login="admin")]),
        authenticator=auth,
    )
    client = Client(app)
    first = client.get("/tasks/x?a=1")
    assert first.status_code == 302
    login = client.get(first.headers["Location"])
    assert login.status_code == 200
    token = client.get_cookie(f"{auth.cookie_name}_csrf", path="/_ah/login")
    assert token is not None
    form = {"email": "ada@example.com", "admin": "True", "csrf": token.value}
    form["continue"] = re.search(r'name="continue" value="([^"]*)"', login.text)[1]  # type: ignore[index]
    signed_in = client.post("/_ah/login", data=form)
    assert signed_in.status_code == 302
    assert signed_in.headers["Location"] == "/tasks/x?a=1"
    assert client.get("/tasks/x?a=1").text == "ran"
    confirm = client.get("/_ah/logout?continue=/tasks/x")
    assert confirm.status_code == 200
    assert client.get("/tasks/x").text == "ran"  # a GET signs no one out
    logout_token = client.get_cookie(f"{auth.cookie_name}_csrf", path="/_ah/logout")
    assert logout_token is not None
    form = {"continue": "/tasks/x", "csrf": logout_token.value}
    signed_out = client.post("/_ah/logout", data=form)
    assert signed_out.status_code == 302
    assert signed_out.headers["Location"] == "/tasks/x"
    assert client.get("/tasks/x").status_code == 302


def test_the_sign_in_page_can_be_turned_off() -> None:
    """``sign_in_page=False``: ``/_ah/login`` is the app's own URL; sign-out is still served."""
    from taskhandler.trust import RequestInfo as Info

    auth = SignedCookieAuth("s" * 40, sign_in_page=False, login_url="/account/login")
    login = Info("GET", "http", "localhost", "/_ah/login", "")
    logout = Info("GET", "http", "localhost", "/_ah/logout", "")
    assert auth.serve(login, b"") is None
    page = auth.serve(logout, b"")
    assert page is not None and page.status == 200
    assert SignedCookieAuth("s" * 40).serve(login, b"") is not None
