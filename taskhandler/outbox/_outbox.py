"""``Outbox``: transactional adds written into the application's database, and their relay.

Two halves, joined only by the table:

- *writing*: while a database transaction is bound (:meth:`Outbox.bind`,
  :meth:`Outbox.transaction`, :meth:`Outbox.enlist`), ``taskqueue.add(..., transactional=True)``
  inserts a row into the outbox table through that transaction's own connection, so the row
  exists exactly when the transaction commits;
- *relaying*: :meth:`Outbox.relay` claims committed rows, hands them to the queue under the
  row's task name, and deletes them only once the queue accepted them. A relay that dies after
  the hand-off and before the delete hands the same rows off again later; the queue refuses the
  repeated names (``TaskAlreadyExistsError``/``TombstonedTaskError``), which counts as accepted.
  So a committed task reaches the queue once, whatever step a relay dies at.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..exceptions import ConfigError
from ..taskqueue import (
    BadTransactionStateError,
    Error,
    InvalidQueueModeError,
    NewTask,
    PullQueueBackend,
    TaskAlreadyExistsError,
    TaskQueueBackend,
    TombstonedTaskError,
    current_backend,
)
from ..taskqueue._backend import NO_PULL_QUEUES
from ..taskqueue._enqueue import _sink, bind_transaction_sink, reset_transaction_sink
from ._schema import (
    DEFAULT_TABLE,
    Row,
    Statements,
    check_dialect,
    check_table,
    create_table_sql,
    new_task_name,
    row_values,
    to_task,
)

__all__ = ["Outbox", "RelayError", "dialect_of", "notify"]

logger = logging.getLogger("taskhandler.outbox")

_SESSION_SINK = "taskhandler.outbox.sink"
_ACCEPTED = (TaskAlreadyExistsError, TombstonedTaskError)

_wakers_lock = threading.Lock()
_wakers: set[threading.Event] = set()


def notify() -> None:
    """Wake every relay running in this process (called after a commit that wrote tasks)."""
    with _wakers_lock:
        for event in _wakers:
            event.set()


class RelayError(Exception):
    """The queue could not be reached (or raised); the claimed rows stay for a later try."""


def dialect_of(connection: object) -> str:
    """``"sqlite"`` or ``"postgresql"`` for a DB-API connection of a driver the outbox knows."""
    module = type(connection).__module__.split(".")[0]
    if module == "sqlite3":
        return "sqlite"
    if module in ("psycopg", "psycopg2"):
        return "postgresql"
    raise ConfigError(
        "Outbox: cannot tell the database of this connection; pass dialect='sqlite' or "
        "dialect='postgresql'",
        value=type(connection).__name__,
    )


class _Sink:
    """One database transaction taking transactional adds (``TransactionSink``)."""

    def __init__(
        self, outbox: Outbox, execute: Callable[[str, Sequence[tuple[Any, ...]]], None]
    ) -> None:
        self._outbox = outbox
        self._execute = execute
        self.count = 0

    def add(self, records: Sequence[NewTask]) -> list[str]:
        outbox = self._outbox
        outbox._check_queues(records)
        now = time.time()
        names = [new_task_name() for _ in records]
        rows = [row_values(name, record, now) for name, record in zip(names, records, strict=True)]
        self._execute(outbox._insert_for(self), rows)
        self.count += len(rows)
        return names


class _SessionSink(_Sink):
    """The sink of a SQLAlchemy ``Session``'s (or ``Connection``'s) transaction."""

    def __init__(self, outbox: Outbox, connection: Callable[[], Any]) -> None:
        self.connection = connection
        self.dialect: str | None = None
        super().__init__(outbox, self._run)

    def _run(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        conn = self.connection()
        if len(rows) == 1:
            conn.exec_driver_sql(sql, rows[0])
        else:
            conn.exec_driver_sql(sql, list(rows))


class _DbapiSink(_Sink):
    """The sink of a DB-API connection's open transaction."""

    def __init__(self, outbox: Outbox, connection: Any, dialect: str) -> None:
        self.dialect = dialect
        self._connection = connection
        super().__init__(outbox, self._run)

    def _run(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        cursor = self._connection.cursor()
        try:
            if len(rows) == 1:
                cursor.execute(sql, rows[0])
            else:
                cursor.executemany(sql, rows)
        finally:
            cursor.close()


class Outbox:
    """Tasks added if and only if the application's database transaction commits.

    Args:
        db: where the outbox table lives, for the relay and :meth:`create_table`: a SQLAlchemy
            ``Engine``, a SQLAlchemy URL (``"sqlite:///app.db"``,
            ``"postgresql+psycopg://user@host/db"``), or a callable returning a new DB-API
            connection (``lambda: sqlite3.connect("app.db")``). SQLite and PostgreSQL are
            supported.
        backend: the queue the relay hands tasks to (``LocalTaskQueue``, ``CloudTasksBackend``);
            ``None`` means the one installed with ``taskqueue.use()`` when the relay runs.
        table: the outbox table's name.
        dialect: ``"sqlite"`` or ``"postgresql"``, for a ``db`` callable whose connections'
            driver the outbox does not recognise.
        batch_size: rows handed off per claim (at most 100, one ``add()``'s limit).
        poll_interval: seconds between looks at the table when nothing woke the relay (rows
            committed by other processes are found this way).
        lease_seconds: SQLite only: how long a relay holds the rows it claimed; another relay
            takes them over after that (a repeated hand-off is harmless).
        min_backoff, max_backoff: the relay's wait after a failed hand-off doubles from
            ``min_backoff`` up to ``max_backoff`` seconds.
        clock: seconds since the epoch (for backoff and leases).

    Example:
        >>> outbox = Outbox(engine)                                     # doctest: +SKIP
        >>> outbox.create_table()                                      # doctest: +SKIP
        >>> with outbox.transaction(session):                          # doctest: +SKIP
        ...     session.add(order)
        ...     taskqueue.add(url="/tasks/ship", params={"order": order.id}, transactional=True)
        >>> outbox.start()       # relay thread; or `taskhandler relay --db-url URL`
    """

    def __init__(
        self,
        db: Any,
        *,
        backend: TaskQueueBackend | None = None,
        table: str = DEFAULT_TABLE,
        dialect: str | None = None,
        batch_size: int = 100,
        poll_interval: float = 1.0,
        lease_seconds: float = 60.0,
        min_backoff: float = 0.1,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = check_table(table)
        if (
            not isinstance(batch_size, int)
            or isinstance(batch_size, bool)
            or not 1 <= batch_size <= 100
        ):
            raise ConfigError(
                "Outbox batch_size must be an integer from 1 to 100", value=batch_size
            )
        for label, number in (
            ("poll_interval", poll_interval),
            ("lease_seconds", lease_seconds),
            ("min_backoff", min_backoff),
            ("max_backoff", max_backoff),
        ):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number <= 0:
                raise ConfigError(f"Outbox {label} must be a number > 0", value=number)
            if number != number or number == float("inf"):
                raise ConfigError(f"Outbox {label} must be a finite number", value=number)
        if max_backoff < min_backoff:
            raise ConfigError("Outbox max_backoff must be >= min_backoff", value=max_backoff)
        if backend is not None and not isinstance(backend, TaskQueueBackend):
            raise ConfigError("Outbox backend: not a task queue backend", value=backend)
        self.backend = backend
        self.batch_size = batch_size
        self.poll_interval = float(poll_interval)
        self.lease_seconds = float(lease_seconds)
        self.min_backoff = float(min_backoff)
        self.max_backoff = float(max_backoff)
        self._clock = clock
        self._engine: Any = None  # an Engine made here from a URL, disposed by close()
        self._connect, self.dialect = self._database(db, dialect)
        self._statements = {d: Statements(d, self.table) for d in ("sqlite", "postgresql")}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _database(self, db: Any, dialect: str | None) -> tuple[Callable[[], Any], str]:
        if isinstance(db, str):
            try:
                import sqlalchemy
            except ImportError:  # pragma: no cover - the outbox extra installs it
                raise ConfigError(
                    "Outbox(url) needs SQLAlchemy: pip install 'taskhandler[outbox]'", value=db
                ) from None
            try:
                db = self._engine = sqlalchemy.create_engine(db)
            except Exception as exc:
                raise ConfigError(f"Outbox: not a usable database URL ({exc})", value=db) from exc
        raw = getattr(db, "raw_connection", None)
        if raw is not None and hasattr(db, "dialect"):
            return raw, check_dialect(dialect or db.dialect.name)
        if callable(db):
            if dialect is not None:
                return db, check_dialect(dialect)
            probe = db()
            try:
                return db, dialect_of(probe)
            finally:
                with contextlib.suppress(Exception):
                    probe.close()
        raise ConfigError(
            "Outbox db: a SQLAlchemy Engine, a database URL, or a callable returning a DB-API "
            "connection",
            value=db,
        )

    # -- the table -------------------------------------------------------------------------

    def create_table(self) -> None:
        """Create the outbox table and its index if they do not exist."""
        conn = self._connect()
        try:
            cursor = conn.cursor()
            for statement in create_table_sql(self.dialect, self.table):
                cursor.execute(statement)
            conn.commit()
        finally:
            conn.close()

    def create_table_sql(self) -> list[str]:
        """The statements :meth:`create_table` runs (for a migration tool such as Alembic)."""
        return create_table_sql(self.dialect, self.table)

    def pending(self) -> int:
        """How many committed rows wait for the relay."""
        conn = self._connect()
        try:
            cursor = conn.cursor()
            cursor.execute(self._statements[self.dialect].count)
            (count,) = cursor.fetchone()
            conn.rollback()
            return int(count)
        finally:
            conn.close()

    # -- writing ---------------------------------------------------------------------------

    def _insert_for(self, sink: _Sink) -> str:
        dialect = getattr(sink, "dialect", None)
        if dialect is None and isinstance(sink, _SessionSink):
            dialect = check_dialect(sink.connection().dialect.name)
            sink.dialect = dialect
        return self._statements[dialect or self.dialect].insert

    def _check_queues(self, records: Sequence[NewTask]) -> None:
        backend = self.backend
        if backend is None:
            try:
                backend = current_backend()
            except Error:
                return  # no queue in this process: the relay's queue checks the names
        for queue_name, pull in {(r.queue_name, r.method == "PULL") for r in records}:
            if not pull:
                backend.check_queue(queue_name)
            elif isinstance(backend, PullQueueBackend):
                backend.check_pull_queue(queue_name)
            else:
                raise InvalidQueueModeError(NO_PULL_QUEUES.format(backend=type(backend).__name__))

    def bind(self, session: Any) -> Outbox:
        """Bind a SQLAlchemy ``Session`` (or ``sessionmaker``/``scoped_session``) for good.

        From now on, each transaction of the session takes the transactional adds made in
        the thread that began it, and a commit that wrote tasks wakes this process's relays.
        A savepoint (``session.begin_nested()``) that is rolled back drops the tasks added
        inside it, with the rest of its writes. Returns the outbox.
        """
        from sqlalchemy import event

        event.listen(session, "after_transaction_create", self._session_begun)
        event.listen(session, "after_commit", self._session_committed)
        event.listen(session, "after_transaction_end", self._session_ended)
        return self

    def _session_begun(self, session: Any, transaction: Any) -> None:
        if transaction.parent is None:
            sink = _SessionSink(self, session.connection)
            session.info[_SESSION_SINK] = sink
            bind_transaction_sink(sink)

    def _session_committed(self, session: Any) -> None:
        sink = session.info.get(_SESSION_SINK)
        if sink is not None and sink.count:
            notify()

    def _session_ended(self, session: Any, transaction: Any) -> None:
        if transaction.parent is None:
            sink = session.info.pop(_SESSION_SINK, None)
            if sink is not None and _sink.get() is sink:
                bind_transaction_sink(None)

    @contextlib.contextmanager
    def transaction(self, target: Any) -> Iterator[Any]:
        """One transaction that takes the block's transactional adds: committed at the end.

        ``target`` is a SQLAlchemy ``Session``, ``Connection`` or ``Engine``, or a DB-API
        connection (sqlite3, psycopg). The block gets the session or connection to use. If it
        raises, the transaction is rolled back and no task is added.

        Raises:
            BadTransactionStateError: inside another ``transaction()`` block of this context.
        """
        if _sink.get() is not None and not hasattr(target, "get_bind"):
            raise BadTransactionStateError("nested outbox transactions are not supported")
        committed = False
        if hasattr(target, "get_bind") and hasattr(target, "begin_nested"):  # Session
            sink: _Sink = _SessionSink(self, target.connection)
            with target.begin():
                token = bind_transaction_sink(sink)
                try:
                    yield target
                finally:
                    reset_transaction_sink(token)
            committed = True
        elif hasattr(target, "raw_connection"):  # Engine
            with target.begin() as conn:
                sink = _SessionSink(self, lambda: conn)
                token = bind_transaction_sink(sink)
                try:
                    yield conn
                finally:
                    reset_transaction_sink(token)
            committed = True
        elif hasattr(target, "exec_driver_sql"):  # Core Connection
            with target.begin():
                sink = _SessionSink(self, lambda: target)
                token = bind_transaction_sink(sink)
                try:
                    yield target
                finally:
                    reset_transaction_sink(token)
            committed = True
        else:
            dialect = dialect_of(target)
            if dialect == "postgresql" and getattr(target, "autocommit", False):
                raise ConfigError(
                    "Outbox.transaction: the connection is in autocommit mode, so its writes "
                    "would not be one transaction",
                    value=target,
                )
            if dialect == "sqlite" and not target.in_transaction:
                target.execute("BEGIN")
            sink = _DbapiSink(self, target, dialect)
            token = bind_transaction_sink(sink)
            try:
                yield target
            except BaseException:
                reset_transaction_sink(token)
                target.rollback()
                raise
            reset_transaction_sink(token)
            target.commit()
            committed = True
        if committed and sink.count:
            notify()

    @contextlib.contextmanager
    def enlist(self, connection: Any, *, dialect: str | None = None) -> Iterator[None]:
        """Take the block's transactional adds into ``connection``'s open transaction.

        The seam for frameworks that own the transaction (Django's ``transaction.atomic()``):
        the outbox writes through the DB-API ``connection`` and neither commits nor rolls
        back; the caller does, and calls :func:`notify` (``Outbox.notify``) after a commit so
        an in-process relay wakes at once::

            with transaction.atomic():
                with outbox.enlist(django_connection.connection):
                    Order.objects.create(...)
                    taskqueue.add(url="/tasks/ship", transactional=True)
                transaction.on_commit(outbox.notify)
        """
        sink = _DbapiSink(self, connection, check_dialect(dialect or dialect_of(connection)))
        token = bind_transaction_sink(sink)
        try:
            yield
        finally:
            reset_transaction_sink(token)

    @staticmethod
    def notify() -> None:
        """Wake this process's relays now (after a commit that wrote tasks)."""
        notify()

    # -- relaying --------------------------------------------------------------------------

    def relay_once(self, connection: Any = None) -> int:
        """Hand one batch of committed rows to the queue; return how many it accepted.

        Rows the queue refuses (an unknown queue, say) stay, with the error and a backoff.

        Raises:
            RelayError: the queue could not be reached; the rows stay for the next try.
        """
        if connection is not None:
            return self._relay_batch(connection)
        conn = self._connect()
        try:
            return self._relay_batch(conn)
        finally:
            conn.close()

    def relay_until_idle(self) -> int:
        """Relay until no due row is left; return how many were handed off (for tests)."""
        total = 0
        conn = self._connect()
        try:
            while True:
                moved = self._relay_batch(conn)
                total += moved
                if moved == 0:
                    return total
        finally:
            conn.close()

    def _claim(self, conn: Any, now: float) -> list[Row]:
        statements = self._statements[self.dialect]
        cursor = conn.cursor()
        if self.dialect == "postgresql":
            cursor.execute(statements.claim, (now, self.batch_size))
            return [Row(*row) for row in cursor.fetchall()]
        cursor.execute("BEGIN IMMEDIATE")
        try:
            cursor.execute(statements.claim, (now, now, self.batch_size))
            rows = [Row(*row) for row in cursor.fetchall()]
            if rows:
                until = now + self.lease_seconds
                cursor.executemany(statements.lease, [(until, row.id) for row in rows])
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return rows

    def _relay_batch(self, conn: Any) -> int:
        statements = self._statements[self.dialect]
        rows = self._claim(conn, self._clock())
        if not rows:
            conn.rollback()
            return 0
        tasks: list[NewTask] = []
        broken: list[tuple[Row, str]] = []
        for row in rows:
            try:
                tasks.append(to_task(row))
            except (ValueError, TypeError, KeyError) as exc:
                broken.append((row, f"unreadable row: {exc}"))
        good = [row for row in rows if all(row is not b for b, _ in broken)]
        try:
            results = (self.backend or current_backend()).enqueue(tasks) if tasks else []
        except Exception as exc:
            self._release(conn, rows)
            raise RelayError(f"the queue refused the hand-off: {exc!r}") from exc
        accepted: list[Row] = []
        refused = list(broken)
        for row, result in zip(good, results, strict=True):
            if isinstance(result, (str, *_ACCEPTED)):
                accepted.append(row)
            else:
                refused.append((row, f"{type(result).__name__}: {result}"))
        now = self._clock()
        cursor = conn.cursor()
        try:
            if self.dialect == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")
            cursor.executemany(statements.delete, [(row.id,) for row in accepted])
            if refused:
                for row, message in refused:
                    logger.error("outbox: task %s refused by the queue: %s", row.task_name, message)
                cursor.executemany(
                    statements.refused,
                    [
                        (now + self._backoff(row.attempts + 1), message[:2000], row.id)
                        for row, message in refused
                    ],
                )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return len(accepted)

    def _release(self, conn: Any, rows: Sequence[Row]) -> None:
        try:
            if self.dialect == "postgresql":
                conn.rollback()  # the row locks go with the transaction
                return
            cursor = conn.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            cursor.executemany(self._statements["sqlite"].release, [(row.id,) for row in rows])
            conn.commit()
        except Exception:  # the leases expire by themselves
            logger.warning("outbox: could not release claimed rows", exc_info=True)
            with contextlib.suppress(Exception):
                conn.rollback()

    def _backoff(self, attempt: int) -> float:
        return float(min(self.max_backoff, self.min_backoff * 2.0 ** min(attempt - 1, 60)))

    def relay(self, stop: threading.Event | None = None) -> None:
        """Relay until ``stop`` is set (or :meth:`stop` is called): the relay's main loop.

        It hands off whatever is due, then waits for a commit in this process
        (:func:`notify`) or ``poll_interval`` seconds. When the queue or the database fails
        it logs the error and waits ``min_backoff`` seconds, doubling up to ``max_backoff``.
        """
        stop = stop or self._stop
        wake = self._wake
        with _wakers_lock:
            _wakers.add(wake)
        failures = 0
        conn: Any = None
        try:
            while not stop.is_set() and not self._stop.is_set():
                wake.clear()
                try:
                    if conn is None:
                        conn = self._connect()
                    moved = self._relay_batch(conn)
                except Exception as exc:
                    failures += 1
                    delay = self._backoff(failures)
                    logger.warning("outbox relay: %s; next try in %.1f s", exc, delay)
                    if not isinstance(exc, RelayError) and conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                        conn = None
                    stop.wait(delay)
                    continue
                failures = 0
                if moved < self.batch_size:
                    wake.wait(self.poll_interval)
        finally:
            with _wakers_lock:
                _wakers.discard(wake)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def start(self) -> Outbox:
        """Run :meth:`relay` in a daemon thread until :meth:`stop`; returns the outbox."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.relay, name=f"taskhandler-outbox-relay[{self.table}]", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the relay thread (the batch in hand is finished first)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stop the relay thread, and close the connections of an engine made from a URL."""
        self.stop()
        if self._engine is not None:
            self._engine.dispose()

    def __repr__(self) -> str:
        return f"Outbox<{self.dialect} table={self.table!r}>"
