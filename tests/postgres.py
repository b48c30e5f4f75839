"""A real, throwaway PostgreSQL server for the tests: one per test session, on loopback.

Debian's ``postgresql`` package provides the binaries (``/usr/lib/postgresql/<v>/bin``); the
server is ``initdb``-ed into a temporary directory, started with ``pg_ctl`` on a free
127.0.0.1 port with its socket in that directory, and stopped at the end of the session.
PostgreSQL refuses to run as root, so under root it runs as the ``postgres`` user the package
creates. Without the binaries (or psycopg) the tests that need it are skipped, saying why.

Use it from a test module::

    from tests.postgres import postgres_server  # noqa: F401  (the session fixture)

    def test_something(postgres_server):
        url = postgres_server.create_database()   # a fresh, empty database
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "find_bindir", "postgres_server"]


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` directory, or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server: ``host``/``port``/``user``, and fresh databases on request."""

    bindir: Path
    datadir: Path
    port: int
    host: str = "127.0.0.1"
    user: str = "postgres"
    _as_postgres: list[str] = field(default_factory=list)
    _names: Iterator[int] = field(default_factory=itertools.count)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_postgres, *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir / "data"),
            "-U",
            self.user,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = (
            f"-c listen_addresses={self.host} -p {self.port} -k {self.datadir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.datadir / "data"),
            "-l",
            str(self.datadir / "server.log"),
            "-o",
            options,
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(
                str(self.bindir / "pg_ctl"),
                "stop",
                "-w",
                "-m",
                "fast",
                "-D",
                str(self.datadir / "data"),
            )

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string (psycopg.connect takes it)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """A SQLAlchemy URL with the psycopg 3 driver."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self) -> str:
        """Create a fresh empty database; return its name."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (skipped when PostgreSQL is not installed)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'taskhandler[outbox]')")
    datadir = Path(tempfile.mkdtemp(prefix="taskhandler-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chown(datadir, entry.pw_uid, entry.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(
        bindir=bindir, datadir=datadir, port=_free_port(), _as_postgres=as_postgres
    )
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(datadir, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {exc.stderr or exc.stdout}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(datadir, ignore_errors=True)
