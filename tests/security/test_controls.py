"""Positive controls: through every server and proxy, the trusted requests do run the views.

Without these the rest of the suite could pass vacuously (a view that never records, a
proxy that answers everything itself). The queue (a queue source, 127.0.0.3) runs the task
view with a TaskContext -- directly, and through the proxies that set ``X-Forwarded-For``
when the app trusts them (``trusted_proxies=["127.0.0.1"]``); an admin signed in with
``SignedCookieAuth`` reaches ``/admin/panel`` everywhere.
"""

from __future__ import annotations

import pytest

from tests.security.harness import (
    ADMIN_COOKIE,
    CONFIGURED,
    FOLDS_UNDERSCORES,
    MAIN,
    NO_XFF_WALK,
    PREFIXED,
    PROXIED,
    PROXIES,
    QUEUE_CLIENT,
    SERVER_PROXY_MODES,
    SETS_XFF,
    TASK_HEADERS,
    Target,
    build,
    pairs,
)
from tests.security.launch import Fleet

pytestmark = pytest.mark.slow

STRICT = (*MAIN, *PREFIXED, *SERVER_PROXY_MODES)
# Behind a proxy the queue is recognised by walking X-Forwarded-For, which needs the header to
# reach the middleware untouched: not under servers that rewrite the peer from it by default
# or drop it (harness.NO_XFF_WALK); uvicorn with --no-proxy-headers shows the working setup.
WALKABLE = (
    *(b for b in PROXIED if b.server not in (*NO_XFF_WALK, *FOLDS_UNDERSCORES)),
    *CONFIGURED,
)
FOLDING = tuple(b for b in PROXIED if b.server in FOLDS_UNDERSCORES)


@pytest.mark.parametrize(
    "path",
    [pytest.param("/tasks/run", id="task-view"), pytest.param("/public/echo", id="echo")],
)
@pytest.mark.parametrize(
    ("backend_id", "proxy"),
    [
        *pairs(STRICT, ("direct",)),
        *pairs(PROXIED, ("direct",)),
        *pairs(WALKABLE, SETS_XFF),
    ],
)
def test_queue_runs_the_task_view(fleet: Fleet, backend_id: str, proxy: str, path: str) -> None:
    """The queue's request runs the view with a TaskContext trusted as the queue."""
    target = Target.of(fleet, backend_id, proxy)
    answer, entries = target.exchange(build(path, TASK_HEADERS, case="queue"), source=QUEUE_CLIENT)
    seen = [(e["view"], (e["task"] or {}).get("trusted_by")) for e in entries]
    assert len(seen) == 1, f"status {answer.status}, recorded {seen}: {answer}"
    assert seen[0][1] == "queue", f"status {answer.status}, recorded {seen}: {answer}"
    assert entries[0]["task"]["task_name"] == "spoofed-1"


@pytest.mark.parametrize(("backend_id", "proxy"), pairs(FOLDING, SETS_XFF))
def test_queue_behind_a_proxy_fails_closed_under_a_folding_server(
    fleet: Fleet, backend_id: str, proxy: str
) -> None:
    """Under a WSGI server that folds ``_`` into ``-``, X-Forwarded-For is not walked without
    the policy's promise: even the queue's request runs as a stranger's (no task)."""
    target = Target.of(fleet, backend_id, proxy)
    answer, entries = target.exchange(
        build("/public/echo", TASK_HEADERS, case="queue"), source=QUEUE_CLIENT
    )
    assert [(e["view"], e["task"]) for e in entries] == [("echo", None)], f"{answer}"


@pytest.mark.parametrize("backend_id", [b.id for b in STRICT])
def test_queue_passes_secure_always(fleet: Fleet, backend_id: str) -> None:
    """The queue reaches a ``secure: always`` view over plain HTTP (tasks may target any URL)."""
    target = Target.of(fleet, backend_id, "direct")
    answer, entries = target.exchange(
        build("/secure/page", TASK_HEADERS, case="queue"), source=QUEUE_CLIENT
    )
    assert [e["view"] for e in entries] == ["secure"], f"status {answer.status}: {answer}"


@pytest.mark.parametrize(("backend_id", "proxy"), pairs((*STRICT, *PROXIED, *CONFIGURED), PROXIES))
def test_admin_reaches_the_admin_panel(fleet: Fleet, backend_id: str, proxy: str) -> None:
    """A signed-in admin (SignedCookieAuth cookie) runs /admin/panel; without it, nothing runs."""
    target = Target.of(fleet, backend_id, proxy)
    cookie = f"Cookie: {ADMIN_COOKIE}\r\n".encode()
    answer, entries = target.exchange(build("/admin/panel", cookie, case="admin"))
    assert [e["view"] for e in entries] == ["admin"], f"status {answer.status}: {answer}"
    answer, entries = target.exchange(build("/admin/panel", case="nobody"))
    assert entries == [] and answer.status == 302, f"status {answer.status}: {answer}"
