"""The stranger's client, the record files, and the tables of what runs where.

The stranger connects from 127.0.0.2, the queue's stand-in from 127.0.0.3 (a queue source
in every app's trust policy); proxies reach the servers from 127.0.0.1. Requests are
written byte for byte on a raw socket, so header case, ``_`` for ``-``, duplicates and odd
spacing reach the first hop exactly as typed.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.security.apps.common import (
    ADMIN_EMAIL,
    AUTH,
    PROTECTED_VIEWS,
    QUEUE_CLIENT,
    STRANGER,
)
from tests.security.launch import PROXIES, SERVERS, Backend, Fleet

__all__ = [
    "ADMIN_COOKIE",
    "CONFIGURED",
    "MAIN",
    "PLATFORM",
    "PROXIED",
    "PROXIES",
    "QUEUE_CLIENT",
    "SETS_PROTO",
    "STRANGER",
    "Answer",
    "Record",
    "Target",
    "breaches",
    "build",
    "send",
]

TIMEOUT = 10.0  # a safety net for a server that never answers, not a measure of speed

# -- the tables ---------------------------------------------------------------------------

DEFAULTS = tuple(name for name in SERVERS if name != "uvicorn-noproxy")
"""Every server under its default settings."""
DJANGO_SERVERS = (
    "gunicorn-gthread", "waitress", "cheroot", "uvicorn-h11", "hypercorn", "daphne", "granian",
)  # fmt: skip
"""The servers the Django app runs under: WSGI ones (cheroot folds ``_`` into ``-``), ASGI ones."""
MAIN = (
    *(Backend(name) for name in DEFAULTS),
    *(Backend(name, "django") for name in DJANGO_SERVERS),
)
"""Every server with the plain app (Flask, Starlette), and the Django app under several: default
(strict) trust, the queue is 0.1.0.2 and 127.0.0.3."""
PROXIED = tuple(Backend(b.server, b.app, trust="proxied") for b in MAIN)
"""The same with ``trusted_proxies=["127.0.0.1"]``."""
CONFIGURED = (
    Backend("uvicorn-noproxy", trust="proxied"),
    Backend("uvicorn-noproxy", "django", trust="proxied"),
)
"""uvicorn as the docs advise behind a proxy with ``trusted_proxies``: ``--no-proxy-headers``."""
# Servers that take the peer from X-Forwarded-For by default (so the middleware never treats
# a peer named there as the queue), and waitress, which removes X-Forwarded-For by default:
# behind a proxy, the queue is recognised only when the server is configured otherwise.
NO_XFF_WALK = ("uvicorn-h11", "uvicorn-httptools", "gunicorn-uvicornworker", "waitress")
# WSGI servers that fold a client's X_Forwarded_For into X-Forwarded-For: without
# TrustPolicy(proxy_drops_underscore_headers=True) the middleware does not walk it at all.
FOLDS_UNDERSCORES = ("cheroot", "wsgiref", "hypercorn-wsgi", "granian-wsgi")
NESTED = (
    Backend("gunicorn-sync", "nested"),
    Backend("uvicorn-h11", "nested"),
    Backend("gunicorn-gthread", "django_nested"),
    Backend("uvicorn-h11", "django_nested"),
)
PREFIXED = (
    Backend("gunicorn-sync", "proxyfix_outside"),
    Backend("gunicorn-sync", "proxyfix_inside"),
    Backend("uvicorn-h11", "fastapi"),
)
SERVER_PROXY_MODES = (
    Backend("hypercorn", "hypercorn_legacy"),
    Backend("hypercorn", "hypercorn_modern"),
    Backend("granian", "granian_proxy"),
)
PLATFORM = (
    Backend("gunicorn-gthread", trust="platform"),
    Backend("uvicorn-h11", trust="platform"),
    Backend("gunicorn-gthread", "django", trust="platform"),
)
"""``platform_sets_proto=True``: the scheme is the front end's ``X-Forwarded-Proto``."""
ALL = (*MAIN, *PROXIED, *CONFIGURED, *NESTED, *PREFIXED, *SERVER_PROXY_MODES, *PLATFORM)

# Proxies that set X-Forwarded-For from the real peer (so trusting them is meaningful).
SETS_XFF = ("nginx-xff", "caddy", "haproxy")
# Proxies that set X-Forwarded-Proto themselves, over any client's value, as a platform's
# front end does (Cloud Run's, a Google Cloud load balancer).
SETS_PROTO = ("caddy",)


def cases(
    backends: Iterable[Backend], proxies: Sequence[str], spellings: Sequence[tuple[str, Any]]
) -> list[Any]:
    """``pytest.param(backend_id, proxy, value, id="backend-proxy-spelling")`` for every combination."""
    return [
        pytest.param(backend.id, proxy, value, id=f"{backend.id}-{proxy}-{name}")
        for backend in backends
        for proxy in proxies
        for name, value in spellings
    ]


def pairs(backends: Iterable[Backend], proxies: Sequence[str]) -> list[Any]:
    """``pytest.param(backend_id, proxy, id="backend-proxy")`` for every combination."""
    return [
        pytest.param(backend.id, proxy, id=f"{backend.id}-{proxy}")
        for backend in backends
        for proxy in proxies
    ]


# -- requests -----------------------------------------------------------------------------

ADMIN_COOKIE = f"{AUTH.cookie_name}={AUTH.cookie_value(ADMIN_EMAIL, admin=True)}"
TASK_HEADERS = b"X-AppEngine-QueueName: default\r\nX-AppEngine-TaskName: spoofed-1\r\n"


def build(
    target: str | bytes,
    headers: bytes = b"",
    *,
    method: bytes = b"GET",
    host: bytes = b"127.0.0.1",
    case: str = "",
    body: bytes = b"",
) -> bytes:
    """One HTTP/1.1 request, ``headers`` given as raw lines (each ending in CRLF)."""
    if isinstance(target, str):
        target = target.encode("latin-1")
    lines = [method + b" " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n"]
    if case:
        lines.append(b"X-Security-Case: " + case.encode("ascii", "replace") + b"\r\n")
    lines.append(headers)
    if body or method in (b"POST", b"PUT"):
        lines.append(b"Content-Length: %d\r\n" % len(body))
    lines.append(b"Connection: close\r\n\r\n")
    return b"".join(lines) + body


@dataclass(frozen=True)
class Answer:
    """What came back: the status (``None`` when the connection closed without one)."""

    status: int | None
    raw: bytes

    def header(self, name: str) -> str | None:
        head = self.raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def __str__(self) -> str:
        return repr(self.raw[:300])


def send(port: int, request: bytes, *, source: str = STRANGER, timeout: float = TIMEOUT) -> Answer:
    """Send ``request`` to 127.0.0.1:port from ``source``; read until the server closes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(request)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    raw = b"".join(chunks)
    status = None
    if raw.startswith(b"HTTP/"):
        with contextlib.suppress(IndexError, ValueError):
            status = int(raw.split(b" ", 2)[1])
    return Answer(status, raw)


# -- the verdict --------------------------------------------------------------------------


class Record:
    """A backend's record file: one JSON line per view run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """Where the record ends now."""
        return self.path.stat().st_size

    def since(self, mark: int) -> list[dict[str, Any]]:
        """The entries written after ``mark``."""
        with self.path.open("rb") as records:
            records.seek(mark)
            return [json.loads(line) for line in records.read().splitlines() if line.strip()]


def breaches(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries that must not exist for a stranger: a protected view ran, or a view saw a task."""
    return [e for e in entries if e["view"] in PROTECTED_VIEWS or e["task"] is not None]


def describe(entries: Iterable[dict[str, Any]]) -> str:
    """A short, readable account of record entries for an assertion message."""
    keep = ("view", "task", "remote", "forwarded_for", "scheme")
    keep += ("script_name", "path_info", "root_path", "path")
    return "; ".join(json.dumps({k: e[k] for k in keep if k in e}) for e in entries)


@dataclass
class Target:
    """One backend through one proxy: where to connect, and its record."""

    backend_id: str
    proxy: str
    port: int
    record: Record

    @classmethod
    def of(cls, running: Fleet, backend_id: str, proxy: str) -> Target:
        """The target for a parametrized case; skips (with the reason) what is not installed."""
        reason = running.skip_reason(backend_id, proxy)
        if reason is not None:
            pytest.skip(reason)
        backend = running.backends[backend_id]
        return cls(backend_id, proxy, running.port(backend_id, proxy), Record(backend.record))

    def exchange(
        self, request: bytes, *, source: str = STRANGER
    ) -> tuple[Answer, list[dict[str, Any]]]:
        """Send ``request``; return the answer and what the views recorded meanwhile."""
        mark = self.record.mark()
        answer = send(self.port, request, source=source)
        return answer, self.record.since(mark)

    def assert_stranger_kept_out(self, request: bytes, what: str) -> Answer:
        """The stranger's ``request`` ran no protected view and no view saw a task."""
        answer, entries = self.exchange(request)
        bad = breaches(entries)
        assert not bad, (
            f"{self.backend_id} behind {self.proxy}: {what}: the stranger got through "
            f"(status {answer.status}): {describe(bad)}"
        )
        return answer
