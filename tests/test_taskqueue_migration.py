"""Queue files of schema version 1 (earlier releases) are migrated to the current one when opened.

Version 2 keeps only named tasks in the name index (version 3 adds pull tasks' tags, see
tests/test_taskqueue_migration_v3.py); unnamed tasks' generated names are unique
by construction. The version-1 files here are real SQLite files built with the DDL of the
release before (copied below as it was), filled with the rows that release wrote: live named
tasks, tombstones, an unnamed task, an interrupted delivery. Eight processes migrate the same
file at once; a file that only resembles version 1 is refused, byte for byte unchanged.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from taskhandler import taskqueue
from taskhandler.exceptions import ConfigError
from taskhandler.taskqueue import LocalTaskQueue, ManualClock, QueueConfig
from taskhandler.taskqueue._store import generated_name
from tests.lockstep import run_in_lockstep

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0
DAY = 24 * 3600.0
QUEUES = [QueueConfig("default", rate=1000, bucket_size=100), QueueConfig("mail")]

# -- the version-1 schema, as the previous release created it (taskqueue/_store.py) ----------

V1_SCHEMA = (
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
    finished REAL,
    UNIQUE (queue, name)
)
""",
    "CREATE INDEX tasks_by_state ON tasks (state, queue, eta)",
)
V1_INSERT = (
    "INSERT INTO tasks (queue, name, named, method, url, headers, payload, target, retry, eta,"
    " created, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')"
    " ON CONFLICT (queue, name) DO NOTHING"
)
OLD_UNNAMED = "0123456789abcdef0000000000000007"  # the previous release's generated-name shape
FORM = '[["Content-Type", "application/x-www-form-urlencoded"]]'

# (queue, name, named, state, finished or lease_expires): what the previous release left.
V1_ROWS = [
    ("default", "live-1", 1, "pending", None),
    ("default", "done-1", 1, "done", NOW - 3600),
    ("default", "deleted-1", 1, "deleted", NOW - 60),
    ("default", "failed-1", 1, "failed", NOW - 8 * DAY),
    ("default", "expired-1", 1, "done", NOW - 10 * DAY),  # tombstone older than 9 days
    ("default", OLD_UNNAMED, 0, "pending", None),
    ("default", "leased-1", 1, "leased", NOW - 5),  # delivery interrupted, lease expired
    ("mail", "live-1", 1, "pending", None),  # the same name in another queue
]


def make_v1_file(path: Path) -> None:
    """A queue file exactly as the previous release left it, in WAL mode, not open."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    for statement in V1_SCHEMA:
        conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    for queue, name, named, state, when in V1_ROWS:
        payload = f"name={name}".encode()
        conn.execute(
            V1_INSERT,
            (queue, name, named, "POST", "/t", FORM, payload, None, None, NOW - 100, NOW - 200),
        )
        if state == "leased":
            conn.execute(
                "UPDATE tasks SET state='leased', lease_id='gone-host/1/abc/1', lease_expires=?,"
                " first_run=? WHERE queue=? AND name=?",
                (when, NOW - 50, queue, name),
            )
        elif state != "pending":
            conn.execute(
                "UPDATE tasks SET state=?, finished=?, payload=NULL, headers=NULL"
                " WHERE queue=? AND name=?",
                (state, when, queue, name),
            )
    conn.execute("COMMIT")
    conn.close()


def schema_of(path: Path) -> tuple[int, list[tuple[str, str, str]]]:
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        objects = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
    finally:
        conn.close()
    return version, [(t, n, " ".join(str(s).split())) for t, n, s in objects]


def rows_of(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT id, queue, name, named, state, finished, payload FROM tasks ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


class Recorder:
    """A WSGI app recording (queue, task name, body) of each delivery."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes]] = []

    def __call__(
        self, environ: dict[str, object], start_response: Callable[..., object]
    ) -> list[bytes]:
        body = environ["wsgi.input"].read()  # type: ignore[attr-defined]
        self.calls.append(
            (
                str(environ["HTTP_X_APPENGINE_QUEUENAME"]),
                str(environ["HTTP_X_APPENGINE_TASKNAME"]),
                body,
            )
        )
        start_response("200 OK", [])
        return [b""]


def open_queue(path: Path, app: object | None = None) -> LocalTaskQueue:
    return LocalTaskQueue(app or Recorder(), db=path, queues=QUEUES, clock=ManualClock(NOW))


# -- 1. a version-1 file is migrated and still deduplicates --------------------------------


def test_version_1_file_is_migrated_with_every_row(tmp_path: Path) -> None:
    """Opening a version-1 file rewrites it as the current version; every row survives."""
    db = tmp_path / "v1.sqlite3"
    make_v1_file(db)
    before = rows_of(db)
    with open_queue(db):
        pass
    version, objects = schema_of(db)
    assert version == 4
    assert [(t, n) for t, n, _ in objects] == [
        ("table", "tasks"),
        ("index", "tasks_by_name"),
        ("index", "tasks_by_state"),
        ("index", "tasks_by_tag"),
    ]
    assert "WHERE named = 1" in objects[1][2]
    assert "UNIQUE" not in objects[0][2]
    after = rows_of(db)
    # The interrupted delivery is pending again; expired tombstones are swept; nothing else moves.
    expected = [row for row in before if row[2] != "expired-1"]
    assert [r[:4] for r in after] == [r[:4] for r in expected]
    assert {r[2]: r[4] for r in after if r[1] == "default"} == {
        "live-1": "pending",
        "done-1": "done",
        "deleted-1": "deleted",
        "failed-1": "failed",
        OLD_UNNAMED: "pending",
        "leased-1": "pending",
    }


@pytest.mark.parametrize(
    ("queue_name", "task_name", "outcome"),
    [
        pytest.param("default", "live-1", taskqueue.TaskAlreadyExistsError, id="a live name"),
        pytest.param(
            "default", "leased-1", taskqueue.TaskAlreadyExistsError, id="an interrupted delivery"
        ),
        pytest.param("default", "done-1", taskqueue.TombstonedTaskError, id="a finished name"),
        pytest.param("default", "deleted-1", taskqueue.TombstonedTaskError, id="a deleted name"),
        pytest.param(
            "default", "failed-1", taskqueue.TombstonedTaskError, id="a failed name 8 days on"
        ),
        pytest.param("default", "expired-1", None, id="a tombstone older than 9 days"),
        pytest.param("default", "new-1", None, id="a new name"),
        pytest.param("mail", "live-1", taskqueue.TaskAlreadyExistsError, id="a live name in mail"),
        pytest.param("mail", "done-1", None, id="a name tombstoned only in default"),
    ],
)
def test_migrated_file_still_deduplicates(
    tmp_path: Path, queue_name: str, task_name: str, outcome: type[Exception] | None
) -> None:
    """Names live or tombstoned before the migration are refused after it, as before."""
    db = tmp_path / "v1.sqlite3"
    make_v1_file(db)
    with open_queue(db) as q, taskqueue.use(q):
        if outcome is None:
            taskqueue.add(url="/t", name=task_name, queue_name=queue_name)
            assert task_name in [t.task_name for t in q.tasks(queue_name)]
        else:
            with pytest.raises(outcome):
                taskqueue.add(url="/t", name=task_name, queue_name=queue_name)


def test_migrated_tasks_are_delivered_and_deletable(tmp_path: Path) -> None:
    """Tasks of the old file run with their old names; an old unnamed task is found by name."""
    db = tmp_path / "v1.sqlite3"
    make_v1_file(db)
    app = Recorder()
    with open_queue(db, app) as q, taskqueue.use(q):
        assert taskqueue.Queue("mail").delete_tasks_by_name("live-1").was_deleted
        q.run_until_idle(timeout=30)
        with pytest.raises(taskqueue.TombstonedTaskError):  # the delivered name is a tombstone
            taskqueue.add(url="/t", name="live-1")
    assert sorted(app.calls) == [
        ("default", OLD_UNNAMED, f"name={OLD_UNNAMED}".encode()),
        ("default", "leased-1", b"name=leased-1"),
        ("default", "live-1", b"name=live-1"),
    ]

    make_v1_file(other := tmp_path / "v1-again.sqlite3")
    with open_queue(other) as q:
        assert q.delete("default", OLD_UNNAMED)
        assert not q.delete("default", OLD_UNNAMED)
        assert [t.task_name for t in q.tasks()] == ["live-1", "leased-1"]


def test_migrated_file_opens_again_without_change(tmp_path: Path) -> None:
    """A second open of a migrated file finds the current version and leaves the schema alone."""
    db = tmp_path / "v1.sqlite3"
    make_v1_file(db)
    with open_queue(db):
        pass
    first = schema_of(db)
    with open_queue(db):
        pass
    assert schema_of(db) == first


# -- 2. many processes migrating the same file at once -------------------------------------

MIGRATOR = textwrap.dedent(
    """
    import os, signal, sys
    from taskhandler import taskqueue
    from taskhandler.taskqueue import LocalTaskQueue, QueueConfig

    if hasattr(signal, "alarm"):
        signal.alarm(300)  # never outlive a stuck test
    directory, rounds, worker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    queues = [QueueConfig("default", rate=1000, bucket_size=100), QueueConfig("mail")]
    for r in range(rounds):
        print("ready", flush=True)
        sys.stdin.readline()  # the parent's "go", sent to every opener at once
        try:
            db = os.path.join(directory, f"round-{r}.sqlite3")
            with LocalTaskQueue(lambda e, s: [], db=db, queues=queues) as q, taskqueue.use(q):
                taskqueue.add(url="/open", name=f"worker-{worker}")
                taskqueue.add(url="/open")
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
    """Eight processes opening the same version-1 file at once all succeed; it is migrated once."""
    openers, rounds = 8, 10
    for r in range(rounds):
        make_v1_file(tmp_path / f"round-{r}.sqlite3")
    before = rows_of(tmp_path / "round-0.sqlite3")
    failures = run_in_lockstep(MIGRATOR, [str(tmp_path), str(rounds)], openers, rounds)
    assert failures == []
    old_ids = {row[0] for row in before}
    # The openers run on the real clock, long after NOW: the old tombstones are swept.
    live_ids = {row[0] for row in before if row[4] in ("pending", "leased")}
    for r in range(rounds):
        db = tmp_path / f"round-{r}.sqlite3"
        assert schema_of(db)[0] == 4, f"round {r}"
        rows = rows_of(db)
        assert live_ids <= {row[0] for row in rows}, f"round {r}"
        added = [row for row in rows if row[0] not in old_ids]
        named = sorted(str(row[2]) for row in added if row[3] == 1)
        unnamed = {str(row[2]) for row in added if row[3] == 0}
        assert named == sorted(f"worker-{w}" for w in range(openers)), f"round {r}"
        assert len(unnamed) == openers, f"round {r}: generated names repeated"


# -- 3. a file that only resembles version 1 is not touched --------------------------------


def _v1_variant(*statements: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        make_v1_file(path)
        conn = sqlite3.connect(path, isolation_level=None)
        for statement in statements:
            conn.execute(statement)
        conn.close()

    return make


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_v1_variant("ALTER TABLE tasks ADD COLUMN owner TEXT"), id="an extra column"),
        pytest.param(_v1_variant("CREATE TABLE users (id INTEGER)"), id="an extra table"),
        pytest.param(_v1_variant("DROP INDEX tasks_by_state"), id="the state index missing"),
        pytest.param(_v1_variant("CREATE INDEX tasks_by_url ON tasks (url)"), id="an extra index"),
        pytest.param(_v1_variant("PRAGMA user_version=0"), id="version 0 with a tasks table"),
    ],
)
def test_file_resembling_version_1_is_refused_unchanged(
    tmp_path: Path, make: Callable[[Path], None]
) -> None:
    """A version-1 look-alike with any other schema is refused and left byte for byte."""
    db = tmp_path / "theirs.sqlite3"
    make(db)
    before = db.read_bytes()
    with pytest.raises(ConfigError) as info:
        open_queue(db)
    assert db.read_bytes() == before
    assert "left unchanged" in str(info.value)


# -- 4. generated names: unique across processes, forks and restarts ------------------------

GENERATED = re.compile(r"[0-9a-f]{32}\Z")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_draws_its_own_name_prefix() -> None:
    """A child forked after names were generated does not repeat its parent's names."""
    generated_name()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next name and leave at once
        os.write(write, generated_name().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = generated_name()
    assert GENERATED.match(child) and GENERATED.match(parent)
    assert child[:16] != parent[:16]


def test_processes_one_after_another_draw_new_prefixes() -> None:
    """Each process (a restart) starts its names with new random digits."""
    code = "from taskhandler.taskqueue._store import generated_name; print(generated_name())"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    names = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout.strip()
        for _ in range(3)
    ]
    assert all(GENERATED.match(name) for name in names)
    assert len({name[:16] for name in names}) == 3
    assert all(name.endswith("1") for name in names)  # each counter starts again
