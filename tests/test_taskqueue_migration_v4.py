"""Queue files of schema version 3 (the release before dispatch deadlines) are migrated to 4.

Version 4 adds a push task's own ``dispatch_deadline`` (seconds, ``NULL`` for the queue's
``dispatch_timeout``) as the last column. The version-3 files here are real SQLite files built
with that release's DDL (copied below as it was), in both shapes that release left: created as
version 3, and migrated to version 3 from version 2 (``ALTER TABLE ... ADD COLUMN tag``). Eight
processes migrate one file at once; a file that only resembles version 3 or 4, or is of a later
version, is refused, byte for byte unchanged.
"""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskhandler import taskqueue
from taskhandler.exceptions import ConfigError
from taskhandler.taskqueue import LocalTaskQueue, ManualClock, QueueConfig, Task
from tests.lockstep import run_in_lockstep

NOW = 1_700_000_000.0
QUEUES = [
    QueueConfig("default", rate=1000, bucket_size=100),
    QueueConfig("pull-queue", mode="pull"),
]

# -- the version-3 schema, as the previous release created it (taskqueue/_store.py) ----------

V2_TABLE = """
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    named INTEGER NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    headers TEXT,
    payload BLOB,
    target TEXT,
    retry TEXT,
    eta REAL NOT NULL,
    created REAL NOT NULL,
    first_run REAL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    execution_count INTEGER NOT NULL DEFAULT 0,
    previous_response INTEGER,
    retry_reason TEXT,
    state TEXT NOT NULL,
    lease_id TEXT,
    lease_expires REAL,
    finished REAL
)
"""
V3_TABLE = V2_TABLE.replace("    finished REAL\n", "    finished REAL,\n    tag TEXT\n")
BY_NAME = "CREATE UNIQUE INDEX tasks_by_name ON tasks (queue, name) WHERE named = 1"
BY_STATE = "CREATE INDEX tasks_by_state ON tasks (state, queue, eta)"
BY_TAG = "CREATE INDEX tasks_by_tag ON tasks (queue, tag, eta) WHERE tag IS NOT NULL"
# A file created as version 3, and one the previous release migrated from version 2.
V3_CREATED = (V3_TABLE, BY_NAME, BY_STATE, BY_TAG)
V3_FROM_V2 = (V2_TABLE, BY_NAME, BY_STATE, "ALTER TABLE tasks ADD COLUMN tag TEXT", BY_TAG)
V3_INSERT = (
    "INSERT INTO tasks (queue, name, named, method, url, headers, payload, target, retry, eta,"
    " created, tag, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
FORM = '[["Content-Type", "application/x-www-form-urlencoded"]]'
UNNAMED = "0123456789abcdef0000000000000007"

# (queue, name, named, method, tag, state, finished): what the previous release left.
V3_ROWS = [
    ("default", "live-1", 1, "POST", None, "pending", None),
    ("default", UNNAMED, 0, "POST", None, "pending", None),
    ("default", "done-1", 1, "POST", None, "done", NOW - 3600),
    ("pull-queue", "pull-1", 1, "PULL", "red", "pending", None),
]


def make_v3_file(path: Path, ddl: tuple[str, ...] = V3_CREATED) -> None:
    """A queue file exactly as the previous release left it, in WAL mode, not open."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    for statement in ddl:
        conn.execute(statement)
    conn.execute("PRAGMA user_version=3")
    for queue, name, named, method, tag, state, finished in V3_ROWS:
        live = state == "pending"
        conn.execute(
            V3_INSERT,
            (
                queue,
                name,
                named,
                method,
                "" if method == "PULL" else "/t",
                FORM if live and method != "PULL" else None,
                f"name={name}".encode() if live else None,
                None,
                None,
                NOW - 100,
                NOW - 200,
                tag,
                state,
            ),
        )
        if finished is not None:
            conn.execute("UPDATE tasks SET finished=? WHERE name=?", (finished, name))
    conn.execute("COMMIT")
    conn.close()


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def schema_of(path: Path) -> tuple[int, list[str], list[str]]:
    """(user_version, the tasks table's columns in order, the names of every index)."""
    version = query(path, "PRAGMA user_version")[0][0]
    columns = [row[1] for row in query(path, "PRAGMA table_info(tasks)")]
    indexes = [row[0] for row in query(path, "SELECT name FROM sqlite_master WHERE type='index'")]
    return version, columns, sorted(indexes)


def rows_of(path: Path) -> list[tuple[Any, ...]]:
    return query(
        path,
        "SELECT id, queue, name, named, method, state, finished, payload, eta, tag, retry_count "
        "FROM tasks ORDER BY id",
    )


class Recorder:
    """A WSGI app that answers 200 and keeps the task names it was sent."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.names.append(environ["HTTP_X_APPENGINE_TASKNAME"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


def open_queue(path: Path, app: object | None = None) -> LocalTaskQueue:
    return LocalTaskQueue(app or Recorder(), db=path, queues=QUEUES, clock=ManualClock(NOW))


V3_SHAPES = [
    pytest.param(V3_CREATED, id="created as version 3"),
    pytest.param(V3_FROM_V2, id="migrated to version 3 from version 2"),
]
V4_COLUMNS_END = ["finished", "tag", "dispatch_deadline"]
V4_INDEXES = ["tasks_by_name", "tasks_by_state", "tasks_by_tag"]


@pytest.mark.parametrize("ddl", V3_SHAPES)
def test_version_3_file_is_migrated_with_every_row(tmp_path: Path, ddl: tuple[str, ...]) -> None:
    """Opening a version-3 file makes it version 4 with a last dispatch_deadline column; no
    row changes, and every old task has no deadline of its own."""
    db = tmp_path / "v3.sqlite3"
    make_v3_file(db, ddl)
    before = rows_of(db)
    with open_queue(db):
        pass
    version, columns, indexes = schema_of(db)
    assert (version, columns[-3:], indexes) == (4, V4_COLUMNS_END, V4_INDEXES)
    assert rows_of(db) == before
    assert query(db, "SELECT COUNT(*) FROM tasks WHERE dispatch_deadline IS NOT NULL") == [(0,)]


@pytest.mark.parametrize("ddl", V3_SHAPES)
def test_migrated_file_keeps_working_and_stores_deadlines(
    tmp_path: Path, ddl: tuple[str, ...]
) -> None:
    """After the migration old tasks run on dispatch_timeout, names still deduplicate, pull
    tasks lease by tag, and a new task's dispatch deadline is stored and survives a restart."""
    db = tmp_path / "v3.sqlite3"
    make_v3_file(db, ddl)
    app = Recorder()
    with open_queue(db, app) as q, taskqueue.use(q):
        assert {t.task_name: t.dispatch_deadline for t in q.tasks()} == {
            "live-1": None,
            UNNAMED: None,
        }
        with pytest.raises(taskqueue.TombstonedTaskError):
            taskqueue.add(url="/t", name="done-1")
        Task(url="/t", name="with-deadline", dispatch_deadline_usec=20_000_000).add()
        leased = taskqueue.Queue("pull-queue").lease_tasks_by_tag(60, 10, tag="red")
        assert [t.name for t in leased] == ["pull-1"]
    with open_queue(db, app) as q:
        assert {t.task_name: t.dispatch_deadline for t in q.tasks()} == {
            "live-1": None,
            UNNAMED: None,
            "with-deadline": 20.0,
        }
        assert q.run_until_idle(timeout=20) == 3
    assert sorted(app.names) == sorted(["live-1", UNNAMED, "with-deadline"])


def test_migrated_file_opens_again_without_change(tmp_path: Path) -> None:
    """A second open of a migrated file finds version 4 and leaves the file's schema alone."""
    db = tmp_path / "v3.sqlite3"
    make_v3_file(db, V3_FROM_V2)
    with open_queue(db):
        pass
    first = query(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    with open_queue(db):
        pass
    assert query(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == first
    assert schema_of(db)[0] == 4


MIGRATOR = textwrap.dedent(
    """
    import os, signal, sys
    from taskhandler import taskqueue
    from taskhandler.taskqueue import LocalTaskQueue, QueueConfig, Task

    if hasattr(signal, "alarm"):
        signal.alarm(300)  # never outlive a stuck test
    directory, rounds, worker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    queues = [QueueConfig("default"), QueueConfig("pull-queue", mode="pull")]
    for r in range(rounds):
        print("ready", flush=True)
        sys.stdin.readline()  # the parent's "go", sent to every opener at once
        try:
            db = os.path.join(directory, f"round-{r}.sqlite3")
            with LocalTaskQueue(lambda e, s: [], db=db, queues=queues) as q, taskqueue.use(q):
                Task(url="/t", name=f"w{worker}",
                     dispatch_deadline_usec=(15 + worker) * 1_000_000).add()
                print("ok", flush=True)
        except Exception as exc:
            print(f"round {r}: {type(exc).__name__}: {exc}".replace("\\n", " "), flush=True)
    """
)


def test_processes_migrating_one_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Eight processes opening one version-3 file at once all succeed and store their tasks'
    deadlines; the file is migrated once."""
    openers, rounds = 8, 4
    for r in range(rounds):
        make_v3_file(tmp_path / f"round-{r}.sqlite3", V3_SHAPES[r % 2].values[0])
    failures = run_in_lockstep(MIGRATOR, [str(tmp_path), str(rounds)], openers, rounds)
    assert failures == []
    for r in range(rounds):
        db = tmp_path / f"round-{r}.sqlite3"
        assert schema_of(db)[0] == 4, f"round {r}"
        stored = query(db, "SELECT name, dispatch_deadline FROM tasks WHERE name LIKE 'w%'")
        assert sorted(stored) == sorted((f"w{w}", 15.0 + w) for w in range(openers)), f"round {r}"


# -- files that only resemble version 3 or 4 ------------------------------------------------


def _v3_variant(*statements: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        make_v3_file(path)
        conn = sqlite3.connect(path, isolation_level=None)
        for statement in statements:
            conn.execute(statement)
        conn.close()

    return make


def _v4_variant(*statements: str) -> Callable[[Path], None]:
    """A file this release wrote (checked to be version 4), then changed by ``statements``."""

    def make(path: Path) -> None:
        with open_queue(path) as q, taskqueue.use(q):
            taskqueue.add(url="/t", name="mine")
        assert schema_of(path)[0] == 4
        conn = sqlite3.connect(path, isolation_level=None)
        for statement in statements:
            conn.execute(statement)
        conn.close()

    return make


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_v3_variant("ALTER TABLE tasks ADD COLUMN owner TEXT"), id="v3, extra column"),
        pytest.param(
            _v3_variant("ALTER TABLE tasks ADD COLUMN dispatch_deadline REAL"),
            id="v3 with version 4's column, still marked 3",
        ),
        pytest.param(_v3_variant("DROP INDEX tasks_by_tag"), id="v3, the tag index missing"),
        pytest.param(_v4_variant("PRAGMA user_version=5"), id="this release's file, marked 5"),
        pytest.param(
            _v4_variant("CREATE TRIGGER wipe AFTER UPDATE ON tasks BEGIN DELETE FROM tasks; END"),
            id="v4, a trigger on the tasks",
        ),
        pytest.param(
            _v3_variant("CREATE VIEW due AS SELECT * FROM tasks"), id="v3, a view of the tasks"
        ),
        pytest.param(
            _v4_variant("CREATE UNIQUE INDEX one_per_queue ON tasks (queue)"),
            id="v4, an index of theirs on the tasks",
        ),
        pytest.param(
            _v4_variant("ALTER TABLE tasks DROP COLUMN dispatch_deadline"),
            id="version 3's columns, marked 4",
        ),
    ],
)
def test_file_resembling_version_3_or_4_is_refused_unchanged(
    tmp_path: Path, make: Callable[[Path], None]
) -> None:
    """A look-alike of version 3 or 4, or a later version's file, is refused byte for byte."""
    db = tmp_path / "theirs.sqlite3"
    make(db)
    before = db.read_bytes()
    with pytest.raises(ConfigError) as info:
        open_queue(db)
    assert db.read_bytes() == before
    assert "left unchanged" in str(info.value)


@pytest.mark.parametrize(
    ("make", "theirs"),
    [
        pytest.param(
            _v3_variant("CREATE TABLE users (id INTEGER)"), ("table", "users"), id="v3, a table"
        ),
        pytest.param(
            _v4_variant("CREATE TABLE users (id INTEGER)"), ("table", "users"), id="v4, a table"
        ),
        pytest.param(
            _v4_variant("CREATE TABLE users (id INTEGER)", "CREATE INDEX users_id ON users (id)"),
            ("index", "users_id"),
            id="v4, an index on their table",
        ),
    ],
)
def test_objects_of_the_users_beside_ours_are_kept(
    tmp_path: Path, make: Callable[[Path], None], theirs: tuple[str, str]
) -> None:
    """A version-3 or -4 file holding a table or index of the user's opens (migrated when of
    version 3); the user's object is kept and every task row is still there."""
    db = tmp_path / "shared.sqlite3"
    make(db)
    rows = query(db, "SELECT id, queue, name, state FROM tasks ORDER BY id")
    assert rows
    with open_queue(db):
        pass
    assert schema_of(db)[0] == 4
    assert query(db, "SELECT id, queue, name, state FROM tasks ORDER BY id") == rows
    assert (*theirs,) in query(db, "SELECT type, name FROM sqlite_master")


def test_an_object_of_the_users_on_the_tasks_table_is_named_in_the_refusal(
    tmp_path: Path,
) -> None:
    """A version-4 file refused for an index of the user's on the tasks table says which one."""
    db = tmp_path / "q.sqlite3"
    _v4_variant("CREATE INDEX tasks_by_url ON tasks (url)")(db)
    before = db.read_bytes()
    with pytest.raises(ConfigError, match="index tasks_by_url") as info:
        open_queue(db)
    assert "left unchanged" in str(info.value)
    assert db.read_bytes() == before
