"""Attack 4: peers and schemes the server (or a server-side proxy mode) took from headers.

Under each server's defaults -- uvicorn's proxy headers on with ``forwarded_allow_ips``
127.0.0.1, gunicorn's ``secure_scheme_headers`` from 127.0.0.1 -- behind a proxy that passes
the client's forwarding headers through unchanged (nginx's plain ``proxy_pass``, HAProxy for
everything but ``X-Forwarded-For``), and under hypercorn's ``ProxyFixMiddleware``, granian's
proxy-headers wrapper and werkzeug's ``ProxyFix``: a stranger who sends
``X-Forwarded-For: 0.1.0.2`` is still a stranger, and ``X-Forwarded-Proto: https`` (or any
other scheme header) does not satisfy ``secure: always`` over plain HTTP (SPEC §3).
Verdict from the record.
"""

from __future__ import annotations

import pytest

from tests.security.harness import (
    MAIN,
    PREFIXED,
    PROXIES,
    SERVER_PROXY_MODES,
    TASK_HEADERS,
    Target,
    build,
    cases,
)
from tests.security.launch import Fleet

pytestmark = pytest.mark.slow

BACKENDS = (*MAIN, *(b for b in PREFIXED if b.app != "fastapi"), *SERVER_PROXY_MODES)

PEERS = [
    ("X-Forwarded-For", b"X-Forwarded-For: 0.1.0.2\r\n"),
    ("X-Forwarded-For-twice", b"X-Forwarded-For: 0.1.0.2, 0.1.0.2\r\n"),
    ("X-Forwarded-For-two-lines", b"X-Forwarded-For: 0.1.0.2\r\nX-Forwarded-For: 0.1.0.2\r\n"),
    ("X-Forwarded-For-queue-client", b"X-Forwarded-For: 127.0.0.3\r\n"),
    ("X-Forwarded-For-mapped", b"X-Forwarded-For: ::ffff:0.1.0.2\r\n"),
    ("Forwarded", b"Forwarded: for=0.1.0.2;proto=https\r\n"),
    ("X-Real-IP", b"X-Real-IP: 0.1.0.2\r\n"),
    ("X-Forwarded-For-port", b"X-Forwarded-For: 0.1.0.2:1\r\n"),
    ("X-Forwarded-For-v6-port", b"X-Forwarded-For: [::ffff:0.1.0.2]:80\r\n"),
    ("X-Forwarded-For-65-hops", b"X-Forwarded-For: " + b"10.0.0.1, " * 65 + b"0.1.0.2\r\n"),
    (
        "X-Forwarded-For-padding-line",
        b"X-Forwarded-For: " + b", ".join([b"10.0.0.1"] * 65) + b"\r\nX-Forwarded-For: 0.1.0.2\r\n",
    ),
    ("Forwarded-past-8KiB", b"Forwarded: " + b"for=10.0.0.1, " * 700 + b"for=0.1.0.2\r\n"),
]
SCHEMES = [
    ("X-Forwarded-Proto", b"X-Forwarded-Proto: https\r\n"),
    ("X-Forwarded-Ssl", b"X-Forwarded-Ssl: on\r\n"),
    ("X-Forwarded-Protocol", b"X-Forwarded-Protocol: ssl\r\n"),
    ("Front-End-Https", b"Front-End-Https: on\r\n"),
    ("X-Forwarded-Scheme", b"X-Forwarded-Scheme: https\r\n"),
    ("X-Url-Scheme", b"X-Url-Scheme: https\r\n"),
    ("Forwarded-proto", b"Forwarded: proto=https\r\n"),
    ("X_Forwarded_Proto", b"X_Forwarded_Proto: https\r\n"),
]


@pytest.mark.parametrize(("backend_id", "proxy", "spoof"), cases(BACKENDS, PROXIES, PEERS))
def test_forwarded_peer_never_makes_the_queue(
    fleet: Fleet, backend_id: str, proxy: str, spoof: bytes
) -> None:
    """``X-Forwarded-For: 0.1.0.2`` with task headers, rewritten into the peer or not, is a stranger."""
    target = Target.of(fleet, backend_id, proxy)
    headers = spoof + TASK_HEADERS
    target.assert_stranger_kept_out(build("/tasks/run", headers, case="task"), "GET /tasks/run")
    target.assert_stranger_kept_out(build("/public/echo", headers, case="echo"), "GET /public/echo")


@pytest.mark.parametrize(("backend_id", "proxy", "spoof"), cases(BACKENDS, PROXIES, SCHEMES))
def test_forwarded_scheme_never_satisfies_secure_always(
    fleet: Fleet, backend_id: str, proxy: str, spoof: bytes
) -> None:
    """A scheme header from a stranger over plain HTTP never opens a ``secure: always`` view."""
    target = Target.of(fleet, backend_id, proxy)
    target.assert_stranger_kept_out(build("/secure/page", spoof, case="scheme"), "GET /secure/page")
