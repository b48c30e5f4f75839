"""The ``taskhandler`` command: ``serve`` (development server), ``add`` and ``tasks`` (its queue
from the terminal), ``check`` (validate files), ``relay`` (hand the outbox's committed tasks
to the queue), and ``queues sync`` / ``cron sync`` (queue.yaml and cron.yaml to Cloud Tasks
and Cloud Scheduler)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .exceptions import ConfigError

_STATES = ("pending", "scheduled", "running", "retrying", "failed", "done")


def _version() -> str:
    from . import __version__

    return __version__


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except for options without one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _queue_arguments(parser: argparse.ArgumentParser) -> None:
    from .devserver import DEFAULT_DB

    parser.add_argument(
        "--db", default=DEFAULT_DB, help="the SQLite file of the local queue `serve` runs"
    )
    parser.add_argument(
        "--queue-yaml",
        default=None,
        help="queue.yaml declaring the queues (default: ./queue.yaml if there is one)",
    )


def _parser() -> argparse.ArgumentParser:
    from .devserver import DEFAULT_DB

    formatter = _Formatter
    parser = argparse.ArgumentParser(
        prog="taskhandler",
        description="Push-queue task handlers the App Engine way.",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"taskhandler {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the development server with a local push queue and its console",
        formatter_class=formatter,
    )
    serve.add_argument(
        "app",
        nargs="?",
        help="MODULE:APP, or MODULE:factory() for an app factory (default: app.yaml's entrypoint)",
    )
    serve.add_argument(
        "--app-yaml", default=None, help="app.yaml with handlers (default: ./app.yaml if any)"
    )
    serve.add_argument(
        "--queue-yaml",
        default=None,
        help="queue.yaml with queue definitions (default: the one beside app.yaml, if any)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    serve.add_argument("--db", default=DEFAULT_DB, help="SQLite file of the local queue")
    serve.add_argument(
        "--reload",
        action="store_true",
        help="restart the server when a .py or .yaml file under the working directory changes",
    )
    serve.add_argument(
        "--history",
        type=int,
        default=10_000,
        metavar="N",
        help="attempts, and finished tasks, the console keeps (the newest N)",
    )
    serve.add_argument(
        "--cron-yaml",
        default=None,
        help="cron.yaml whose jobs are added to the local queue as GET tasks on schedule",
    )
    serve.add_argument(
        "--outbox-db-url",
        default=None,
        help="SQLAlchemy URL of the app's database: relay its outbox table to the local queue",
    )

    add = sub.add_parser(
        "add",
        help="add a task to the development server's queue",
        formatter_class=formatter,
        description="Add a task to the local queue that `taskhandler serve` dispatches.",
    )
    add.add_argument("url", help="the task's URL, e.g. /tasks/count")
    add.add_argument("--queue", default="default", help="the queue")
    add.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter (repeat for more); form-encoded in the body of a POST",
    )
    add.add_argument(
        "--payload",
        default=None,
        metavar="TEXT|@FILE",
        help="the body, as text or @file (JSON is sent as application/json)",
    )
    add.add_argument("--method", default="POST", help="the HTTP method")
    add.add_argument(
        "--header", action="append", default=[], metavar="NAME:VALUE", help="an extra header"
    )
    add.add_argument("--countdown", type=float, default=None, help="seconds to wait before it runs")
    add.add_argument("--name", default=None, help="the task name (named tasks are added once)")
    _queue_arguments(add)

    tasks = sub.add_parser(
        "tasks",
        help="list the development server's tasks",
        formatter_class=formatter,
        description="List the tasks of the local queue that `taskhandler serve` dispatches.",
    )
    tasks.add_argument("--queue", default="default", help="the queue")
    tasks.add_argument("--state", default="pending", choices=_STATES, help="which tasks")
    tasks.add_argument("--limit", type=int, default=50, help="at most this many rows")
    _queue_arguments(tasks)

    check = sub.add_parser(
        "check",
        help="validate App Engine config files and print what they configure",
        formatter_class=formatter,
    )
    check.add_argument(
        "files",
        nargs="+",
        help="app.yaml, web.xml, queue.yaml, cron.yaml, dispatch.yaml, index.yaml, in any "
        "order; each file's kind is told from its content",
    )

    relay = sub.add_parser(
        "relay",
        help="hand tasks committed into an outbox table to the queue (production)",
        formatter_class=formatter,
    )
    from .outbox._command import add_relay_arguments

    add_relay_arguments(relay)

    for command, what, service in (
        ("queues", "queue.yaml", "Cloud Tasks queues"),
        ("cron", "cron.yaml", "Cloud Scheduler jobs"),
    ):
        group = sub.add_parser(
            command, help=f"deploy {what} as {service}", formatter_class=formatter
        )
        actions = group.add_subparsers(dest="action", required=True)
        sync = actions.add_parser(
            "sync",
            help=f"create or update the {service} {what} declares; print the changes",
            formatter_class=formatter,
        )
        sync.add_argument("file", help=f"the {what}")
        sync.add_argument("--project", required=True, help="the Google Cloud project id")
        sync.add_argument("--location", required=True, help="the region, e.g. us-central1")
        sync.add_argument(
            "--dry-run", action="store_true", help="print the changes without making them"
        )
        if command == "cron":
            sync.add_argument(
                "--target-url",
                default=None,
                metavar="BASE",
                help="send each job to BASE + url (Cloud Run) instead of the App Engine app",
            )
            sync.add_argument(
                "--service-account",
                default=None,
                help="with --target-url: the service account whose OIDC token signs requests",
            )
    return parser


def _run_sync(args: argparse.Namespace) -> int:
    from . import _sync

    if args.command == "queues":
        from .taskqueue import load_queue_yaml

        changes = _sync.sync_queues(
            load_queue_yaml(args.file), args.project, args.location, dry_run=args.dry_run
        )
    else:
        from .config import load_cron_yaml

        changes = _sync.sync_cron(
            load_cron_yaml(args.file),
            args.project,
            args.location,
            dry_run=args.dry_run,
            target_url=args.target_url,
            service_account=args.service_account,
        )
    for change in changes:
        print(change)
    verb = "would change" if args.dry_run else "changed"
    print(f"{len(changes)} {verb}" if changes else "up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskhandler`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            from .checkcmd import run_check

            print(run_check(args.files))
            return 0
        if args.command in ("queues", "cron"):
            return _run_sync(args)
        if args.command == "relay":
            from .outbox._command import run_relay

            return run_relay(args)
        if args.command == "add":
            from ._console.commands import run_add

            return run_add(args)
        if args.command == "tasks":
            from ._console.commands import run_tasks

            return run_tasks(args)
        from .devserver import run_serve

        return run_serve(args)
    except ConfigError as exc:
        print(f"taskhandler: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
