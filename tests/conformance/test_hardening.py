"""Hardened trust and access (both adapters): peers a server took from a header, schemes a
client claimed, mount prefixes that hide a protected URL, nested middlewares, odd peers.

Every case asserts on whether the app ran (``result.seen``) and what it saw, not only on
the status code.
"""

from __future__ import annotations

import pytest

from taskhandler import AccessRule, AppConfig, SignedCookieAuth, TrustPolicy

from .harness import Adapter, Request

QUEUE = "0.1.0.2"
STRANGER = "203.0.113.9"
TASK = [("X-AppEngine-QueueName", "default"), ("X-AppEngine-TaskName", "task-1")]
RULES = AppConfig(
    rules=[
        AccessRule(url="/tasks/.*", login="admin"),
        AccessRule(url="/secure/.*", secure="always"),
        AccessRule(url="/.*"),
    ]
)
KEY = "k" * 40


def _is_stranger(result: object) -> None:
    seen = result.seen  # type: ignore[attr-defined]
    assert seen is not None
    assert seen.task is None
    assert seen.task_headers() == {}


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([("X-Forwarded-For", QUEUE)], id="X-Forwarded-For is the peer"),
        pytest.param([("X-Forwarded-For", f"198.51.100.7, {QUEUE}")], id="peer is the last hop"),
        pytest.param([("X-Forwarded-For", f"{QUEUE}, 198.51.100.7")], id="peer is the first hop"),
        pytest.param([("X-Forwarded-For", f"  {QUEUE}  ")], id="hop with spaces"),
        pytest.param([("X-Forwarded-For", f"::ffff:{QUEUE}")], id="hop v4-mapped"),
        pytest.param([("X-Forwarded-For", "a"), ("X-Forwarded-For", QUEUE)], id="second copy"),
        pytest.param([("X-Real-IP", QUEUE)], id="X-Real-IP"),
        pytest.param([("Forwarded", f"for={QUEUE}")], id="Forwarded for"),
        pytest.param(
            [("Forwarded", f'for="{QUEUE}:4711";proto=https')], id="Forwarded quoted port"
        ),
        pytest.param([("Forwarded", f"by=x;For={QUEUE}")], id="Forwarded For capitalised"),
        pytest.param(
            [("Forwarded", f"for=198.51.100.7, for={QUEUE}")], id="Forwarded second element"
        ),
        pytest.param([("X-Forwarded-For", f"{QUEUE}:1")], id="hop with a port"),
        pytest.param([("X-Forwarded-For", f"[::ffff:{QUEUE}]:80")], id="v6 hop with a port"),
        pytest.param([("X-Real-IP", f"{QUEUE}:8080")], id="X-Real-IP with a port"),
        pytest.param(
            [("X-Forwarded-For", ", ".join(["10.0.0.1"] * 70 + [QUEUE]))], id="after 70 hops"
        ),
        pytest.param(
            [("X-Forwarded-For", ", ".join(["10.0.0.1"] * 70)), ("X-Forwarded-For", QUEUE)],
            id="second line after 70 hops",
        ),
        pytest.param(
            [("Forwarded", ", ".join(["for=10.0.0.1"] * 700 + [f"for={QUEUE}"]))],
            id="Forwarded past 8 KiB",
        ),
    ],
)
def test_a_peer_a_server_took_from_a_header_is_not_the_queue(
    adapter: Adapter, extra: list[tuple[str, str]]
) -> None:
    """uvicorn, gunicorn, hypercorn and ProxyFix may set the peer from X-Forwarded-For: never the queue."""
    result = adapter.run(Request(headers=[*TASK, *extra], peer=QUEUE, path="/public"))
    assert result.status == 200
    _is_stranger(result)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="no forwarding header"),
        pytest.param([("X-Forwarded-For", "198.51.100.7")], id="another address forwarded"),
        pytest.param([("Forwarded", "for=unknown")], id="Forwarded unknown"),
        pytest.param([("X-Forwarded-For", f"{QUEUE}1")], id="a longer address"),
    ],
)
def test_the_queue_with_forwarding_headers_naming_others_is_trusted(
    adapter: Adapter, extra: list[tuple[str, str]]
) -> None:
    """Positive control: the queue's own peer address is still the queue."""
    result = adapter.run(Request(headers=[*TASK, *extra], peer=QUEUE, path="/public"))
    assert result.seen is not None
    assert result.seen.task is not None
    assert result.seen.task.trusted_by == "queue"


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(f" {QUEUE}", id="leading space"),
        pytest.param(f"{QUEUE} ", id="trailing space"),
        pytest.param(f"{QUEUE}\t", id="trailing tab"),
        pytest.param(f"[{QUEUE}]", id="brackets"),
        pytest.param(f"{QUEUE}:80", id="with a port"),
        pytest.param(f"::ffff:{QUEUE}%eth0", id="zone id"),
        pytest.param(f"{QUEUE}\n", id="newline"),
        pytest.param("0.1.0.02", id="leading zero"),
        pytest.param("", id="empty"),
    ],
)
def test_a_peer_string_that_is_not_exactly_an_address_is_untrusted(
    adapter: Adapter, peer: str
) -> None:
    """Trust rests on the socket's address: a string that only looks like one is a stranger."""
    result = adapter.run(Request(headers=TASK, peer=peer, path="/public"))
    _is_stranger(result)


def test_a_v4_mapped_peer_is_the_queue(adapter: Adapter) -> None:
    """``::ffff:0.1.0.2`` from a dual-stack socket is compared as 0.1.0.2."""
    result = adapter.run(Request(headers=TASK, peer=f"::ffff:{QUEUE}", path="/public"))
    assert result.seen is not None
    assert result.seen.task is not None


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([("X-Forwarded-Proto", "https")], id="X-Forwarded-Proto"),
        pytest.param([("X-Forwarded-Protocol", "ssl")], id="X-Forwarded-Protocol"),
        pytest.param([("X-Forwarded-Ssl", "on")], id="X-Forwarded-Ssl"),
        pytest.param([("Forwarded", "proto=https")], id="Forwarded proto"),
        pytest.param([("Front-End-Https", "on")], id="Front-End-Https"),
        pytest.param([("X-Forwarded-Scheme", "https")], id="X-Forwarded-Scheme"),
        pytest.param([("X-Scheme", "https")], id="X-Scheme"),
    ],
)
def test_an_https_scheme_a_client_may_have_claimed_does_not_satisfy_secure_always(
    adapter: Adapter, extra: list[tuple[str, str]]
) -> None:
    """gunicorn and uvicorn turn X-Forwarded-Proto into the scheme by default: not proof of HTTPS."""
    req = Request(path="/secure/page", scheme="https", headers=extra, peer=STRANGER)
    result = adapter.run(req, config=RULES)
    assert result.seen is None
    assert result.status == 302
    assert result.headers["location"] == "https://localhost/secure/page"


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([("X-Forwarded-Ssl", "on")], id="X-Forwarded-Ssl"),
        pytest.param([("X-Forwarded-Protocol", "ssl")], id="X-Forwarded-Protocol"),
        pytest.param([("X-Forwarded-Proto", "spdy"), ("X-Forwarded-Ssl", "on")], id="odd proto"),
    ],
)
def test_a_trusted_proxy_without_a_proto_word_does_not_vouch_for_https(
    adapter: Adapter, extra: list[tuple[str, str]]
) -> None:
    """Behind a trusted proxy that says nothing usable, gunicorn's https from a client's
    X-Forwarded-Ssl is still a claim: plain HTTP, redirected."""
    trust = TrustPolicy(trusted_proxies=["10.0.0.1"], proxy_drops_underscore_headers=True)
    req = Request(path="/secure/page", scheme="https", headers=extra, peer="10.0.0.1")
    result = adapter.run(req, config=RULES, trust=trust)
    assert result.seen is None
    assert result.status == 302


def test_a_cookie_that_is_not_utf8_is_no_cookie(adapter: Adapter) -> None:
    """A ``Cookie`` header with bytes that are not UTF-8 is answered, not a 500."""
    req = Request(headers=[("Cookie", "a=\xe9")], path="/tasks/x")
    result = adapter.run(req, config=RULES, authenticator=SignedCookieAuth(KEY))
    assert result.seen is None
    assert result.status == 302


def test_https_from_the_socket_satisfies_secure_always(adapter: Adapter) -> None:
    """Positive control: HTTPS with no scheme header passes."""
    result = adapter.run(Request(path="/secure/page", scheme="https"), config=RULES)
    assert result.seen is not None
    assert result.status == 200


@pytest.mark.parametrize(
    ("scheme", "proto", "runs"),
    [
        pytest.param("http", "https", True, id="proxy says https"),
        pytest.param("https", "http", False, id="proxy says http"),
        pytest.param("http", "http, https", True, id="last value counts"),
        pytest.param("http", "https, http", False, id="last value http"),
    ],
)
def test_a_trusted_proxy_tells_the_scheme(
    adapter: Adapter, scheme: str, proto: str, runs: bool
) -> None:
    """Behind a proxy named in trusted_proxies its X-Forwarded-Proto is believed."""
    req = Request(
        path="/secure/page", scheme=scheme, headers=[("X-Forwarded-Proto", proto)], peer="10.0.0.1"
    )
    trust = TrustPolicy(trusted_proxies=["10.0.0.1"], proxy_drops_underscore_headers=True)
    result = adapter.run(req, config=RULES, trust=trust)
    assert (result.seen is not None) is runs


@pytest.mark.parametrize(
    ("root", "path", "extra"),
    [
        pytest.param("/prefix", "/prefix/tasks/x", [], id="SCRIPT_NAME or root_path"),
        pytest.param("", "/prefix/tasks/x", [("Script-Name", "/prefix")], id="SCRIPT_NAME header"),
        pytest.param(
            "", "/prefix/tasks/x", [("Daphne-Root-Path", "/prefix")], id="Daphne-Root-Path"
        ),
        pytest.param(
            "", "/prefix/tasks/x", [("X-Forwarded-Prefix", "/prefix/")], id="X-Forwarded-Prefix"
        ),
        pytest.param(
            "", "/a/b/tasks/x", [("X-Forwarded-Prefix", "/x, /a/b")], id="second of two prefixes"
        ),
        pytest.param("/prefix", "/prefix/tasks", [("X-Forwarded-Prefix", "/")], id="slash only"),
        pytest.param("", "/xtasks/run", [("Script-Name", "/x")], id="prefix cut inside a segment"),
    ],
)
def test_a_mount_prefix_never_hides_a_protected_url(
    adapter: Adapter, root: str, path: str, extra: list[tuple[str, str]]
) -> None:
    """The rules see the path with and without each mount prefix; the strictest decides."""
    result = adapter.run(Request(root=root, path=path, headers=extra), config=RULES)
    if path.endswith("/tasks"):
        assert result.seen is not None  # "/tasks" alone matches no protected rule
        return
    assert result.seen is None
    assert result.status == 302
    assert "/_ah/login" in result.headers["location"]


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        pytest.param(
            "/public/x", [("X-Forwarded-Prefix", "/public")], id="prefix of a public path"
        ),
        pytest.param("/public/x", [("X-Forwarded-Prefix", "relative")], id="relative prefix"),
        pytest.param("/publictasks", [("X-Forwarded-Prefix", "/public")], id="no rule below"),
    ],
)
def test_a_prefix_that_hides_nothing_changes_nothing(
    adapter: Adapter, path: str, extra: list[tuple[str, str]]
) -> None:
    """Positive control: public URLs stay public whatever prefix is named."""
    result = adapter.run(Request(path=path, headers=extra), config=RULES)
    assert result.seen is not None


def test_a_mount_prefix_keeps_secure_always(adapter: Adapter) -> None:
    """secure: always on the path below the prefix still redirects plain HTTP."""
    result = adapter.run(Request(root="/p", path="/p/secure/x"), config=RULES)
    assert result.seen is None
    assert result.status == 302
    assert result.headers["location"].startswith("https://")


@pytest.mark.parametrize(
    ("headers", "peer", "cookie_admin", "runs"),
    [
        pytest.param([], STRANGER, None, False, id="stranger"),
        pytest.param(TASK, STRANGER, None, False, id="stranger with task headers"),
        pytest.param(TASK, QUEUE, None, True, id="the queue"),
        pytest.param([], STRANGER, False, False, id="signed-in user"),
        pytest.param([], STRANGER, True, True, id="signed-in admin"),
    ],
)
def test_nested_middlewares_keep_the_inner_rules(
    adapter: Adapter,
    headers: list[tuple[str, str]],
    peer: str,
    cookie_admin: bool | None,
    runs: bool,
) -> None:
    """An outer TaskMiddleware without rules decides trust; the inner one's rules still protect."""
    auth = SignedCookieAuth(KEY)
    if cookie_admin is not None:
        cookie = auth.cookie_value("a@example.com", admin=cookie_admin)
        headers = [*headers, ("Cookie", f"{auth.cookie_name}={cookie}")]
    result = adapter.run_nested(
        Request(headers=headers, peer=peer),
        outer={},
        inner={"config": RULES, "authenticator": auth},
    )
    assert (result.seen is not None) is runs
    if result.seen is not None and peer == QUEUE:
        assert result.seen.task is not None


def test_nested_inner_sign_in_page_is_served(adapter: Adapter) -> None:
    """The inner layer's sign-in page answers even when the outer has no authenticator."""
    result = adapter.run_nested(
        Request(method="GET", path="/_ah/login"),
        outer={},
        inner={"config": RULES, "authenticator": SignedCookieAuth(KEY)},
    )
    assert result.seen is None
    assert result.status == 200
    assert b"<form" in result.body


def test_a_folding_wsgi_server_gets_no_forwarding_walk_without_the_promise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under a WSGI server not known to drop ``_`` headers, X-Forwarded-For is not believed
    (a stranger's X_Forwarded_For may be folded into it) until the policy says the proxy
    drops them; the refusal is logged once. ASGI servers keep the spellings apart."""
    from .harness import ASGIAdapter, WSGIAdapter

    headers = [*TASK, ("X-Forwarded-For", QUEUE)]
    for adapter, believed in ((WSGIAdapter(), False), (ASGIAdapter(), True)):
        trust = TrustPolicy(trusted_proxies=["127.0.0.1"])
        result = adapter.run(Request(headers=headers, peer="127.0.0.1", path="/p"), trust=trust)
        assert result.seen is not None
        assert (result.seen.task is not None) is believed, adapter.name
    assert sum("proxy_drops_underscore_headers" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("software", "believed"),
    [
        pytest.param("gunicorn/23.0.0", True, id="gunicorn drops them"),
        pytest.param("waitress", True, id="waitress drops them"),
        pytest.param("Werkzeug/3.1.8", True, id="werkzeug drops them"),
        pytest.param("Cheroot/11.1.2 Server", False, id="cheroot folds them"),
        pytest.param("WSGIServer/0.2 CPython/3.11.7", False, id="wsgiref folds them"),
        pytest.param("Granian", False, id="granian folds them"),
        pytest.param("", False, id="unknown server"),
    ],
)
def test_wsgi_servers_known_to_drop_underscore_headers(software: str, believed: bool) -> None:
    """X-Forwarded-For from a trusted proxy is walked under servers that drop ``_`` headers."""
    from taskhandler.wsgi import request_view

    view = request_view({"SERVER_SOFTWARE": software, "PATH_INFO": "/"})
    assert view.folded is not believed


@pytest.mark.parametrize(
    ("proto", "runs"),
    [
        pytest.param("https", True, id="front end says https"),
        pytest.param("http", False, id="front end says http"),
        pytest.param("http, https", True, id="last value counts"),
    ],
)
def test_a_platform_front_end_tells_the_scheme(adapter: Adapter, proto: str, runs: bool) -> None:
    """On Cloud Run the front end sets X-Forwarded-Proto for every request, from any peer."""
    req = Request(path="/secure/page", headers=[("X-Forwarded-Proto", proto)], peer="169.254.1.1")
    result = adapter.run(req, config=RULES, trust=TrustPolicy(platform_sets_proto=True))
    assert (result.seen is not None) is runs
