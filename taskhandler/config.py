"""Access configuration: app.yaml / web.xml rules and the task deadline (SPEC §4, §5).

``load_app_yaml`` and ``load_web_xml`` turn the files an App Engine app already has into an
:class:`AppConfig`: ordered :class:`AccessRule` s (first full match wins) and the task deadline.
``load_cron_yaml`` reads cron.yaml into :class:`CronJob` s.

app.yaml is read as strictly as App Engine's own parser (``google.appengine.api.appinfo``):
every key it knows is accepted where it knows it, and an unknown key or a duplicate key anywhere
is an error, since a misspelt ``handlers:`` or a second ``login:`` would silently leave a URL
open. The key tables below are derived from appinfo's ``ATTRIBUTES`` (the tests compare them).
Settings only the platform uses are checked for their keys and shape, not their values.

Every file is read through :func:`parse_yaml` (or the hardened expat reader for web.xml): size,
nesting and value count are capped, anchors, aliases, merge keys and unusual tags are refused, so
any input at all ends in a result or a :class:`~taskhandler.exceptions.ConfigError` naming the
file, the line when the parser knows it, and the problem -- within bounded time and memory.

Pure: standard library, pydantic and PyYAML only.
"""

from __future__ import annotations

import difflib
import enum
import functools
import math
import re
import reprlib
import unicodedata
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, get_args
from xml.parsers import expat

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from .deadline import AUTOMATIC_SCALING_DEADLINE, BASIC_SCALING_DEADLINE
from .exceptions import ConfigError

__all__ = [
    "APP_YAML_SCHEMA",
    "BUILTIN_RULES",
    "CRON_YAML_SCHEMA",
    "DISPATCH_YAML_SCHEMA",
    "INDEX_YAML_SCHEMA",
    "AccessRule",
    "AppConfig",
    "AuthFailAction",
    "CronJob",
    "CronRetryParameters",
    "FreeMap",
    "Leaf",
    "ListOf",
    "Login",
    "Section",
    "Secure",
    "YamlNode",
    "check_keys",
    "load_app_yaml",
    "load_cron_yaml",
    "load_web_xml",
    "load_yaml",
    "load_yaml_keys",
    "parse_yaml",
    "read_config_bytes",
    "regex_problem",
    "shown",
    "static_dir_regex",
    "url_pattern_regex",
]

Login = Literal["optional", "required", "admin"]
AuthFailAction = Literal["redirect", "unauthorized"]
Secure = Literal["optional", "always", "never", "default"]

_LOGIN_VALUES: tuple[str, ...] = get_args(Login)
_FAIL_VALUES: tuple[str, ...] = get_args(AuthFailAction)
_SECURE_VALUES: tuple[str, ...] = get_args(Secure)


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a rule's url regex, or ``None`` when it compiles.

    Besides ``re.error``, the compiler raises ``OverflowError`` for a repeat count such as
    ``a{4294967295}`` and ``RecursionError`` for groups nested hundreds deep; all three are
    answers about the pattern, never a crash of the loader.
    """
    try:
        re.compile(pattern, re.DOTALL)
    except re.error as exc:
        return str(exc)
    except OverflowError:
        return "a repeat count is too large"
    except RecursionError:
        return "groups are nested too deeply"
    return None


class AccessRule(BaseModel):
    """One ``handlers:`` entry (or web.xml constraint): a URL regex and who may reach it.

    Args:
        url: a regular expression that must match the whole path
            (``re.fullmatch(url, path, re.DOTALL)``), case-sensitively as on App Engine.
        login: ``optional`` (anyone), ``required`` (any signed-in user) or ``admin``.
        auth_fail_action: ``redirect`` (302 to the sign-in page) or ``unauthorized`` (401)
            when nobody is signed in.
        secure: ``always`` redirects plain HTTP to HTTPS; ``optional``, ``default`` and
            ``never`` leave the scheme alone (``never`` does not downgrade HTTPS).

    Example::

        AccessRule(url=r"/tasks/.*", login="admin")
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    login: Login = "optional"
    auth_fail_action: AuthFailAction = "redirect"
    secure: Secure = "optional"

    # Compiled once per rule; rebuilt only if a copy changed ``url`` (see ``regex``).
    _regex: re.Pattern[str] | None = PrivateAttr(default=None)

    @field_validator("url")
    @classmethod
    def _compiles(cls, value: str) -> str:
        problem = regex_problem(value)
        if problem is not None:
            raise ValueError(f"bad url regex {shown(value)}: {problem}")
        return value

    @property
    def regex(self) -> re.Pattern[str]:
        """The compiled ``url`` (``re.DOTALL``), compiled on first use and kept on the rule."""
        regex = self._regex
        # model_copy(update=...) copies private attributes, so check the pattern still fits.
        if regex is None or regex.pattern != self.url:
            regex = re.compile(self.url, re.DOTALL)
            self._regex = regex
        return regex

    def __eq__(self, other: object) -> bool:
        # Compare the fields only: whether the regex cache is filled yet is not part of a rule.
        if not isinstance(other, AccessRule):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[str, str, str, str]:
        return (self.url, self.login, self.auth_fail_action, self.secure)

    def matches(self, path: str) -> bool:
        """Whether this rule's regex matches the whole of ``path``."""
        return self.regex.fullmatch(path) is not None

    @property
    def protected(self) -> bool:
        """Whether the rule restricts anything (a login or an HTTPS requirement)."""
        return self.login != "optional" or self.secure == "always"


class AppConfig(BaseModel):
    """What taskhandler takes from app.yaml / web.xml.

    Args:
        rules: access rules in file order; the first whose regex matches the path decides.
        task_deadline: seconds a task request may run (600 for automatic scaling,
            86 400 for basic or manual scaling).
        entrypoint: app.yaml's ``entrypoint``, used by ``taskhandler serve`` to find the app.
        builtins: the names of app.yaml's ``builtins:`` switched ``on``, in file order
            (``("deferred",)`` for ``- deferred: on``); ``taskhandler serve`` mounts
            ``taskhandler.deferred`` at ``/_ah/queue/deferred`` when ``deferred`` is here.
        source: the file the configuration was read from, for messages.

    Example::

        AppConfig(rules=[AccessRule(url=r"/tasks/.*", login="admin")], task_deadline=600.0)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[AccessRule, ...] = ()
    task_deadline: float = Field(default=AUTOMATIC_SCALING_DEADLINE, gt=0)
    entrypoint: str | None = None
    builtins: tuple[str, ...] = ()
    source: str | None = None


# --------------------------------------------------------------------------- safe YAML

# Files are read whole; a config file larger than this is a mistake, not a config. (The largest
# real app.yaml files, with App Engine's 100 handlers, are a few tens of KiB.)
MAX_CONFIG_BYTES = 1024 * 1024
# Mappings and lists nest a few levels in every App Engine file; far deeper is an attack.
MAX_YAML_DEPTH = 32
# Values (scalars, lists, mappings) in one file. The largest real files (App Engine's limits:
# 100 handlers, 200 indexes, 250 cron jobs) hold a few thousand; with the size cap this bounds
# the memory and time one file can take (about a second with the pure-Python parser).
MAX_YAML_VALUES = 20_000

# libyaml's parser when PyYAML was built with it: the same events as the pure-Python parser
# App Engine uses, ten times faster on large files, and it stops nesting at 1000 by itself.
if TYPE_CHECKING:
    _AnyLoader: TypeAlias = yaml.SafeLoader | yaml.CSafeLoader
_Loader: type[_AnyLoader] = (
    yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader
)

_SHOWN = reprlib.Repr()
_SHOWN_MAX = 100
_SHOWN.maxstring = 60
_SHOWN.maxother = 60
_SHOWN.maxlevel = 2
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 4


def shown(value: object) -> str:
    """A ``repr`` of ``value`` cut to a few dozen characters, for error messages.

    A config value can be a megabyte long; a message must stay one readable line.

    Example::

        >>> shown("x" * 1000)
        "'xxxxxxxxxxxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxxxxxxxxxxxx'"
    """
    text = _SHOWN.repr(value)
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 3] + "..."


def read_config_bytes(path: str | Path) -> bytes:
    """The bytes of a config file, refusing one larger than :data:`MAX_CONFIG_BYTES`.

    Raises:
        ConfigError: the file cannot be read or is too large.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", path=str(path)) from None
    except ValueError as exc:  # a NUL in the path
        raise ConfigError(f"cannot read the file: {exc}", path=str(path)) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"file is larger than {MAX_CONFIG_BYTES} bytes", path=str(path))
    return data


@dataclass(eq=False, slots=True)
class YamlNode:
    """One value of a YAML document, with the 1-based line it starts on.

    ``kind`` is ``"scalar"`` (``value`` holds the constructed str, int, float, bool, date or
    ``None``), ``"list"`` (``items``) or ``"map"`` (``pairs`` of key text, key line, value).
    Keys are always text, as App Engine's parser reads them: ``1: x`` has the key ``"1"``.
    """

    kind: Literal["scalar", "list", "map"]
    line: int
    value: object = None
    items: list[YamlNode] = field(default_factory=list)
    pairs: list[tuple[str, int, YamlNode]] = field(default_factory=list)

    @property
    def is_null(self) -> bool:
        """Whether this is an empty value (``key:`` with nothing after it, ``~``, ``null``)."""
        return self.kind == "scalar" and self.value is None

    def get(self, key: str) -> YamlNode | None:
        """The value node of ``key`` in a mapping (keys are unique), else ``None``."""
        for name, _line, node in self.pairs:
            if name == key:
                return node
        return None

    def key_line(self, key: str) -> int:
        """The line ``key`` is written on in a mapping, else the mapping's own line."""
        for name, line, _node in self.pairs:
            if name == key:
                return line
        return self.line


_YAML_TAG = "tag:yaml.org,2002:"
_STR_TAG, _NULL_TAG, _BOOL_TAG = f"{_YAML_TAG}str", f"{_YAML_TAG}null", f"{_YAML_TAG}bool"
_INT_TAG, _FLOAT_TAG = f"{_YAML_TAG}int", f"{_YAML_TAG}float"
_TIMESTAMP_TAG = f"{_YAML_TAG}timestamp"
_SCALAR_TAGS = frozenset({_STR_TAG, _NULL_TAG, _BOOL_TAG, _INT_TAG, _FLOAT_TAG, _TIMESTAMP_TAG})
# A number this long is junk; the limit also keeps int() and sexagesimal 1:2:3 cheap.
_MAX_NUMBER_CHARS = 64


class _Frame:
    """An open mapping or list while the event stream is read; a mapping may await a value."""

    __slots__ = ("key", "node", "seen")

    def __init__(self, node: YamlNode) -> None:
        self.node = node
        self.key: tuple[str, int] | None = None
        self.seen: dict[str, int] = {}


def _tag_text(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag


def parse_yaml(data: bytes, path: str) -> YamlNode | None:
    """Parse one YAML document the way App Engine's own parser reads its config files.

    Built from PyYAML's event stream with an explicit stack, so nesting depth costs no
    recursion and is capped at :data:`MAX_YAML_DEPTH`. As in App Engine's ``yaml_builder``:
    anchors and aliases are refused (which also rules out "billion laughs" alias bombs), keys
    are read as plain text, a second document is refused. Beyond it: a duplicate key anywhere
    and a merge key (``<<``, which App Engine reads as an ordinary unknown key, not a merge) are
    refused with their line; only the plain scalar tags (str, int, float, bool, null,
    timestamp) are accepted, and a value that does not fit its tag is an error, not an
    exception from the constructor.

    Returns:
        the root node, or ``None`` for an empty file.

    Raises:
        ConfigError: every problem, with the file and line.
    """

    def fail(message: str, line: int | None, value: object = None) -> ConfigError:
        return ConfigError(message, path=path, line=line, value=value)

    loader: _AnyLoader | None = None
    try:
        loader = _Loader(data)
        return _build(loader, fail)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise fail(f"invalid YAML: {problem}", None if mark is None else mark.line + 1) from None
    except yaml.YAMLError as exc:
        # A reader error (invalid UTF-8, a NUL or other unprintable character).
        raise fail(f"invalid YAML: {exc}", _reader_line(data, exc)) from None
    finally:
        if loader is not None:
            loader.dispose()


def _reader_line(data: bytes, exc: yaml.YAMLError) -> int | None:
    position = getattr(exc, "position", None)
    if not isinstance(position, int):
        return None
    # The position counts characters when decoding worked and bytes when it did not; a
    # line count over the bytes is right for ASCII lines and close otherwise.
    return data.count(b"\n", 0, position) + 1


_Fail = Callable[[str, "int | None", object], ConfigError]


def _build(loader: _AnyLoader, fail: _Fail) -> YamlNode | None:
    root: YamlNode | None = None
    documents = 0
    values = 0
    frames: list[_Frame] = []
    while loader.check_event():
        event = loader.get_event()  # type: ignore[no-untyped-call,unused-ignore]
        if event is None or isinstance(
            event, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent)
        ):
            continue
        mark = event.start_mark
        line = 0 if mark is None else mark.line + 1
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise fail(
                    "a second YAML document (---) is not allowed: one file, one document",
                    line,
                    None,
                )
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            frames.pop()
            continue
        if isinstance(event, yaml.AliasEvent):
            raise fail(
                f"YAML alias *{event.anchor} is not supported (App Engine refuses anchors and "
                "aliases); write the value out",
                line,
                event.anchor,
            )
        assert isinstance(event, yaml.NodeEvent)  # the remaining event kinds
        if event.anchor is not None:
            raise fail(
                f"YAML anchor &{event.anchor} is not supported (App Engine refuses anchors and "
                "aliases); write the value out",
                line,
                event.anchor,
            )
        top = frames[-1] if frames else None
        if top is not None and top.node.kind == "map" and top.key is None:
            _read_key(event, top, line, fail)
            continue
        values += 1
        if values > MAX_YAML_VALUES:
            raise fail(f"more than {MAX_YAML_VALUES} values in one file", line, None)
        node = _open_node(loader, event, line, fail)
        if top is None:
            root = node
        elif top.node.kind == "list":
            top.node.items.append(node)
        else:
            key, key_line = top.key  # type: ignore[misc]  # set by _read_key
            top.node.pairs.append((key, key_line, node))
            top.key = None
        if node.kind != "scalar":
            if len(frames) >= MAX_YAML_DEPTH:
                raise fail(f"nested more than {MAX_YAML_DEPTH} levels deep", line, None)
            frames.append(_Frame(node))
    return root


def _read_key(event: yaml.Event, top: _Frame, line: int, fail: _Fail) -> None:
    if not isinstance(event, yaml.ScalarEvent):
        raise fail("a key must be plain text, not a list or a mapping", line, None)
    key = event.value
    if event.tag not in (None, "!"):
        raise fail(f"a key cannot carry a YAML tag ({_tag_text(event.tag)})", line, key)
    if key == "<<" and event.implicit[0]:  # a plain <<, as a merge key is written
        raise fail(
            "YAML merge keys (<<) are not supported: App Engine reads '<<' as an ordinary key "
            "and refuses it; write the settings out",
            line,
            key,
        )
    first = top.seen.get(key)
    if first is not None:
        raise fail(f"duplicate key {shown(key)} (first on line {first})", line, key)
    top.seen[key] = line
    top.key = (key, line)


def _open_node(loader: _AnyLoader, event: yaml.Event, line: int, fail: _Fail) -> YamlNode:
    if isinstance(event, yaml.ScalarEvent):
        return YamlNode("scalar", line, _scalar(loader, event, line, fail))
    if isinstance(event, yaml.MappingStartEvent):
        kind: Literal["list", "map"] = "map"
        allowed = (None, "!", f"{_YAML_TAG}map")
    else:
        kind = "list"
        allowed = (None, "!", f"{_YAML_TAG}seq")
    tag = getattr(event, "tag", None)
    if tag not in allowed:
        raise fail(f"YAML tag {shown(_tag_text(tag))} is not supported", line, tag)
    return YamlNode(kind, line)


def _scalar(loader: _AnyLoader, event: yaml.ScalarEvent, line: int, fail: _Fail) -> object:
    text = event.value
    tag = event.tag
    if tag is None:
        tag = loader.resolve(yaml.ScalarNode, text, event.implicit)  # type: ignore[no-untyped-call]
    elif tag == "!":
        tag = _STR_TAG
    if tag not in _SCALAR_TAGS:
        raise fail(f"YAML tag {shown(_tag_text(tag))} is not supported", line, tag)
    if tag == _STR_TAG:
        return text
    if tag == _NULL_TAG:
        return None
    if tag == _BOOL_TAG:
        flag = yaml.SafeLoader.bool_values.get(text.lower())
        if flag is None:
            raise fail(f"{shown(text)} is not a YAML boolean", line, text)
        return flag
    if tag in (_INT_TAG, _FLOAT_TAG) and len(text) > _MAX_NUMBER_CHARS:
        raise fail(f"number longer than {_MAX_NUMBER_CHARS} characters", line, text)
    node = yaml.ScalarNode(tag, text)
    try:
        if tag == _INT_TAG:
            return loader.construct_yaml_int(node)
        if tag == _FLOAT_TAG:
            return loader.construct_yaml_float(node)
        return loader.construct_yaml_timestamp(node)
    except (ValueError, TypeError, ArithmeticError, LookupError, AttributeError):
        raise fail(f"{shown(text)} is not a valid {_tag_text(tag)}", line, text) from None


def load_yaml(path: str | Path) -> YamlNode | None:
    """Read and parse a YAML config file safely (see :func:`parse_yaml`)."""
    return parse_yaml(read_config_bytes(path), str(path))


# --------------------------------------------------------------------------- key tables


@dataclass(frozen=True)
class Section:
    """A mapping whose keys App Engine knows one by one (``automatic_scaling``, a handler)."""

    keys: Mapping[str, Shape]


@dataclass(frozen=True)
class ListOf:
    """A list whose items all have one shape (``handlers``, ``inbound_services``)."""

    item: Shape


@dataclass(frozen=True)
class FreeMap:
    """A mapping of the user's own names (``env_variables``, ``http_headers``) to plain values.

    ``key_pattern`` is the regex every key must match whole; values are a scalar or a list of
    scalars.
    """

    key_pattern: str


class Leaf(enum.Enum):
    """The shapes that are not containers of known keys."""

    SCALAR = "a single value"
    SCALARS = "a value or a list of values"
    ONE_KEY = "a mapping with one key"


Shape = Section | ListOf | FreeMap | Leaf
SCALAR = Leaf.SCALAR

_NAME_KEY = "[a-zA-Z_][a-zA-Z0-9_]*"  # App Engine's key pattern for env_variables and the like
_HTTP_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # noqa: S105 - RFC 7230 token: a header name


def _section(keys: str = "", **nested: Shape) -> Section:
    """A Section of the space-separated single-value ``keys`` and the ``nested`` sections."""
    table: dict[str, Shape] = dict.fromkeys(keys.split(), SCALAR)
    table.update(nested)
    return Section(table)


_HEALTH_CHECK = _section(
    "enable_health_check check_interval_sec timeout_sec unhealthy_threshold healthy_threshold "
    "restart_threshold host"
)

HANDLER_SCHEMA = _section(
    "url static_files upload application_readable static_dir mime_type script login "
    "auth_fail_action secure position expiration require_matching_file "
    "redirect_http_response_code api_endpoint",
    http_headers=FreeMap(_HTTP_TOKEN),
)

# App Engine's app.yaml keys (google.appengine.api.appinfo.AppInfoExternal.ATTRIBUTES and the
# classes it names); tests/test_config.py compares this table with appinfo's so it cannot drift.
APP_YAML_SCHEMA = _section(
    "application project module service version runtime runtime_channel api_version main "
    "entrypoint env instance_class source_language service_account threadsafe vm "
    "app_engine_apis standard_websocket code_lock auto_id_policy default_expiration",
    automatic_scaling=_section(
        "min_pending_latency max_pending_latency min_idle_instances max_idle_instances "
        "max_concurrent_requests min_num_instances max_num_instances cool_down_period_sec "
        "target_request_count_per_sec target_concurrent_requests "
        "target_disk_write_bytes_per_sec target_disk_write_ops_per_sec "
        "target_disk_read_bytes_per_sec target_disk_read_ops_per_sec "
        "target_network_sent_bytes_per_sec target_network_sent_packets_per_sec "
        "target_network_received_bytes_per_sec target_network_received_packets_per_sec "
        "target_cpu_utilization target_throughput_utilization min_instances max_instances",
        cpu_utilization=_section("target_utilization aggregation_window_length_sec"),
        custom_metrics=ListOf(
            _section("metric_name target_type target_utilization single_instance_assignment filter")
        ),
    ),
    basic_scaling=_section("max_instances idle_timeout"),
    manual_scaling=_section("instances"),
    vm_settings=FreeMap(_NAME_KEY),
    beta_settings=FreeMap(_NAME_KEY),
    vm_health_check=_HEALTH_CHECK,
    health_check=_HEALTH_CHECK,
    resources=_section(
        "cpu memory_gb disk_size_gb", volumes=ListOf(_section("name volume_type size_gb"))
    ),
    liveness_check=_section(
        "check_interval_sec timeout_sec failure_threshold success_threshold "
        "initial_delay_sec path host"
    ),
    readiness_check=_section(
        "check_interval_sec timeout_sec failure_threshold success_threshold "
        "app_start_timeout_sec path host"
    ),
    network=_section(
        "instance_tag name subnetwork_name session_affinity", forwarded_ports=ListOf(SCALAR)
    ),
    zones=ListOf(SCALAR),
    endpoints_api_service=_section("name rollout_strategy config_id trace_sampling"),
    builtins=ListOf(Leaf.ONE_KEY),
    includes=ListOf(SCALAR),
    handlers=ListOf(HANDLER_SCHEMA),
    libraries=ListOf(_section("name version")),
    skip_files=Leaf.SCALARS,
    nobuild_files=Leaf.SCALARS,
    derived_file_type=ListOf(SCALAR),
    admin_console=_section(pages=ListOf(_section("name url"))),
    error_handlers=ListOf(_section("file error_code mime_type")),
    backends=ListOf(
        _section(
            "name class instances start options public dynamic failfast "
            "max_concurrent_requests state"
        )
    ),
    api_config=_section("url script login auth_fail_action secure"),
    env_variables=FreeMap(_NAME_KEY),
    build_env_variables=FreeMap(_NAME_KEY),
    inbound_services=ListOf(SCALAR),
    runtime_config=FreeMap(_NAME_KEY),
    vpc_access_connector=_section("name egress_setting"),
)

# cron.yaml (google.appengine.api.croninfo), dispatch.yaml (dispatchinfo) and index.yaml
# (google.appengine.datastore.datastore_index), compared with App Engine's in the tests too.
CRON_YAML_SCHEMA = _section(
    "application",
    cron=ListOf(
        _section(
            "url schedule timezone description target attempt_deadline",
            retry_parameters=_section(
                "job_retry_limit job_age_limit min_backoff_seconds max_backoff_seconds "
                "max_doublings"
            ),
        )
    ),
)
DISPATCH_YAML_SCHEMA = _section("application", dispatch=ListOf(_section("url service module")))
INDEX_YAML_SCHEMA = _section(
    "application",
    indexes=ListOf(_section("kind ancestor", properties=ListOf(_section("name direction mode")))),
)

_KIND_NAMES = {"scalar": "a single value", "list": "a list", "map": "a mapping"}


def check_keys(node: YamlNode, shape: Shape, path: str, where: str = "") -> None:
    """Check that ``node`` has ``shape``: no unknown key, containers where containers belong.

    An empty value (``key:``) is accepted anywhere, as App Engine treats it as not set.

    Args:
        node: the parsed value.
        shape: what App Engine expects there.
        path: the file, for messages.
        where: the dotted place of ``node`` (``handlers[2]``), ``""`` for the top.

    Raises:
        ConfigError: an unknown key, or a value of the wrong kind, naming file, line and key.
    """
    if node.is_null:
        return
    label = where or "the top level"
    if isinstance(shape, Section):
        _expect(node, "map", label, path)
        for key, line, value in node.pairs:
            inner = shape.keys.get(key)
            if inner is None:
                raise ConfigError(
                    f"unknown key {shown(key)} in {label}{_did_you_mean(key, shape.keys)}",
                    path=path,
                    line=line,
                    value=key,
                )
            check_keys(value, inner, path, f"{where}.{key}" if where else key)
    elif isinstance(shape, ListOf):
        _expect(node, "list", label, path)
        for index, item in enumerate(node.items, 1):
            check_keys(item, shape.item, path, f"{label}[{index}]")
    elif isinstance(shape, FreeMap):
        _expect(node, "map", label, path)
        for key, line, value in node.pairs:
            if re.fullmatch(shape.key_pattern, key) is None:
                raise ConfigError(
                    f"{label}: {shown(key)} is not a valid name here "
                    f"(expected {shape.key_pattern})",
                    path=path,
                    line=line,
                    value=key,
                )
            check_keys(value, Leaf.SCALARS, path, f"{label}.{key}")
    elif shape is Leaf.SCALAR:
        _expect(node, "scalar", label, path)
    elif shape is Leaf.SCALARS:
        if node.kind == "list":
            for index, item in enumerate(node.items, 1):
                check_keys(item, SCALAR, path, f"{label}[{index}]")
        else:
            _expect(node, "scalar", label, path)
    else:  # Leaf.ONE_KEY
        _expect(node, "map", label, path)
        if len(node.pairs) != 1:
            raise ConfigError(
                f"{label}: expected exactly one key, found {len(node.pairs)}",
                path=path,
                line=node.line,
            )
        check_keys(node.pairs[0][2], SCALAR, path, f"{label}.{node.pairs[0][0]}")


def _expect(node: YamlNode, kind: str, label: str, path: str) -> None:
    if node.kind != kind:
        raise ConfigError(
            f"{label}: expected {_KIND_NAMES[kind]}, found {_KIND_NAMES[node.kind]}",
            path=path,
            line=node.line,
        )


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key[:100], list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- app.yaml

# App Engine's handler types, in the order appinfo.URLMap.GetHandlerType tries them
# (api_endpoint wins over the others), and the keys each type allows besides the common ones.
HANDLER_TYPES: dict[str, frozenset[str]] = {
    "static_files": frozenset(
        {
            "mime_type",
            "upload",
            "expiration",
            "require_matching_file",
            "http_headers",
            "application_readable",
        }
    ),
    "static_dir": frozenset(
        {"mime_type", "expiration", "require_matching_file", "http_headers", "application_readable"}
    ),
    "script": frozenset({"position"}),
    "api_endpoint": frozenset({"position", "script"}),
}
HANDLER_COMMON_KEYS = frozenset(
    {"url", "login", "auth_fail_action", "secure", "redirect_http_response_code"}
)
# appinfo.MAX_URL_MAPS: App Engine refuses more handlers than this.
MAX_HANDLERS = 100
# appinfo._URL_REGEX: a handler url starts with / (or is a group, or starts with a dot as in
# ``.*``); anything else never matches a request path, so it would protect nothing.
HANDLER_URL_FORM = r"(?!\^)/.*|\..*|(\(.).*(?!\$)."
# Keys App Engine knows whose meaning taskhandler cannot apply; ignoring them could leave a
# URL open, so a file that sets them is refused.
_UNSUPPORTED = {
    "includes": "the handlers of included files would be missed; copy them into this file",
    "api_config": "its login and secure rules are not applied; use a handlers entry",
}

# The scaling section decides how long a task request may run (SPEC §5).
_SCALING_DEADLINES = {
    "automatic_scaling": AUTOMATIC_SCALING_DEADLINE,
    "basic_scaling": BASIC_SCALING_DEADLINE,
    "manual_scaling": BASIC_SCALING_DEADLINE,
}


def static_dir_regex(prefix: str) -> str:
    """The rule regex for a ``static_dir`` handler whose ``url`` is ``prefix``.

    App Engine treats a ``static_dir`` url as a regex *prefix* followed by ``/`` and a file
    path, so ``/static`` covers ``/static/app.css`` and everything below it, but not
    ``/static`` itself nor ``/staticfoo``. The prefix keeps its regex meaning.

    Example::

        >>> static_dir_regex("/static")
        '(?:/static)/.*'
    """
    if prefix.endswith("/"):
        return f"(?:{prefix}).*"
    return f"(?:{prefix})/.*"


def _handler_choice(
    entry: YamlNode, key: str, allowed: tuple[str, ...], default: str, where: str, path: str
) -> str:
    node = entry.get(key)
    if node is None:
        return default
    value = node.value
    if not isinstance(value, str) or value not in allowed:
        given = "no value" if node.is_null else shown(value)
        raise ConfigError(
            f"{where}.{key}: {given} is not one of {', '.join(allowed)}",
            path=path,
            line=node.line,
            value=value,
        )
    return value


def _handler_type(entry: YamlNode, where: str, path: str) -> str:
    """App Engine's handler type of ``entry``, refusing keys that type does not allow."""
    given = {key for key, _line, node in entry.pairs if not node.is_null}
    if "api_endpoint" in given:
        kind = "api_endpoint"
    else:
        found = next((k for k in ("static_files", "static_dir", "script") if k in given), None)
        if found is None:
            raise ConfigError(
                f"{where} has no script, static_files, static_dir or api_endpoint",
                path=path,
                line=entry.line,
            )
        kind = found
    extra = sorted(given - HANDLER_COMMON_KEYS - HANDLER_TYPES[kind] - {kind})
    if extra:
        raise ConfigError(
            f"{where}.{extra[0]} is not allowed in a {kind} handler",
            path=path,
            line=entry.key_line(extra[0]),
            value=extra[0],
        )
    if kind == "static_files" and "upload" not in given:
        raise ConfigError(f"{where} has static_files but no upload", path=path, line=entry.line)
    return kind


def _rule_from_handler(entry: YamlNode, index: int, path: str) -> AccessRule:
    where = f"handlers[{index}]"
    if entry.kind != "map":
        raise ConfigError(f"{where}: expected a mapping", path=path, line=entry.line)
    url_node = entry.get("url")
    url = None if url_node is None else url_node.value
    if url_node is not None and url is not None and not isinstance(url, str):
        raise ConfigError(
            f"{where}.url: expected text, found {shown(url)}",
            path=path,
            line=url_node.line,
            value=url,
        )
    if not isinstance(url, str) or not url:
        raise ConfigError(
            f"{where} has no url",
            path=path,
            line=entry.line if url_node is None else url_node.line,
            value=url,
        )
    url_line = url_node.line  # type: ignore[union-attr]  # url is a str, so the node exists
    login = _handler_choice(entry, "login", _LOGIN_VALUES, "optional", where, path)
    fail = _handler_choice(entry, "auth_fail_action", _FAIL_VALUES, "redirect", where, path)
    secure = _handler_choice(entry, "secure", _SECURE_VALUES, "optional", where, path)
    kind = _handler_type(entry, where, path)
    if re.fullmatch(HANDLER_URL_FORM, url, re.DOTALL) is None:
        raise ConfigError(
            f"{where}.url: {shown(url)} must start with / (a request path always does)",
            path=path,
            line=url_line,
            value=url,
        )
    regex = static_dir_regex(url) if kind == "static_dir" else url
    problem = regex_problem(regex)
    if problem is not None:
        raise ConfigError(
            f"{where}.url: bad url regex {shown(url)}: {problem}",
            path=path,
            line=url_line,
            value=url,
        )
    return AccessRule(url=regex, login=login, auth_fail_action=fail, secure=secure)


def load_app_yaml(path: str | Path) -> AppConfig:
    """Read an app.yaml's access rules, task deadline and entrypoint, as strictly as App Engine.

    Every key App Engine knows is accepted anywhere it knows it (see :data:`APP_YAML_SCHEMA`);
    an unknown key, a duplicate key, a YAML anchor, alias, merge key or unusual tag is a
    :class:`~taskhandler.exceptions.ConfigError`, because a misspelt ``handlers:`` or a second
    ``login:`` would otherwise silently leave a URL open. ``includes`` and ``api_config`` are
    refused when set: their access rules would be missed.

    ``handlers:`` become :class:`AccessRule` s in file order -- script, static_files and
    static_dir entries alike, since any of them can be the first match for a path. A
    ``static_dir`` url is a prefix (see :func:`static_dir_regex`). The deadline comes from
    the scaling section: ``automatic_scaling`` (or none) 600 s, ``basic_scaling`` or
    ``manual_scaling`` 86 400 s. The other settings are checked for their keys and shape only:
    the platform reads them.

    Raises:
        ConfigError: unreadable, too large or invalid file, unknown or duplicate keys, a
            ``login``/``auth_fail_action``/``secure`` value App Engine does not know, a
            handler without a type, a bad url regex, or two scaling sections -- with the file,
            the line and the key or value.

    Example::

        config = load_app_yaml("app.yaml")
        TaskMiddleware(app, config=config, authenticator=SignedCookieAuth(key))
    """
    name = str(path)
    document = load_yaml(path)
    if document is None or document.kind != "map":
        raise ConfigError(
            "expected a mapping of app.yaml settings at the top",
            path=name,
            line=None if document is None else document.line,
        )
    check_keys(document, APP_YAML_SCHEMA, name)
    for key, reason in _UNSUPPORTED.items():
        node = document.get(key)
        if node is not None and not node.is_null and (node.kind != "list" or node.items):
            raise ConfigError(
                f"{key} is not supported by taskhandler: {reason}",
                path=name,
                line=document.key_line(key),
                value=key,
            )

    handlers = document.get("handlers")
    entries = [] if handlers is None or handlers.is_null else handlers.items
    if len(entries) > MAX_HANDLERS:
        raise ConfigError(
            f"handlers: {len(entries)} entries; App Engine allows at most {MAX_HANDLERS}",
            path=name,
            line=document.key_line("handlers"),
        )
    rules = tuple(_rule_from_handler(entry, i, name) for i, entry in enumerate(entries, 1))

    scaling = [key for key in _SCALING_DEADLINES if document.get(key) is not None]
    if len(scaling) > 1:
        raise ConfigError(
            f"only one scaling section is allowed, found {', '.join(scaling)}",
            path=name,
            line=document.key_line(scaling[1]),
        )
    deadline = _SCALING_DEADLINES[scaling[0]] if scaling else AUTOMATIC_SCALING_DEADLINE

    builtins = _builtins(document.get("builtins"), name)
    rules = _with_builtin_rules(rules, builtins)

    entry_node = document.get("entrypoint")
    entrypoint = None if entry_node is None else entry_node.value
    if entrypoint is not None and not isinstance(entrypoint, str):
        raise ConfigError(
            f"entrypoint: expected text, found {shown(entrypoint)}",
            path=name,
            line=document.key_line("entrypoint"),
            value=entrypoint,
        )
    return AppConfig(
        rules=rules,
        task_deadline=deadline,
        entrypoint=entrypoint,
        builtins=builtins,
        source=name,
    )


# App Engine's ``on``/``off`` words for a builtin (appinfo.ON_ALIASES, OFF_ALIASES); YAML
# reads the unquoted ``on``, ``yes`` and ``1`` as True or 1 before App Engine's words apply.
_BUILTIN_ON = frozenset({"on", "yes", "y", "true", "t", "1"})
_BUILTIN_OFF = frozenset({"off", "no", "n", "false", "f", "0"})

# The handlers a builtin adds, as App Engine's own builtins/<name>/include.yaml did: put at
# the head of ``handlers:``, so they decide their URL before any of the app's rules.
BUILTIN_RULES: dict[str, tuple[AccessRule, ...]] = {
    "deferred": (AccessRule(url="/_ah/queue/deferred", login="admin"),),
}


def _builtins(node: YamlNode | None, path: str) -> tuple[str, ...]:
    """The names of the ``builtins:`` entries switched on; ConfigError for a value not on/off."""
    if node is None or node.is_null:
        return ()
    names: list[str] = []
    for index, item in enumerate(node.items, 1):
        builtin, line, value = item.pairs[0]  # check_keys made each entry one key
        raw = value.value
        word = str(int(raw)) if isinstance(raw, bool) else str(raw).lower()
        if raw is None or word in _BUILTIN_OFF:
            continue
        if word not in _BUILTIN_ON:
            raise ConfigError(
                f"builtins[{index}].{builtin}: {shown(raw)} is not on or off",
                path=path,
                line=line,
                value=raw,
            )
        if builtin not in names:
            names.append(builtin)
    return tuple(names)


def _with_builtin_rules(
    rules: tuple[AccessRule, ...], builtins: tuple[str, ...]
) -> tuple[AccessRule, ...]:
    """``rules`` with the builtins' rules at the head, as App Engine merges them.

    A builtin rule is left out when the app's own first rule for that exact URL already
    decides it the same way (the common ``- url: /_ah/queue/deferred`` / ``login: admin``
    copy), so the table shows each decision once.
    """
    head: list[AccessRule] = []
    for builtin in builtins:
        for rule in BUILTIN_RULES.get(builtin, ()):
            first = next((r for r in rules if r.regex.fullmatch(rule.url)), None)
            same = first is not None and (
                first.login,
                first.auth_fail_action,
                first.secure,
            ) == (rule.login, rule.auth_fail_action, rule.secure)
            if not same:
                head.append(rule)
    return (*head, *rules)


# --------------------------------------------------------------------------- cron.yaml

# croninfo's patterns: a target is ``version`` or ``service:version`` in its terms.
_CRON_TARGET = r"(?:(?!-)[a-z\d\-]{1,63}:)?(?!-)[a-z\d\-]{1,100}"
_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?)(?P<unit>[smhd])")
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class CronRetryParameters(BaseModel):
    """A cron job's ``retry_parameters``; ``None`` means "not set"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_retry_limit: int | None = None
    job_age_limit: float | None = None
    min_backoff_seconds: float | None = None
    max_backoff_seconds: float | None = None
    max_doublings: int | None = None


class CronJob(BaseModel):
    """One cron.yaml entry: which URL to request and when.

    Args:
        url: the path the job requests (starts with ``/``).
        schedule: App Engine's English-like schedule (``every 5 minutes``, ``every monday
            09:00``...); :meth:`cron` translates it.
        timezone: the schedule's time zone name, default UTC.
        description, target: as in cron.yaml.
        attempt_deadline: seconds an attempt may take (``attempt_deadline: 600s``).
        retry_parameters: how failed runs are retried.
        line: the line the entry starts on, for messages.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    schedule: str
    timezone: str | None = None
    description: str | None = None
    target: str | None = None
    attempt_deadline: float | None = None
    retry_parameters: CronRetryParameters | None = None
    line: int | None = None

    def cron(self) -> tuple[str, ...]:
        """The unix-cron expressions of :attr:`schedule` (usually one), in :attr:`timezone`.

        Raises:
            ConfigError: cron cannot express the schedule (e.g. ``1st monday of month``),
                naming the line and saying why.
        """
        from ._cron import CronSyntaxError, to_cron

        try:
            return to_cron(self.schedule)
        except CronSyntaxError as exc:
            where = f"cron.yaml line {self.line}: " if self.line is not None else ""
            raise ConfigError(f"{where}{exc}", value=self.schedule) from None


@functools.lru_cache(maxsize=1)
def _known_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


class _CronReader:
    """Reads the values of a cron.yaml whose keys :func:`check_keys` has accepted."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, message: str, node: YamlNode, value: object = None) -> ConfigError:
        return ConfigError(message, path=self.path, line=node.line, value=value)

    def text(self, entry: YamlNode, key: str, where: str, pattern: str, what: str) -> str | None:
        node = entry.get(key)
        if node is None or node.is_null:
            return None
        value = node.value
        if not isinstance(value, str) or re.fullmatch(pattern, value) is None:
            raise self.fail(f"{where}.{key}: {shown(value)} is not {what}", node, value)
        return value

    def number(self, entry: YamlNode, key: str, where: str, integer: bool) -> int | float | None:
        node = entry.get(key)
        if node is None or node.is_null:
            return None
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            value = None
        if value is None or not math.isfinite(value) or value < 0:
            what = "an integer >= 0" if integer else "a number >= 0"
            raise self.fail(f"{where}.{key}: {shown(node.value)} is not {what}", node, node.value)
        return value if integer else float(value)

    def job(self, entry: YamlNode, index: int) -> CronJob:
        where = f"cron[{index}]"
        if entry.kind != "map":
            raise self.fail(f"{where}: expected a mapping", entry)
        url = self.text(entry, "url", where, r"/.*", "a path starting with /")
        schedule = self.text(entry, "schedule", where, r"[^\n]{1,500}", "a one-line schedule")
        if url is None or schedule is None:
            raise self.fail(f"{where} has no {'url' if url is None else 'schedule'}", entry)
        from ._cron import CronSyntaxError, CronUnsupportedError, to_cron

        try:
            to_cron(schedule)
        except CronUnsupportedError:
            pass  # App Engine's syntax, refused only where a cron expression is needed
        except CronSyntaxError as exc:
            node = entry.get("schedule") or entry
            raise self.fail(f"{where}.schedule: {exc}", node, schedule) from None
        timezone = self.text(entry, "timezone", where, r"[^\n]{1,100}", "a time zone name")
        known = _known_timezones()
        if timezone is not None and known and timezone not in known:
            raise self.fail(
                f"{where}.timezone: {shown(timezone)} is not a known time zone",
                entry.get("timezone") or entry,
                timezone,
            )
        deadline_text = self.text(
            entry, "attempt_deadline", where, r"\s*[0-9]+(?:\.[0-9]*)?s\s*", "seconds like 600s"
        )
        deadline = None if deadline_text is None else float(deadline_text.strip()[:-1])
        if deadline is not None and not 0 < deadline < math.inf:
            raise self.fail(
                f"{where}.attempt_deadline: {shown(deadline_text)} is not a positive duration",
                entry.get("attempt_deadline") or entry,
                deadline_text,
            )
        retry = None
        retry_node = entry.get("retry_parameters")
        if retry_node is not None and not retry_node.is_null:
            retry = self.retry(retry_node, f"{where}.retry_parameters")
        return CronJob(
            url=url,
            schedule=schedule,
            timezone=timezone,
            description=self.text(
                entry, "description", where, r"[^\n]{0,499}", "a one-line description"
            ),
            target=self.text(entry, "target", where, _CRON_TARGET, "a service or version name"),
            attempt_deadline=deadline,
            retry_parameters=retry,
            line=entry.line,
        )

    def retry(self, node: YamlNode, where: str) -> CronRetryParameters:
        age = None
        age_node = node.get("job_age_limit")
        if age_node is not None and not age_node.is_null:
            text = age_node.value
            match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
            if match is None or float(match["number"]) <= 0:
                raise self.fail(
                    f"{where}.job_age_limit: {shown(text)} is not a duration like 2d, 3h, 30m",
                    age_node,
                    text,
                )
            age = float(match["number"]) * _DURATION_UNITS[match["unit"]]
            if not math.isfinite(age):
                raise self.fail(f"{where}.job_age_limit: {shown(text)} is too long", age_node)
        low = self.number(node, "min_backoff_seconds", where, integer=False)
        high = self.number(node, "max_backoff_seconds", where, integer=False)
        if low is not None and high is not None and high < low:
            raise self.fail(
                f"{where}: max_backoff_seconds is smaller than min_backoff_seconds",
                node.get("max_backoff_seconds") or node,
            )
        return CronRetryParameters(
            job_retry_limit=self.number(node, "job_retry_limit", where, integer=True),
            job_age_limit=age,
            min_backoff_seconds=low,
            max_backoff_seconds=high,
            max_doublings=self.number(node, "max_doublings", where, integer=True),
        )


def load_cron_yaml(path: str | Path) -> tuple[CronJob, ...]:
    """Read a cron.yaml into :class:`CronJob` s, in file order.

    Keys are checked as strictly as in :func:`load_app_yaml` (App Engine's ``croninfo``
    tables); each entry needs ``url`` and ``schedule``, a schedule in App Engine's syntax
    (:meth:`CronJob.cron` translates it to cron expressions, refusing what cron cannot say).

    Raises:
        ConfigError: every problem, with the file, the line and the key or value.
    """
    name = str(path)
    document = load_yaml(path)
    if document is None or document.kind != "map":
        raise ConfigError(
            "expected a mapping with a cron: list at the top",
            path=name,
            line=None if document is None else document.line,
        )
    check_keys(document, CRON_YAML_SCHEMA, name)
    jobs = document.get("cron")
    reader = _CronReader(name)
    entries = [] if jobs is None or jobs.is_null else jobs.items
    return tuple(reader.job(entry, i) for i, entry in enumerate(entries, 1))


def load_yaml_keys(path: str | Path, schema: Shape, what: str) -> YamlNode:
    """Parse a YAML config and check its keys against ``schema``; return the document.

    For the App Engine files taskhandler does not otherwise use (dispatch.yaml, index.yaml):
    ``taskhandler check`` still refuses their unknown and duplicate keys.

    Raises:
        ConfigError: an unsafe or invalid file, unknown or duplicate keys.
    """
    name = str(path)
    document = load_yaml(path)
    if document is None or document.kind != "map":
        raise ConfigError(f"expected a mapping of {what} settings at the top", path=name)
    check_keys(document, schema, name)
    return document


# --------------------------------------------------------------------------- web.xml


# web.xml nests about five levels and holds hundreds of elements at most; the caps bound the
# memory a hostile file can take (each element costs a few hundred bytes).
_MAX_XML_DEPTH = 64
_MAX_XML_ELEMENTS = 100_000


@dataclass(eq=False, slots=True)
class _Element:
    """A parsed XML element: local name (namespace dropped), text, children, line."""

    name: str
    line: int
    children: list[_Element] = field(default_factory=list)
    chunks: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        # Joined on demand: expat hands text over in many small pieces (one per entity
        # reference), and adding them up one by one would be quadratic.
        return "".join(self.chunks)

    def find_all(self, name: str) -> list[_Element]:
        return [child for child in self.children if child.name == name]


class _Refused(Exception):
    """Raised from inside the expat callbacks to stop on a forbidden declaration."""


def _parse_xml(data: bytes, path: str) -> _Element:
    """Parse ``data`` with expat, refusing the constructs that make XML parsing unsafe.

    Entity declarations (billion laughs, quadratic blow-up, external entities) and internal
    DTD subsets are refused; an external DTD is never fetched. A plain ``<!DOCTYPE web-app
    PUBLIC ...>`` line, as old servlet 2.3 files have, is allowed since it declares nothing.
    The standard library's expat is used directly because the element tree parser offers no
    hook to refuse declarations.
    """
    parser = expat.ParserCreate(namespace_separator="}")
    root: list[_Element] = []
    stack: list[_Element] = []

    def refuse(what: str) -> None:
        raise _Refused(f"{what} (line {parser.CurrentLineNumber})")

    def start_doctype(name: str, sysid: str | None, pubid: str | None, internal: int) -> None:
        if internal:
            refuse("a DOCTYPE with an internal subset is not allowed")

    def entity_decl(*_args: object) -> None:
        refuse("entity declarations are not allowed")

    def external_ref(*_args: object) -> int:
        refuse("external entities are not allowed")
        return 0  # pragma: no cover - refuse raises

    count = 0

    def start(name: str, _attrs: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count > _MAX_XML_ELEMENTS:
            refuse(f"more than {_MAX_XML_ELEMENTS} elements")
        if len(stack) >= _MAX_XML_DEPTH:
            refuse(f"elements nested more than {_MAX_XML_DEPTH} deep")
        element = _Element(name.rsplit("}", 1)[-1], parser.CurrentLineNumber)
        if stack:
            stack[-1].children.append(element)
        else:
            root.append(element)
        stack.append(element)

    def end(_name: str) -> None:
        stack.pop()

    def text(chunk: str) -> None:
        if stack:
            stack[-1].chunks.append(chunk)

    parser.StartDoctypeDeclHandler = start_doctype
    parser.EntityDeclHandler = entity_decl
    parser.UnparsedEntityDeclHandler = entity_decl
    parser.ExternalEntityRefHandler = external_ref
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except _Refused as exc:
        message, _, line = str(exc).rpartition(" (line ")
        raise ConfigError(f"unsafe XML: {message}", path=path, line=int(line[:-1])) from None
    except expat.ExpatError as exc:
        problem = expat.errors.messages.get(exc.code, str(exc))
        raise ConfigError(f"invalid XML: {problem}", path=path, line=exc.lineno) from None
    except (LookupError, ValueError) as exc:
        # The encoding declaration names a codec Python does not have (LookupError) or one
        # expat cannot use (multi-byte codecs: ValueError).
        raise ConfigError(
            f"invalid XML: unsupported encoding declaration: {exc}",
            path=path,
            line=parser.CurrentLineNumber,
        ) from None
    if not root:  # pragma: no cover - expat reports "no element found" first
        raise ConfigError("invalid XML: no root element", path=path)
    return root[0]


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


def url_pattern_regex(pattern: str) -> str:
    """Translate a servlet ``<url-pattern>`` into an :class:`AccessRule` regex.

    The servlet forms: ``/exact/path``; ``/prefix/*`` (the prefix itself and everything
    below it); ``*.ext`` (any path whose last segment ends in ``.ext``); ``/`` (the default:
    everything); and the empty string (the root ``/`` only). Anything else is an error.

    Example::

        >>> url_pattern_regex("/tasks/*")
        '/tasks(?:/.*)?'
    """
    if pattern == "":
        return "/"
    if _has_control(pattern) or "\\" in pattern:
        raise ValueError("control characters and backslashes are not allowed")
    if pattern == "/":
        return "/.*"
    if pattern.startswith("*."):
        extension = pattern[2:]
        if not extension or "/" in extension or "*" in extension:
            raise ValueError("an extension pattern is *.ext with no / or * in ext")
        return f"/.*\\.{re.escape(extension)}"
    if not pattern.startswith("/"):
        raise ValueError("must start with / or *.")
    if pattern == "/*":
        return "/.*"
    if pattern.endswith("/*"):
        prefix = pattern[:-2]
        if "*" in prefix:
            raise ValueError("* is only allowed as the last segment (/prefix/*)")
        return f"{re.escape(prefix)}(?:/.*)?"
    if "*" in pattern:
        raise ValueError("* is only allowed as /prefix/* or *.ext")
    return re.escape(pattern)


def _pattern_rank(pattern: str) -> tuple[int, int]:
    """Servlet precedence, as a sort key: exact, longest prefix, extension, default."""
    if pattern == "" or not (pattern.endswith("/*") or pattern.startswith("*.") or pattern == "/"):
        return (0, 0)
    if pattern.endswith("/*"):
        return (1, -len(pattern))
    if pattern.startswith("*."):
        return (2, 0)
    return (3, 0)


_LOGIN_STRENGTH = {"optional": 0, "required": 1, "admin": 2}


def load_web_xml(path: str | Path) -> AppConfig:
    """Read the ``<security-constraint>`` blocks of a Java web.xml into access rules.

    Each ``<url-pattern>`` becomes an :class:`AccessRule` (see :func:`url_pattern_regex`).
    ``<role-name>admin</role-name>`` means ``login: admin``, ``*`` means ``login: required``;
    no ``<auth-constraint>`` means anyone. ``<transport-guarantee>`` ``CONFIDENTIAL`` or
    ``INTEGRAL`` means ``secure: always``. Rules are ordered by servlet precedence (exact
    patterns, then longer prefixes, then extensions, then ``/``) so first-match-wins gives the
    servlet answer. Where several constraints name the same pattern, the strictest login and
    transport win. ``<http-method>`` lists are ignored: a constraint covers every method,
    which is stricter than the servlet rule and never weaker.

    The task deadline is the automatic-scaling one (600 s): scaling lives in
    appengine-web.xml, which is not read.

    Raises:
        ConfigError: unreadable file, invalid or unsafe XML (entity declarations, internal DTD
            subsets), an unknown role, an empty ``<auth-constraint>`` (servlet "deny all",
            which App Engine does not offer), or a url-pattern outside the servlet forms.
    """
    name = str(path)
    root = _parse_xml(read_config_bytes(path), name)
    if root.name != "web-app":
        raise ConfigError(
            f"expected a <web-app> root element, found <{root.name}>", path=name, line=root.line
        )

    # pattern -> [login, secure, first line]; merged so a pattern gets one rule.
    merged: dict[str, list[Any]] = {}
    for constraint in root.find_all("security-constraint"):
        login = "optional"
        for auth in constraint.find_all("auth-constraint"):
            roles = [role.text.strip() for role in auth.find_all("role-name")]
            if not roles:
                raise ConfigError(
                    "an <auth-constraint> without <role-name> (deny all) is not supported; "
                    "use <role-name>admin</role-name>",
                    path=name,
                    line=auth.line,
                )
            for role in roles:
                if role == "admin":
                    wanted = "admin"
                elif role == "*":
                    wanted = "required"
                else:
                    raise ConfigError(
                        f"role {role!r} is not supported; use admin or *",
                        path=name,
                        line=auth.line,
                        value=role,
                    )
                # Several roles in one constraint widen access: any listed role may enter.
                login = (
                    wanted
                    if login == "optional"
                    else min(login, wanted, key=_LOGIN_STRENGTH.__getitem__)
                )
        secure = "optional"
        for data in constraint.find_all("user-data-constraint"):
            for guarantee in data.find_all("transport-guarantee"):
                value = guarantee.text.strip().upper()
                if value in ("CONFIDENTIAL", "INTEGRAL"):
                    secure = "always"
                elif value != "NONE":
                    raise ConfigError(
                        f"transport-guarantee {guarantee.text.strip()!r} is not one of "
                        "NONE, INTEGRAL, CONFIDENTIAL",
                        path=name,
                        line=guarantee.line,
                    )
        for collection in constraint.find_all("web-resource-collection"):
            for url_pattern in collection.find_all("url-pattern"):
                pattern = url_pattern.text.strip()
                try:
                    url_pattern_regex(pattern)
                except ValueError as exc:
                    raise ConfigError(
                        f"url-pattern {pattern!r}: {exc}",
                        path=name,
                        line=url_pattern.line,
                        value=pattern,
                    ) from None
                seen = merged.get(pattern)
                if seen is None:
                    merged[pattern] = [login, secure, url_pattern.line]
                else:
                    seen[0] = max(seen[0], login, key=_LOGIN_STRENGTH.__getitem__)
                    seen[1] = "always" if "always" in (seen[1], secure) else seen[1]

    ordered = sorted(merged, key=lambda p: (_pattern_rank(p), merged[p][2]))
    rules = tuple(
        AccessRule(url=url_pattern_regex(p), login=merged[p][0], secure=merged[p][1])
        for p in ordered
    )
    return AppConfig(rules=rules, task_deadline=AUTOMATIC_SCALING_DEADLINE, source=name)
