"""The queue console driven by headless Chromium against ``taskhandler serve``.

A newcomer's loop: sign in, add a task from the form, watch it fail and appear under *failed*
with its exception, open it, fix the handler and retry it, pause and resume a queue, and page
through 1,000 tasks. Screenshots of the main pages are saved in the test's temporary folder
(``CONSOLE_SCREENSHOTS=folder`` saves them there instead, e.g. ``docs/img``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request

from taskhandler import taskqueue
from taskhandler.taskqueue import LocalTaskQueue, load_queue_yaml
from tests.servers import ROOT, free_port, wait_for_port

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
CONSOLE = "/_ah/admin/queues"
QUEUE_YAML = """
queue:
- name: default
  rate: 50/s
  retry_parameters:
    task_retry_limit: 1
    min_backoff_seconds: 0.2
    max_backoff_seconds: 0.2
- name: mail
  rate: 2/s
"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed"),
]


@pytest.fixture(scope="module")
def devserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``taskhandler serve`` on this module's app; (base URL, its folder)."""
    tmp = tmp_path_factory.mktemp("console")
    (tmp / "queue.yaml").write_text(QUEUE_YAML)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "CONSOLE_BROWSER_DIR": str(tmp),
    }
    env.pop("TASKHANDLER_SECRET_KEY", None)
    command = [
        sys.executable, "-m", "taskhandler.cli", "serve", "tests.test_console_browser:app",
        "--queue-yaml", str(tmp / "queue.yaml"), "--port", str(port),
        "--db", str(tmp / "queue.sqlite3"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}", tmp
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go."""
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_console_loop_in_a_browser(devserver: tuple[str, Path], shots: Path) -> None:
    """Sign in, add a failing task from the form, see it fail with its exception, retry it once
    fixed, pause and resume a queue, and page through 1,000 tasks."""
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    base_url, folder = devserver
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page: Any = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
            page.set_default_timeout(15_000)
            expect.set_options(timeout=15_000)

            # Sign in from the console's redirect.
            page.goto(f"{base_url}{CONSOLE}")
            assert page.url.startswith(f"{base_url}/_ah/login")
            page.fill("#email", "ada@example.com")
            page.check("#admin")
            page.click("#submit-login")
            page.wait_for_url(f"{base_url}{CONSOLE}")
            expect(page.locator("#current")).to_contain_text("ada@example.com")

            # Add a task from the form: it lands on its page, fails twice, and is given up.
            page.click("text=Add a task")
            page.fill("#url", "/tasks/charge")
            page.fill("#params", "order=17\namount=250")
            page.fill("#name", "charge-17")
            page.screenshot(path=str(shots / "console-add.png"), full_page=True)
            page.click("#add-task")
            page.wait_for_url("**/task?queue=default&name=charge-17**")
            expect(page.locator("#message")).to_contain_text("charge-17 added")
            # The page refreshes itself until the queue gives up.
            expect(page.locator(".badge.failed")).to_be_visible()
            expect(page.locator(".attempt")).to_have_count(2)
            expect(page.locator(".attempt .error").first).to_contain_text(
                "PaymentDeclined: card declined for order 17"
            )
            page.locator("summary").first.click()
            expect(page.locator("pre.traceback").first).to_contain_text("Traceback")
            page.screenshot(path=str(shots / "console-task.png"), full_page=True)

            # It is listed under failed, with its exception.
            page.goto(f"{base_url}{CONSOLE}/tasks?queue=default&state=failed")
            row = page.locator("tr[data-task='charge-17']")
            expect(row).to_contain_text("PaymentDeclined")
            page.screenshot(path=str(shots / "console-failed.png"), full_page=True)

            # Fix the handler, open the task and retry it: it runs again and is done.
            (folder / "fixed").write_text("yes")
            row.locator("a").first.click()
            page.wait_for_url("**/task?queue=default&name=charge-17")
            page.click("button[data-action='retry']")
            expect(page.locator("#message")).to_contain_text("enqueued again as")
            page.goto(f"{base_url}{CONSOLE}/tasks?queue=default&state=done")
            expect(page.locator("tr[data-task]")).to_have_count(1)
            assert (folder / "charged").read_text() == "order=17&amount=250\n"

            # Pause and resume a queue from the overview.
            page.goto(f"{base_url}{CONSOLE}")
            page.click("button[data-action='pause'][data-task='mail']")
            expect(page.locator("tr[data-queue='mail'] .badge.paused")).to_be_visible()
            page.click("button[data-action='resume'][data-task='mail']")
            expect(page.locator("tr[data-queue='mail'] .badge.paused")).to_have_count(0)

            # 1,000 tasks, paged 50 at a time.
            _add_many(folder, 1000)
            page.goto(f"{base_url}{CONSOLE}/tasks?queue=mail&state=scheduled")
            expect(page.locator("#page-info").first).to_have_text("page 1 of 20 (1,000 tasks)")
            seen = set(
                page.locator("tr[data-task]").evaluate_all("rs => rs.map(r => r.dataset.task)")
            )
            page.screenshot(path=str(shots / "console-list.png"), full_page=False)
            for number in range(2, 21):
                page.locator("#next").first.click()
                expect(page.locator("#page-info").first).to_contain_text(f"page {number} of 20")
                names = page.locator("tr[data-task]").evaluate_all(
                    "rs => rs.map(r => r.dataset.task)"
                )
                assert len(names) == 50
                seen.update(names)
            assert len(seen) == 1000
            expect(page.locator("#next")).to_have_count(0)

            page.goto(f"{base_url}{CONSOLE}")
            expect(page.locator("tr[data-queue='mail']")).to_contain_text("1,000")
            page.screenshot(path=str(shots / "console-overview.png"), full_page=True)
        finally:
            browser.close()
    assert {p.name for p in shots.glob("*.png")} >= {
        "console-overview.png",
        "console-task.png",
        "console-failed.png",
        "console-list.png",
        "console-add.png",
    }


def _add_many(folder: Path, count: int) -> None:
    """Store ``count`` tasks due in an hour in the server's queue file (another process)."""
    queue = LocalTaskQueue(
        "http://127.0.0.1:1",
        db=str(folder / "queue.sqlite3"),
        queues=load_queue_yaml(folder / "queue.yaml"),
    )
    try:
        with taskqueue.use(queue):
            for start in range(0, count, 100):
                taskqueue.Queue("mail").add(
                    [
                        taskqueue.Task(url="/tasks/mail", name=f"mail-{i:04d}", countdown=3600)
                        for i in range(start, start + 100)
                    ]
                )
    finally:
        queue.close()


# -- the app the server runs -----------------------------------------------------------------

app = Flask(__name__)


class PaymentDeclined(Exception):
    """The payment service said no."""


@app.post("/tasks/charge")
def charge() -> str:
    folder = Path(os.environ["CONSOLE_BROWSER_DIR"])
    if not (folder / "fixed").exists():
        raise PaymentDeclined(f"card declined for order {request.form['order']}")
    with open(folder / "charged", "a") as charged:
        charged.write(request.get_data(as_text=True) + "\n")
    return "charged"


@app.post("/tasks/mail")
def mail() -> str:
    return "sent"
