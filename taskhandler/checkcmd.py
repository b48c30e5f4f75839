"""``taskhandler check``: validate app.yaml / web.xml (and queue.yaml) and print what they mean.

The output is what the middleware will enforce -- the access table in match order and the
task deadline -- so a typo in ``login:`` shows up here rather than as an unprotected URL.
Any problem raises :class:`~taskhandler.exceptions.ConfigError` (the CLI prints it and exits 2).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from .config import AppConfig, load_app_yaml, load_web_xml
from .exceptions import ConfigError

__all__ = ["QUEUE_YAML_CHECKER", "describe_access", "file_kind", "run_check"]

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


def file_kind(path: str) -> str:
    """``"web.xml"``, ``"queue.yaml"`` or ``"app.yaml"``, from the file's name.

    ``*.xml`` is a web.xml; a file named ``queue.yaml``/``queue.yml`` (or ending in
    ``-queue.yaml``/``_queue.yaml``) is a queue.yaml; any other file is read as an app.yaml.
    """
    name = Path(path).name.lower()
    if name.endswith(".xml"):
        return "web.xml"
    stem = name.rsplit(".", 1)[0]
    if name.endswith((".yaml", ".yml")) and (
        stem == "queue" or stem.endswith(("-queue", "_queue"))
    ):
        return "queue.yaml"
    return "app.yaml"


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
        widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
        lines.append("access rules (first match wins; paths that match none are not restricted):")
        for row in [header, *rows]:
            cells = [row[0].rjust(widths[0])] + [
                cell.ljust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
            ]
            lines.append("  " + "  ".join(cells).rstrip())
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


def run_check(files: list[str]) -> str:
    """Validate each file and describe it; the text ``taskhandler check`` prints.

    Args:
        files: app.yaml and/or web.xml paths, then optionally a queue.yaml
            (see :func:`file_kind`).

    Raises:
        ConfigError: the first file that is invalid, with its name and line.
    """
    if not files:
        raise ConfigError("nothing to check: give app.yaml, web.xml or queue.yaml")
    sections: list[str] = []
    for path in files:
        kind = file_kind(path)
        if kind == "queue.yaml":
            checker = QUEUE_YAML_CHECKER or _default_queue_checker
            sections.append(f"{path} (queue.yaml): OK\n{checker(path)}")
            continue
        config = load_web_xml(path) if kind == "web.xml" else load_app_yaml(path)
        text = [f"{path} ({kind}): OK", describe_access(config)]
        if kind == "app.yaml":
            text.append(f"task deadline: {_deadline_text(config.task_deadline)}")
            if config.entrypoint:
                text.append(f"entrypoint: {config.entrypoint}")
        else:
            text.append(
                f"task deadline: {_deadline_text(config.task_deadline)}, automatic scaling "
                "(web.xml does not set scaling)"
            )
        sections.append("\n".join(text))
    return "\n\n".join(sections)
