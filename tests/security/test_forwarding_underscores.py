"""Attack 2: ``_`` spellings of forwarding headers, with task headers, from a stranger.

SPEC §3: forwarding headers are read only in their exact dash spelling; every ``_`` spelling
is removed like a task header and never read -- with or without ``trusted_proxies``, and
behind proxies that pass such names on (Caddy, HAProxy, nginx with
``underscores_in_headers on``). Verdict from the record: no view runs as a task and the task
view stays shut; an ASGI app never sees an ``_``-spelled forwarding header.
"""

from __future__ import annotations

import pytest

from tests.security.harness import (
    CONFIGURED,
    MAIN,
    PROXIED,
    PROXIES,
    TASK_HEADERS,
    Target,
    build,
    cases,
)
from tests.security.launch import Fleet

pytestmark = pytest.mark.slow

SPELLINGS = [
    ("X_Forwarded_For", b"X_Forwarded_For: 0.1.0.2\r\n"),
    ("x_forwarded_for", b"x_forwarded_for: 0.1.0.2\r\n"),
    ("X-Forwarded_For", b"X-Forwarded_For: 0.1.0.2\r\n"),
    ("X_FORWARDED_FOR-list", b"X_FORWARDED_FOR: 127.0.0.1, 0.1.0.2\r\n"),
    ("X_Forwarded_For-after-dash", b"X-Forwarded-For: 127.0.0.2\r\nX_Forwarded_For: 0.1.0.2\r\n"),
    ("Forwarded", b"Forwarded: for=0.1.0.2\r\n"),
    ("Forwarded-quoted", b'Forwarded: for="0.1.0.2";proto=https\r\n'),
    ("X_Real_IP", b"X_Real_IP: 0.1.0.2\r\n"),
    ("X-Real-IP", b"X-Real-IP: 0.1.0.2\r\n"),
]

UNDERSCORED = ("x_forwarded", "x_real_ip", "x-forwarded_", "x-real_", "x_real-")


@pytest.mark.parametrize(
    ("backend_id", "proxy", "spelling"),
    [*cases((*MAIN, *PROXIED, *CONFIGURED), PROXIES, SPELLINGS)],
)
def test_underscore_forwarding_never_makes_the_queue(
    fleet: Fleet, backend_id: str, proxy: str, spelling: bytes
) -> None:
    """A stranger's ``X_Forwarded_For: 0.1.0.2`` (and kin) with task headers is still a stranger."""
    target = Target.of(fleet, backend_id, proxy)
    headers = spelling + TASK_HEADERS
    target.assert_stranger_kept_out(build("/tasks/run", headers, case="task"), "GET /tasks/run")
    target.assert_stranger_kept_out(build("/public/echo", headers, case="echo"), "GET /public/echo")
    _, entries = target.exchange(build("/public/echo", spelling, case="names"))
    seen = [n for e in entries for n in e.get("raw_names", []) if n.lower().startswith(UNDERSCORED)]
    assert not seen, f"{backend_id} behind {proxy}: the ASGI app saw {seen}"
