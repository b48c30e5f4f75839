"""The pull-counter sample, run as App Engine tests ran it and through the real local queue.

The first class is written as an App Engine test (``testbed``, webtest), with only its imports
changed. The others run the app under ``TaskMiddleware`` with its app.yaml, on a real SQLite
queue file: the page adds tagged pull tasks, the worker counts them by tag and deletes them.
"""

# App Engine's unittest style (assertEqual) is kept on purpose: this test ports as it was.
# ruff: noqa: PT009
from __future__ import annotations

import os
import subprocess
import sys
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import webtest

from examples.pull_counter import main
from examples.webapp2_style import ndb_sqlite
from taskhandler import SignedCookieAuth, TaskMiddleware, load_app_yaml, taskqueue
from taskhandler.taskqueue import LocalTaskQueue, load_queue_yaml
from taskhandler.testing import testbed
from tests.servers import ROOT, free_port, stop, wait_for_port

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def database(tmp_path: Path) -> Iterator[Path]:
    """A fresh SQLite file for the counters."""
    previous = ndb_sqlite.configure(tmp_path / "counters.sqlite3")
    yield tmp_path / "counters.sqlite3"
    ndb_sqlite.configure(previous)


class CounterTest(unittest.TestCase):
    """Written as an App Engine test, with only its imports changed."""

    def setUp(self) -> None:
        self.testbed = testbed.Testbed()
        self.testbed.activate()
        self.testbed.init_taskqueue_stub(root_path=str(HERE))
        self.app = webtest.TestApp(main.app)

    def tearDown(self) -> None:
        self.testbed.deactivate()

    def test_clicks_are_counted_by_tag(self) -> None:
        """Three clicks on a and one on b make counters 3 and 1; the queue is empty after."""
        for key in ("a", "b", "a", "a"):
            self.app.post("/", {"key": key})
        self.assertEqual(0, len(taskqueue.Queue("pullq").lease_tasks_by_tag(0, 1000, "zz")))
        self.app.get("/_ah/start")
        self.assertEqual("3", self.app.get("/count?key=a").text)
        self.assertEqual("1", self.app.get("/count?key=b").text)
        self.assertEqual([], taskqueue.Queue("pullq").lease_tasks(60, 1000))

    def test_empty_key_adds_nothing(self) -> None:
        """A click without a counter name adds no task."""
        self.app.post("/", {"key": ""})
        self.assertEqual([], taskqueue.Queue("pullq").lease_tasks(60, 1000))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[webtest.TestApp, LocalTaskQueue]]:
    """The app under TaskMiddleware and its app.yaml, with a local queue on a SQLite file."""
    queues = load_queue_yaml(HERE / "queue.yaml")
    wrapped = TaskMiddleware(main.app, config=load_app_yaml(HERE / "app.yaml"))
    with (
        LocalTaskQueue(wrapped, db=tmp_path / "tasks.sqlite3", queues=queues) as q,
        taskqueue.use(q),
    ):
        yield webtest.TestApp(wrapped), q


QUEUE = {"REMOTE_ADDR": "0.1.0.2"}
QUEUE_HEADERS = {"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "start"}


def test_worker_counts_tasks_of_each_tag(served: tuple[webtest.TestApp, Any]) -> None:
    """Pull tasks wait in the queue file, never dispatched, until the worker leases them."""
    app, q = served
    for key in ("a", "b", "a"):
        app.post("/", {"key": key}, status=302)
    assert q.run_until_idle(timeout=30) == 0  # pull tasks are never delivered
    assert sorted(t.tag for t in q.tasks("pullq")) == ["a", "a", "b"]
    app.get("/_ah/start", headers=QUEUE_HEADERS, extra_environ=QUEUE)
    assert (app.get("/count?key=a").text, app.get("/count?key=b").text) == ("2", "1")
    assert q.tasks("pullq") == []


@pytest.mark.parametrize(
    ("environ", "headers", "status"),
    [
        pytest.param({}, {}, 302, id="a stranger is sent to sign in"),
        pytest.param({"REMOTE_ADDR": "203.0.113.9"}, QUEUE_HEADERS, 302, id="spoofed headers"),
        pytest.param(QUEUE, QUEUE_HEADERS, 200, id="the queue"),
    ],
)
def test_only_the_queue_and_admins_run_the_worker(
    served: tuple[webtest.TestApp, Any],
    environ: dict[str, str],
    headers: dict[str, str],
    status: int,
) -> None:
    """app.yaml's login: admin keeps /_ah/start for the queue and administrators."""
    app, q = served
    app.post("/", {"key": "a"})
    app.get("/_ah/start", headers=headers, extra_environ=environ, status=status)
    assert len(q.tasks("pullq")) == (0 if status == 200 else 1)


@pytest.mark.slow
def test_taskhandler_serve_runs_the_sample(tmp_path: Path) -> None:
    """`taskhandler serve` with the sample's app.yaml: clicks add pull tasks to the queue file,
    the worker is the administrators', and it counts the tasks by tag."""
    secret = "pull-counter-example-secret-0123456789"
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TASKHANDLER_SECRET_KEY": secret,
        "EXAMPLE_DB": str(tmp_path / "counters.sqlite3"),
    }
    command = [
        sys.executable, "-m", "taskhandler.cli", "serve",  # the app: app.yaml's entrypoint
        "--app-yaml", str(HERE / "app.yaml"),  # queue.yaml: the one beside it
        "--port", str(port), "--db", str(tmp_path / "queue.sqlite3"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    admin = {
        "taskhandler_signin": SignedCookieAuth(secret).cookie_value("admin@example.com", admin=True)
    }
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, proc)
        with (
            httpx.Client(base_url=base_url, timeout=10) as client,
            httpx.Client(base_url=base_url, timeout=10, cookies=admin) as signed_in,
        ):
            for key in ("a", "b", "a"):
                assert client.post("/", data={"key": key}).status_code == 302
            refused = client.get("/_ah/start")
            assert refused.status_code == 302
            assert refused.headers["location"].startswith("/_ah/login")
            assert client.get("/count", params={"key": "a"}).text == "0"
            worker = signed_in.get("/_ah/start")
            assert (worker.status_code, worker.text) == (200, "done")
            counts = [client.get("/count", params={"key": k}).text for k in ("a", "b")]
            assert counts == ["2", "1"]
        with LocalTaskQueue(
            main.app, db=tmp_path / "queue.sqlite3", queues=load_queue_yaml(HERE / "queue.yaml")
        ) as q:
            assert q.tasks("pullq") == []  # leased, counted and deleted
    finally:
        stop(proc)
