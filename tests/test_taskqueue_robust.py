"""The local queue's storage under trouble: concurrent opens, a full disk, locks, foreign files.

Everything is real: SQLite files; eight processes opening the same new file at once; another
SQLite connection holding the write lock past the queue's busy timeout; a small tmpfs filled to
the last page (mounted for the test when the system allows it, skipped otherwise) and SQLite's
own ``max_page_count`` limit, which both give SQLite's real ``SQLITE_FULL``.
"""

from __future__ import annotations

import errno
import logging
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taskhandler import taskqueue
from taskhandler.exceptions import ConfigError
from taskhandler.taskqueue import LocalTaskQueue, ManualClock, QueueConfig, Task
from tests.lockstep import run_in_lockstep

ROOT = Path(__file__).resolve().parent.parent
QUEUES = [QueueConfig("default", rate=1000, bucket_size=100)]
WAIT = 60.0  # real seconds to wait for something that should happen promptly, before failing
BIG = b"x" * 50_000  # a payload that needs fresh pages in the database and its WAL
NOW = 1_700_000_000.0


class Recorder:
    """A WSGI app that records (task name, retry count) per delivery; ``on_call`` runs first."""

    def __init__(self, on_call: Callable[[str], None] | None = None) -> None:
        self.on_call = on_call
        self.calls: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        name = environ["HTTP_X_APPENGINE_TASKNAME"]
        if self.on_call is not None:
            self.on_call(name)
        with self.lock:
            self.calls.append((name, int(environ["HTTP_X_APPENGINE_TASKRETRYCOUNT"])))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]


class LogWatch(logging.Handler):
    """Collects the queue logger's records; ``wait_for`` blocks until one matches."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def warnings(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno >= logging.WARNING]

    def wait_for(self, text: str, level: int = logging.WARNING) -> logging.LogRecord:
        def match() -> logging.LogRecord | None:
            return next(
                (r for r in self.records if r.levelno == level and text in r.getMessage()), None
            )

        with self.changed:
            if not self.changed.wait_for(lambda: match() is not None, timeout=WAIT):
                pytest.fail(
                    f"no log record with {text!r}: {[r.getMessage() for r in self.records]}"
                )
            found = match()
            assert found is not None
            return found


@pytest.fixture
def log() -> Iterator[LogWatch]:
    logger = logging.getLogger("taskhandler.taskqueue")
    watch = LogWatch()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(level)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail after WAIT seconds (a hang guard, not a timing)."""
    end = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"still waiting for {what}")
        time.sleep(0.01)


@dataclass
class SmallDisk:
    """A tmpfs of a few MiB mounted for one test: ``fill()`` it to the last page, ``free()`` it."""

    root: Path

    @property
    def ballast(self) -> Path:
        return self.root / "ballast"

    def fill(self) -> None:
        with self.ballast.open("ab", buffering=0) as f:
            while True:
                try:
                    f.write(b"\0" * 65536)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    return

    def free(self) -> None:
        self.ballast.unlink()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 4 MiB tmpfs in the test's directory, unmounted at the end; skipped if mount is refused."""
    mount = shutil.which("mount")
    if sys.platform != "linux" or mount is None:
        pytest.skip("filling a real disk needs Linux tmpfs and the mount command")
    root = tmp_path / "small-disk"
    root.mkdir()
    proc = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(
            "cannot mount a small tmpfs to fill up (needs root or CAP_SYS_ADMIN): "
            + (proc.stderr.strip() or f"exit status {proc.returncode}")
        )
    try:
        yield SmallDisk(root)
    finally:
        if subprocess.run(["umount", str(root)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], check=False)


class LockHolder:
    """Another SQLite connection to the queue's file that takes and releases its write lock."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.conn: sqlite3.Connection | None = None

    def take(self) -> None:
        self.conn = sqlite3.connect(self.db, isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self.conn is not None:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None


@dataclass
class Trouble:
    """A storage condition a test starts and clears, and what the queue must report for it."""

    db: Path
    start: Callable[[LocalTaskQueue], None]
    clear: Callable[[LocalTaskQueue], None]
    reason: str
    error: type[taskqueue.Error]


def _set_page_limit(q: LocalTaskQueue, pages: int | None) -> None:
    # max_page_count belongs to a connection, so this one reaches into the queue's own.
    store = q._store
    with store.lock:
        conn = store.connection
        if pages is None:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")


def make_trouble(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Trouble:
    if kind == "disk full":
        disk: SmallDisk = request.getfixturevalue("small_disk")
        return Trouble(
            disk.root / "queue.sqlite3",
            lambda q: disk.fill(),
            lambda q: disk.free(),
            "SQLITE_FULL",
            taskqueue.TransientError,
        )
    if kind == "page limit":
        return Trouble(
            tmp_path / "queue.sqlite3",
            lambda q: _set_page_limit(q, None),
            lambda q: _set_page_limit(q, 1_000_000),
            "SQLITE_FULL",
            taskqueue.TransientError,
        )
    assert kind == "write lock held"
    holder = LockHolder(tmp_path / "queue.sqlite3")
    request.addfinalizer(holder.release)
    return Trouble(
        holder.db,
        lambda q: holder.take(),
        lambda q: holder.release(),
        "SQLITE_BUSY",
        taskqueue.TransientError,
    )


def open_queue(app: object, db: Path, **kwargs: Any) -> LocalTaskQueue:
    kwargs.setdefault("queues", QUEUES)
    return LocalTaskQueue(app, db=db, busy_timeout=0.05, poll_interval=0.05, **kwargs)


def _check_storage_error(exc: taskqueue.Error, trouble: Trouble, doing: str) -> None:
    assert isinstance(exc, trouble.error)
    assert isinstance(exc, (taskqueue.TransientError, taskqueue.InternalError))
    message = str(exc)
    assert doing in message
    assert str(trouble.db) in message
    assert trouble.reason in message
    assert exc.path == str(trouble.db)
    assert exc.reason is not None and exc.reason.startswith(trouble.reason)
    assert isinstance(exc.__cause__, sqlite3.Error)


# -- 1. many processes creating the same new file ------------------------------------------

OPENER = textwrap.dedent(
    """
    import os, signal, sys
    from taskhandler import taskqueue
    from taskhandler.taskqueue import LocalTaskQueue, QueueConfig

    if hasattr(signal, "alarm"):
        signal.alarm(300)  # never outlive a stuck test
    directory, rounds, worker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    queues = [QueueConfig("default", rate=1000, bucket_size=100)]
    for r in range(rounds):
        print("ready", flush=True)
        sys.stdin.readline()  # the parent's "go", sent to every opener at once
        try:
            db = os.path.join(directory, f"round-{r}.sqlite3")
            with LocalTaskQueue(lambda e, s: [], db=db, queues=queues) as q, taskqueue.use(q):
                taskqueue.add(url="/open", name=f"worker-{worker}")
            print("ok", flush=True)
        except Exception as exc:
            print(f"round {r}: {type(exc).__name__}: {exc}".replace("\\n", " "), flush=True)
    """
)


@pytest.mark.parametrize(
    "existing",
    [
        pytest.param(False, id="the file does not exist yet"),
        pytest.param(True, id="the file exists with zero length"),
    ],
)
def test_processes_creating_one_file_at_once_all_succeed(tmp_path: Path, existing: bool) -> None:
    """Eight processes opening the same new database at once all succeed, round after round."""
    openers, rounds = 8, 40
    if existing:
        for r in range(rounds):
            (tmp_path / f"round-{r}.sqlite3").touch()
    failures = run_in_lockstep(OPENER, [str(tmp_path), str(rounds)], openers, rounds)
    assert failures == []
    for r in range(rounds):
        with LocalTaskQueue(lambda e, s: [], db=tmp_path / f"round-{r}.sqlite3") as q:
            names = sorted(t.task_name for t in q.tasks())
        assert names == sorted(f"worker-{w}" for w in range(openers)), f"round {r}"


# -- 4. a file that is not ours is refused and left as it was -----------------------------


def _sqlite_file(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        conn.execute(statement)
    conn.close()


FOREIGN = [
    pytest.param(
        lambda p: _sqlite_file(
            p, "CREATE TABLE users (id INTEGER)", "INSERT INTO users VALUES (1)"
        ),
        "not a taskhandler queue database",
        id="another application's SQLite database",
    ),
    pytest.param(
        lambda p: _sqlite_file(
            p, "PRAGMA journal_mode=WAL", "CREATE TABLE users (id INTEGER)", "PRAGMA user_version=3"
        ),
        "not a taskhandler queue database",
        id="another application's SQLite database in WAL mode",
    ),
    pytest.param(
        lambda p: _sqlite_file(p, "CREATE TABLE tasks (id INTEGER)", "PRAGMA user_version=7"),
        "another schema version",
        id="a tasks table of another schema version",
    ),
    pytest.param(
        lambda p: _sqlite_file(p, "CREATE VIEW answers AS SELECT 42"),
        "not a taskhandler queue database",
        id="a SQLite database with only a view",
    ),
    pytest.param(
        lambda p: p.write_text("name,amount\nblue,1\n" * 50),
        "not a SQLite database",
        id="a text file",
    ),
    pytest.param(lambda p: p.write_bytes(b"hi"), "not a SQLite database", id="a two-byte file"),
    pytest.param(
        lambda p: p.write_bytes(b"SQLite format 3\x00"),
        "not a SQLite database",
        id="the SQLite header alone",
    ),
]


@pytest.mark.parametrize(("make", "says"), FOREIGN)
def test_foreign_file_is_refused_and_left_unchanged(
    tmp_path: Path, make: Callable[[Path], None], says: str
) -> None:
    """A file that is not a queue database is refused by name, byte for byte unchanged."""
    db = tmp_path / "theirs.db"
    make(db)
    before = db.read_bytes()
    files = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError) as info:
        LocalTaskQueue(Recorder(), db=db)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # no -wal, -shm or -journal
    assert str(db) in str(info.value)
    assert says in str(info.value)
    assert "left unchanged" in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: None, id="no file"),
        pytest.param(lambda p: p.touch(), id="a zero-length file"),
        pytest.param(lambda p: _sqlite_file(p, "VACUUM"), id="an empty SQLite database"),
    ],
)
def test_new_database_is_created(tmp_path: Path, make: Callable[[Path], None]) -> None:
    """A missing, zero-length or schema-less SQLite file becomes a queue database."""
    db = tmp_path / "new.sqlite3"
    make(db)
    app = Recorder()
    with LocalTaskQueue(app, db=db) as q, taskqueue.use(q):
        taskqueue.add(url="/t", name="first")
        q.run_until_idle(timeout=WAIT)
    assert app.calls == [("first", 0)]
    with (  # and it is ours when reopened
        LocalTaskQueue(app, db=db) as q,
        taskqueue.use(q),
        pytest.raises(taskqueue.TombstonedTaskError),
    ):
        taskqueue.add(url="/t", name="first")


def test_read_only_file_system_is_a_config_error(small_disk: SmallDisk) -> None:
    """A queue file on a read-only file system is refused at construction, naming file and reason."""
    db = small_disk.root / "queue.sqlite3"
    LocalTaskQueue(Recorder(), db=db).close()
    before = db.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk.root)], check=True)
    with pytest.raises(ConfigError, match=r"queue\.sqlite3.*SQLITE_"):
        LocalTaskQueue(Recorder(), db=db)
    assert db.read_bytes() == before


# -- 3. add() raises taskqueue errors ----------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("write lock held", id="locked by another connection past busy_timeout"),
        pytest.param("disk full", id="disk full (a filled tmpfs)"),
        pytest.param("page limit", id="database full (SQLite max_page_count)"),
    ],
)
def test_add_raises_a_taskqueue_error(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    """add() fails with TransientError naming the file and SQLite's reason; nothing half stored."""
    trouble = make_trouble(kind, request, tmp_path)
    app = Recorder()
    with open_queue(app, trouble.db) as q, taskqueue.use(q):
        taskqueue.add(url="/t", name="before", payload=BIG)
        trouble.start(q)
        with pytest.raises(taskqueue.Error) as info:
            taskqueue.Queue().add(
                [Task(url="/t", name="during-1", payload=BIG), Task(url="/t", payload=BIG)]
            )
        _check_storage_error(info.value, trouble, "storing 2 task(s)")
        assert [t.task_name for t in q.tasks()] == ["before"]
        trouble.clear(q)
        taskqueue.add(url="/t", name="during-1", payload=BIG)  # the name was never taken
        assert q.run_until_idle(timeout=WAIT) == 2
    assert sorted(app.calls) == [("before", 0), ("during-1", 0)]


def test_deleted_database_file_is_an_internal_error(tmp_path: Path) -> None:
    """After its file is deleted, add() raises InternalError instead of writing into a lost WAL."""
    db = tmp_path / "queue.sqlite3"
    with open_queue(Recorder(), db) as q, taskqueue.use(q):
        taskqueue.add(url="/t", name="before")
        db.unlink()
        with pytest.raises(taskqueue.InternalError, match=r"queue\.sqlite3.*DBMOVED") as info:
            taskqueue.add(url="/t", name="after")
        assert info.value.path == str(db)
        assert [t.task_name for t in q.tasks()] == ["before"]


# -- 2 and 5. the dispatcher rides out storage trouble --------------------------------------


TROUBLES = [
    pytest.param("write lock held", id="write lock held past busy_timeout"),
    pytest.param("disk full", id="disk full"),
]


@pytest.mark.parametrize("kind", TROUBLES)
def test_dispatcher_waits_out_trouble_while_leasing(
    request: pytest.FixtureRequest, tmp_path: Path, log: LogWatch, kind: str
) -> None:
    """Leasing fails: one WARNING line, add() refuses, and once cleared every task runs once."""
    trouble = make_trouble(kind, request, tmp_path)
    app = Recorder()
    names = [f"task-{i}" for i in range(5)]
    with open_queue(app, trouble.db) as q, taskqueue.use(q):
        taskqueue.Queue().add([Task(url="/t", name=n) for n in names])
        trouble.start(q)
        q.start()
        record = log.wait_for("leasing tasks")
        message = record.getMessage()
        assert str(trouble.db) in message and trouble.reason in message
        assert "\n" not in message and record.exc_info is None
        assert q.running
        assert q.counts()["default"]["pending"] == 5
        with pytest.raises(trouble.error):
            taskqueue.add(url="/t", name="during", payload=BIG)
        trouble.clear(q)
        taskqueue.add(url="/t", name="after")
        wait_until(lambda: len(app.calls) == 6, "every task delivered")
        log.wait_for("can use", level=logging.INFO)
        q.stop()
        assert q.tasks() == []
    assert sorted(app.calls) == [(n, 0) for n in sorted([*names, "after"])]
    assert len(log.warnings()) == 1  # one line for the whole outage, not one per retry


@pytest.mark.parametrize("kind", TROUBLES)
def test_dispatcher_keeps_an_outcome_it_cannot_record(
    request: pytest.FixtureRequest, tmp_path: Path, log: LogWatch, kind: str
) -> None:
    """Recording a finished delivery fails: it is recorded later, never delivered twice."""
    trouble = make_trouble(kind, request, tmp_path)
    queues: list[LocalTaskQueue] = []
    # The handler itself fills the disk or takes the lock, so the delivery ends first.
    app = Recorder(on_call=lambda name: trouble.start(queues[0]) if name == "first" else None)
    with open_queue(app, trouble.db) as q, taskqueue.use(q):
        queues.append(q)
        taskqueue.add(url="/t", name="first")
        q.start()
        # The outage's one warning names whichever write met it first: recording the
        # outcome, or (on a busy machine) the dispatcher's next look for due tasks.
        log.wait_for(trouble.reason)
        assert app.calls == [("first", 0)]
        assert q.counts()["default"]["leased"] == 1  # not lost, not yet marked
        trouble.clear(q)
        taskqueue.add(url="/t", name="second")
        wait_until(lambda: q.counts()["default"]["done"] == 2, "both tasks recorded")
        q.stop()
        with pytest.raises(taskqueue.TombstonedTaskError):
            taskqueue.add(url="/t", name="first")
    assert sorted(app.calls) == [("first", 0), ("second", 0)]


@pytest.mark.parametrize("kind", TROUBLES)
def test_run_until_idle_raises_and_records_later(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    """run_until_idle() raises the taskqueue error; the next call records the kept outcome."""
    trouble = make_trouble(kind, request, tmp_path)
    queues: list[LocalTaskQueue] = []
    app = Recorder(on_call=lambda name: trouble.start(queues[0]))
    with open_queue(app, trouble.db) as q, taskqueue.use(q):
        queues.append(q)
        taskqueue.add(url="/t", name="only")
        with pytest.raises(taskqueue.Error) as info:
            q.run_until_idle(timeout=WAIT)
        # The error names whichever write met the trouble first: recording the outcome, or
        # (when the pump looks again before the delivery has ended) leasing the next tasks.
        doing = "leasing tasks" if "leasing tasks" in str(info.value) else "recording the outcome"
        _check_storage_error(info.value, trouble, doing)
        trouble.clear(q)
        assert q.run_until_idle(timeout=WAIT) == 0
        assert q.counts()["default"]["done"] == 1
        assert q.tasks() == []
    assert app.calls == [("only", 0)]


@pytest.mark.parametrize("kind", TROUBLES)
def test_close_during_trouble_loses_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, log: LogWatch, kind: str
) -> None:
    """Closing while the outcome cannot be recorded warns; the task is delivered again later."""
    trouble = make_trouble(kind, request, tmp_path)
    clock = ManualClock(NOW)
    queues: list[LocalTaskQueue] = []
    app = Recorder(on_call=lambda name: trouble.start(queues[0]))
    q = open_queue(app, trouble.db, clock=clock)
    queues.append(q)
    with taskqueue.use(q):
        taskqueue.add(url="/t", name="only")
        with pytest.raises(trouble.error):
            q.run_until_idle(timeout=WAIT)
    q.close()
    log.wait_for("unrecorded")
    trouble.clear(q)
    clock.advance(3600)  # past the lease this process still holds
    again = Recorder()
    with open_queue(again, trouble.db, clock=clock) as reopened:
        reopened.run_until_idle(timeout=WAIT)
    assert app.calls == [("only", 0)]
    assert again.calls == [("only", 1)]
