"""queue.yaml: queue definitions with App Engine's defaults, validated with file and line.

>>> queues = load_queue_yaml("queue.yaml")          # doctest: +SKIP
>>> queues["mail"].rate, queues["mail"].retry_parameters.task_retry_limit  # doctest: +SKIP
(0.5, 7)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import SCALAR, ListOf, Section, YamlNode, check_keys, load_yaml, shown
from ..exceptions import ConfigError
from ._backoff import (
    DEFAULT_MAX_BACKOFF_SECONDS,
    DEFAULT_MAX_DOUBLINGS,
    DEFAULT_MIN_BACKOFF_SECONDS,
    RetryPolicy,
)

QUEUE_NAME_RE = re.compile(r"^[a-zA-Z0-9-]{1,100}$")
_RATE_RE = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]*)?)/(?P<unit>[smhd])$")
_DURATION_RE = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]*)?)(?P<unit>[smhd])$")
_TARGET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}(?:\.[a-z0-9][a-z0-9-]{0,99}){0,2}$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

DEFAULT_RATE = 5.0
DEFAULT_BUCKET_SIZE = 5
MAX_BUCKET_SIZE = 500


def parse_rate(text: str) -> float:
    """Parse a queue rate (``5/s``, ``10/m``, ``1/h``, ``2.5/d`` or ``0``) into tasks per second.

    Raises:
        ValueError: the text is not a rate.
    """
    text = text.strip()
    if text == "0":
        return 0.0
    match = _RATE_RE.match(text)
    if match is None:
        raise ValueError(
            f"rate {shown(text)} is not NUMBER/UNIT with UNIT one of s, m, h, d (or 0)"
        )
    rate = float(match["number"]) / _UNIT_SECONDS[match["unit"]]
    if not math.isfinite(rate):
        raise ValueError(f"rate {shown(text)} is too large")
    return rate


def parse_duration(text: str) -> float:
    """Parse a ``task_age_limit`` such as ``2d``, ``3h``, ``30m``, ``10s`` into seconds.

    Raises:
        ValueError: the text is not a number followed by s, m, h or d.
    """
    match = _DURATION_RE.match(text.strip())
    if match is None:
        raise ValueError(f"duration {shown(text)} is not NUMBER followed by s, m, h or d")
    seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"]]
    if not math.isfinite(seconds):
        raise ValueError(f"duration {shown(text)} is too large")
    return seconds


@dataclass(frozen=True)
class RetryParameters:
    """A queue's ``retry_parameters``; ``None`` means "not set" (App Engine's default applies).

    Attributes:
        task_retry_limit: retries after the first attempt (0 = one attempt only).
        task_age_limit: seconds after the first attempt during which retries happen.
        min_backoff_seconds: wait before the first retry (default 0.1).
        max_backoff_seconds: longest wait between attempts (default 3600).
        max_doublings: doublings of the wait before it grows linearly (default 16).
    """

    task_retry_limit: int | None = None
    task_age_limit: float | None = None
    min_backoff_seconds: float | None = None
    max_backoff_seconds: float | None = None
    max_doublings: int | None = None

    def __post_init__(self) -> None:
        for name in ("task_retry_limit", "max_doublings"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ConfigError(f"{name} must be an integer >= 0", value=value)
        for name in ("task_age_limit", "min_backoff_seconds", "max_backoff_seconds"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(f"{name} must be a number >= 0", value=value)
        if self.task_age_limit is not None and self.task_age_limit <= 0:
            raise ConfigError("task_age_limit must be greater than zero", value=self.task_age_limit)
        if (
            self.min_backoff_seconds is not None
            and self.max_backoff_seconds is not None
            and self.max_backoff_seconds < self.min_backoff_seconds
        ):
            raise ConfigError(
                "max_backoff_seconds must not be smaller than min_backoff_seconds",
                value=(self.min_backoff_seconds, self.max_backoff_seconds),
            )

    def overridden_by(self, other: RetryParameters | None) -> RetryParameters:
        """These parameters with every value ``other`` sets replacing ours (a task's options)."""
        if other is None:
            return self
        return RetryParameters(
            task_retry_limit=_first(other.task_retry_limit, self.task_retry_limit),
            task_age_limit=_first(other.task_age_limit, self.task_age_limit),
            min_backoff_seconds=_first(other.min_backoff_seconds, self.min_backoff_seconds),
            max_backoff_seconds=_first(other.max_backoff_seconds, self.max_backoff_seconds),
            max_doublings=_first(other.max_doublings, self.max_doublings),
        )

    def policy(self) -> RetryPolicy:
        """The effective policy, with App Engine's defaults and its min/max adjustment.

        As App Engine does, a ``min_backoff_seconds`` above the default maximum raises the
        maximum to it, and a ``max_backoff_seconds`` below the default minimum lowers the minimum.
        """
        low = self.min_backoff_seconds
        high = self.max_backoff_seconds
        if low is None:
            low = (
                DEFAULT_MIN_BACKOFF_SECONDS
                if high is None
                else min(DEFAULT_MIN_BACKOFF_SECONDS, high)
            )
        if high is None:
            high = max(DEFAULT_MAX_BACKOFF_SECONDS, low)
        if high < low:
            # Only reachable by a task's options overriding one side of a queue's pair.
            high = low
        return RetryPolicy(
            task_retry_limit=self.task_retry_limit,
            task_age_limit=self.task_age_limit,
            min_backoff_seconds=float(low),
            max_backoff_seconds=float(high),
            max_doublings=DEFAULT_MAX_DOUBLINGS
            if self.max_doublings is None
            else self.max_doublings,
        )


def _first(a: Any, b: Any) -> Any:
    return b if a is None else a


@dataclass(frozen=True)
class QueueConfig:
    """One queue definition, as queue.yaml gives it.

    Attributes:
        name: the queue name (``^[a-zA-Z0-9-]{1,100}$``).
        rate: tasks per second the queue may start; ``0`` pauses the queue.
        bucket_size: the token bucket: how many tasks may start at once after an idle period.
        max_concurrent_requests: tasks in flight at most; ``None`` = no queue limit.
        target: the service (``service``, ``version.service``...) every task of the queue goes
            to, overriding the task's own ``target``.
        mode: ``push`` (dispatched) or ``pull`` (declared only; the local queue does not lease).
        retry_parameters: the queue's retry parameters.
        source: the file the definition came from, if any.

    Example:
        >>> QueueConfig("mail", rate=parse_rate("10/m")).rate
        0.16666666666666666
    """

    name: str
    rate: float = DEFAULT_RATE
    bucket_size: int = DEFAULT_BUCKET_SIZE
    max_concurrent_requests: int | None = None
    target: str | None = None
    mode: str = "push"
    retry_parameters: RetryParameters = field(default_factory=RetryParameters)
    source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not QUEUE_NAME_RE.match(self.name):
            raise ConfigError(
                "queue name must match ^[a-zA-Z0-9-]{1,100}$", path=self.source, value=self.name
            )
        if (
            isinstance(self.rate, bool)
            or not isinstance(self.rate, (int, float))
            or not math.isfinite(self.rate)
            or self.rate < 0
        ):
            raise ConfigError("rate must be a number of tasks per second >= 0", value=self.rate)
        if (
            isinstance(self.bucket_size, bool)
            or not isinstance(self.bucket_size, int)
            or not 1 <= self.bucket_size <= MAX_BUCKET_SIZE
        ):
            raise ConfigError(
                f"bucket_size must be an integer from 1 to {MAX_BUCKET_SIZE}",
                path=self.source,
                value=self.bucket_size,
            )
        if self.max_concurrent_requests is not None and (
            isinstance(self.max_concurrent_requests, bool)
            or not isinstance(self.max_concurrent_requests, int)
            or self.max_concurrent_requests < 1
        ):
            raise ConfigError(
                "max_concurrent_requests must be an integer >= 1",
                path=self.source,
                value=self.max_concurrent_requests,
            )
        if self.target is not None and (
            not isinstance(self.target, str) or not _TARGET_RE.match(self.target)
        ):
            raise ConfigError(
                "target must be service, version.service or instance.version.service",
                path=self.source,
                value=self.target,
            )
        if self.mode not in ("push", "pull"):
            raise ConfigError("mode must be push or pull", path=self.source, value=self.mode)

    @property
    def paused(self) -> bool:
        """True when the rate is 0: tasks are accepted but not dispatched."""
        return self.rate == 0


def default_queue() -> QueueConfig:
    """The ``default`` queue App Engine provides when queue.yaml has none: 5/s, bucket 5."""
    return QueueConfig("default")


def normalize_queues(
    queues: Mapping[str, QueueConfig] | Iterable[QueueConfig] | None,
) -> dict[str, QueueConfig]:
    """A name -> definition dict that always holds ``default``.

    Raises:
        ConfigError: an entry is not a QueueConfig, or a mapping key differs from its name.
    """
    result: dict[str, QueueConfig] = {}
    if queues is None:
        items: list[QueueConfig] = []
    elif isinstance(queues, Mapping):
        items = []
        for key, config in queues.items():
            if not isinstance(config, QueueConfig) or key != config.name:
                raise ConfigError(
                    "queues must map each queue name to its QueueConfig", value=(key, config)
                )
            items.append(config)
    else:
        items = list(queues)
    for config in items:
        if not isinstance(config, QueueConfig):
            raise ConfigError("queues must hold QueueConfig objects", value=config)
        if config.name in result:
            raise ConfigError("queue defined twice", path=config.source, value=config.name)
        result[config.name] = config
    result.setdefault("default", default_queue())
    return result


# --- the file reader ------------------------------------------------------------------------

_TOP_KEYS = frozenset({"queue", "total_storage_limit", "application", "resume_paused_queues"})
_QUEUE_KEYS = frozenset(
    {
        "name",
        "rate",
        "bucket_size",
        "max_concurrent_requests",
        "target",
        "mode",
        "retry_parameters",
        "acl",
    }
)
_RETRY_KEYS = frozenset(
    {
        "task_retry_limit",
        "task_age_limit",
        "min_backoff_seconds",
        "max_backoff_seconds",
        "max_doublings",
    }
)


_ACL_SCHEMA = ListOf(Section({"user_email": SCALAR, "writer_email": SCALAR}))


class _Reader:
    """Walks the parsed document (see :func:`taskhandler.config.parse_yaml`) so every error
    can name its line."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, message: str, node: YamlNode | int | None, value: object = None) -> ConfigError:
        line = node.line if isinstance(node, YamlNode) else node
        return ConfigError(message, path=self.path, line=line, value=value)

    def scalar(self, node: YamlNode) -> object:
        if node.kind != "scalar":
            raise self.fail("expected a single value", node)
        return node.value

    def mapping(self, node: YamlNode, what: str) -> list[tuple[str, int, YamlNode]]:
        # Duplicate keys, anchors, aliases and merge keys were refused by the parser.
        if node.kind != "map":
            raise self.fail(f"{what} must be a mapping of keys to values", node)
        return node.pairs

    def typed(
        self, node: YamlNode, key: str, check: Callable[[object], bool], expected: str
    ) -> Any:
        value = self.scalar(node)
        if isinstance(value, bool) or not check(value):
            raise self.fail(f"{key} must be {expected}", node, value)
        return value

    def read(self, root: YamlNode | None) -> dict[str, QueueConfig]:
        queues: dict[str, QueueConfig] = {}
        if root is None or root.is_null:
            return normalize_queues(queues)
        for key, key_line, value_node in self.mapping(root, "queue.yaml"):
            if key not in _TOP_KEYS:
                raise self.fail(
                    f"unknown key {shown(key)} (expected one of {', '.join(sorted(_TOP_KEYS))})",
                    key_line,
                    key,
                )
            if key == "queue":
                if value_node.is_null:
                    continue
                if value_node.kind != "list":
                    raise self.fail("queue must be a list of queue definitions", value_node)
                for entry in value_node.items:
                    config = self.queue(entry)
                    if config.name in queues:
                        raise self.fail(
                            f"queue {config.name!r} is defined twice", entry, config.name
                        )
                    queues[config.name] = config
            elif value_node.kind != "scalar":
                raise self.fail(f"{key} must be a single value", value_node)
        return normalize_queues(queues)

    def queue(self, node: YamlNode) -> QueueConfig:
        fields: dict[str, Any] = {}
        name_given = False
        for key, key_line, value_node in self.mapping(node, "queue entry"):
            if key not in _QUEUE_KEYS:
                raise self.fail(
                    f"unknown queue key {shown(key)} "
                    f"(expected one of {', '.join(sorted(_QUEUE_KEYS))})",
                    key_line,
                    key,
                )
            if key == "name":
                name = self.scalar(value_node)
                if not isinstance(name, str) or not QUEUE_NAME_RE.match(name):
                    raise self.fail(
                        f"queue name {shown(name)} must match ^[a-zA-Z0-9-]{{1,100}}$",
                        value_node,
                        name,
                    )
                fields["name"] = name
                name_given = True
            elif key == "rate":
                text = self.scalar(value_node)
                try:
                    fields["rate"] = parse_rate(str(text))
                except ValueError as exc:
                    raise self.fail(str(exc), value_node, text) from None
            elif key == "bucket_size":
                fields["bucket_size"] = self.typed(
                    value_node,
                    key,
                    lambda v: isinstance(v, int) and 1 <= v <= MAX_BUCKET_SIZE,
                    f"an integer from 1 to {MAX_BUCKET_SIZE}",
                )
            elif key == "max_concurrent_requests":
                fields["max_concurrent_requests"] = self.typed(
                    value_node, key, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"
                )
            elif key == "target":
                target = self.scalar(value_node)
                if not isinstance(target, str) or not _TARGET_RE.match(target):
                    raise self.fail(
                        "target must be service, version.service or instance.version.service",
                        value_node,
                        target,
                    )
                fields["target"] = target
            elif key == "mode":
                mode = self.scalar(value_node)
                if mode not in ("push", "pull"):
                    raise self.fail(f"mode {shown(mode)} must be push or pull", value_node, mode)
                fields["mode"] = mode
            elif key == "retry_parameters":
                fields["retry_parameters"] = self.retry(value_node)
            else:
                # "acl" applies to pull queues on App Engine only: its keys are checked, then
                # it is ignored.
                check_keys(value_node, _ACL_SCHEMA, self.path, "acl")
        if not name_given:
            raise self.fail("queue entry has no name", node)
        try:
            return QueueConfig(source=self.path, **fields)
        except ConfigError as exc:
            raise self.fail(exc.message, node, exc.value) from None

    def retry(self, node: YamlNode) -> RetryParameters:
        values: dict[str, Any] = {}
        if node.is_null:
            return RetryParameters()
        for key, key_line, value_node in self.mapping(node, "retry_parameters"):
            if key not in _RETRY_KEYS:
                raise self.fail(
                    f"unknown retry_parameters key {shown(key)} "
                    f"(expected one of {', '.join(sorted(_RETRY_KEYS))})",
                    key_line,
                    key,
                )
            if key in ("task_retry_limit", "max_doublings"):
                values[key] = self.typed(
                    value_node, key, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"
                )
            elif key == "task_age_limit":
                text = self.scalar(value_node)
                try:
                    seconds = parse_duration(str(text))
                except ValueError as exc:
                    raise self.fail(f"task_age_limit: {exc}", value_node, text) from None
                if seconds <= 0:
                    raise self.fail("task_age_limit must be greater than zero", value_node, text)
                values[key] = seconds
            else:
                values[key] = float(
                    self.typed(
                        value_node,
                        key,
                        lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v >= 0,
                        "a number of seconds >= 0",
                    )
                )
        try:
            return RetryParameters(**values)
        except ConfigError as exc:
            raise self.fail(exc.message, node, exc.value) from None


def load_queue_yaml(path: str | Path) -> dict[str, QueueConfig]:
    """Read a queue.yaml into queue definitions, name -> :class:`QueueConfig`.

    The ``default`` queue is always present (5/s, bucket 5, unless the file redefines it).
    Unknown or duplicate keys, malformed rates (``5/x``), negative backoffs, a
    ``max_backoff_seconds`` below ``min_backoff_seconds`` and the like raise
    :class:`~taskhandler.exceptions.ConfigError` naming the file and line. The file is read as
    App Engine reads it, and as safely as app.yaml (:func:`taskhandler.config.parse_yaml`): no
    anchors, aliases or merge keys, bounded size and nesting.

    Args:
        path: the queue.yaml file.
    """
    return _Reader(str(path)).read(load_yaml(path))


def format_rate(rate: float) -> str:
    """A rate in tasks per second as queue.yaml writes it (``10/m`` rather than 0.1667/s)."""
    if rate == 0:
        return "0 (paused)"
    for unit, seconds in _UNIT_SECONDS.items():
        value = round(rate * seconds, 6)
        if value >= 1 or unit == "d":
            return f"{value:g}/{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def describe_queues(queues: Mapping[str, QueueConfig]) -> str:
    """A text table of queue definitions and their effective retry policies (for ``check``)."""
    header = ("queue", "mode", "rate", "bucket", "concurrent", "target", "retries")
    rows: list[tuple[str, ...]] = [header]
    for config in queues.values():
        policy = config.retry_parameters.policy()
        limit = "unlimited" if policy.task_retry_limit is None else f"{policy.task_retry_limit}"
        age = "" if policy.task_age_limit is None else f" or {policy.task_age_limit:g} s"
        retries = (
            f"{limit} retries{age}; backoff {policy.min_backoff_seconds:g}-"
            f"{policy.max_backoff_seconds:g} s, {policy.max_doublings} doublings"
        )
        rows.append(
            (
                config.name,
                config.mode,
                format_rate(config.rate),
                str(config.bucket_size),
                "-"
                if config.max_concurrent_requests is None
                else str(config.max_concurrent_requests),
                config.target or "-",
                retries,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]])
        for row in rows
    )


def describe_queue_yaml(path: str | Path) -> str:
    """Validate a queue.yaml and describe its queues (the hook ``taskhandler check`` calls)."""
    return describe_queues(load_queue_yaml(path))
