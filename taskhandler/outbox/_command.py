"""``taskhandler relay``: the outbox relay as a process of its own (production).

It hands the rows committed into the outbox table at ``--db-url`` to a queue: a backend the
application builds (``--backend MODULE:ATTR``, e.g. a ``CloudTasksBackend``), or the local
queue file that ``taskhandler serve --db FILE`` dispatches (``--queue-db FILE``). It runs until
SIGTERM or Ctrl-C (the batch in hand is finished first), or with ``--once`` until nothing is due.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from typing import Any

from ..exceptions import ConfigError
from ..taskqueue import LocalTaskQueue, TaskQueueBackend, load_queue_yaml
from ._outbox import Outbox
from ._schema import DEFAULT_TABLE

__all__ = ["add_relay_arguments", "load_backend", "run_relay"]

logger = logging.getLogger("taskhandler.outbox")


def add_relay_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``relay`` subcommand's options."""
    parser.add_argument(
        "--db-url",
        required=True,
        help="SQLAlchemy URL of the database with the outbox table "
        "(sqlite:///app.db, postgresql+psycopg://user@host/db)",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--backend",
        metavar="MODULE:ATTR",
        help="the queue to hand tasks to: a task queue backend, or a callable returning one "
        "(a CloudTasksBackend in production)",
    )
    where.add_argument(
        "--queue-db", metavar="FILE", help="the local queue file `taskhandler serve --db` uses"
    )
    parser.add_argument("--queue-yaml", default=None, help="queue.yaml (with --queue-db)")
    parser.add_argument("--table", default=DEFAULT_TABLE, help="the outbox table's name")
    parser.add_argument(
        "--create-table", action="store_true", help="create the outbox table if it is missing"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="seconds between looks at the table"
    )
    parser.add_argument("--once", action="store_true", help="relay what is due, then exit")


def load_backend(target: str) -> TaskQueueBackend:
    """Import ``MODULE:ATTR``: a backend, or a callable returning one."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError("--backend must be given as MODULE:ATTR", value=target)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}", value=target) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{module_name!r} has no attribute {attr!r}", value=target) from None
    if not isinstance(obj, TaskQueueBackend) and callable(obj):
        obj = obj()
    if not isinstance(obj, TaskQueueBackend):
        raise ConfigError("--backend: not a task queue backend", value=target)
    return obj


def run_relay(args: argparse.Namespace) -> int:
    """Run the relay from the ``relay`` arguments; return the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    local: LocalTaskQueue | None = None
    if args.backend:
        backend = load_backend(args.backend)
    else:
        queues = load_queue_yaml(args.queue_yaml) if args.queue_yaml else None
        # Only stored into, never dispatched from here: `taskhandler serve` delivers them.
        local = LocalTaskQueue("http://127.0.0.1:8080", db=args.queue_db, queues=queues)
        backend = local
    outbox = Outbox(
        args.db_url, backend=backend, table=args.table, poll_interval=args.poll_interval
    )
    try:
        if args.create_table:
            outbox.create_table()
        if args.once:
            moved = outbox.relay_until_idle()
            print(f"taskhandler relay: {moved} task(s) handed off", flush=True)
            return 0
        stop = threading.Event()

        def shutdown(signum: int, frame: object) -> None:
            stop.set()
            outbox.stop(timeout=0)

        previous = signal.signal(signal.SIGTERM, shutdown)
        print(f"taskhandler relay: relaying {outbox!r} to {backend!r}", flush=True)
        try:
            outbox.relay(stop)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 0
    finally:
        outbox.close()
        if local is not None:
            local.close()
