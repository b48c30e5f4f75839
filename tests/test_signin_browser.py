"""The development sign-in page driven by a real headless Chromium against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.servers import serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TIMEOUT_MS = 15_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """tests/data/access_app.py under gunicorn on 127.0.0.1, and its protected-view log."""
    log = tmp_path_factory.mktemp("browser") / "views.log"
    env = {"TH_ACCESS_LOG": str(log), "TH_ACCESS_KEYS": "browser-test-key-" + "b" * 32}
    # Threads: a browser may hold an idle connection open, which would block a sync worker.
    extra = ["--threads", "8"]
    with serve("gunicorn", "tests.data.access_app:app", extra=extra, env=env) as base_url:
        yield base_url, log


@pytest.fixture
def page(site: tuple[str, Path]) -> Iterator[object]:
    """A fresh browser context (no cookies) with one page."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context()
            context.set_default_timeout(TIMEOUT_MS)
            yield context.new_page()
        finally:
            browser.close()


def _runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _signin_cookies(page: Any) -> list[Any]:
    return [c for c in page.context.cookies() if c["name"] == "taskhandler_signin"]


def _sign_in_as_admin(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/_ah/login?continue=/")
    page.fill("#email", "ada@example.com")
    page.check("#admin")
    page.click("#submit-login")
    page.wait_for_url(f"{base_url}/")


ATTACKER = "http://attacker.test"
# Pages another site could serve to a signed-in user: each tries to sign them out. (An
# <img> on a public site never reaches a loopback server in Chrome, which blocks such
# requests itself; test_auth.py shows that a GET signs no one out.)
ATTACKS = {
    "link": '<a id="go" href="{base}/_ah/logout?continue=/">win a prize</a>',
    "form": (
        '<form id="f" method="post" action="{base}/_ah/logout">'
        '<input type="hidden" name="continue" value="/">'
        '<input type="hidden" name="csrf" value="{guess}"></form>'
        "<script>document.getElementById('f').submit()</script>"
    ),
}


def test_admin_signs_in_sees_the_page_and_signs_out(page: object, site: tuple[str, Path]) -> None:
    """Anonymous -> sign-in page; sign in as admin -> back on the page; sign out -> gone."""
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    base_url, log = site
    protected = f"{base_url}/tasks/report?day=monday"
    before = _runs(log)

    page.goto(protected)
    url = urlsplit(page.url)
    assert url.path == "/_ah/login"
    assert parse_qs(url.query)["continue"] == [protected]
    expect(page.locator("h1")).to_have_text("Sign in")
    assert _runs(log) == before

    page.fill("#email", "ada@example.com")
    page.check("#admin")
    page.click("#submit-login")
    page.wait_for_url(protected)
    expect(page.locator("body")).to_contain_text("protected page: report")
    assert _runs(log) == before + 1
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "taskhandler_signin"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"

    # An old sign-out link only shows the confirmation page; its button signs out.
    page.goto(f"{base_url}/_ah/logout?continue=/tasks/report")
    expect(page.locator("h1")).to_have_text("Sign out")
    expect(page.locator("#current")).to_have_text("Signed in as ada@example.com (administrator).")
    assert _signin_cookies(page) != []
    page.click("#submit-logout")
    page.wait_for_url(f"{base_url}/_ah/login?**")
    assert parse_qs(urlsplit(page.url).query)["continue"] == [f"{base_url}/tasks/report"]
    expect(page.locator("#email")).to_be_visible()
    expect(page.locator("body")).not_to_contain_text("protected page")
    assert _signin_cookies(page) == []
    assert _runs(log) == before + 1


def test_non_admin_is_forbidden(page: object, site: tuple[str, Path]) -> None:
    """Signing in without "administrator" gets 403 on a ``login: admin`` page."""
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    base_url, log = site
    before = _runs(log)
    page.goto(f"{base_url}/tasks/report")
    page.fill("#email", "bob@example.com")
    page.click("#submit-login")
    page.wait_for_url(f"{base_url}/tasks/report")
    expect(page.locator("body")).to_contain_text("administrators only")
    assert _runs(log) == before


@pytest.mark.parametrize("attack", [pytest.param(name, id=name) for name in ATTACKS])
def test_another_site_cannot_sign_you_out(
    page: object, site: tuple[str, Path], attack: str
) -> None:
    """A link or a self-submitting form on another site leaves the user signed in."""
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    base_url, _ = site
    _sign_in_as_admin(page, base_url)
    html = ATTACKS[attack].format(base=base_url, guess="g" * 43)
    answers: list[int] = []
    page.on(
        "response",
        lambda r: answers.append(r.status) if urlsplit(r.url).path == "/_ah/logout" else None,
    )
    page.context.route(
        f"{ATTACKER}/**",
        lambda route: route.fulfill(status=200, content_type="text/html", body=html),
    )
    page.goto(f"{ATTACKER}/")
    if attack == "link":
        page.click("#go")
        page.wait_for_url(f"{base_url}/_ah/logout?**")
        expect(page.locator("#submit-logout")).to_be_visible()
    else:
        page.wait_for_url(f"{base_url}/_ah/logout")
        expect(page.locator("body")).to_contain_text("cross-site sign-out refused")
    # The server answered with the confirmation page or 403, never a cleared cookie.
    assert answers == [403 if attack == "form" else 200]
    assert _signin_cookies(page) != []
    page.goto(f"{base_url}/tasks/report")
    expect(page.locator("body")).to_contain_text("protected page: report")
