"""The outbox example: an order and its shipping task are committed together or not at all.

A real SQLite file holds the orders and the outbox table; the relay hands committed tasks to
a LocalTaskQueue that delivers them to the app in-process, from App Engine's 0.1.0.2.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")

from flask import Flask
from flask.testing import FlaskClient

from examples.outbox import main
from taskhandler import taskqueue
from taskhandler.outbox import Outbox
from taskhandler.taskqueue import LocalTaskQueue


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = main.create_app(f"sqlite:///{tmp_path / 'shop.sqlite3'}")
    yield app
    app.extensions["engine"].dispose()


@pytest.fixture
def queue(app: Flask) -> Iterator[LocalTaskQueue]:
    with LocalTaskQueue(app, db=":memory:") as local, taskqueue.use(local):
        yield local


def _ship_all(app: Flask, queue: LocalTaskQueue) -> int:
    outbox: Outbox = app.extensions["outbox"]
    outbox.relay_until_idle()
    return queue.run_until_idle(timeout=30)


@pytest.mark.parametrize(
    ("form", "status", "orders", "shipped"),
    [
        pytest.param({"item": "tea", "quantity": "2"}, 201, 1, 1, id="order and task committed"),
        pytest.param({"item": "tea", "quantity": "11"}, 409, 0, 0, id="refused order, no task"),
        pytest.param({"item": "tea", "quantity": "x"}, 400, 0, 0, id="bad quantity"),
    ],
)
def test_an_order_and_its_shipping_task_go_together(
    app: Flask,
    queue: LocalTaskQueue,
    form: dict[str, str],
    status: int,
    orders: int,
    shipped: int,
) -> None:
    """The order exists exactly when its shipping task does, and the task ships it once."""
    client: FlaskClient = app.test_client()
    assert client.post("/orders", data=form).status_code == status
    assert _ship_all(app, queue) == shipped
    listed = client.get("/orders").get_json()["orders"]
    assert len(listed) == orders
    assert [o["shipped"] for o in listed] == [True] * shipped


def test_a_repeated_delivery_ships_once(app: Flask, queue: LocalTaskQueue) -> None:
    """Delivering the shipping task again (as a queue may) records the shipment once."""
    client = app.test_client()
    order = client.post("/orders", data={"item": "tea", "quantity": "1"}).get_json()["order"]
    _ship_all(app, queue)
    again = client.post(
        "/tasks/ship",
        data={"order": str(order)},
        headers={"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "again"},
        environ_base={"REMOTE_ADDR": "0.1.0.2"},
    )
    assert again.get_json() == {"shipped": False}


def test_the_ship_handler_is_for_the_queue_only(app: Flask, queue: LocalTaskQueue) -> None:
    """A browser posting to /tasks/ship is refused by app.yaml's login: admin."""
    response = app.test_client().post(
        "/tasks/ship", data={"order": "1"}, environ_base={"REMOTE_ADDR": "203.0.113.7"}
    )
    assert response.status_code in (302, 401, 403)
