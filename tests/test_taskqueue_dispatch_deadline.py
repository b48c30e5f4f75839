"""The local queue honours a task's own dispatch deadline, as Cloud Tasks does.

A delivery over HTTP or to an ASGI app waits for the answer at most the task's deadline
(``dispatch_deadline_usec``) when it has one, else the queue's ``dispatch_timeout``; past it the
attempt is a failure and is retried. A leased task's lease is twice its own timeout plus a
margin, and is extended when the task waited for longer deliveries before its own.

``Task`` allows deadlines of 15 s to 24 h. So that no test waits 15 s, the short deadlines here
are given through the backend interface, ``LocalTaskQueue.enqueue(NewTask(...,
dispatch_deadline=0.2))``, which takes any number of seconds above 0. The handlers that
outlast a deadline do not sleep: they wait until the queue gives up on them (the HTTP client
closes its connection, the ASGI coroutine is cancelled) or another handler releases them, with
a guard so a broken queue fails the test instead of hanging it.

The deadline bounds the whole delivery, not each wait: raw-socket servers that dribble their
answer, or close a kept-alive connection late, and ASGI apps that ignore their cancellation or
block the event loop, all see the delivery end as a timeout before they are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import math
import select
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhandler import taskqueue
from taskhandler.taskqueue import (
    InvalidDispatchDeadlineError,
    LocalTaskQueue,
    ManualClock,
    NewTask,
    QueueConfig,
    Task,
)

NOW = 1_700_000_000.0
GUARD = 10.0  # real seconds a held handler waits at most before it answers 200 anyway
SHORT = 0.2  # seconds: a deadline (or dispatch_timeout) the held handlers outlast
FAST = [QueueConfig("default", rate=200, bucket_size=50)]
QUEUES = [*FAST, QueueConfig("pull-queue", mode="pull")]
LEASE_MARGIN = 60.0  # seconds a lease outlives twice its task's timeout ("plus a minute")


def new_task(name: str, deadline: float | None, *, method: str = "POST") -> NewTask:
    """A push task for ``/hold/<name>`` (or a pull task), with its own dispatch deadline."""
    pull = method == "PULL"
    return NewTask(
        queue_name="pull-queue" if pull else "default",
        task_name=name,
        method=method,
        url="" if pull else f"/hold/{name}",
        headers=(),
        payload=b"x",
        eta=NOW,
        target=None,
        retry=None,
        dispatch_deadline=deadline,
    )


# -- handlers that outlast a deadline: until the queue gives up on them ----------------------


class Held:
    """What the held handlers saw: the tasks whose delivery the queue gave up on."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._gave_up: set[str] = set()

    def given_up(self, name: str) -> None:
        with self._changed:
            self._gave_up.add(name)
            self._changed.notify_all()

    def gave_up(self, expected: set[str]) -> set[str]:
        """The tasks given up on, once ``expected`` are among them (a server thread notices a
        closed connection a moment after the queue closed it), or after :data:`GUARD`."""
        with self._changed:
            self._changed.wait_for(lambda: expected <= self._gave_up, GUARD)
            return set(self._gave_up)


class HoldServer(Held):
    """A real HTTP server on 127.0.0.1: ``/hold/<name>`` answers 200 only once released.

    A request is released when the queue gives up on another one (its client closes the
    connection), or after :data:`GUARD`. One given up is recorded, and gets no answer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if outer.wait_for_release(self.connection):
                    body = b"ok"
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    outer.given_up(name)
                    outer.released.set()
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def wait_for_release(self, conn: socket.socket) -> bool:
        """True once released (or after the guard); False when the client closed the
        connection first (the queue gave up)."""
        for _ in range(int(GUARD / 0.02)):
            if self.released.wait(0.01):
                return True
            readable, _, _ = select.select([conn], [], [], 0.01)
            if readable:
                try:
                    if conn.recv(1, socket.MSG_PEEK) == b"":
                        return False
                except OSError:  # reset rather than closed: gone all the same
                    return False
        return True

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class HoldApp(Held):
    """An ASGI app: ``/hold/<name>`` answers 200 only once released.

    A request is released when the queue cancels another one, or after :data:`GUARD`. One
    cancelled is recorded.
    """

    def __init__(self) -> None:
        super().__init__()
        self._released: asyncio.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._released is None:
            self._released = asyncio.Event()  # on the queue's event loop
        released = self._released
        name = scope["path"].rsplit("/", 1)[-1]
        await receive()
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(released.wait(), GUARD)
        except asyncio.CancelledError:
            self.given_up(name)
            released.set()
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=["http", "asgi"])
def held(request: pytest.FixtureRequest) -> Iterator[tuple[object, Held]]:
    """(the queue's target, what its held handlers saw): a real HTTP server, or an ASGI app."""
    if request.param == "http":
        server = HoldServer()
        try:
            yield server.url, server
        finally:
            server.close()
    else:
        app = HoldApp()
        yield app, app


@pytest.mark.parametrize(
    ("dispatch_timeout", "deadlines", "timed_out"),
    [
        pytest.param(
            60.0,
            {"short": SHORT},
            {"short"},
            id="a deadline shorter than dispatch_timeout ends the wait",
        ),
        pytest.param(
            SHORT,
            {"plain": None, "long": 30.0},
            {"plain"},
            id="a deadline longer than dispatch_timeout is waited for; none: dispatch_timeout",
        ),
    ],
)
def test_delivery_waits_for_the_tasks_own_deadline(
    tmp_path: Path,
    held: tuple[object, Held],
    dispatch_timeout: float,
    deadlines: dict[str, float | None],
    timed_out: set[str],
) -> None:
    """A delivery is given up after the task's deadline (else dispatch_timeout) and retried."""
    target, seen = held
    with LocalTaskQueue(
        target,
        db=tmp_path / "q.sqlite3",
        queues=FAST,
        clock=ManualClock(NOW),
        dispatch_timeout=dispatch_timeout,
        workers=4,
    ) as q:
        q.enqueue([new_task(name, deadline) for name, deadline in deadlines.items()], atomic=True)
        assert q.run_due(timeout=3 * GUARD) == len(deadlines)
        retried = {
            t.task_name: (t.retry_count, t.execution_count, t.retry_reason) for t in q.tasks()
        }
        done = q.counts()["default"]["done"]
    timeouts = {name: deadlines[name] or dispatch_timeout for name in timed_out}
    assert retried == {name: (1, 1, f"timeout after {timeouts[name]:g}s") for name in timed_out}
    assert done == len(deadlines) - len(timed_out)
    assert seen.gave_up(timed_out) == timed_out


# -- servers and apps that drag a delivery out: it still ends at its deadline ------------------

DRAGGED = 1.0  # seconds: the deadline of the tasks the servers and apps below drag out
STEP = 0.05  # seconds between two bytes a dribbling server sends
DRIBBLED = int(GUARD / STEP)  # bytes: sent one by one, they take the whole guard
HOLD = 0.6  # seconds a kept-alive connection holds a request before it closes without answer
LATE = 0.8  # seconds a fresh connection waits before it answers: more than DRAGGED - HOLD
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def read_request(conn: socket.socket) -> bool:
    """Read one request, head and body; False when the client closed the connection instead."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        body += chunk
    return True


def closed_within(conn: socket.socket, seconds: float) -> bool:
    """True when the client closes (or resets) the connection within ``seconds``."""
    readable, _, _ = select.select([conn], [], [], seconds)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class RawServer:
    """An HTTP/1.1 server on 127.0.0.1 made of raw sockets, so it can answer as slowly as it
    likes: ``serve(server, conn, index)`` answers the ``index``-th connection (from 0) in a
    thread of its own. ``cut`` is set when the client went away before the server was done."""

    def __init__(self, serve: Callable[[RawServer, socket.socket, int], None]) -> None:
        self.serve = serve
        self.stop = threading.Event()
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        index = 0
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn, index), daemon=True)
            self.threads.append(thread)
            thread.start()
            index += 1

    def _serve(self, conn: socket.socket, index: int) -> None:
        with conn:
            conn.settimeout(GUARD)
            try:
                self.serve(self, conn, index)
            except OSError:  # reset, or a broken pipe: the client went away
                self.cut.set()

    def dribble(self, conn: socket.socket, data: bytes) -> None:
        """Send ``data`` one byte every :data:`STEP` (until the test ends)."""
        for byte in data:
            if self.stop.wait(STEP):
                return
            conn.send(bytes([byte]))

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)
        self.listener.close()


def dribbles_the_head(server: RawServer, conn: socket.socket, index: int) -> None:
    """A 200 whose head comes one byte at a time, over the whole guard."""
    if read_request(conn):
        pad = b"a" * DRIBBLED
        server.dribble(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Pad: " + pad + b"\r\n\r\n")


def dribbles_the_body(server: RawServer, conn: socket.socket, index: int) -> None:
    """A 200 whose head comes at once, and its body one byte at a time over the whole guard."""
    if read_request(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % DRIBBLED)
        server.dribble(conn, b"x" * DRIBBLED)


def closes_kept_alive_then_answers_late(server: RawServer, conn: socket.socket, index: int) -> None:
    """The first connection answers its first request, holds its second :data:`HOLD` and
    closes; a fresh connection answers after :data:`LATE` (past what is left of the deadline,
    within a whole one)."""
    if index == 0:
        if read_request(conn):
            conn.sendall(OK)
        if read_request(conn):
            closed_within(conn, HOLD)
    elif read_request(conn):
        if closed_within(conn, LATE):
            server.cut.set()
        else:
            conn.sendall(OK)


def answers(server: RawServer, conn: socket.socket, index: int) -> None:
    """200 at once, to every request of the connection."""
    while read_request(conn):
        conn.sendall(OK)


@pytest.mark.parametrize(
    ("serve", "tasks"),
    [
        pytest.param(dribbles_the_head, 1, id="server dribbles the response head"),
        pytest.param(dribbles_the_body, 1, id="server dribbles the response body"),
        pytest.param(
            closes_kept_alive_then_answers_late,
            2,
            id="kept-alive connection closed late: the fresh one gets only what is left",
        ),
    ],
)
def test_http_delivery_ends_at_its_deadline(
    tmp_path: Path, serve: Callable[[RawServer, socket.socket, int], None], tasks: int
) -> None:
    """However slowly the server answers, the delivery ends at the task's deadline, before the
    server is done, as a timeout that is retried."""
    server = RawServer(serve)
    try:
        with LocalTaskQueue(
            server.url, db=tmp_path / "q.sqlite3", queues=FAST, clock=ManualClock(NOW), workers=1
        ) as q:
            q.enqueue([new_task(f"t{i}", DRAGGED) for i in range(tasks)], atomic=True)
            assert q.run_due(timeout=3 * GUARD) == tasks
            retried = [(t.retry_count, t.execution_count, t.retry_reason) for t in q.tasks()]
            done = q.counts()["default"]["done"]
        cut = server.cut.wait(GUARD)
    finally:
        server.close()
    assert retried == [(1, 1, f"timeout after {DRAGGED:g}s")]
    assert done == tasks - 1
    assert cut, "the delivery lasted as long as the server's answer"


class StubbornApp:
    """An ASGI app that outlasts its deadline: it swallows ``CancelledError`` and keeps
    awaiting, or it blocks the event loop; until the test releases it, or :data:`GUARD`."""

    def __init__(self, *, blocks: bool) -> None:
        self.blocks = blocks
        self.release = threading.Event()
        self.finished = threading.Event()
        self.outlasted_guard = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        if self.blocks:
            self.release.wait(GUARD)  # no await: the queue's event loop is blocked
        else:
            for _ in range(int(GUARD / 0.01)):
                if self.release.is_set():
                    break
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.01)
        self.outlasted_guard = not self.release.is_set()
        self.finished.set()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(
    "blocks",
    [
        pytest.param(False, id="app swallows CancelledError and keeps awaiting"),
        pytest.param(True, id="app blocks the event loop"),
    ],
)
def test_asgi_delivery_ends_at_its_deadline(tmp_path: Path, blocks: bool) -> None:
    """An app that ignores its cancellation or blocks the loop still has its delivery end (the
    deadline plus a grace), before the app is done, as a timeout that is retried."""
    app = StubbornApp(blocks=blocks)
    with LocalTaskQueue(
        app, db=tmp_path / "q.sqlite3", queues=FAST, clock=ManualClock(NOW), workers=1
    ) as q:
        try:
            q.enqueue([new_task("stubborn", SHORT)], atomic=True)
            assert q.run_due(timeout=3 * GUARD) == 1
            retried = [(t.retry_count, t.execution_count, t.retry_reason) for t in q.tasks()]
        finally:
            app.release.set()
            app.finished.wait(GUARD)  # so the queue's loop stops with no task left on it
    assert retried == [(1, 1, f"timeout after {SHORT:g}s")]
    assert not app.outlasted_guard, "the delivery lasted as long as the app"


async def answers_at_once(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app: 200."""
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(
    ("kind", "deadline"),
    [
        pytest.param("http", 1e11, id="http 1e11 s"),
        pytest.param("http", 1e300, id="http 1e300 s"),
        pytest.param("asgi", 1e11, id="asgi 1e11 s"),
    ],
)
def test_deadline_beyond_24_hours_is_waited_as_24_hours(
    tmp_path: Path, kind: str, deadline: float
) -> None:
    """A deadline longer than any wait a socket or lock takes (the backend takes any number
    above 0) is cut to 24 hours: the delivery goes through."""
    server = RawServer(answers) if kind == "http" else None
    target = server.url if server is not None else answers_at_once
    try:
        with LocalTaskQueue(
            target, db=tmp_path / "q.sqlite3", queues=FAST, clock=ManualClock(NOW)
        ) as q:
            q.enqueue([new_task("long", deadline)], atomic=True)
            assert q.run_due(timeout=3 * GUARD) == 1
            left = [(t.retry_count, t.retry_reason) for t in q.tasks()]
            done = q.counts()["default"]["done"]
    finally:
        if server is not None:
            server.close()
    assert (left, done) == ([], 1)


# -- the lease: from the task's own timeout --------------------------------------------------


class LeaseReader:
    """A WSGI app that reads, while it runs, the lease of its own task from the queue file."""

    def __init__(self, db: Path, clock: ManualClock) -> None:
        self.db = db
        self.clock = clock
        self.leases: dict[str, float] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        name = environ["HTTP_X_APPENGINE_TASKNAME"]
        conn = sqlite3.connect(self.db)
        try:
            (expires,) = conn.execute(
                "SELECT lease_expires FROM tasks WHERE name=? AND state='leased'", (name,)
            ).fetchone()
        finally:
            conn.close()
        self.leases[name] = expires - self.clock()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


@pytest.mark.parametrize(
    ("dispatch_timeout", "deadline_usec", "with_deadline", "without"),
    [
        pytest.param(10, 20_000_000, 2 * 20, 2 * 10, id="20 s task, 10 s dispatch_timeout"),
        pytest.param(600, 86_400_000_000, 2 * 86_400, 2 * 600, id="24 h task, default timeout"),
        pytest.param(30, 900_000_000, 2 * 900, 2 * 30, id="15 min task, 30 s dispatch_timeout"),
        pytest.param(
            600, 20_000_000, 2 * 600, 2 * 600, id="20 s task, in-process: dispatch_timeout at least"
        ),
    ],
)
def test_lease_lasts_twice_the_tasks_own_timeout(
    tmp_path: Path,
    dispatch_timeout: float,
    deadline_usec: int,
    with_deadline: float,
    without: float,
) -> None:
    """A task is leased for 2 x its dispatch deadline + the margin (called in-process, as here,
    at least dispatch_timeout); one without a deadline for 2 x dispatch_timeout + the margin."""
    db = tmp_path / "q.sqlite3"
    clock = ManualClock(NOW)
    app = LeaseReader(db, clock)
    with (
        LocalTaskQueue(
            app, db=db, queues=FAST, clock=clock, dispatch_timeout=dispatch_timeout
        ) as q,
        taskqueue.use(q),
    ):
        Task(url="/t", name="own", dispatch_deadline_usec=deadline_usec).add()
        Task(url="/t", name="plain").add()
        assert q.run_due(timeout=20) == 2
    assert app.leases == {"own": with_deadline + LEASE_MARGIN, "plain": without + LEASE_MARGIN}


class LongThenShort:
    """A WSGI app: ``/long`` moves the clock 2000 s on (a long delivery), and with
    ``other_opens_during_long`` a second queue opens the file then, as another process would;
    ``/quick`` opens a second queue, then records the state and lease left of its own row."""

    def __init__(self, db: Path, clock: ManualClock, *, other_opens_during_long: bool) -> None:
        self.db = db
        self.clock = clock
        self.other_opens_during_long = other_opens_during_long
        self.delivered: list[str] = []
        self.quick_row: tuple[str, float] | None = None

    def other_process(self) -> None:
        """Open (and close) the file again: opening releases leases that have expired."""
        with LocalTaskQueue(lambda e, s: [], db=self.db, queues=FAST, clock=self.clock):
            pass

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        self.delivered.append(path)
        if path == "/long":
            self.clock.advance(2000)
            if self.other_opens_during_long:
                self.other_process()
        else:
            self.other_process()
            conn = sqlite3.connect(self.db)
            try:
                row = conn.execute(
                    "SELECT state, lease_expires FROM tasks WHERE name='quick'"
                ).fetchone()
            finally:
                conn.close()
            self.quick_row = (row[0], row[1] - self.clock())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


def test_lease_is_extended_for_a_task_that_waited_behind_a_long_delivery(tmp_path: Path) -> None:
    """A 20 s task that waited 2000 s for the one worker still holds its lease when it runs:
    another process opening the file does not take it, and it ends done."""
    db = tmp_path / "q.sqlite3"
    clock = ManualClock(NOW)
    app = LongThenShort(db, clock, other_opens_during_long=False)
    with (
        LocalTaskQueue(app, db=db, queues=FAST, clock=clock, workers=1, dispatch_timeout=10) as q,
        taskqueue.use(q),
    ):
        Task(url="/long", name="long", dispatch_deadline_usec=86_400_000_000).add()
        Task(url="/quick", name="quick", dispatch_deadline_usec=20_000_000).add()
        assert q.run_due(timeout=20) == 2
        assert q.tasks() == []
    assert app.quick_row == ("leased", 20 + LEASE_MARGIN)


def test_task_whose_lease_was_released_while_it_waited_is_delivered_once(tmp_path: Path) -> None:
    """A 20 s task whose lease expired, and was released by another process, while it waited
    for the worker is not delivered on the lost lease: it is leased again and delivered once."""
    db = tmp_path / "q.sqlite3"
    clock = ManualClock(NOW)
    app = LongThenShort(db, clock, other_opens_during_long=True)
    with (
        LocalTaskQueue(app, db=db, queues=FAST, clock=clock, workers=1, dispatch_timeout=10) as q,
        taskqueue.use(q),
    ):
        Task(url="/long", name="long", dispatch_deadline_usec=86_400_000_000).add()
        Task(url="/quick", name="quick", dispatch_deadline_usec=20_000_000).add()
        q.run_due(timeout=20)
        assert q.tasks() == []
        assert q.counts()["default"]["done"] == 2
    assert app.delivered == ["/long", "/quick"]
    assert app.quick_row == ("leased", 2 * 20 + LEASE_MARGIN)


# -- what the local queue accepts --------------------------------------------------------------


@pytest.mark.parametrize(
    "deadline",
    [
        pytest.param(0.0, id="zero"),
        pytest.param(-1.0, id="negative"),
        pytest.param(math.nan, id="not a number"),
        pytest.param(math.inf, id="infinite"),
        pytest.param("30", id="text"),
        pytest.param(True, id="a bool"),
    ],
)
def test_bad_dispatch_deadline_is_refused(tmp_path: Path, deadline: Any) -> None:
    """A push task's dispatch deadline must be seconds above 0; nothing is stored otherwise."""
    with LocalTaskQueue(lambda e, s: [], db=tmp_path / "q.sqlite3", queues=FAST) as q:
        (result,) = q.enqueue([new_task("bad", deadline)])
        assert isinstance(result, InvalidDispatchDeadlineError)
        with pytest.raises(InvalidDispatchDeadlineError):
            q.enqueue([new_task("bad", deadline)], atomic=True)
        assert q.tasks() == []


@pytest.mark.parametrize(
    ("make", "stored"),
    [
        pytest.param(
            lambda: Task(url="/t", name="t", dispatch_deadline_usec=15_000_000),
            15.0,
            id="Task at the 15 s minimum",
        ),
        pytest.param(
            lambda: Task(url="/t", name="t", dispatch_deadline_usec=86_400_000_000),
            86_400.0,
            id="Task at the 24 h maximum",
        ),
        pytest.param(lambda: Task(url="/t", name="t"), None, id="Task without a deadline"),
        pytest.param(
            lambda: Task(payload="p", name="t", method="PULL", dispatch_deadline_usec=60_000_000),
            None,
            id="a pull task has none",
        ),
    ],
)
def test_dispatch_deadline_is_stored_in_the_file(
    tmp_path: Path, make: Callable[[], Task], stored: float | None
) -> None:
    """The task's deadline is kept in seconds across a restart; a pull task keeps none."""
    db = tmp_path / "q.sqlite3"
    task = make()
    queue_name = "pull-queue" if task.method == "PULL" else "default"
    with LocalTaskQueue(lambda e, s: [], db=db, queues=QUEUES) as q, taskqueue.use(q):
        task.add(queue_name)
    with LocalTaskQueue(lambda e, s: [], db=db, queues=QUEUES) as q:
        assert [t.dispatch_deadline for t in q.tasks(queue_name)] == [stored]
