"""Path spellings of protected URLs, through every server and proxy.

SPEC §4: a path a router might read differently from the rule matcher (empty or dot
segments, backslashes, control characters, NUL, encoded separators, case and parameter
tricks) never reaches a protected view for a stranger. A 400, 302, 403 or 404 are all fine;
the verdict is the record.
"""

from __future__ import annotations

import pytest

from tests.security.harness import MAIN, PROXIES, Target, build, cases
from tests.security.launch import Fleet

pytestmark = pytest.mark.slow

PATHS = [
    ("double-slash", b"//admin/panel"),
    ("inner-double-slash", b"/admin//panel"),
    ("dotdot", b"/admin/../admin/panel"),
    ("public-dotdot", b"/public/../admin/panel"),
    ("dot", b"/admin/./panel"),
    ("pct-dotdot", b"/public/%2e%2e/admin/panel"),
    ("pct-dot", b"/admin/%2e/panel"),
    ("pct-letter", b"/%61dmin/panel"),
    ("pct-slash", b"/admin%2Fpanel"),
    ("pct-slash-lower", b"/admin%2fpanel"),
    ("pct-double", b"/admin%252Fpanel"),
    ("upper", b"/ADMIN/panel"),
    ("semicolon", b"/admin/panel;x"),
    ("semicolon-segment", b"/admin;x/panel"),
    ("backslashes", b"\\admin\\panel"),
    ("backslash-inside", b"/admin\\panel"),
    ("pct-backslash", b"/admin%5Cpanel"),
    ("pct-nul", b"/admin/panel%00"),
    ("pct-nul-inside", b"/admin%00/panel"),
    ("pct-newline", b"/admin/panel%0A"),
    ("overlong-utf8", b"/%C1%A1dmin/panel"),
    ("absolute-form", b"http://127.0.0.1/admin/panel"),
    ("trailing-slash", b"/admin/panel/"),
    ("tasks-double-slash", b"//tasks/run"),
    ("tasks-pct", b"/%74asks/run"),
    ("secure-pct", b"/%73ecure/page"),
    ("secure-dotdot", b"/public/../secure/page"),
]


@pytest.mark.parametrize(("backend_id", "proxy", "path"), cases(MAIN, PROXIES, PATHS))
def test_path_spelling_never_reaches_a_protected_view(
    fleet: Fleet, backend_id: str, proxy: str, path: bytes
) -> None:
    """No spelling of a protected path runs its view for a stranger."""
    target = Target.of(fleet, backend_id, proxy)
    target.assert_stranger_kept_out(build(path, case="path"), f"GET {path!r}")
