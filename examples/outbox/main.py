"""Orders and their shipping task in one SQLAlchemy transaction (``taskhandler.outbox``).

``POST /orders`` writes the order and adds the ``/tasks/ship`` task with
``transactional=True`` inside ``outbox.transaction(session)``: the order and the task are
committed together or not at all. An order the app refuses after adding its task (a quantity
over the stock) rolls back, and no task is ever sent. The relay hands committed tasks to the
queue; ``POST /tasks/ship`` marks the order shipped (once, however often it is delivered).

Serve from the repository root (the dev server relays the outbox into its local queue)::

    taskhandler serve examples.outbox.main:app --app-yaml examples/outbox/app.yaml \\
        --outbox-db-url sqlite:////tmp/taskhandler-outbox-example.sqlite3

with ``EXAMPLE_DB_URL=sqlite:////tmp/taskhandler-outbox-example.sqlite3`` set for the app.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from flask import Flask, abort, request
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from taskhandler import task_handler, taskqueue
from taskhandler.config import load_app_yaml
from taskhandler.context import TaskContext
from taskhandler.outbox import Outbox
from taskhandler.trust import Authenticator, TrustPolicy
from taskhandler.wsgi import TaskMiddleware

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DB_URL = "sqlite:///" + os.path.join(
    tempfile.gettempdir(), "taskhandler-outbox-example.sqlite3"
)
STOCK = 10


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(50))
    quantity: Mapped[int]
    shipped: Mapped[bool] = mapped_column(default=False)


class Shipment(Base):
    """One row per shipped order: the ship handler's once-only record."""

    __tablename__ = "shipments"
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(100))


def create_app(
    db_url: str | None = None,
    *,
    trust: TrustPolicy | None = None,
    authenticator: Authenticator | None = None,
) -> Flask:
    """The app; ``app.extensions["outbox"]`` is its :class:`Outbox` (start its relay to send)."""
    engine = create_engine(db_url or os.environ.get("EXAMPLE_DB_URL", DEFAULT_DB_URL))
    Base.metadata.create_all(engine)
    outbox = Outbox(engine)
    outbox.create_table()
    app = Flask(__name__)
    app.extensions["outbox"] = outbox
    app.extensions["engine"] = engine

    @app.post("/orders")
    def place_order() -> tuple[dict[str, Any], int]:
        item = request.form.get("item", "")
        try:
            quantity = int(request.form.get("quantity", ""))
        except ValueError:
            abort(400)
        if not item or not 1 <= quantity <= 1000:
            abort(400)
        session = Session(engine)
        try:
            with outbox.transaction(session):
                order = Order(item=item, quantity=quantity)
                session.add(order)
                session.flush()  # the order's id, for the task
                taskqueue.add(
                    url="/tasks/ship", params={"order": str(order.id)}, transactional=True
                )
                if quantity > STOCK:  # refused after the task was added: all rolls back
                    raise OutOfStock(item)
            return {"order": order.id}, 201
        except OutOfStock:
            return {"error": "out of stock"}, 409
        finally:
            session.close()

    @app.post("/tasks/ship")
    @task_handler
    def ship(task: TaskContext) -> dict[str, Any]:
        order_id = int(request.form["order"])
        with Session(engine) as session, session.begin():
            if session.get(Shipment, order_id) is not None:
                return {"shipped": False}  # an earlier delivery did it
            session.add(Shipment(order_id=order_id, task_name=task.task_name))
            order = session.get(Order, order_id)
            if order is not None:
                order.shipped = True
        return {"shipped": True}

    @app.get("/orders")
    def orders() -> dict[str, Any]:
        with Session(engine) as session:
            rows = session.scalars(select(Order).order_by(Order.id)).all()
            return {"orders": [{"id": o.id, "item": o.item, "shipped": o.shipped} for o in rows]}

    app.wsgi_app = TaskMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        trust=trust or TrustPolicy(),
        config=load_app_yaml(os.path.join(HERE, "app.yaml")),
        authenticator=authenticator,
    )
    return app


class OutOfStock(Exception):
    """More than the stock was ordered."""


def __getattr__(name: str) -> Any:  # `taskhandler serve examples.outbox.main:app`
    if name == "app":
        return create_app()
    raise AttributeError(name)
