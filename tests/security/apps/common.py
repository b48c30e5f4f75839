"""What every app under test shares: the rules, the sign-in, the trust policy, the record.

Each server process gets, from its environment:

- ``SECURITY_RECORD``: the file every view appends one JSON line to when it runs (the
  verdict of every test is that file, never a status code);
- ``SECURITY_TRUST``: ``strict`` (default ``TrustPolicy``, the queue at ``0.1.0.2`` and at
  the suite's queue-client address), ``proxied`` (the same, plus
  ``trusted_proxies=["127.0.0.1"]``, the proxies in front) or ``platform`` (the same as
  strict, plus ``platform_sets_proto=True``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import Any

from taskhandler import AccessRule, AppConfig, SignedCookieAuth, TrustPolicy, current_task

# The suite's client addresses (Linux routes all of 127.0.0.0/8 to lo).
STRANGER = "127.0.0.2"
QUEUE_CLIENT = "127.0.0.3"
PROXY = "127.0.0.1"

RULES = AppConfig(
    rules=[
        AccessRule(url="/admin/.*", login="admin"),
        AccessRule(url="/tasks/.*", login="admin"),
        AccessRule(url="/secure/.*", secure="always"),
    ]
)
SIGNIN_KEY = b"security-suite/fixed-signing-key/0123456789abcdef"
AUTH = SignedCookieAuth(SIGNIN_KEY)
ADMIN_EMAIL = "admin@example.com"

# Views whose running for a stranger is a breach.
PROTECTED_VIEWS = frozenset({"task", "admin", "secure"})

_lock = threading.Lock()


def trust_from_env() -> TrustPolicy:
    """The trust policy named by ``SECURITY_TRUST``."""
    mode = os.environ.get("SECURITY_TRUST", "strict")
    sources = ["0.1.0.2", QUEUE_CLIENT]
    if mode == "strict":
        return TrustPolicy(queue_sources=sources)
    if mode == "proxied":
        return TrustPolicy(queue_sources=sources, trusted_proxies=[PROXY])
    if mode == "platform":  # behind a front end that sets X-Forwarded-Proto (Cloud Run's)
        return TrustPolicy(queue_sources=sources, platform_sets_proto=True)
    raise ValueError(f"SECURITY_TRUST must be strict, proxied or platform, not {mode!r}")


def record(view: str, headers: Mapping[str, str], **facts: Any) -> dict[str, Any]:
    """Append what ``view`` saw to the record file; return it (the response body)."""
    task = current_task()
    entry = {
        "view": view,
        "case": headers.get("x-security-case"),
        "task": None
        if task is None
        else {
            "queue_name": task.queue_name,
            "task_name": task.task_name,
            "trusted_by": task.trusted_by,
        },
        "headers": sorted(headers),
        "forwarded_for": headers.get("x-forwarded-for"),
        **facts,
    }
    line = json.dumps(entry, sort_keys=True) + "\n"
    path = os.environ.get("SECURITY_RECORD")
    if path:
        with _lock, open(path, "a", encoding="utf-8") as out:
            out.write(line)
    return entry
