"""Access configuration: app.yaml / web.xml rules and the task deadline (SPEC §4, §5).

``load_app_yaml`` and ``load_web_xml`` turn the files an App Engine app already has into an
:class:`AppConfig`: ordered :class:`AccessRule` s (first full match wins) and the task deadline.
Everything else in those files (runtime, env_variables, instance_class, ...) is ignored, because
an app.yaml carries many settings that only the platform uses.

A file that cannot be used raises :class:`~taskhandler.exceptions.ConfigError` naming the file,
the line when the parser knows it, and the problem -- never a silent fallback, since a rule that
silently fails to load leaves a URL unprotected.

Pure: standard library, pydantic and PyYAML only.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args
from xml.parsers import expat

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .deadline import AUTOMATIC_SCALING_DEADLINE, BASIC_SCALING_DEADLINE
from .exceptions import ConfigError

__all__ = [
    "AccessRule",
    "AppConfig",
    "AuthFailAction",
    "Login",
    "Secure",
    "load_app_yaml",
    "load_web_xml",
    "static_dir_regex",
    "url_pattern_regex",
]

Login = Literal["optional", "required", "admin"]
AuthFailAction = Literal["redirect", "unauthorized"]
Secure = Literal["optional", "always", "never", "default"]

_LOGIN_VALUES: tuple[str, ...] = get_args(Login)
_FAIL_VALUES: tuple[str, ...] = get_args(AuthFailAction)
_SECURE_VALUES: tuple[str, ...] = get_args(Secure)

# The scaling section decides how long a task request may run (SPEC §5).
_SCALING_DEADLINES = {
    "automatic_scaling": AUTOMATIC_SCALING_DEADLINE,
    "basic_scaling": BASIC_SCALING_DEADLINE,
    "manual_scaling": BASIC_SCALING_DEADLINE,
}

# Files are read whole; a config file larger than this is a mistake, not a config.
_MAX_FILE_BYTES = 4 * 1024 * 1024


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
        try:
            re.compile(value, re.DOTALL)
        except re.error as exc:
            raise ValueError(f"bad url regex {value!r}: {exc}") from None
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
        source: the file the configuration was read from, for messages.

    Example::

        AppConfig(rules=[AccessRule(url=r"/tasks/.*", login="admin")], task_deadline=600.0)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[AccessRule, ...] = ()
    task_deadline: float = Field(default=AUTOMATIC_SCALING_DEADLINE, gt=0)
    entrypoint: str | None = None
    source: str | None = None


# --------------------------------------------------------------------------- app.yaml


class _Mapping(dict[Any, Any]):
    """A YAML mapping that remembers the line of the mapping and of each key's value."""

    line: int | None = None
    value_lines: dict[Any, int]


class _LineLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings carry line numbers (1-based) for error messages."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> Iterator[_Mapping]:
    data = _Mapping()
    data.line = node.start_mark.line + 1
    data.value_lines = {}
    yield data
    data.update(loader.construct_mapping(node))
    # construct_mapping flattened merge keys (<<) into node.value, so this sees them too.
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            data.value_lines[key_node.value] = value_node.start_mark.line + 1


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _read(path: str | Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", path=str(path)) from None
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError(f"file is larger than {_MAX_FILE_BYTES} bytes", path=str(path))
    return data


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


def _check_choice(
    entry: _Mapping, key: str, allowed: tuple[str, ...], path: str, default: str
) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(
            f"handlers: {key}: {value!r} is not one of {', '.join(allowed)}",
            path=path,
            line=entry.value_lines.get(key, entry.line),
            value=value,
        )
    return value


def _rule_from_handler(entry: object, index: int, path: str, parent_line: int | None) -> AccessRule:
    if not isinstance(entry, _Mapping):
        raise ConfigError(
            f"handlers: entry {index + 1} is not a mapping",
            path=path,
            line=parent_line,
            value=entry,
        )
    url = entry.get("url")
    if not isinstance(url, str) or not url:
        raise ConfigError(
            f"handlers: entry {index + 1} has no url", path=path, line=entry.line, value=url
        )
    url_line = entry.value_lines.get("url", entry.line)
    regex = static_dir_regex(url) if "static_dir" in entry else url
    login = _check_choice(entry, "login", _LOGIN_VALUES, path, "optional")
    fail = _check_choice(entry, "auth_fail_action", _FAIL_VALUES, path, "redirect")
    secure = _check_choice(entry, "secure", _SECURE_VALUES, path, "optional")
    try:
        return AccessRule(
            url=regex,
            login=login,
            auth_fail_action=fail,
            secure=secure,
        )
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"handlers: {problem}", path=path, line=url_line, value=url) from None


def load_app_yaml(path: str | Path) -> AppConfig:
    """Read an app.yaml's access rules, task deadline and entrypoint.

    ``handlers:`` become :class:`AccessRule` s in file order -- script, static_files and
    static_dir entries alike, since any of them can be the first match for a path. A
    ``static_dir`` url is a prefix (see :func:`static_dir_regex`). The deadline comes from
    the scaling section: ``automatic_scaling`` (or none) 600 s, ``basic_scaling`` or
    ``manual_scaling`` 86 400 s. Every other key is ignored.

    Raises:
        ConfigError: unreadable file, invalid YAML, a ``login``/``auth_fail_action``/``secure``
            value App Engine does not know, a bad regex, or two scaling sections -- with the
            file and line.

    Example::

        config = load_app_yaml("app.yaml")
        TaskMiddleware(app, config=config, authenticator=SignedCookieAuth(key))
    """
    name = str(path)
    data = _read(path)
    try:
        document = yaml.load(data, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"invalid YAML: {problem}", path=name, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=name) from None
    if not isinstance(document, _Mapping):
        raise ConfigError("expected a mapping of app.yaml settings at the top", path=name)

    handlers = document.get("handlers", [])
    handlers_line = document.value_lines.get("handlers")
    if handlers is None:
        handlers = []
    if not isinstance(handlers, list):
        raise ConfigError("handlers: expected a list", path=name, line=handlers_line)
    rules = tuple(
        _rule_from_handler(entry, i, name, handlers_line) for i, entry in enumerate(handlers)
    )

    scaling = [key for key in _SCALING_DEADLINES if key in document]
    if len(scaling) > 1:
        raise ConfigError(
            f"only one scaling section is allowed, found {', '.join(scaling)}",
            path=name,
            line=document.value_lines.get(scaling[1]),
        )
    deadline = _SCALING_DEADLINES[scaling[0]] if scaling else AUTOMATIC_SCALING_DEADLINE

    entrypoint = document.get("entrypoint")
    if entrypoint is not None and not isinstance(entrypoint, str):
        raise ConfigError(
            "entrypoint: expected a string",
            path=name,
            line=document.value_lines.get("entrypoint"),
            value=entrypoint,
        )
    return AppConfig(rules=rules, task_deadline=deadline, entrypoint=entrypoint, source=name)


# --------------------------------------------------------------------------- web.xml


@dataclass
class _Element:
    """A parsed XML element: local name (namespace dropped), text, children, line."""

    name: str
    line: int
    children: list[_Element] = field(default_factory=list)
    text: str = ""

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

    def start(name: str, _attrs: dict[str, str]) -> None:
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
            stack[-1].text += chunk

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
    root = _parse_xml(_read(path), name)
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
