"""Attack 8: ``platform_sets_proto=True`` behind a front end that sets ``X-Forwarded-Proto``.

On Cloud Run the platform's front end sets ``X-Forwarded-Proto`` itself, so the middleware
may take it as the scheme from any peer (``TrustPolicy(platform_sets_proto=True)``). Here
Caddy plays that front end (it overwrites the header with the scheme the client really
used): a stranger who sends ``X-Forwarded-Proto: https`` -- or any other scheme header, in
any spelling or number -- over plain HTTP never opens a ``secure: always`` view. The control
shows the option is in effect: without its front end, the same server believes the header,
which is why the docs say never to let clients reach such a server directly.
Verdict from the record.
"""

from __future__ import annotations

import pytest

from tests.security.harness import PLATFORM, SETS_PROTO, Target, build, cases, pairs
from tests.security.launch import Fleet

pytestmark = pytest.mark.slow

SCHEMES = [
    ("X-Forwarded-Proto", b"X-Forwarded-Proto: https\r\n"),
    ("X-Forwarded-Proto-twice", b"X-Forwarded-Proto: https\r\nX-Forwarded-Proto: https\r\n"),
    ("X-Forwarded-Proto-list", b"X-Forwarded-Proto: http, https\r\n"),
    ("X-Forwarded-Proto-upper", b"X-FORWARDED-PROTO: HTTPS\r\n"),
    ("X_Forwarded_Proto", b"X_Forwarded_Proto: https\r\n"),
    ("X-Forwarded-Ssl", b"X-Forwarded-Ssl: on\r\n"),
    ("Forwarded-proto", b"Forwarded: proto=https\r\n"),
    ("Front-End-Https", b"Front-End-Https: on\r\n"),
]


@pytest.mark.parametrize(("backend_id", "proxy", "spoof"), cases(PLATFORM, SETS_PROTO, SCHEMES))
def test_a_strangers_scheme_never_passes_the_front_end(
    fleet: Fleet, backend_id: str, proxy: str, spoof: bytes
) -> None:
    """Through the front end, a stranger's scheme header never opens a ``secure: always`` view."""
    target = Target.of(fleet, backend_id, proxy)
    target.assert_stranger_kept_out(build("/secure/page", spoof, case="scheme"), "GET /secure/page")
    answer, entries = target.exchange(build("/public/echo", spoof, case="echo"))
    if answer.status == 400:  # gunicorn refuses contradictory scheme headers itself
        assert entries == [], f"a refused request ran a view: {entries}"
        return
    assert [e["view"] for e in entries] == ["echo"], f"status {answer.status}: {answer}"
    assert entries[0]["scheme"] == "http", f"{backend_id}: the app was told {entries[0]['scheme']}"


@pytest.mark.parametrize(("backend_id", "proxy"), pairs(PLATFORM, ("direct",)))
def test_without_its_front_end_the_header_is_believed(
    fleet: Fleet, backend_id: str, proxy: str
) -> None:
    """Control: reached directly, a ``platform_sets_proto`` server takes the header as the
    scheme (so the test above is not passing because ``secure: always`` refuses everything)."""
    target = Target.of(fleet, backend_id, proxy)
    request = build("/secure/page", b"X-Forwarded-Proto: https\r\n", case="control")
    answer, entries = target.exchange(request)
    assert [e["view"] for e in entries] == ["secure"], f"status {answer.status}: {answer}"
    answer, entries = target.exchange(build("/secure/page", case="control-http"))
    assert entries == [], f"plain HTTP without the header ran the view: {answer}"
