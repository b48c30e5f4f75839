"""The outbox's costs: enqueue inside a transaction, relay throughput, commit-to-dispatch latency.

1. *Enqueue cost* (CPU time of the measuring thread): one SQLAlchemy ORM transaction on a SQLite file that inserts an order,
   with and without ``taskqueue.add(..., transactional=True)`` into the outbox. The ratio is
   (time of the add) / (time of the app's own insert); target <= 1.5. Both sides run the same
   session, the same commit (synchronous=OFF, so the disk's fsync does not hide the difference).
2. *Relay throughput*: committed rows handed to a ``LocalTaskQueue`` file per second of wall
   time, batches of 100; target >= 5,000 tasks/s on SQLite.
3. *Commit-to-dispatch latency*: from ``commit()`` returning to the task's handler running,
   with the relay thread and the queue's dispatcher in the same process; target median <= 50 ms.

Rounds are interleaved (``_rounds.interleaved``); each figure prints its median and spread.
Run: ``python bench/outbox.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import String, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bench._rounds import clock, interleaved, median, per_round, spread, verdict
from taskhandler import taskqueue
from taskhandler.outbox import Outbox
from taskhandler.taskqueue import LocalTaskQueue, QueueConfig


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(50))


def _engine(path: Path):
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def fast(dbapi_conn, record):  # the commit's fsync would dwarf both sides
        dbapi_conn.execute("PRAGMA synchronous=OFF")

    Base.metadata.create_all(engine)
    return engine


def _noop_app(environ, start_response):
    start_response("200 OK", [])
    return [b""]


def enqueue_cost(work: Path, rounds: int, number: int) -> list[float]:
    """Per round: (order insert + add) - (order insert), over the order insert alone."""
    engine = _engine(work / "cost.sqlite3")
    outbox = Outbox(engine)
    outbox.create_table()
    session = Session(engine)

    def plain() -> float:
        started = clock()
        for _ in range(number):
            with session.begin():
                session.add(Order(item="tea"))
                session.flush()
        return (clock() - started) / number

    def with_task() -> float:
        started = clock()
        for _ in range(number):
            with outbox.transaction(session):
                session.add(Order(item="tea"))
                session.flush()
                taskqueue.add(url="/tasks/ship", params={"order": "1"}, transactional=True)
        return (clock() - started) / number

    def empty() -> float:  # the transaction itself (begin + commit), paid by both
        started = clock()
        for _ in range(number):
            with session.begin():
                pass
        return (clock() - started) / number

    queue = LocalTaskQueue(_noop_app, db=":memory:")
    with taskqueue.use(queue):
        results = interleaved({"plain": plain, "task": with_task, "empty": empty}, rounds)
    queue.close()
    session.close()
    engine.dispose()
    return per_round(
        lambda p, t, e: (t - p) / max(p - e, 1e-9),
        results["plain"],
        results["task"],
        results["empty"],
    )


def relay_throughput(work: Path, rounds: int, rows: int) -> list[float]:
    """Per round: rows relayed per second from a fresh backlog of ``rows`` committed rows."""
    rates = []
    for index in range(rounds):
        engine = _engine(work / f"relay-{index}.sqlite3")
        outbox = Outbox(engine)
        outbox.create_table()
        queue = LocalTaskQueue(_noop_app, db=work / f"queue-{index}.sqlite3")
        with taskqueue.use(queue), Session(engine) as session:
            for start in range(0, rows, 5):
                with outbox.transaction(session):
                    for n in range(5):
                        taskqueue.add(url=f"/tasks/{start + n}", transactional=True)
        relay = Outbox(engine, backend=queue)
        started = time.perf_counter()
        moved = relay.relay_until_idle()
        rates.append(moved / (time.perf_counter() - started))
        assert moved == rows, (moved, rows)
        queue.close()
        engine.dispose()
    return rates


def latency(work: Path, samples: int) -> list[float]:
    """Seconds from commit() returning to the handler running, with everything in-process."""
    engine = _engine(work / "latency.sqlite3")
    outbox = Outbox(engine, poll_interval=3600)
    outbox.create_table()
    ran = threading.Event()

    def app(environ, start_response):
        ran.set()
        start_response("200 OK", [])
        return [b""]

    queue = LocalTaskQueue(
        app,
        db=work / "latency-queue.sqlite3",
        queues=[QueueConfig(name="default", rate=1000.0, bucket_size=500)],
    )
    found = []
    with taskqueue.use(queue):
        queue.start()
        outbox.start()
        time.sleep(0.1)
        session = Session(engine)
        for _ in range(samples):
            ran.clear()
            with outbox.transaction(session):
                taskqueue.add(url="/tasks/ship", transactional=True)
            committed = time.perf_counter()
            if not ran.wait(10):
                raise SystemExit("a task was not delivered within 10 s")
            found.append(time.perf_counter() - committed)
        session.close()
        outbox.stop()
        queue.stop()
    queue.close()
    engine.dispose()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    rounds, number, rows, samples = (3, 200, 2000, 30) if args.quick else (9, 1000, 10000, 200)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cost = enqueue_cost(work, rounds, number)
        print(
            f"enqueue in transaction / app's own insert: {spread(cost)}  (target <= 1.5: {verdict(median(cost) <= 1.5, median(cost), 1.5)})"
        )
        rates = relay_throughput(work, max(3, rounds // 3), rows)
        print(
            f"relay to LocalTaskQueue (SQLite): {spread(rates, 0)} tasks/s  (target >= 5000: {verdict(median(rates) >= 5000, median(rates), 5000, at_most=False)})"
        )
        waits = [w * 1000 for w in latency(work, samples)]
        print(
            f"commit to dispatch, in-process: {spread(waits, 1)} ms  (target median <= 50: {verdict(median(waits) <= 50, median(waits), 50)})"
        )


if __name__ == "__main__":
    main()
