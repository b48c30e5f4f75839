"""Queue files of schema version 2 (the release before pull queues) are migrated (3, then 4).

Version 3 adds pull tasks' ``tag`` column and a partial index on it. The version-2 files here
are real SQLite files built with that release's DDL (copied below as it was) and filled with
the rows it wrote; eight processes migrate one file at once; a file that only resembles
version 2 is refused, byte for byte unchanged.
"""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from taskhandler import taskqueue
from taskhandler.exceptions import ConfigError
from taskhandler.taskqueue import LocalTaskQueue, ManualClock, QueueConfig
from tests.lockstep import run_in_lockstep

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0
DAY = 24 * 3600.0
QUEUES = [
    QueueConfig("default", rate=1000, bucket_size=100),
    QueueConfig("pull-queue", mode="pull"),
]

# -- the version-2 schema, as the previous release created it (taskqueue/_store.py) ----------

V2_SCHEMA = (
    """
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
""",
    "CREATE UNIQUE INDEX tasks_by_name ON tasks (queue, name) WHERE named = 1",
    "CREATE INDEX tasks_by_state ON tasks (state, queue, eta)",
)
V2_INSERT = (
    "INSERT INTO tasks (queue, name, named, method, url, headers, payload, target, retry, eta,"
    " created, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
FORM = '[["Content-Type", "application/x-www-form-urlencoded"]]'
UNNAMED = "0123456789abcdef0000000000000007"

# (name, named, state, finished): what the previous release left in the default queue.
V2_ROWS = [
    ("live-1", 1, "pending", None),
    ("done-1", 1, "done", NOW - 3600),
    ("deleted-1", 1, "deleted", NOW - 60),
    (UNNAMED, 0, "pending", None),
]


def make_v2_file(path: Path) -> None:
    """A queue file exactly as the previous release left it, in WAL mode, not open."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    for statement in V2_SCHEMA:
        conn.execute(statement)
    conn.execute("PRAGMA user_version=2")
    for name, named, state, finished in V2_ROWS:
        live = state == "pending"
        conn.execute(
            V2_INSERT,
            (
                "default",
                name,
                named,
                "POST",
                "/t",
                FORM if live else None,
                f"name={name}".encode() if live else None,
                None,
                None,
                NOW - 100,
                NOW - 200,
                state,
            ),
        )
        if finished is not None:
            conn.execute("UPDATE tasks SET finished=? WHERE name=?", (finished, name))
    conn.execute("COMMIT")
    conn.close()


def schema_of(path: Path) -> tuple[int, list[tuple[str, str]]]:
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        objects = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
    finally:
        conn.close()
    return version, [(t, n) for t, n in objects]


def rows_of(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT id, queue, name, named, state, finished, payload, eta FROM tasks ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def open_queue(path: Path) -> LocalTaskQueue:
    return LocalTaskQueue(lambda e, s: [], db=path, queues=QUEUES, clock=ManualClock(NOW))


def test_version_2_file_is_migrated_with_every_row(tmp_path: Path) -> None:
    """Opening a version-2 file gives it version 3's tag index (and version 4's column); no
    row changes."""
    db = tmp_path / "v2.sqlite3"
    make_v2_file(db)
    before = rows_of(db)
    with open_queue(db):
        pass
    assert schema_of(db) == (
        4,
        [
            ("table", "tasks"),
            ("index", "tasks_by_name"),
            ("index", "tasks_by_state"),
            ("index", "tasks_by_tag"),
        ],
    )
    assert rows_of(db) == before
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM tasks WHERE tag IS NOT NULL").fetchone() == (0,)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("task_name", "outcome"),
    [
        pytest.param("live-1", taskqueue.TaskAlreadyExistsError, id="a live name"),
        pytest.param("done-1", taskqueue.TombstonedTaskError, id="a finished name"),
        pytest.param("deleted-1", taskqueue.TombstonedTaskError, id="a deleted name"),
        pytest.param("new-1", None, id="a new name"),
    ],
)
def test_migrated_file_still_deduplicates(
    tmp_path: Path, task_name: str, outcome: type[Exception] | None
) -> None:
    """Names live or tombstoned before the migration are refused after it, as before."""
    db = tmp_path / "v2.sqlite3"
    make_v2_file(db)
    with open_queue(db) as q, taskqueue.use(q):
        if outcome is None:
            taskqueue.add(url="/t", name=task_name)
            assert task_name in [t.task_name for t in q.tasks()]
        else:
            with pytest.raises(outcome):
                taskqueue.add(url="/t", name=task_name)


def test_migrated_file_takes_pull_tasks_by_tag(tmp_path: Path) -> None:
    """After the migration, tagged pull tasks are stored and leased by tag; old tasks stay."""
    db = tmp_path / "v2.sqlite3"
    make_v2_file(db)
    with open_queue(db) as q, taskqueue.use(q):
        pull = taskqueue.Queue("pull-queue")
        pull.add([taskqueue.Task(payload=f"n={n}", method="PULL", tag="a") for n in range(3)])
        leased = pull.lease_tasks_by_tag(60, 10, tag="a")
        assert [t.payload for t in leased] == [b"n=0", b"n=1", b"n=2"]
        assert [t.task_name for t in q.tasks()] == ["live-1", UNNAMED]


def test_migrated_file_opens_again_without_change(tmp_path: Path) -> None:
    """A second open of a migrated file finds version 4 and leaves the file's schema alone."""
    db = tmp_path / "v2.sqlite3"
    make_v2_file(db)
    with open_queue(db):
        pass
    first = schema_of(db)
    with open_queue(db):
        pass
    assert schema_of(db) == first


MIGRATOR = textwrap.dedent(
    """
    import os, signal, sys
    from taskhandler import taskqueue
    from taskhandler.taskqueue import LocalTaskQueue, QueueConfig

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
                taskqueue.add(payload="x", method="PULL", tag=f"w{worker}",
                              queue_name="pull-queue")
                try:
                    taskqueue.add(url="/open", name="live-1")
                except taskqueue.TaskAlreadyExistsError:
                    print("ok", flush=True)
                else:
                    print(f"round {r}: live-1 added twice", flush=True)
        except Exception as exc:
            print(f"round {r}: {type(exc).__name__}: {exc}".replace("\\n", " "), flush=True)
    """
)


def test_processes_migrating_one_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Eight processes opening the same version-2 file at once all succeed; it is migrated once."""
    openers, rounds = 8, 6
    for r in range(rounds):
        make_v2_file(tmp_path / f"round-{r}.sqlite3")
    failures = run_in_lockstep(MIGRATOR, [str(tmp_path), str(rounds)], openers, rounds)
    assert failures == []
    for r in range(rounds):
        db = tmp_path / f"round-{r}.sqlite3"
        assert schema_of(db)[0] == 4, f"round {r}"
        conn = sqlite3.connect(db)
        try:
            tags = sorted(t for (t,) in conn.execute("SELECT tag FROM tasks WHERE tag IS NOT NULL"))
        finally:
            conn.close()
        assert tags == sorted(f"w{w}" for w in range(openers)), f"round {r}"


def _v2_variant(*statements: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        make_v2_file(path)
        conn = sqlite3.connect(path, isolation_level=None)
        for statement in statements:
            conn.execute(statement)
        conn.close()

    return make


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_v2_variant("ALTER TABLE tasks ADD COLUMN owner TEXT"), id="an extra column"),
        pytest.param(_v2_variant("ALTER TABLE tasks ADD COLUMN tag TEXT"), id="a tag, still v2"),
        pytest.param(_v2_variant("CREATE TABLE users (id INTEGER)"), id="an extra table"),
        pytest.param(_v2_variant("DROP INDEX tasks_by_name"), id="the name index missing"),
        pytest.param(_v2_variant("PRAGMA user_version=5"), id="a later version"),
    ],
)
def test_file_resembling_version_2_is_refused_unchanged(
    tmp_path: Path, make: Callable[[Path], None]
) -> None:
    """A version-2 look-alike with any other schema is refused and left byte for byte."""
    db = tmp_path / "theirs.sqlite3"
    make(db)
    before = db.read_bytes()
    with pytest.raises(ConfigError) as info:
        open_queue(db)
    assert db.read_bytes() == before
    assert "left unchanged" in str(info.value)
