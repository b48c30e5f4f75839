"""``taskhandler check``: validate App Engine config files and print what they mean.

The output is what the middleware will enforce -- the access table in match order and the
task deadline -- so a typo in ``login:`` shows up here rather than as an unprotected URL.
Each file's kind (app.yaml, web.xml, queue.yaml, cron.yaml, dispatch.yaml, index.yaml) is told
from its content, so a file's name never decides how it is checked.
Any problem raises :class:`~taskhandler.exceptions.ConfigError` (the CLI prints it and exits 2).
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Sequence

from .config import (
    APP_YAML_SCHEMA,
    DISPATCH_YAML_SCHEMA,
    INDEX_YAML_SCHEMA,
    AppConfig,
    CronJob,
    load_app_yaml,
    load_cron_yaml,
    load_web_xml,
    load_yaml_keys,
    parse_yaml,
    read_config_bytes,
    shown,
)
from .exceptions import ConfigError

__all__ = ["QUEUE_YAML_CHECKER", "describe_access", "describe_cron", "file_kind", "run_check"]

# HOOK for queue.yaml: a function ``path -> str`` that validates a queue.yaml and returns the
# text describing its queues. ``run_check`` calls it for every queue.yaml it is given. The
# queue package either sets it or defines ``taskhandler.taskqueue.describe_queue_yaml``, which
# ``_default_queue_checker`` finds; until then a queue.yaml is reported as unsupported.
QUEUE_YAML_CHECKER: Callable[[str], str] | None = None


def _default_queue_checker(path: str) -> str:
    """Use ``taskhandler.taskqueue.describe_queue_yaml(path) -> str`` when the package has it."""
    try:
        module = importlib.import_module("taskhandler.taskqueue")
    except ImportError:
        module = None
    describe = getattr(module, "describe_queue_yaml", None)
    if describe is None:
        raise ConfigError("checking queue.yaml is not supported by this version", path=path)
    return str(describe(path))


# The top-level keys that tell one App Engine file from another. ``application`` is left out:
# every kind of file may have it.
_MARKERS: dict[str, frozenset[str]] = {
    "app.yaml": frozenset(APP_YAML_SCHEMA.keys) - {"application"},
    "queue.yaml": frozenset({"queue", "total_storage_limit", "resume_paused_queues"}),
    "cron.yaml": frozenset({"cron"}),
    "dispatch.yaml": frozenset({"dispatch"}),
    "index.yaml": frozenset({"indexes"}),
}
# An XML declaration, a DOCTYPE or comment, or an element, after an optional byte order mark.
_XML_START = re.compile(rb"(?:\xef\xbb\xbf)?\s*<[?!A-Za-z_]")
_UTF16_XML_START = (b"\xff\xfe<\x00", b"\xfe\xff\x00<", b"<\x00", b"\x00<")


def file_kind(path: str) -> str:
    """What kind of App Engine file ``path`` is, told from its content, never its name.

    XML is a web.xml. A YAML file is a queue.yaml when its top level has ``queue``,
    ``total_storage_limit`` or ``resume_paused_queues``; a cron.yaml with ``cron``; a
    dispatch.yaml with ``dispatch``; an index.yaml with ``indexes``; an app.yaml with any
    app.yaml key (``runtime``, ``handlers``, ...). So a queue file named ``q.yaml`` is checked
    as a queue file, and its mistakes are reported.

    Returns:
        ``"web.xml"``, ``"app.yaml"``, ``"queue.yaml"``, ``"cron.yaml"``, ``"dispatch.yaml"``
        or ``"index.yaml"``.

    Raises:
        ConfigError: the file cannot be read or parsed, its keys belong to no kind or to
            several, naming the file.
    """
    data = read_config_bytes(path)
    if _XML_START.match(data) or data.startswith(_UTF16_XML_START):
        return "web.xml"
    document = parse_yaml(data, path)
    if document is None:
        raise ConfigError("cannot tell what kind of file this is: it is empty", path=path)
    if document.kind != "map":
        raise ConfigError(
            "cannot tell what kind of file this is: expected XML (web.xml) or a YAML mapping "
            "(app.yaml, queue.yaml, cron.yaml, dispatch.yaml, index.yaml)",
            path=path,
            line=document.line,
        )
    keys = [key for key, _line, _node in document.pairs]
    kinds = sorted(kind for kind, markers in _MARKERS.items() if markers.intersection(keys))
    if len(kinds) == 1:
        return kinds[0]
    if kinds:
        raise ConfigError(
            f"cannot tell what kind of file this is: its top-level keys belong to "
            f"{' and '.join(kinds)}",
            path=path,
            line=document.line,
        )
    if keys == ["application"] or not keys:
        raise ConfigError("cannot tell what kind of file this is: it sets nothing", path=path)
    hint = ""
    for key, line, _node in document.pairs:
        for kind, markers in _MARKERS.items():
            close = difflib.get_close_matches(key[:100], sorted(markers), n=1, cutoff=0.75)
            if close:
                hint = f"; did you mean {close[0]!r} ({kind}) on line {line}?"
                break
        if hint:
            break
    shown_keys = shown([key for key in keys if key != "application"])
    raise ConfigError(
        f"cannot tell what kind of file this is: no top-level key ({shown_keys}) belongs to "
        f"app.yaml, queue.yaml, cron.yaml, dispatch.yaml or index.yaml{hint}",
        path=path,
        line=document.line,
    )


# Patterns that match every path, so nothing after them is ever consulted.
_CATCH_ALL = frozenset({".*", "/.*", "(?:/.*)?", "/(.*)", "(.*)"})


def _deadline_text(seconds: float) -> str:
    text = f"{seconds:g} s"
    if seconds >= 3600 and seconds % 3600 == 0:
        text += f" ({seconds / 3600:g} h)"
    elif seconds >= 60 and seconds % 60 == 0:
        text += f" ({seconds / 60:g} min)"
    return text


def describe_access(config: AppConfig) -> str:
    """The access table (pattern, login, failure action, secure) of ``config``, as text.

    Example output::

        access rules (first match wins):
          #  pattern     login     on failure  secure
          1  /tasks/.*   admin     redirect    optional
    """
    lines = []
    if config.rules:
        header = ("#", "pattern", "login", "on failure", "secure")
        rows = [
            (str(i), rule.url, rule.login, rule.auth_fail_action, rule.secure)
            for i, rule in enumerate(config.rules, 1)
        ]
        lines.append("access rules (first match wins; paths that match none are not restricted):")
        lines.extend(_table(header, rows))
        catch_all = next(
            (i for i, rule in enumerate(config.rules, 1) if rule.url in _CATCH_ALL), None
        )
        if catch_all is not None and catch_all < len(config.rules):
            lines.append(
                f"note: rules after #{catch_all} never match: "
                f"#{catch_all} matches every path first."
            )
    else:
        lines.append("access rules: none (no URL is restricted)")
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Rows as aligned text lines: the first column right-aligned, the others left."""
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    return [
        "  "
        + "  ".join(
            [row[0].rjust(widths[0])]
            + [cell.ljust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        ).rstrip()
        for row in [header, *rows]
    ]


def describe_cron(jobs: tuple[CronJob, ...]) -> str:
    """The cron jobs (url, schedule, time zone, target) as a table, as text."""
    if not jobs:
        return "cron jobs: none"
    rows = [
        (str(i), job.url, job.schedule, job.timezone or "UTC", job.target or "-")
        for i, job in enumerate(jobs, 1)
    ]
    return "\n".join(["cron jobs:", *_table(("#", "url", "schedule", "timezone", "target"), rows)])


def _check_one(path: str) -> str:
    kind = file_kind(path)
    if kind == "queue.yaml":
        checker = QUEUE_YAML_CHECKER or _default_queue_checker
        return f"{path} (queue.yaml): OK\n{checker(path)}"
    if kind == "cron.yaml":
        return f"{path} (cron.yaml): OK\n{describe_cron(load_cron_yaml(path))}"
    if kind in ("dispatch.yaml", "index.yaml"):
        schema = DISPATCH_YAML_SCHEMA if kind == "dispatch.yaml" else INDEX_YAML_SCHEMA
        load_yaml_keys(path, schema, kind)
        return f"{path} ({kind}): OK (keys checked; taskhandler does not use this file)"
    if kind == "web.xml":
        config = load_web_xml(path)
        deadline = (
            f"task deadline: {_deadline_text(config.task_deadline)}, automatic scaling "
            "(web.xml does not set scaling)"
        )
        return "\n".join([f"{path} (web.xml): OK", describe_access(config), deadline])
    config = load_app_yaml(path)
    text = [
        f"{path} (app.yaml): OK",
        describe_access(config),
        f"task deadline: {_deadline_text(config.task_deadline)}",
    ]
    if config.entrypoint:
        text.append(f"entrypoint: {config.entrypoint}")
    return "\n".join(text)


def run_check(files: list[str]) -> str:
    """Validate each file and describe it; the text ``taskhandler check`` prints.

    Args:
        files: app.yaml, web.xml, queue.yaml, cron.yaml, dispatch.yaml or index.yaml paths,
            in any order; each file's kind is told from its content (see :func:`file_kind`).

    Raises:
        ConfigError: the first file that is invalid or of no known kind, with its name and line.
    """
    if not files:
        raise ConfigError("nothing to check: give app.yaml, web.xml, queue.yaml or cron.yaml files")
    return "\n\n".join(_check_one(path) for path in files)
