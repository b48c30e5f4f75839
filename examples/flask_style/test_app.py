"""The Flask example end to end: enqueue from the page, deliver through the local queue, SQLite.

The queue is taskhandler's ``LocalTaskQueue`` dispatching in-process (from 0.1.0.2, as App
Engine does) with a manual clock, so retries and backoff run in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from examples.flask_style import main, store
from taskhandler import taskqueue
from taskhandler.taskqueue import LocalTaskQueue, ManualClock, load_queue_yaml
from taskhandler.trust import RequestInfo, User

QUEUE_PEER = "0.1.0.2"
STRANGER = "203.0.113.7"


def header_user(info: RequestInfo) -> User | None:
    """Stand-in for a sign-in system (the real one is a signed cookie): ``X-Test-User``."""
    who = info.header("x-test-user")
    return None if who is None else User(f"{who}@example.com", is_admin=who == "admin")


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "example.sqlite3"


@pytest.fixture
def app(database: Path) -> Flask:
    return main.create_app(database, authenticator=header_user)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def queue(app: Flask) -> Iterator[LocalTaskQueue]:
    """The local push queue with the example's queue.yaml, installed for ``taskqueue.add``."""
    local = LocalTaskQueue(
        app, db=":memory:", queues=load_queue_yaml(main.HERE / "queue.yaml"), clock=ManualClock()
    )
    with taskqueue.use(local):
        yield local


def deliver(
    client: FlaskClient,
    path: str,
    data: dict[str, str],
    *,
    task_name: str = "task-1",
    queue_name: str = "default",
    retry_count: int = 0,
    peer: str = QUEUE_PEER,
    task: bool = True,
    user: str | None = None,
) -> Any:
    """POST ``data`` to ``path`` as the queue would (or as ``peer``/``user`` say)."""
    headers: dict[str, str] = {}
    if task:
        headers = {
            "X-AppEngine-QueueName": queue_name,
            "X-AppEngine-TaskName": task_name,
            "X-AppEngine-TaskRetryCount": str(retry_count),
        }
    if user is not None:
        headers["X-Test-User"] = user
    return client.post(path, data=data, headers=headers, environ_base={"REMOTE_ADDR": peer})


def test_count_from_the_page(client: FlaskClient, queue: LocalTaskQueue, database: Path) -> None:
    """The page's form enqueues a count task; the queue delivers it; the page shows it."""
    response = client.post("/count", data={"counter": "visits", "amount": "3"})
    assert (response.status_code, response.headers["Location"]) == (303, "/")
    client.post("/count", data={"counter": "visits", "amount": "4"})
    assert queue.run_until_idle(timeout=30) == 2
    assert store.snapshot(database)["counters"] == {"visits": 7}
    assert "visits" in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize(
    ("deliveries", "expected"),
    [
        pytest.param([("a", 0), ("a", 1), ("a", 2)], {"default": 2}, id="same task three times"),
        pytest.param([("a", 0), ("b", 0)], {"default": 4}, id="two tasks"),
    ],
)
def test_count_is_idempotent(
    client: FlaskClient, database: Path, deliveries: list[tuple[str, int]], expected: Any
) -> None:
    """A repeated delivery of a count task changes nothing."""
    for task_name, retry_count in deliveries:
        response = deliver(
            client, "/tasks/count", {"amount": "2"}, task_name=task_name, retry_count=retry_count
        )
        assert (response.status_code, response.headers["X-Task-Outcome"]) == (200, "success")
    assert store.snapshot(database)["counters"] == expected


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"amount": "0"}, id="amount below 1"),
        pytest.param({"amount": "lots"}, id="amount not a number"),
        pytest.param({}, id="amount missing"),
        pytest.param({"amount": "1", "counter": "<b>"}, id="counter name with markup"),
    ],
)
def test_bad_count_payload_is_a_permanent_failure(
    client: FlaskClient, database: Path, data: dict[str, str]
) -> None:
    """A payload that fails validation is acknowledged (200) and not retried; nothing changes."""
    response = deliver(client, "/tasks/count", data)
    assert (response.status_code, response.headers["X-Task-Outcome"]) == (
        200,
        "permanent-failure",
    )
    assert store.snapshot(database)["counters"] == {}


def test_notify_sends_once(client: FlaskClient, queue: LocalTaskQueue, database: Path) -> None:
    """A reachable recipient gets the message once, even if the task is delivered again."""
    client.post("/notify", data={"recipient": "ada@example.com", "message": "hi"})
    assert queue.run_until_idle(timeout=30) == 1
    outbox = store.snapshot(database)["outbox"]
    assert [(row["recipient"], row["message"]) for row in outbox] == [("ada@example.com", "hi")]
    again = deliver(
        client,
        "/tasks/notify",
        {"recipient": "ada@example.com", "message": "hi"},
        task_name=outbox[0]["task_name"],
        queue_name="notify",
    )
    assert again.status_code == 200
    assert len(store.snapshot(database)["outbox"]) == 1


def test_notify_retries_then_gives_up(
    client: FlaskClient, queue: LocalTaskQueue, database: Path
) -> None:
    """An unreachable recipient is retried, then given up with a dead letter holding the payload."""
    client.post("/notify", data={"recipient": "bob@mail.invalid", "message": "hello"})
    attempts = queue.run_until_idle(timeout=30)
    state = store.snapshot(database)
    assert attempts == main.NOTIFY_MAX_ATTEMPTS
    assert state["outbox"] == []
    (letter,) = state["dead_letters"]
    assert (letter["queue_name"], letter["path"], letter["attempts"]) == (
        "notify",
        "/tasks/notify",
        3,
    )
    assert letter["reason"] == "Unreachable: cannot reach mail.invalid"
    assert letter["payload"] == {"recipient": "bob@mail.invalid", "message": "hello"}
    assert queue.tasks("notify") == []


@pytest.mark.parametrize(
    ("retry_count", "status", "outcome", "letters"),
    [
        pytest.param(0, 500, "retry", 0, id="first attempt fails"),
        pytest.param(1, 500, "retry", 0, id="second attempt fails"),
        pytest.param(2, 200, "given-up", 1, id="third attempt gives up"),
    ],
)
def test_notify_attempts(
    client: FlaskClient, database: Path, retry_count: int, status: int, outcome: str, letters: int
) -> None:
    """Attempts before the last are answered 500 (retry); the last is 200 ``given-up``."""
    response = deliver(
        client,
        "/tasks/notify",
        {"recipient": "bob@mail.invalid", "message": "x"},
        retry_count=retry_count,
    )
    assert (response.status_code, response.headers["X-Task-Outcome"]) == (status, outcome)
    assert len(store.snapshot(database)["dead_letters"]) == letters


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        pytest.param({"peer": STRANGER, "task": False}, 302, id="stranger goes to sign-in"),
        pytest.param({"peer": STRANGER}, 302, id="stranger with task headers"),
        pytest.param({"peer": "127.0.0.1"}, 302, id="localhost with task headers"),
        pytest.param({"peer": STRANGER, "user": "bob"}, 403, id="signed-in non-admin"),
        pytest.param({"peer": QUEUE_PEER, "task": False}, 302, id="queue address without task"),
    ],
)
def test_task_urls_refuse_strangers(
    client: FlaskClient, database: Path, kwargs: dict[str, Any], status: int
) -> None:
    """``login: admin`` on /tasks/ keeps everyone but the queue and admins out."""
    response = deliver(client, "/tasks/count", {"amount": "5"}, **kwargs)
    assert response.status_code == status
    assert store.snapshot(database)["counters"] == {}


def test_admin_runs_a_task_by_hand(client: FlaskClient, database: Path) -> None:
    """An admin may open a task URL without task headers; it runs once per visit."""
    response = deliver(
        client, "/tasks/count", {"amount": "5"}, peer=STRANGER, task=False, user="admin"
    )
    assert (response.status_code, response.headers["X-Task-Outcome"]) == (200, "success")
    assert store.snapshot(database)["counters"] == {"default": 5}


def test_enqueue_without_a_queue_is_503(client: FlaskClient) -> None:
    """With no queue installed, the page says so instead of failing."""
    with taskqueue.use(None):
        response = client.post("/count", data={"amount": "1"})
    assert response.status_code == 503
    assert "taskhandler serve" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("site", "status"),
    [
        pytest.param("cross-site", 403, id="cross-site form post"),
        pytest.param("same-site", 403, id="sibling subdomain post"),
        pytest.param("same-origin", 303, id="same-origin post"),
        pytest.param(None, 303, id="no fetch metadata"),
    ],
)
def test_forms_refuse_other_sites(
    client: FlaskClient, queue: LocalTaskQueue, site: str | None, status: int
) -> None:
    """A form post another site makes a browser send is refused."""
    headers = {} if site is None else {"Sec-Fetch-Site": site}
    response = client.post("/count", data={"amount": "1"}, headers=headers)
    assert response.status_code == status


def test_page_escapes_stored_text(
    client: FlaskClient, queue: LocalTaskQueue, database: Path
) -> None:
    """Text from payloads is escaped on the page."""
    client.post("/notify", data={"recipient": "eve@mail.invalid", "message": "<script>x</script>"})
    queue.run_until_idle(timeout=30)
    client.post("/notify", data={"recipient": "eve@example.com", "message": "<script>y</script>"})
    queue.run_until_idle(timeout=30)
    html = client.get("/").get_data(as_text=True)
    assert "<script>" not in html
    assert "&lt;script&gt;y&lt;/script&gt;" in html
