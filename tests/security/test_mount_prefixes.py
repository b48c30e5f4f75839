"""Attack 3: mount prefixes taken from request headers.

Servers and middlewares set ``SCRIPT_NAME``/``root_path`` from request headers: gunicorn's
``SCRIPT_NAME`` header (honoured from ``forwarded_allow_ips``, i.e. from a local proxy),
daphne's ``Daphne-Root-Path``, werkzeug ``ProxyFix(x_prefix=1)``'s ``X-Forwarded-Prefix``;
``FastAPI(root_path=...)`` strips its own prefix. The app then routes a path the rules did
not see. SPEC §4: the rules apply to every path the request could be routed on, so no
protected view runs for a stranger. Verdict from the record.
"""

from __future__ import annotations

import pytest

from tests.security.harness import MAIN, PREFIXED, PROXIES, Target, build, cases
from tests.security.launch import Backend, Fleet

pytestmark = pytest.mark.slow

HEADER_PREFIXES = [
    ("SCRIPT_NAME-admin", (b"SCRIPT_NAME: /prefix\r\n", "/prefix/admin/panel")),
    ("SCRIPT_NAME-tasks", (b"SCRIPT_NAME: /prefix\r\n", "/prefix/tasks/run")),
    ("SCRIPT_NAME-secure", (b"SCRIPT_NAME: /prefix\r\n", "/prefix/secure/page")),
    ("script_name-lower", (b"script_name: /prefix\r\n", "/prefix/admin/panel")),
    ("SCRIPT_NAME-root", (b"SCRIPT_NAME: /admin\r\n", "/admin/admin/panel")),
    ("Daphne-Root-Path", (b"Daphne-Root-Path: /prefix\r\n", "/admin/panel")),
    ("Daphne-Root-Path-prefixed", (b"Daphne-Root-Path: /prefix\r\n", "/prefix/admin/panel")),
    ("Daphne-Root-Path-tasks", (b"Daphne-Root-Path: /prefix\r\n", "/tasks/run")),
    ("Daphne-Root-Path-mid-segment", (b"Daphne-Root-Path: /x\r\n", "/xadmin/panel")),
    ("X-Forwarded-Prefix", (b"X-Forwarded-Prefix: /prefix\r\n", "/admin/panel")),
    ("X-Forwarded-Prefix-prefixed", (b"X-Forwarded-Prefix: /prefix\r\n", "/prefix/admin/panel")),
    ("X-Forwarded-Prefix-secure", (b"X-Forwarded-Prefix: /prefix\r\n", "/secure/page")),
    ("X_Forwarded_Prefix", (b"X_Forwarded_Prefix: /prefix\r\n", "/admin/panel")),
    ("SCRIPT_NAME-mid-segment", (b"SCRIPT_NAME: /x\r\n", "/xadmin/panel")),
    ("SCRIPT_NAME-mid-segment-tasks", (b"SCRIPT_NAME: /x\r\n", "/xtasks/run")),
]
FASTAPI_PATHS = [
    ("root_path-admin", (b"", "/api/admin/panel")),
    ("root_path-tasks", (b"", "/api/tasks/run")),
    ("root_path-secure", (b"", "/api/secure/page")),
    ("root_path-twice", (b"", "/api/api/admin/panel")),
    ("root_path-unprefixed", (b"", "/admin/panel")),
]
FASTAPI = tuple(b for b in PREFIXED if b.app == "fastapi")
HEADER_BACKENDS: tuple[Backend, ...] = (*MAIN, *(b for b in PREFIXED if b.app != "fastapi"))


@pytest.mark.parametrize(
    ("backend_id", "proxy", "case"),
    [*cases(HEADER_BACKENDS, PROXIES, HEADER_PREFIXES), *cases(FASTAPI, PROXIES, FASTAPI_PATHS)],
)
def test_prefix_never_opens_a_protected_view(
    fleet: Fleet, backend_id: str, proxy: str, case: tuple[bytes, str]
) -> None:
    """A mount prefix a stranger can set or reach never lets a protected view run."""
    headers, path = case
    target = Target.of(fleet, backend_id, proxy)
    target.assert_stranger_kept_out(build(path, headers, case="prefix"), f"GET {path}")
