"""`taskhandler serve`: a real development server process, its local queue and queue console.

The Flask app at the bottom of this module is what the server runs: `/enqueue` adds a task,
`/tasks/work` handles it and appends a JSON line to the file named by TASKQUEUE_DEV_LOG.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask, request

from taskhandler import taskqueue
from taskhandler.auth import SignedCookieAuth
from taskhandler.context import current_task
from tests.servers import ROOT, free_port, wait_for_port

pytestmark = pytest.mark.slow

SECRET = "s" * 40
SCHEDULED = "/_ah/admin/queues/tasks?queue=default&state=scheduled"


def _wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail("condition not reached in time")


@pytest.fixture(scope="module")
def devserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("devserver")
    log = tmp / "handled.jsonl"
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TASKHANDLER_SECRET_KEY": SECRET,
        "TASKQUEUE_DEV_LOG": str(log),
    }
    command = [
        sys.executable,
        "-m",
        "taskhandler.cli",
        "serve",
        "tests.test_taskqueue_devserver:app",
        "--port",
        str(port),
        "--db",
        str(tmp / "queue.sqlite3"),
    ]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _handled(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _client(base_url: str, *, email: str | None = None, admin: bool = False) -> httpx.Client:
    cookies = {}
    if email is not None:
        cookies["taskhandler_signin"] = SignedCookieAuth(SECRET).cookie_value(email, admin=admin)
    return httpx.Client(base_url=base_url, cookies=cookies, timeout=10)


def test_enqueued_task_runs_and_retries(devserver: tuple[str, Path]) -> None:
    """A task added by the app runs on the app, and a failing first attempt is retried."""
    base_url, log = devserver
    with _client(base_url) as client:
        assert client.get("/enqueue", params={"name": "runs-1", "fail": "1"}).status_code == 200
    _wait_for(lambda: len([h for h in _handled(log) if h["task_name"] == "runs-1"]) == 2)
    attempts = [h for h in _handled(log) if h["task_name"] == "runs-1"]
    assert [a["retry_count"] for a in attempts] == [0, 1]
    assert attempts[1]["previous_response"] == 500
    assert attempts[0]["form"] == {"fail": "1"}


@pytest.mark.parametrize(
    ("email", "admin", "status"),
    [
        pytest.param(None, False, 302, id="nobody signed in: sent to sign in"),
        pytest.param("user@example.com", False, 403, id="signed-in user: forbidden"),
        pytest.param("admin@example.com", True, 200, id="administrator: allowed"),
    ],
)
def test_console_is_admin_only(
    devserver: tuple[str, Path], email: str | None, admin: bool, status: int
) -> None:
    """The queue console answers administrators only."""
    with _client(devserver[0], email=email, admin=admin) as client:
        response = client.get("/_ah/admin/queues")
    assert response.status_code == status
    if status == 302:
        assert response.headers["location"].startswith("/_ah/login?continue=")


def test_console_run_now_delete_and_purge(devserver: tuple[str, Path]) -> None:
    """The console lists pending tasks and can run one now, delete one, and purge the queue."""
    base_url, log = devserver
    with _client(base_url, email="admin@example.com", admin=True) as client:
        for name in ("later-1", "later-2", "later-3"):
            client.get("/enqueue", params={"name": name, "countdown": "3600"})
        page = client.get(SCHEDULED).text
        assert all(f'data-task="{n}"' in page for n in ("later-1", "later-2", "later-3"))
        token = re.search(r'name="token" value="([^"]+)"', page)
        assert token is not None

        def act(action: str, name: str = "") -> int:
            data = {"token": token[1], "queue": "default", "name": name}
            return client.post(f"/_ah/admin/queues/{action}", data=data).status_code

        assert act("run", "later-1") == 303
        _wait_for(lambda: any(h["task_name"] == "later-1" for h in _handled(log)))
        assert act("delete", "later-2") == 303
        page = client.get(SCHEDULED).text
        assert 'data-task="later-2"' not in page
        assert 'data-task="later-3"' in page
        assert act("purge") == 303
        assert 'data-task="later-3"' not in client.get(SCHEDULED).text
        bad = client.post("/_ah/admin/queues/purge", data={"token": "forged", "queue": "default"})
        assert bad.status_code == 403


def test_console_shows_who_is_signed_in(devserver: tuple[str, Path]) -> None:
    """The console names the signed-in administrator and links to the sign-out page."""
    with _client(devserver[0], email="admin@example.com", admin=True) as client:
        page = client.get("/_ah/admin/queues").text
    assert "Signed in as admin@example.com (administrator)" in page
    assert 'href="/_ah/logout?continue=%2F_ah%2Fadmin%2Fqueues"' in page


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"Origin": "http://evil.example"}, 403, id="cross-site Origin"),
        pytest.param({"Origin": "null"}, 403, id="opaque Origin"),
        pytest.param({"Sec-Fetch-Site": "cross-site"}, 403, id="cross-site fetch"),
        pytest.param({"Sec-Fetch-Site": "same-site"}, 403, id="sibling site"),
        pytest.param({"Origin": "SAME"}, 303, id="same Origin"),
        pytest.param({"Sec-Fetch-Site": "same-origin"}, 303, id="same-origin fetch"),
    ],
)
def test_console_actions_refuse_cross_site(
    devserver: tuple[str, Path], headers: dict[str, str], status: int
) -> None:
    """A console action another site makes the browser send is refused, even with the token."""
    base_url, _ = devserver
    name = f"csrf-{secrets.token_hex(4)}"
    headers = {k: base_url if v == "SAME" else v for k, v in headers.items()}
    with _client(base_url, email="admin@example.com", admin=True) as client:
        client.get("/enqueue", params={"name": name, "countdown": "3600"})
        page = client.get(SCHEDULED).text
        token = re.search(r'name="token" value="([^"]+)"', page)
        assert token is not None
        data = {"token": token[1], "queue": "default", "name": name}
        response = client.post("/_ah/admin/queues/delete", data=data, headers=headers)
        assert response.status_code == status
        still_there = f'data-task="{name}"' in client.get(SCHEDULED).text
    assert still_there is (status == 403)


def test_refuses_non_loopback_host(tmp_path: Path) -> None:
    """Development trust is refused on a non-loopback address: exit status 2 and why."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskhandler.cli",
            "serve",
            "tests.test_taskqueue_devserver:app",
            "--host",
            "0.0.0.0",
            "--db",
            str(tmp_path / "q.sqlite3"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "loopback" in proc.stderr


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


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed")
def test_console_in_a_browser(devserver: tuple[str, Path]) -> None:
    """An admin signs in from the console's redirect, runs a task now, deletes one, signs out."""
    sync_api = pytest.importorskip("playwright.sync_api")
    base_url, log = devserver
    with _client(base_url) as client:
        for name in ("browser-run", "browser-delete"):
            client.get("/enqueue", params={"name": name, "countdown": "3600"})
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_context().new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{base_url}{SCHEDULED}")
            assert page.url.startswith(f"{base_url}/_ah/login")
            page.fill("#email", "ada@example.com")
            page.check("#admin")
            page.click("#submit-login")
            page.wait_for_url(f"{base_url}{SCHEDULED}")
            rows = page.locator("tr[data-task^='browser-']")
            sync_api.expect(rows).to_have_count(2)

            page.click("tr[data-task='browser-run'] button[data-action='run']")
            _wait_for(lambda: any(h["task_name"] == "browser-run" for h in _handled(log)))

            page.click("tr[data-task='browser-delete'] button[data-action='delete']")
            page.wait_for_url(f"{base_url}{SCHEDULED}&page=1&msg=**")
            sync_api.expect(page.locator("tr[data-task='browser-delete']")).to_have_count(0)

            # Sign out from the console: its link shows the confirmation page, whose button
            # signs out and comes back to the console, which now asks to sign in.
            page.click("#logout")
            page.wait_for_url(f"{base_url}/_ah/logout?**")
            sync_api.expect(page.locator("#current")).to_contain_text("ada@example.com")
            page.click("#submit-logout")
            page.wait_for_url(f"{base_url}/_ah/login?**")
            sync_api.expect(page.locator("#email")).to_be_visible()
        finally:
            browser.close()
    assert not any(h["task_name"] == "browser-delete" for h in _handled(log))


# -- the app the server runs -----------------------------------------------------------------

app = Flask(__name__)


@app.get("/enqueue")
def enqueue() -> str:
    params = {"fail": request.args["fail"]} if "fail" in request.args else {}
    countdown = float(request.args.get("countdown", "0"))
    task = taskqueue.add(
        url="/tasks/work", params=params, name=request.args["name"], countdown=countdown
    )
    return task.name or ""


@app.post("/tasks/work")
def work() -> tuple[str, int]:
    ctx = current_task()
    assert ctx is not None
    record = {
        "task_name": ctx.task_name,
        "retry_count": ctx.retry_count,
        "previous_response": ctx.previous_response,
        "form": request.form.to_dict(),
    }
    with open(os.environ["TASKQUEUE_DEV_LOG"], "a") as log:
        log.write(json.dumps(record) + "\n")
    failing = request.form.get("fail") == "1" and ctx.retry_count == 0
    return ("failed", 500) if failing else ("ok", 200)
