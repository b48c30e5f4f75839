"""The outbox: a transactional add exists exactly when the application's transaction commits.

Every rule runs against a real SQLite file and a real PostgreSQL server (tests/postgres.py),
through SQLAlchemy sessions, Core connections and plain DB-API connections; the relay hands
the rows to a real LocalTaskQueue, which delivers them to a WSGI app.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")

from sqlalchemy import text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from taskhandler import taskqueue  # noqa: E402
from taskhandler.cli import main  # noqa: E402
from taskhandler.exceptions import ConfigError  # noqa: E402
from taskhandler.outbox import Outbox, create_table_sql, dialect_of  # noqa: E402
from taskhandler.taskqueue import LocalTaskQueue, QueueConfig  # noqa: E402
from tests.postgres import PostgresServer, postgres_server  # noqa: E402, F401


@dataclass
class Database:
    """One empty application database: its SQLAlchemy URL and a DB-API connect function."""

    kind: str
    url: str
    connect: Callable[[], Any]


def make_database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A fresh database of the kind ``request.param`` names (for a parametrized fixture)."""
    if request.param == "sqlite":
        path = tmp_path / "app.sqlite3"
        return Database("sqlite", f"sqlite:///{path}", lambda: sqlite3.connect(path))
    server: PostgresServer = request.getfixturevalue("postgres_server")
    import psycopg

    name = server.create_database()
    return Database("postgresql", server.url(name), lambda: psycopg.connect(server.dsn(name)))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A fresh database of each kind: a SQLite file, and a database on the PostgreSQL server."""
    return make_database(request, tmp_path)


@dataclass
class World:
    """An app database with an ``orders`` table and the outbox, a local queue, what it delivered."""

    db: Database
    engine: Any
    outbox: Outbox
    queue: LocalTaskQueue
    delivered: list[str]

    def orders(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT COUNT(*) FROM orders")).scalar_one())

    def deliver(self) -> list[str]:
        """Relay everything committed, deliver it, return the paths delivered (sorted)."""
        self.outbox.relay_until_idle()
        self.queue.run_until_idle(timeout=30)
        return sorted(self.delivered)


@pytest.fixture
def world(database: Database, tmp_path: Path) -> Iterator[World]:
    """The database, its outbox table and an orders table, and a local queue installed."""
    delivered: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        delivered.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    engine = sqlalchemy.create_engine(database.url)
    with engine.begin() as conn:
        key = "INTEGER PRIMARY KEY" if database.kind == "sqlite" else "SERIAL PRIMARY KEY"
        conn.execute(text(f"CREATE TABLE orders (id {key}, item VARCHAR(50))"))
    queue = LocalTaskQueue(
        app,
        db=tmp_path / "queue.sqlite3",
        queues=[QueueConfig(name="mail", rate=1000.0), QueueConfig(name="work", mode="pull")],
    )
    outbox = Outbox(engine)
    outbox.create_table()
    with taskqueue.use(queue):
        yield World(database, engine, outbox, queue, delivered)
    outbox.stop()
    queue.close()
    engine.dispose()


def _order(conn: Any, item: str) -> None:
    conn.execute(text("INSERT INTO orders (item) VALUES (:item)"), {"item": item})


# -- commit, rollback, exception --------------------------------------------------------------


def _session_block(w: World, fail: bool) -> None:
    session = Session(w.engine)
    with w.outbox.transaction(session):
        _order(session, "a")
        taskqueue.add(url="/ship/a", transactional=True)
        if fail:
            raise KeyError("boom")


def _bound_session(w: World, fail: bool) -> None:
    session = Session(w.engine)
    w.outbox.bind(session)
    _order(session, "a")
    taskqueue.add(url="/ship/a", transactional=True)
    if fail:
        session.rollback()
        raise KeyError("boom")
    session.commit()


def _core_connection(w: World, fail: bool) -> None:
    with w.engine.connect() as conn, w.outbox.transaction(conn):
        _order(conn, "a")
        taskqueue.Queue().add(taskqueue.Task(url="/ship/a"), transactional=True)
        if fail:
            raise KeyError("boom")


def _engine(w: World, fail: bool) -> None:
    with w.outbox.transaction(w.engine) as conn:
        _order(conn, "a")
        taskqueue.add(url="/ship/a", transactional=True)
        if fail:
            raise KeyError("boom")


def _dbapi(w: World, fail: bool) -> None:
    conn = w.db.connect()
    try:
        with w.outbox.transaction(conn):
            cursor = conn.cursor()
            mark = "?" if w.db.kind == "sqlite" else "%s"
            cursor.execute(f"INSERT INTO orders (item) VALUES ({mark})", ("a",))
            taskqueue.add(url="/ship/a", transactional=True)
            if fail:
                raise KeyError("boom")
    finally:
        conn.close()


def _enlisted(w: World, fail: bool) -> None:
    conn = w.db.connect()
    try:
        with w.outbox.enlist(conn):
            cursor = conn.cursor()
            mark = "?" if w.db.kind == "sqlite" else "%s"
            cursor.execute(f"INSERT INTO orders (item) VALUES ({mark})", ("a",))
            taskqueue.add(url="/ship/a", transactional=True)
        if fail:
            conn.rollback()
            raise KeyError("boom")
        conn.commit()
    finally:
        conn.close()


WAYS = [
    pytest.param(_session_block, id="with outbox.transaction(session)"),
    pytest.param(_bound_session, id="outbox.bind(session) + commit"),
    pytest.param(_core_connection, id="Core connection, Queue.add"),
    pytest.param(_engine, id="with outbox.transaction(engine)"),
    pytest.param(_dbapi, id="DB-API connection"),
    pytest.param(_enlisted, id="outbox.enlist (the framework seam)"),
]


@pytest.mark.parametrize("way", WAYS)
def test_commit_adds_exactly_one_task(world: World, way: Callable[[World, bool], None]) -> None:
    """A committed transaction leaves its order and exactly one delivered task."""
    way(world, False)
    assert world.orders() == 1
    assert world.outbox.pending() == 1
    assert world.deliver() == ["/ship/a"]
    assert world.outbox.pending() == 0


@pytest.mark.parametrize("way", WAYS)
def test_failure_adds_nothing(world: World, way: Callable[[World, bool], None]) -> None:
    """An exception in the block (or a rollback) leaves neither the order nor a task."""
    with pytest.raises(KeyError):
        way(world, True)
    assert world.orders() == 0
    assert world.outbox.pending() == 0
    assert world.deliver() == []


@pytest.mark.parametrize(
    ("inner_commits", "expected"),
    [
        pytest.param(True, ["/ship/inner", "/ship/outer"], id="savepoint released"),
        pytest.param(False, ["/ship/outer"], id="savepoint rolled back"),
    ],
)
def test_savepoints(world: World, inner_commits: bool, expected: list[str]) -> None:
    """A task added inside a savepoint shares the savepoint's fate; the outer one stays."""
    session = Session(world.engine)
    world.outbox.bind(session)
    _order(session, "outer")
    taskqueue.add(url="/ship/outer", transactional=True)
    nested = session.begin_nested()
    _order(session, "inner")
    taskqueue.add(url="/ship/inner", transactional=True)
    if inner_commits:
        nested.commit()
    else:
        nested.rollback()
    session.commit()
    assert world.orders() == len(expected)
    assert world.deliver() == expected


def test_bound_session_serves_every_transaction(world: World) -> None:
    """A bound session takes the adds of each of its transactions, and only of committed ones."""
    session = Session(world.engine)
    world.outbox.bind(session)
    for number in range(3):
        _order(session, str(number))
        taskqueue.add(url=f"/ship/{number}", transactional=True)
        if number == 1:
            session.rollback()
        else:
            session.commit()
    assert world.deliver() == ["/ship/0", "/ship/2"]


# -- App Engine's rules -----------------------------------------------------------------------


def _named(w: World) -> None:
    taskqueue.add(url="/x", name="named", transactional=True)


def _six(w: World) -> None:
    for _ in range(6):
        taskqueue.add(url="/x", transactional=True)


def _unknown_queue(w: World) -> None:
    taskqueue.add(url="/x", queue_name="nope", transactional=True)


@pytest.mark.parametrize(
    ("add", "error"),
    [
        pytest.param(_named, taskqueue.InvalidTaskNameError, id="named task"),
        pytest.param(_six, taskqueue.TooManyTasksError, id="six tasks in one transaction"),
        pytest.param(_unknown_queue, taskqueue.UnknownQueueError, id="undeclared queue"),
    ],
)
def test_app_engine_rules_inside_a_bound_transaction(
    world: World, add: Callable[[World], None], error: type[Exception]
) -> None:
    """Transactional tasks stay unnamed, at most 5, in declared queues; the block rolls back."""
    session = Session(world.engine)

    def attempt() -> None:
        with world.outbox.transaction(session):
            _order(session, "a")
            add(world)

    with pytest.raises(error):
        attempt()
    assert world.orders() == 0
    assert world.outbox.pending() == 0


def test_five_tasks_and_their_names(world: World) -> None:
    """Five tasks fit in one transaction; each is named by its row, the name it is delivered as."""
    session = Session(world.engine)
    with world.outbox.transaction(session):
        tasks = [taskqueue.add(url=f"/ship/{n}", transactional=True) for n in range(4)]
        tasks.append(taskqueue.Queue("mail").add(taskqueue.Task(url="/mail"), transactional=True))
    assert all(task.was_enqueued and task.name.startswith("outbox-") for task in tasks)
    world.outbox.relay_until_idle()
    stored = {t.task_name for t in world.queue.tasks("default")} | {
        t.task_name for t in world.queue.tasks("mail")
    }
    assert stored == {task.name for task in tasks}


def test_outside_a_bound_transaction_the_old_behaviour_stays(world: World) -> None:
    """Without a bound transaction, transactional=True still needs taskqueue.transaction()."""
    with pytest.raises(taskqueue.BadTransactionStateError):
        taskqueue.add(url="/x", transactional=True)
    with taskqueue.transaction():
        taskqueue.add(url="/ship/queue-txn", transactional=True)
    taskqueue.add(url="/ship/plain")
    assert world.outbox.pending() == 0
    assert world.deliver() == ["/ship/plain", "/ship/queue-txn"]


def test_payload_headers_eta_and_retry_survive_the_table(world: World) -> None:
    """What the relay hands off is the task that was added: payload, headers, ETA, retry."""
    retry = taskqueue.TaskRetryOptions(task_retry_limit=3, min_backoff_seconds=2)
    session = Session(world.engine)
    with world.outbox.transaction(session):
        added = taskqueue.add(
            payload=b"\x00\xffbytes",
            url="/ship/p",
            headers={"X-Custom": "1"},
            countdown=3600,
            retry_options=retry,
            transactional=True,
        )
    world.outbox.relay_until_idle()
    (stored,) = world.queue.tasks("default")
    assert stored.task_name == added.name
    assert stored.payload == b"\x00\xffbytes"
    assert ("X-Custom", "1") in stored.headers
    assert abs(stored.eta.timestamp() - added.eta.timestamp()) < 1e-3


@pytest.mark.parametrize(
    ("tag", "stored"),
    [
        pytest.param("red", "red", id="text tag"),
        pytest.param(b"blue", "blue", id="bytes tag"),
        pytest.param(None, None, id="no tag"),
    ],
)
def test_a_pull_task_keeps_its_tag(
    world: World, tag: str | bytes | None, stored: str | None
) -> None:
    """A transactional pull task relayed through the table arrives with its tag and payload."""
    session = Session(world.engine)
    with world.outbox.transaction(session):
        taskqueue.Queue("work").add(
            taskqueue.Task(payload=b"\x00job", method="PULL", tag=tag), transactional=True
        )
    assert world.outbox.relay_until_idle() == 1
    [leased] = taskqueue.Queue("work").lease_tasks_by_tag(60, 10, tag=tag)
    assert leased.payload == b"\x00job"
    assert leased.tag == stored
    assert [t.tag for t in world.queue.tasks("work")] == [stored]


class Recording:
    """A real LocalTaskQueue, also keeping every task record the relay hands it."""

    def __init__(self, queue: LocalTaskQueue) -> None:
        self.queue = queue
        self.seen: list[taskqueue.NewTask] = []

    def now(self) -> float:
        return self.queue.now()

    def check_queue(self, queue_name: str) -> None:
        self.queue.check_queue(queue_name)

    def enqueue(self, tasks: Any, *, atomic: bool = False) -> list[str | taskqueue.Error]:
        self.seen.extend(tasks)
        return self.queue.enqueue(tasks, atomic=atomic)

    def delete(self, queue_name: str, task_name: str) -> bool:
        return self.queue.delete(queue_name, task_name)

    def purge(self, queue_name: str) -> int:
        return self.queue.purge(queue_name)


@pytest.mark.parametrize(
    ("usec", "seconds"),
    [
        pytest.param(90_000_000, 90.0, id="90 s"),
        pytest.param(15_500_000, 15.5, id="fractional seconds"),
        pytest.param(None, None, id="none: the queue's"),
    ],
)
def test_a_dispatch_deadline_survives_the_table(
    world: World, usec: int | None, seconds: float | None
) -> None:
    """The relay hands the queue the dispatch deadline the task was added with."""
    session = Session(world.engine)
    with world.outbox.transaction(session):
        taskqueue.add(url="/ship/d", dispatch_deadline_usec=usec, transactional=True)
    recording = Recording(world.queue)
    assert Outbox(world.engine, backend=recording).relay_until_idle() == 1
    [record] = recording.seen
    assert (record.url, record.dispatch_deadline) == ("/ship/d", seconds)


def test_rows_written_before_tags_and_deadlines_still_relay(world: World) -> None:
    """A row whose task JSON predates tag and dispatch_deadline relays with neither set."""
    old_json = '{"method":"POST","url":"/ship/old","headers":[],"eta":0,"target":null,"retry":null}'
    with world.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO taskhandler_outbox (task_name, queue_name, task, payload, created)"
                " VALUES ('outbox-0123456789abcdef0123456789abcdef', 'default', :task, :payload, 0)"
            ),
            {"task": old_json, "payload": b""},
        )
    recording = Recording(world.queue)
    assert Outbox(world.engine, backend=recording).relay_until_idle() == 1
    [record] = recording.seen
    assert (record.url, record.tag, record.dispatch_deadline) == ("/ship/old", None, None)


def test_a_refused_row_stays_with_its_error(world: World, tmp_path: Path) -> None:
    """A row the relay's queue refuses stays, with the error; the rows after it go through."""
    session = Session(world.engine)
    with world.outbox.transaction(session):
        taskqueue.add(url="/ship/mail", queue_name="mail", transactional=True)
        taskqueue.add(url="/ship/default", transactional=True)
    strict = LocalTaskQueue("http://127.0.0.1:9", db=tmp_path / "strict.sqlite3")  # no "mail"
    try:
        relay = Outbox(world.engine, backend=strict)
        assert relay.relay_until_idle() == 1
        assert [t.url for t in strict.tasks("default")] == ["/ship/default"]
        with world.engine.connect() as conn:
            attempts, error = conn.execute(
                text("SELECT attempts, last_error FROM taskhandler_outbox")
            ).one()
        assert attempts == 1
        assert "UnknownQueueError" in error
    finally:
        strict.close()


def test_the_relay_wakes_on_commit(world: World) -> None:
    """A commit in the process wakes the relay thread, which otherwise looks once an hour."""
    relay = Outbox(world.engine, poll_interval=3600).start()
    arrived = threading.Event()
    world.queue.start()
    try:
        time.sleep(0.2)  # the relay has looked once and now waits
        session = Session(world.engine)
        with world.outbox.transaction(session):
            taskqueue.add(url="/ship/woken", transactional=True)
        deadline = time.monotonic() + 30
        while not world.delivered and time.monotonic() < deadline:
            arrived.wait(0.01)
        assert world.delivered == ["/ship/woken"]
    finally:
        relay.stop()
        world.queue.stop()


def test_the_relay_command_once(world: World, tmp_path: Path, capsys: Any) -> None:
    """`taskhandler relay --once` hands the committed rows to the local queue file and exits."""
    session = Session(world.engine)
    with world.outbox.transaction(session):
        taskqueue.add(url="/ship/cli", transactional=True)
    queue_db = tmp_path / "served.sqlite3"
    code = main(["relay", "--db-url", world.db.url, "--queue-db", str(queue_db), "--once"])
    assert code == 0
    assert "1 task(s) handed off" in capsys.readouterr().out
    with contextlib.closing(LocalTaskQueue("http://127.0.0.1:9", db=queue_db)) as served:
        assert [t.url for t in served.tasks("default")] == ["/ship/cli"]
    assert world.outbox.pending() == 0


# -- the table and the configuration ----------------------------------------------------------


def test_the_documented_sql_creates_a_working_table(database: Database, tmp_path: Path) -> None:
    """create_table_sql() (the migration's SQL) makes the table the outbox writes and relays."""
    dialect = database.kind
    conn = database.connect()
    try:
        cursor = conn.cursor()
        for statement in create_table_sql(dialect, "my_outbox"):
            cursor.execute(statement)
        conn.commit()
        outbox = Outbox(database.connect, table="my_outbox")
        assert outbox.dialect == dialect == dialect_of(conn)
        queue = LocalTaskQueue("http://127.0.0.1:9", db=tmp_path / "q.sqlite3")
        with taskqueue.use(queue), outbox.transaction(conn):
            taskqueue.add(url="/ship/sql", transactional=True)
        assert Outbox(database.connect, table="my_outbox", backend=queue).relay_until_idle() == 1
        queue.close()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"table": "drop table;"}, "Outbox table", id="table not an identifier"),
        pytest.param({"batch_size": 0}, "batch_size", id="batch of none"),
        pytest.param({"batch_size": 101}, "batch_size", id="batch over one add"),
        pytest.param({"poll_interval": 0}, "poll_interval", id="zero poll interval"),
        pytest.param({"lease_seconds": float("nan")}, "lease_seconds", id="nan lease"),
        pytest.param({"max_backoff": 0.01}, "max_backoff", id="max below min backoff"),
        pytest.param({"backend": object()}, "backend", id="not a backend"),
        pytest.param({"dialect": "mysql"}, "not supported", id="unsupported dialect"),
    ],
)
def test_bad_configuration_is_a_config_error(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    """Each bad Outbox argument is a ConfigError naming it, raised at construction."""
    with pytest.raises(ConfigError, match=message):
        Outbox(lambda: sqlite3.connect(tmp_path / "x.sqlite3"), **kwargs)


@pytest.mark.parametrize(
    "db",
    [
        pytest.param("not a url", id="not a URL"),
        pytest.param(42, id="a number"),
        pytest.param(lambda: object(), id="a connection of an unknown driver"),
    ],
)
def test_bad_database_is_a_config_error(db: Any) -> None:
    """A db that is neither an Engine, a URL nor a DB-API connect function is a ConfigError."""
    with pytest.raises(ConfigError):
        Outbox(db)
