"""The seed's counter handler, run unchanged behind TaskMiddleware with a real SQLite file.

Deliveries are made the way the queue makes them (from 0.1.0.2 with task headers), by
calling the WSGI app, from threads, through the local push queue, and over HTTP to gunicorn.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.webapp2_style import main, ndb_sqlite, worker
from taskhandler import taskqueue
from taskhandler.taskqueue import LocalTaskQueue, ManualClock, load_queue_yaml
from taskhandler.trust import RequestInfo, TrustPolicy, User
from taskhandler.webapp import Request

QUEUE_PEER = "0.1.0.2"
STRANGER = "203.0.113.7"


def header_user(info: RequestInfo) -> User | None:
    """Stand-in for a sign-in system (the real one is a signed cookie): ``X-Test-User``."""
    who = info.header("x-test-user")
    return None if who is None else User(f"{who}@example.com", is_admin=who == "admin")


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Path]:
    """A fresh SQLite file for the counter and the task ledger."""
    path = tmp_path / "counter.sqlite3"
    previous = ndb_sqlite.configure(path)
    yield path
    ndb_sqlite.configure(previous)


@pytest.fixture
def app(database: Path) -> Any:
    """The worker service as main.py builds it, with a test sign-in."""
    return main.create_app(authenticator=header_user, database=database)


def count() -> int | None:
    """The stored counter, or None before the first update."""
    counter = worker.Counter.get_by_id(worker.COUNTER_KEY)
    return None if counter is None else counter.count


def deliver(
    app: Any,
    amount: Any,
    *,
    task_name: str | None = "count-1",
    queue_name: str = "default",
    retry_count: int = 0,
    peer: str = QUEUE_PEER,
    user: str | None = None,
) -> Any:
    """POST ``amount`` to /update_counter as the queue (or whoever ``peer``/``user`` say)."""
    headers: dict[str, str] = {}
    if task_name is not None:
        headers = {
            "X-AppEngine-QueueName": queue_name,
            "X-AppEngine-TaskName": task_name,
            "X-AppEngine-TaskRetryCount": str(retry_count),
        }
    if user is not None:
        headers["X-Test-User"] = user
    request = Request.blank(
        "/update_counter", headers=headers, remote_addr=peer, POST={"amount": str(amount)}
    )
    return request.get_response(app)


@pytest.mark.parametrize(
    ("deliveries", "expected"),
    [
        pytest.param([("default", "a", 3)], 3, id="one task"),
        pytest.param([("default", "a", 3), ("default", "b", 4)], 7, id="two tasks add up"),
        pytest.param(
            [("default", "a", 3), ("default", "a", 3), ("default", "a", 3)],
            3,
            id="repeated delivery changes nothing",
        ),
        pytest.param(
            [("default", "a", 3), ("default", "b", 4), ("default", "a", 3)],
            7,
            id="late redelivery changes nothing",
        ),
        pytest.param(
            [("default", "a", 3), ("other", "a", 3)], 6, id="same name in another queue counts"
        ),
    ],
)
def test_counter(app: Any, deliveries: list[tuple[str, str, int]], expected: int) -> None:
    """Each task adds its amount once, however often it is delivered."""
    for retry, (queue_name, task_name, amount) in enumerate(deliveries):
        response = deliver(
            app, amount, task_name=task_name, queue_name=queue_name, retry_count=retry
        )
        assert (response.status_int, response.headers["X-Task-Outcome"]) == (200, "success")
    assert count() == expected


def test_bad_amount_is_retried_and_changes_nothing(app: Any) -> None:
    """A delivery that fails rolls back and is answered 500 so the queue retries it."""
    deliver(app, 5, task_name="good")
    response = deliver(app, "not a number", task_name="bad")
    assert (response.status_int, response.headers["X-Task-Outcome"]) == (500, "retry")
    assert b"Traceback" not in response.body
    assert count() == 5


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        pytest.param(["same"] * 8, 2, id="one task delivered 8 times at once"),
        pytest.param([f"t-{n}" for n in range(8)], 16, id="8 tasks at once"),
    ],
)
def test_concurrent_deliveries(app: Any, names: list[str], expected: int) -> None:
    """Deliveries racing on threads are serialised: duplicates count once, none is lost."""
    barrier = threading.Barrier(len(names))
    statuses: list[int] = []

    def one(task_name: str) -> None:
        barrier.wait(timeout=10)
        statuses.append(deliver(app, 2, task_name=task_name).status_int)

    threads = [threading.Thread(target=one, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [200] * len(names)
    assert count() == expected


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        pytest.param({"peer": STRANGER, "task_name": None}, 302, id="stranger goes to sign-in"),
        pytest.param({"peer": STRANGER}, 302, id="stranger with task headers"),
        pytest.param({"peer": "127.0.0.1"}, 302, id="localhost with task headers"),
        pytest.param({"peer": STRANGER, "user": "bob"}, 403, id="signed-in non-admin"),
        pytest.param({"peer": QUEUE_PEER, "task_name": None}, 302, id="queue address, no task"),
    ],
)
def test_strangers_are_refused(app: Any, kwargs: dict[str, Any], status: int) -> None:
    """``login: admin`` keeps everyone but the queue and admins away from the worker URL."""
    response = deliver(app, 100, **kwargs)
    assert response.status_int == status
    assert count() is None


def test_stranger_task_headers_are_stripped(app: Any) -> None:
    """A stranger's task headers are removed before anything else looks at the request."""
    request = Request.blank(
        "/update_counter",
        headers={"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "forged"},
        remote_addr=STRANGER,
        POST={"amount": "100"},
    )
    response = request.get_response(app)
    assert response.status_int == 302
    assert sorted(request.environ["taskhandler.stripped"]) == [
        "x-appengine-queuename",
        "x-appengine-taskname",
    ]
    assert count() is None


def test_admin_runs_the_handler_from_a_browser(app: Any) -> None:
    """A signed-in admin may open the worker URL (App Engine's way of testing a handler)."""
    response = deliver(app, 4, peer=STRANGER, task_name=None, user="admin")
    assert response.status_int == 200
    assert count() == 4


def test_through_the_local_queue(app: Any) -> None:
    """Tasks added with the App Engine API are delivered in-process; a duplicate is refused."""
    queue = LocalTaskQueue(
        app,
        db=":memory:",
        queues=load_queue_yaml(Path(main.HERE) / "queue.yaml"),
        clock=ManualClock(),
    )
    with taskqueue.use(queue):
        taskqueue.add(url="/update_counter", params={"amount": "2"}, name="first")
        taskqueue.add(url="/update_counter", params={"amount": "5"})
        with pytest.raises(taskqueue.TaskAlreadyExistsError):
            taskqueue.add(url="/update_counter", params={"amount": "2"}, name="first")
        queue.run_until_idle(timeout=30)
    assert count() == 7


@pytest.mark.slow
def test_gunicorn_concurrent_duplicates(database: Path) -> None:
    """Over real HTTP to gunicorn with 8 threads, 8 copies of one task count once."""
    import http.client
    from urllib.parse import urlsplit

    from tests.servers import serve

    env = {"EXAMPLE_DB": str(database), "EXAMPLE_QUEUE_SOURCES": "127.0.0.1"}
    with serve(
        "gunicorn", "examples.webapp2_style.main:app", extra=["--threads", "8"], env=env
    ) as base_url:
        netloc = urlsplit(base_url).netloc
        barrier = threading.Barrier(8)
        statuses: list[int] = []

        def one() -> None:
            conn = http.client.HTTPConnection(netloc, timeout=30)
            try:
                barrier.wait(timeout=10)
                conn.request(
                    "POST",
                    "/update_counter",
                    body="amount=3",
                    headers={
                        "Content-Type": "application/x-www-form-urlencoded",
                        "X-AppEngine-QueueName": "default",
                        "X-AppEngine-TaskName": "over-http",
                    },
                )
                statuses.append(conn.getresponse().status)
            finally:
                conn.close()

        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert statuses == [200] * 8
    assert count() == 3


def test_trust_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``EXAMPLE_QUEUE_SOURCES`` names the queue's addresses; unset keeps App Engine's."""
    monkeypatch.setenv("EXAMPLE_QUEUE_SOURCES", "127.0.0.1, 10.0.0.0/8")
    assert main.trust_from_env().source("10.1.2.3", lambda name: None) == "queue"
    monkeypatch.delenv("EXAMPLE_QUEUE_SOURCES")
    assert main.trust_from_env().source("10.1.2.3", lambda name: None) is None
    assert TrustPolicy().source(QUEUE_PEER, lambda name: None) == "queue"
