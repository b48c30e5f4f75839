"""Attack 6: peer strings that are not exactly an address, in process (no server makes them).

SPEC §3: a peer address that is not exactly an address -- surrounding space, a zone id, a
port, brackets, a newline -- is untrusted. Servers and gateways hand these strings over as
``REMOTE_ADDR`` / ASGI ``client``, so the table is run through both middlewares directly.
Verdict: the view records ``current_task()``; it must be ``None`` and the protected task URL
must not run. Controls: the exact queue address (and its IPv4-mapped form) is trusted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder

from taskhandler import AccessRule, AppConfig, TrustPolicy, asgi, current_task, wsgi

RULES = AppConfig(rules=[AccessRule(url="/tasks/.*", login="admin")])
TRUST = TrustPolicy(queue_sources=["0.1.0.2", "fe80::1", "2001:db8::2"])
TASK = {"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "t-1"}

UNTRUSTED = [
    pytest.param(" 0.1.0.2", id="leading-space"),
    pytest.param("0.1.0.2 ", id="trailing-space"),
    pytest.param("\t0.1.0.2", id="leading-tab"),
    pytest.param("0.1.0.2\n", id="trailing-newline"),
    pytest.param("0.1.0.2\x00", id="trailing-nul"),
    pytest.param("0.1.0.2%eth0", id="ipv4-zone"),
    pytest.param("fe80::1%eth0", id="ipv6-zone-name"),
    pytest.param("fe80::1%1", id="ipv6-zone-number"),
    pytest.param("::ffff:0.1.0.2%eth0", id="mapped-zone"),
    pytest.param("0.1.0.2:8080", id="with-port"),
    pytest.param("[0.1.0.2]", id="bracketed-ipv4"),
    pytest.param("[fe80::1]", id="bracketed-ipv6"),
    pytest.param("[2001:db8::2]:443", id="bracketed-ipv6-port"),
    pytest.param("0.1.0.02", id="leading-zero"),
    pytest.param("0.1.2", id="inet-aton-short"),
    pytest.param("0x0.1.0.2", id="hex-octet"),
    pytest.param("0.1.0.2.", id="trailing-dot"),
    pytest.param("0.1.0.2,0.1.0.2", id="comma-list"),
    pytest.param("", id="empty"),
    pytest.param("unix:/run/queue.sock", id="unix-socket"),
]
TRUSTED = [
    pytest.param("0.1.0.2", id="exact"),
    pytest.param("::ffff:0.1.0.2", id="ipv4-mapped"),
    pytest.param("fe80::1", id="ipv6-exact"),
]


def _wsgi(peer: str, path: str) -> tuple[int, list[Any]]:
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(current_task())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    environ = EnvironBuilder(path=path, headers=TASK).get_environ()
    environ["REMOTE_ADDR"] = peer
    status: list[str] = []
    body = wsgi.TaskMiddleware(app, trust=TRUST, config=RULES)(
        environ, lambda s, h, e=None: status.append(s)
    )
    b"".join(body)
    return int(status[0].split()[0]), seen


def _asgi(peer: str, path: str) -> tuple[int, list[Any]]:
    seen: list[Any] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(current_task())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"localhost"),
            *((k.lower().encode(), v.encode()) for k, v in TASK.items()),
        ],
        "client": (peer, 1234),
        "server": ("localhost", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asgi.TaskMiddleware(app, trust=TRUST, config=RULES)(scope, receive, send))
    return int(sent[0]["status"]), seen


ADAPTERS = [pytest.param(_wsgi, id="wsgi"), pytest.param(_asgi, id="asgi")]


@pytest.mark.parametrize("peer", UNTRUSTED)
@pytest.mark.parametrize("run", ADAPTERS)
def test_odd_peer_string_is_not_the_queue(run: Any, peer: str) -> None:
    """A peer string that is not exactly an address is untrusted: no task, protected URL shut."""
    status, seen = run(peer, "/public/x")
    assert seen == [None], f"{peer!r} was trusted: {seen}"
    status, seen = run(peer, "/tasks/run")
    assert seen == [], f"{peer!r} reached the protected task URL (status {status})"


@pytest.mark.parametrize("peer", TRUSTED)
@pytest.mark.parametrize("run", ADAPTERS)
def test_exact_queue_address_is_the_queue(run: Any, peer: str) -> None:
    """Control: the queue's exact address (or its IPv4-mapped form) runs the task URL as a task."""
    status, seen = run(peer, "/tasks/run")
    assert status == 200
    assert [task.trusted_by for task in seen] == ["queue"]
