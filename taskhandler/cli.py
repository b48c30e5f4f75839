"""The ``taskhandler`` command: ``serve`` (development server), ``check`` (validate files) and
``relay`` (hand the outbox's committed tasks to the queue)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .exceptions import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskhandler", description="Push-queue task handlers the App Engine way."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the development server with a local push queue")
    serve.add_argument("app", nargs="?", help="MODULE:APP (default: app.yaml's entrypoint)")
    serve.add_argument("--app-yaml", default=None, help="app.yaml with handlers and scaling")
    serve.add_argument("--queue-yaml", default=None, help="queue.yaml with queue definitions")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--db", default=None, help="SQLite file of the local queue")
    serve.add_argument(
        "--outbox-db-url",
        default=None,
        help="SQLAlchemy URL of the app's database: relay its outbox table to the local queue",
    )

    check = sub.add_parser(
        "check", help="validate App Engine config files and print what they configure"
    )
    check.add_argument(
        "files",
        nargs="+",
        help="app.yaml, web.xml, queue.yaml, cron.yaml, dispatch.yaml, index.yaml, in any "
        "order; each file's kind is told from its content",
    )

    relay = sub.add_parser(
        "relay", help="hand tasks committed into an outbox table to the queue (production)"
    )
    from .outbox._command import add_relay_arguments

    add_relay_arguments(relay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskhandler`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            from .checkcmd import run_check

            print(run_check(args.files))
            return 0
        if args.command == "relay":
            from .outbox._command import run_relay

            return run_relay(args)
        from .devserver import run_serve

        return run_serve(args)
    except ConfigError as exc:
        print(f"taskhandler: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
