"""Attack 7: 20,000 repeated header lines -- the work per request must stay linear.

A stranger sends 20,000 copies of one header (an ordinary one, a task header, a forwarding
header) to a protected URL and to the sign-in page. Verdict: the server answers it (a
refusal is fine) and keeps answering other requests to ``/public/echo`` meanwhile; no
protected view runs. Probes are sent at a steady pace from other connections and counted;
the 10 s socket timeout is only a safety net, not a measure of speed.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from tests.security.harness import Answer, Target, build, send
from tests.security.launch import Backend, Fleet

pytestmark = pytest.mark.slow

COPIES = 20_000
# Servers that accept 20,000 header lines (the others refuse them outright, which is fine):
# uvicorn with httptools (h11 stops at 16 KiB), cheroot and waitress for the WSGI side.
BACKENDS = [
    Backend("uvicorn-httptools"),
    Backend("uvicorn-httptools", trust="proxied"),
    Backend("cheroot"),
    Backend("waitress", trust="proxied"),
    Backend("cheroot", "django"),
    Backend("waitress", "django", trust="proxied"),
]
FLOODS = [
    ("X-Foo", "/tasks/run", b"X-Foo: a\r\n" * COPIES),
    ("X-Foo-login", "/_ah/login", b"X-Foo: a\r\n" * COPIES),
    ("task-header", "/tasks/run", b"X-AppEngine-QueueName: default\r\n" * COPIES),
    ("task-header-login", "/_ah/login", b"X-AppEngine-QueueName: default\r\n" * COPIES),
    ("underscore-task-header", "/tasks/run", b"X_AppEngine_TaskName: t\r\n" * COPIES),
    (
        "X-Forwarded-For",
        "/tasks/run",
        b"X-Forwarded-For: 0.1.0.2\r\n" * COPIES + b"X-AppEngine-QueueName: q\r\n",
    ),
    ("cookie", "/admin/panel", b"Cookie: a=b\r\n" * COPIES),
]
PACE = 0.01  # seconds between probes
# A big request in flight long enough for this many probes to be sent must let one through.
BLOCKED_PROBES = 30


def _probe(port: int) -> tuple[float, float, int | None]:
    sent = time.monotonic()
    answer = send(port, build("/public/echo", case="probe"))
    return sent, time.monotonic(), answer.status


@pytest.mark.parametrize(
    ("backend_id", "flood"),
    [
        pytest.param(b.id, (path, lines), id=f"{b.id}-direct-{name}")
        for b in BACKENDS
        for name, path, lines in FLOODS
    ],
)
def test_repeated_header_lines_stay_cheap(
    fleet: Fleet, backend_id: str, flood: tuple[str, bytes]
) -> None:
    """20,000 copies of a header are answered, and other requests are answered meanwhile."""
    path, lines = flood
    target = Target.of(fleet, backend_id, "direct")
    mark = target.record.mark()
    big: list[tuple[float, Answer]] = []
    stop = threading.Event()

    def flood_it() -> None:
        try:
            big.append((time.monotonic(), send(target.port, build(path, lines, case="flood"))))
        finally:
            stop.set()

    probes: list[Future[tuple[float, float, int | None]]] = []
    with ThreadPoolExecutor(max_workers=16) as pool:
        started = time.monotonic()
        flooder = threading.Thread(target=flood_it)
        flooder.start()
        while not stop.wait(PACE):
            probes.append(pool.submit(_probe, target.port))
        flooder.join()
        results = [probe.result() for probe in probes]

    assert big, "the flood got no answer within the safety net"
    finished, answer = big[0]
    assert answer.status is not None, f"the server closed without answering: {answer}"
    assert all(status == 200 for _, _, status in results), results
    during = [r for r in results if r[0] < finished]
    answered_during = [r for r in during if r[1] < finished]
    assert len(during) < BLOCKED_PROBES or answered_during, (
        f"{len(during)} probes sent while the flood ({finished - started:.2f} s) was handled, "
        "none answered before it: the server was blocked"
    )
    entries = target.record.since(mark)
    assert not [e for e in entries if e["view"] != "echo"], entries
