"""``taskhandler add`` and ``taskhandler tasks``: the development server's queue from a terminal.

Both open the queue file ``taskhandler serve --db`` dispatches (while it runs or not): ``add``
stores a task there, which the server sees within its poll interval; ``tasks`` reads a page of
it (and of the console's history for failed and done tasks) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..exceptions import ConfigError
from ..taskqueue import Error, LocalTaskQueue, QueueConfig, Task, load_queue_yaml, use
from ..taskqueue import Queue as ApiQueue
from .browse import LIVE_STATES, TaskBrowser
from .history import History, history_path
from .pages import in_words


def _queues(args: argparse.Namespace) -> dict[str, QueueConfig] | None:
    path = args.queue_yaml
    if path is None and Path("queue.yaml").is_file():
        path = "queue.yaml"
    return load_queue_yaml(path) if path else None


def _pairs(values: list[str], separator: str, what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition(separator)
        if not sep or not key.strip():
            raise ConfigError(f"a {what} must be written NAME{separator}VALUE", value=value)
        result[key.strip()] = rest.strip() if separator == ":" else rest
    return result


def run_add(args: argparse.Namespace) -> int:
    """Store one task in the queue file; print its name."""
    if not Path(args.db).is_file():
        raise ConfigError(
            "no queue database here: start `taskhandler serve` first, or name its file with --db",
            path=args.db,
        )
    params = _pairs(args.param, "=", "--param")
    headers = _pairs(args.header, ":", "--header")
    payload: bytes | None = None
    if args.payload is not None:
        if args.payload.startswith("@"):
            source = Path(args.payload[1:])
            try:
                payload = source.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the payload ({exc.strerror})", path=str(source)
                ) from None
        else:
            payload = args.payload.encode()
        try:
            json.loads(payload)
        except ValueError:
            pass
        else:
            headers.setdefault("Content-Type", "application/json")
    queues = _queues(args)
    # Only stored into, never dispatched from here: `taskhandler serve` delivers it.
    queue = LocalTaskQueue("http://127.0.0.1:8080", db=args.db, queues=queues)
    try:
        task = Task(
            url=args.url,
            method=args.method.upper(),
            params=params or None,
            payload=payload,
            headers=headers or None,
            name=args.name,
            countdown=args.countdown,
        )
        with use(queue):
            added = ApiQueue(args.queue).add(task)
    except Error as exc:
        print(f"taskhandler: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        queue.close()
    print(f"added task {added.name} to queue {args.queue}: {added.method} {added.url}")
    return 0


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _cut(text: str, size: int = 60) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def run_tasks(args: argparse.Namespace) -> int:
    """Print a table of the queue's tasks in one state."""
    if not Path(args.db).is_file():
        raise ConfigError(
            "no queue database here: start `taskhandler serve` first, or name its file with --db",
            path=args.db,
        )
    import time

    now = time.time()
    rows = [["TASK", "METHOD", "URL"]]
    if args.state in LIVE_STATES:
        rows[0] += ["ETA", "RETRIES", "LAST STATUS"]
        browser = TaskBrowser(args.db, time.time)
        try:
            tasks, total = browser.page(args.queue, args.state, limit=args.limit)
        finally:
            browser.close()
        for t in tasks:
            rows.append(
                [
                    _cut(t.task_name, 40),
                    t.method,
                    _cut(t.url),
                    in_words(t.eta.timestamp(), now),
                    str(t.retry_count),
                    "" if t.previous_response is None else str(t.previous_response),
                ]
            )
    else:
        rows[0] += ["FINISHED", "ATTEMPTS", "LAST STATUS", "EXCEPTION"]
        history = History(history_path(args.db))
        try:
            finished, total = history.finished(args.queue, args.state, limit=args.limit)
        finally:
            history.close()
        for f in finished:
            rows.append(
                [
                    _cut(f.task_name, 40),
                    f.method,
                    _cut(f.url),
                    in_words(f.finished, now),
                    str(f.attempts),
                    "" if f.status is None else str(f.status),
                    _cut(f.error or "", 50),
                ]
            )
    if len(rows) == 1:
        print(f"no {args.state} tasks in queue {args.queue}")
        return 0
    print(_table(rows))
    shown = len(rows) - 1
    if total > shown:
        print(f"({shown} of {total} {args.state} tasks shown; --limit to see more)")
    return 0
