"""Attack 5: nested middlewares -- an outer ``TaskMiddleware`` with no config around an inner one.

SPEC §4: trust and stripping are decided once, by the outermost; the inner layer's access
rules and authenticator still apply. Verdict from the record: a stranger runs no protected
view; the controls show the same app does run them for the queue and for an admin.
"""

from __future__ import annotations

import pytest

from tests.security.harness import (
    ADMIN_COOKIE,
    NESTED,
    PROXIES,
    QUEUE_CLIENT,
    TASK_HEADERS,
    Target,
    build,
    cases,
)
from tests.security.launch import Fleet

pytestmark = pytest.mark.slow

STRANGER_REQUESTS = [
    ("admin", ("/admin/panel", b"")),
    ("tasks", ("/tasks/run", b"")),
    ("tasks-with-task-headers", ("/tasks/run", TASK_HEADERS)),
    (
        "tasks-underscore-headers",
        ("/tasks/run", b"X_AppEngine_QueueName: q\r\nX_AppEngine_TaskName: t\r\n"),
    ),
    ("secure", ("/secure/page", b"")),
    ("secure-x-forwarded-proto", ("/secure/page", b"X-Forwarded-Proto: https\r\n")),
    ("admin-non-admin-cookie", ("/admin/panel", b"Cookie: taskhandler_signin=forged\r\n")),
]


@pytest.mark.parametrize(
    ("backend_id", "proxy", "request_"), cases(NESTED, PROXIES, STRANGER_REQUESTS)
)
def test_inner_rules_protect_under_an_outer_middleware(
    fleet: Fleet, backend_id: str, proxy: str, request_: tuple[str, bytes]
) -> None:
    """The inner middleware's rules keep a stranger out though the outer one decided trust."""
    path, headers = request_
    target = Target.of(fleet, backend_id, proxy)
    target.assert_stranger_kept_out(build(path, headers, case="nested"), f"GET {path}")


@pytest.mark.parametrize(("backend_id", "proxy", "_"), cases(NESTED, PROXIES, [("admin", None)]))
def test_inner_authenticator_lets_an_admin_in(
    fleet: Fleet, backend_id: str, proxy: str, _: None
) -> None:
    """Control: an admin signed in with the inner layer's cookie reaches /admin/panel."""
    target = Target.of(fleet, backend_id, proxy)
    answer, entries = target.exchange(
        build("/admin/panel", f"Cookie: {ADMIN_COOKIE}\r\n".encode(), case="admin")
    )
    assert [e["view"] for e in entries] == ["admin"], f"status {answer.status}: {answer}"


@pytest.mark.parametrize("backend_id", [b.id for b in NESTED])
def test_outer_trust_lets_the_queue_in(fleet: Fleet, backend_id: str) -> None:
    """Control: the queue (a queue source, direct) runs the task view with its TaskContext."""
    target = Target.of(fleet, backend_id, "direct")
    answer, entries = target.exchange(
        build("/tasks/run", TASK_HEADERS, case="queue"), source=QUEUE_CLIENT
    )
    assert [(e["view"], (e["task"] or {}).get("trusted_by")) for e in entries] == [
        ("task", "queue")
    ], f"status {answer.status}: {answer}"
