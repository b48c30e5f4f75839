"""Access rules, proven on both middlewares (SPEC §4): ``login:``/``secure:`` outside App
Engine, and every spelling of a protected path refused before a rule could miss it."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from taskhandler.config import AccessRule, AppConfig

from .harness import Adapter, Request
from .test_trust_strip import QUEUE, STRANGER, TASK, HeaderUser

CONFIG = AppConfig(
    rules=(
        AccessRule(url=r"/tasks/.*", login="admin"),
        AccessRule(url=r"/t\u00e2ches/.*", login="admin"),
        AccessRule(url=r"/account/.*", login="required"),
        AccessRule(url=r"/api/.*", login="required", auth_fail_action="unauthorized"),
        AccessRule(url=r"/secure/.*", secure="always"),
        AccessRule(url=r"/.*", login="optional"),
    )
)
ADMIN = [("X-Test-User", "root@example.com!")]
USER = [("X-Test-User", "bob@example.com")]


@pytest.mark.parametrize(
    ("request_", "status", "location"),
    [
        pytest.param(Request(path="/public"), 200, None, id="unprotected"),
        pytest.param(
            Request(path="/tasks/x"),
            302,
            "/_ah/login?continue=http%3A%2F%2Flocalhost%2Ftasks%2Fx",
            id="admin URL anonymous redirects",
        ),
        pytest.param(Request(path="/tasks/x", headers=USER), 403, None, id="admin URL as user"),
        pytest.param(Request(path="/tasks/x", headers=ADMIN), 200, None, id="admin URL as admin"),
        pytest.param(
            Request(path="/tasks/x", headers=TASK, peer=QUEUE), 200, None, id="queue passes"
        ),
        pytest.param(
            Request(path="/tasks/x", headers=TASK, peer=STRANGER),
            302,
            "/_ah/login?continue=http%3A%2F%2Flocalhost%2Ftasks%2Fx",
            id="spoofed task still redirected",
        ),
        pytest.param(
            Request(path="/tasks/x", query="a=1&b=2"),
            302,
            "/_ah/login?continue=http%3A%2F%2Flocalhost%2Ftasks%2Fx%3Fa%3D1%26b%3D2",
            id="query kept in continue",
        ),
        pytest.param(Request(path="/account/me", headers=USER), 200, None, id="required as user"),
        pytest.param(Request(path="/api/x"), 401, None, id="unauthorized action"),
        pytest.param(
            Request(path="/secure/x", query="q=1"),
            302,
            "https://localhost/secure/x?q=1",
            id="secure always over http",
        ),
        pytest.param(Request(path="/secure/x", scheme="https"), 200, None, id="secure over https"),
        pytest.param(Request(path="/Tasks/x"), 200, None, id="case-sensitive like App Engine"),
        pytest.param(
            Request(path="/t\u00e2ches/x"),
            302,
            "/_ah/login?continue=http%3A%2F%2Flocalhost%2Ft%25C3%25A2ches%2Fx",
            id="UTF-8 path matched as text",
        ),
        pytest.param(
            Request(path="/tasks/x", root="/tasks"),
            302,
            "/_ah/login?continue=http%3A%2F%2Flocalhost%2Ftasks%2Fx",
            id="mounted app: root path counts",
        ),
    ],
)
def test_access_rules(
    adapter: Adapter, request_: Request, status: int, location: str | None
) -> None:
    """The first matching rule decides; queue and admins pass, others are redirected or refused."""
    result = adapter.run(request_, config=CONFIG, authenticator=HeaderUser())
    assert result.status == status
    assert result.headers.get("location") == location
    assert (result.seen is not None) == (status == 200)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(Request(path="/public/../tasks/x"), id="dot-dot segment"),
        pytest.param(Request(path="/./tasks/x"), id="dot segment"),
        pytest.param(Request(path="//tasks/x"), id="empty segment"),
        pytest.param(Request(path="/tasks\\x"), id="backslash"),
        pytest.param(Request(path="/tasks/x\x00"), id="NUL"),
        pytest.param(Request(path="/tasks/x\r\n"), id="CR LF"),
        pytest.param(Request(path="/tasks/\x85x"), id="C1 control"),
        pytest.param(Request(path="tasks/x"), id="no leading slash"),
        pytest.param(Request(path="/tasks/x", raw_path=b"/tasks/\xff"), id="bytes not UTF-8"),
        pytest.param(Request(path="/x", raw_path=b"/\xc3(x"), id="broken UTF-8 sequence"),
        pytest.param(
            Request(path="/tasks/x", headers=TASK, raw_path=b"/tasks/\xed\xa0\x80"),
            id="surrogate bytes",
        ),
    ],
)
def test_ambiguous_paths_are_refused_before_rules(adapter: Adapter, request_: Request) -> None:
    """A path some component might read differently from the rules is a 400, whoever asks."""
    result = adapter.run(request_, config=CONFIG, authenticator=HeaderUser())
    assert result.status == 400
    assert result.seen is None
    assert result.body.count(b"\n") == 1


def test_ambiguous_paths_are_not_judged_without_rules(adapter: Adapter) -> None:
    """Without access rules the middleware has no path to protect, and leaves routing alone."""
    result = adapter.run(Request(path="/public/../x"))
    assert result.status == 200


def test_redirect_continue_is_the_original_url(adapter: Adapter) -> None:
    """The sign-in redirect carries the full original URL, host and query included."""
    result = adapter.run(
        Request(path="/account/me", query="tab=1", host="example.test:8080"),
        config=CONFIG,
        authenticator=HeaderUser(),
    )
    assert result.status == 302
    target = parse_qs(urlsplit(result.headers["location"]).query)["continue"]
    assert target == ["http://example.test:8080/account/me?tab=1"]


def test_bad_host_is_not_echoed(adapter: Adapter) -> None:
    """A Host header that is not a host name never goes into a Location header."""
    result = adapter.run(
        Request(path="/tasks/x", host="evil.test/\\@x"), config=CONFIG, authenticator=HeaderUser()
    )
    assert result.status == 400
