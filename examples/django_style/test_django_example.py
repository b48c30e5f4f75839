"""The Django example end to end: in-process with the pytest plugin, then on real servers.

In-process, ``task_app`` (a ``TaskTestApp``) and ``task_queue`` (a ``LocalTaskQueue`` with
the example's queue.yaml) come from taskhandler's pytest plugin, built from the
``taskhandler_app`` fixture below -- Django's WSGI handler, under the example's settings.
Then gunicorn and uvicorn serve the example, and so does ``taskhandler serve``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.django_style import settings as example
from taskhandler import SignedCookieAuth
from taskhandler.taskqueue import LocalTaskQueue, load_queue_yaml
from taskhandler.testing import TaskTestApp, assert_idempotent
from tests.conformance.django_adapter import configure

configure()

from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.test import override_settings  # noqa: E402

from examples.django_style import store  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


@pytest.fixture(autouse=True)
def example_settings(tmp_path: Path) -> Iterator[Path]:
    """The example's settings for this test, its word counts in a SQLite file of its own."""
    counts = tmp_path / "counts.sqlite3"
    with override_settings(
        ROOT_URLCONF=example.ROOT_URLCONF,
        MIDDLEWARE=example.MIDDLEWARE,
        TASKHANDLER={**example.TASKHANDLER, "TRUST": "strict"},
        TASKS=example.TASKS,
        EXAMPLE_STORE=str(counts),
    ):
        yield counts


@pytest.fixture
def taskhandler_app() -> Any:
    return WSGIHandler()


@pytest.fixture
def taskhandler_queue_options() -> dict[str, Any]:
    return {"queues": load_queue_yaml(HERE / "queue.yaml")}


def test_a_word_enqueued_from_the_page_is_counted(
    task_app: TaskTestApp, task_queue: LocalTaskQueue, example_settings: Path
) -> None:
    """The page's form enqueues a django.tasks task; the queue runs it; the page shows it."""
    page = task_app.get("/")
    form = page.forms[0]
    form["word"] = "hello"
    form.submit().follow()
    (queued,) = task_queue.tasks("tallies")
    assert queued.url == "/_ah/django-tasks/default"
    assert task_queue.run_until_idle(timeout=30) == 1
    assert store.counts(example_settings) == {"hello": 1}
    assert "hello: 1" in task_app.get("/").text


def test_the_push_task_handler_counts_each_task_once(
    task_app: TaskTestApp, example_settings: Path
) -> None:
    """/tasks/tally takes a typed payload; the same task delivered again changes nothing."""
    res = task_app.post_task("/tasks/tally", params={"word": "a", "amount": "2"}, task_name="t1")
    assert (res.task_outcome, res.json) == ("success", {"word": "a", "count": 2})
    assert_idempotent(
        task_app.app,
        "/tasks/tally",
        params={"word": "b"},
        snapshot=lambda: store.counts(example_settings),
    )
    bad = task_app.post_task("/tasks/tally", params={"word": "", "amount": "2"})
    assert bad.task_outcome == "permanent-failure"


def test_a_stranger_reaches_no_task_url(task_app: TaskTestApp, example_settings: Path) -> None:
    """Spoofed task headers are stripped, and app.yaml's login: admin sends strangers to sign in."""
    res = task_app.get(
        "/tasks/tally",
        params={"word": "x"},
        headers={"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "t"},
        extra_environ={"REMOTE_ADDR": "203.0.113.7"},
        status=302,
    )
    assert res.headers["Location"] == "/accounts/login/?next=/tasks/tally%3Fword%3Dx"
    assert store.counts(example_settings) == {}


# -- on real servers -------------------------------------------------------------------------


DEV_SECRET = "django-example-development-secret-0123456789"
DEV_ADMIN = SignedCookieAuth(DEV_SECRET).cookie_value("admin@example.com", admin=True)


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "TASKHANDLER_SECRET_KEY": DEV_SECRET,  # signs the development server's sign-in cookie
        "EXAMPLE_STORE": str(tmp_path / "counts.sqlite3"),
        "EXAMPLE_DJANGO_DB": str(tmp_path / "django.sqlite3"),
        "EXAMPLE_QUEUE_SOURCES": "127.0.0.1",  # the tests play the queue from loopback
        "DJANGO_SETTINGS_MODULE": "examples.django_style.settings",
    }


TASK = {"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "served-1"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "target", "relayed"),
    [
        # gunicorn keeps the socket's address: the request is still from the queue's address.
        pytest.param("gunicorn", "examples.django_style.wsgi:application", 200, id="gunicorn"),
        # uvicorn takes the client from X-Forwarded-For when the peer is 127.0.0.1 (its
        # default forwarded-allow-ips): that client is a stranger, sent to sign in.
        pytest.param("uvicorn", "examples.django_style.asgi:application", 302, id="uvicorn"),
    ],
)
def test_served_by_gunicorn_and_uvicorn(
    tmp_path: Path, kind: str, target: str, relayed: int
) -> None:
    """Behind a real server the queue's task runs once; a relayed stranger's does not."""
    from tests.servers import serve

    with serve(kind, target, env=_env(tmp_path)) as base, httpx.Client(base_url=base) as client:
        form = {"word": "served", "amount": "3"}
        res = client.post("/tasks/tally", data=form, headers=TASK)
        assert (res.status_code, res.headers["x-task-outcome"]) == (200, "success")
        again = client.post("/tasks/tally", data=form, headers=TASK)
        assert again.json() == {"word": "served", "count": 3}
        stranger = client.get(
            "/tasks/tally",
            params={"word": "relayed"},
            headers={**TASK, "X-AppEngine-TaskName": "t2", "X-Forwarded-For": "203.0.113.7"},
        )
        assert stranger.status_code == relayed
    expected = {"served": 3} if relayed == 302 else {"relayed": 1, "served": 3}
    assert store.counts(tmp_path / "counts.sqlite3") == expected


@pytest.mark.slow
def test_taskhandler_serve_runs_the_django_project(tmp_path: Path) -> None:
    """`taskhandler serve` serves the project and its local queue runs the django.tasks task."""
    from tests.servers import free_port, stop, wait_for_port

    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **_env(tmp_path),
    }
    command = [
        sys.executable,
        "-m",
        "taskhandler.cli",
        "serve",
        "examples.django_style.wsgi:application",
        "--app-yaml",
        str(HERE / "app.yaml"),
        "--port",
        str(port),
        "--db",
        str(tmp_path / "queue.sqlite3"),
    ]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            page = client.get("/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
            assert token is not None
            posted = client.post(
                "/enqueue", data={"word": "served", "csrfmiddlewaretoken": token.group(1)}
            )
            assert posted.status_code == 302
            give_up = time.monotonic() + 30
            while "served: 1" not in client.get("/").text and time.monotonic() < give_up:
                time.sleep(0.1)
            assert "served: 1" in client.get("/").text
            # A developer signs in once, on the development server's page, and runs a
            # login: admin handler from the browser (no Django account needed).
            refused = client.get("/tasks/tally", params={"word": "browser"})
            assert refused.status_code == 302
            assert refused.headers["location"].startswith("/_ah/login")
            signed_in = httpx.Client(
                base_url=f"http://127.0.0.1:{port}", cookies={"taskhandler_signin": DEV_ADMIN}
            )
            with signed_in:
                ran = signed_in.get("/tasks/tally", params={"word": "browser"})
            assert (ran.status_code, ran.json()["word"]) == (200, "browser")
            assert "browser: 1" in client.get("/").text
    finally:
        stop(proc)
