"""App Engine's deferred sample, ported with its imports changed, run three ways.

As App Engine tests ran it (``testbed`` and ``deferred.run(task.payload)``); through the real
local queue delivering to the app in-process (from 0.1.0.2, manual clock: the 60 s countdowns
pass at once); and as the queue's requests, to show that only task requests run a deferred call.
"""

# App Engine's unittest style (assertEqual) is kept on purpose: this test ports as it was.
# ruff: noqa: PT009
from __future__ import annotations

import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.deferred_style import main
from examples.webapp2_style import ndb_sqlite
from taskhandler import deferred, taskqueue
from taskhandler.taskqueue import LocalTaskQueue, ManualClock, load_queue_yaml
from taskhandler.testing import testbed

HERE = Path(__file__).resolve().parent
KEY = "k" * 40


@pytest.fixture(autouse=True)
def database(tmp_path: Path) -> Iterator[Path]:
    """A fresh SQLite file for the counter, and a signing key for the test."""
    previous = ndb_sqlite.configure(tmp_path / "counter.sqlite3")
    with deferred.configure(secret_key=KEY):
        yield tmp_path / "counter.sqlite3"
    ndb_sqlite.configure(previous)


def total() -> int:
    """The counter as the app's /total page shows it."""
    return int(main.app.test_client().get("/total").get_data(as_text=True))


class HomeTest(unittest.TestCase):
    """Written as an App Engine test, with only its imports changed."""

    def setUp(self) -> None:
        self.testbed = testbed.Testbed()
        self.testbed.activate()
        self.testbed.init_taskqueue_stub(root_path=str(HERE))
        self.taskqueue_stub: Any = self.testbed.get_stub(testbed.TASKQUEUE_SERVICE_NAME)

    def tearDown(self) -> None:
        self.testbed.deactivate()

    def test_home_defers_three_calls(self) -> None:
        """/home leaves two deferred tasks in default and one in foo; running them adds 60."""
        main.app.test_client().get("/home")
        tasks = self.taskqueue_stub.get_filtered_tasks(url="/_ah/queue/deferred")
        self.assertEqual(3, len(tasks))
        self.assertEqual(1, len(self.taskqueue_stub.get_filtered_tasks(queue_names="foo")))
        for task in tasks:
            deferred.run(task.payload)
        self.assertEqual(60, total())


def test_local_queue_runs_the_sample(database: Path) -> None:
    """Through the local queue, the three calls reach /_ah/queue/deferred and add 60."""
    clock = ManualClock()
    with (
        LocalTaskQueue(main.app, queues=load_queue_yaml(HERE / "queue.yaml"), clock=clock) as queue,
        taskqueue.use(queue),
    ):
        assert main.app.test_client().get("/home").status_code == 200
        queue.run_until_idle(timeout=30)
        assert queue.counts()["foo"]["pending"] == 0
    assert total() == 60


@pytest.mark.parametrize(
    ("remote_addr", "status", "expected_total"),
    [
        pytest.param("0.1.0.2", 200, 20, id="the queue runs the call"),
        pytest.param("203.0.113.7", 302, 0, id="a stranger is sent to sign in"),
    ],
)
def test_only_the_queue_runs_deferred_calls(
    remote_addr: str, status: int, expected_total: int
) -> None:
    """app.yaml's deferred builtin puts /_ah/queue/deferred behind login: admin."""
    payload = deferred.serialize(main.do_something_later, main.my_key, 20)
    response = main.app.test_client().post(
        "/_ah/queue/deferred",
        data=payload,
        headers={"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "t1"},
        environ_base={"REMOTE_ADDR": remote_addr},
    )
    assert (response.status_code, total()) == (status, expected_total)
