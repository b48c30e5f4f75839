"""TrustPolicy: who may send task headers, decided from the peer and vouched-for hops (SPEC §3)."""

from __future__ import annotations

import pytest

from taskhandler import ConfigError, TrustPolicy


def _headers(**values: str):
    table = {name.replace("_", "-").lower(): value for name, value in values.items()}
    return table.get


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        pytest.param({"queue_sources": ["0.1.0.256"]}, "0.1.0.256", id="octet out of range"),
        pytest.param({"queue_sources": ["10.0.0.1/8"]}, "10.0.0.1/8", id="host bits set in CIDR"),
        pytest.param({"queue_sources": ["localhost"]}, "localhost", id="host name"),
        pytest.param({"queue_sources": [""]}, "", id="empty entry"),
        pytest.param({"queue_sources": ["0.1.0.2:80"]}, "0.1.0.2:80", id="address with port"),
        pytest.param({"queue_sources": [None]}, None, id="None entry"),
        pytest.param({"trusted_proxies": ["10.0.0.0/33"]}, "10.0.0.0/33", id="prefix too long"),
        pytest.param(
            {"trusted_proxies": ["fe80::1%eth0/128x"]}, "fe80::1%eth0/128x", id="garbage v6"
        ),
    ],
)
def test_malformed_entries_raise_config_error(kwargs: dict[str, list[str]], bad: object) -> None:
    """A malformed queue source or proxy raises ConfigError naming the value, at construction."""
    with pytest.raises(ConfigError) as info:
        TrustPolicy(**kwargs)
    assert info.value.value == bad


def test_single_string_is_one_entry() -> None:
    """queue_sources="10.0.0.1" means one address, not ten characters."""
    assert TrustPolicy(queue_sources="10.0.0.1").source("10.0.0.1", _headers()) == "queue"


@pytest.mark.parametrize(
    ("policy", "peer", "headers", "expected"),
    [
        pytest.param(TrustPolicy(), "0.1.0.2", {}, "queue", id="the queue address"),
        pytest.param(TrustPolicy(), "::ffff:0.1.0.2", {}, "queue", id="IPv4-mapped queue address"),
        pytest.param(TrustPolicy(), "0.1.0.3", {}, None, id="neighbour of the queue address"),
        pytest.param(TrustPolicy(), "127.0.0.1", {}, None, id="loopback is not the queue"),
        pytest.param(TrustPolicy(), None, {}, None, id="no peer"),
        pytest.param(TrustPolicy(), "garbage", {}, None, id="unparsable peer"),
        pytest.param(
            TrustPolicy(),
            "203.0.113.9",
            {"X-Forwarded-For": "0.1.0.2"},
            None,
            id="X-Forwarded-For ignored without trusted proxies",
        ),
        pytest.param(
            TrustPolicy(), "203.0.113.9", {"X-Real-IP": "0.1.0.2"}, None, id="X-Real-IP ignored"
        ),
        pytest.param(
            TrustPolicy(), "203.0.113.9", {"Forwarded": "for=0.1.0.2"}, None, id="Forwarded ignored"
        ),
        pytest.param(
            TrustPolicy(queue_sources=["10.0.0.0/8"]), "10.200.3.4", {}, "queue", id="CIDR source"
        ),
        pytest.param(
            TrustPolicy(queue_sources=["10.0.0.0/8"]), "11.0.0.1", {}, None, id="outside CIDR"
        ),
        pytest.param(TrustPolicy(queue_sources=["::1"]), "::1", {}, "queue", id="IPv6 source"),
        pytest.param(
            TrustPolicy(queue_sources=["::ffff:10.0.0.1"]),
            "10.0.0.1",
            {},
            "queue",
            id="mapped rule matches plain IPv4 peer",
        ),
        pytest.param(
            TrustPolicy(trusted_proxies=["127.0.0.1"]),
            "127.0.0.1",
            {"X-Forwarded-For": "0.1.0.2"},
            "queue",
            id="proxy vouches for the queue",
        ),
        pytest.param(
            TrustPolicy(trusted_proxies=["127.0.0.1"]),
            "127.0.0.1",
            {"X-Forwarded-For": "0.1.0.2, 198.51.100.7"},
            None,
            id="rightmost untrusted hop is the client",
        ),
        pytest.param(
            TrustPolicy(trusted_proxies=["127.0.0.1", "10.0.0.0/8"]),
            "127.0.0.1",
            {"X-Forwarded-For": "198.51.100.7, 0.1.0.2, 10.1.1.1"},
            "queue",
            id="spoofed leftmost hop does not matter",
        ),
        pytest.param(
            TrustPolicy(trusted_proxies=["127.0.0.1"]),
            "198.51.100.7",
            {"X-Forwarded-For": "0.1.0.2"},
            None,
            id="header from a non-proxy peer ignored",
        ),
        pytest.param(
            TrustPolicy(trusted_proxies=["127.0.0.1"]),
            "127.0.0.1",
            {"X-Forwarded-For": "not-an-ip"},
            None,
            id="malformed hop is untrusted",
        ),
        pytest.param(
            TrustPolicy(trusted_proxies=["127.0.0.1"]),
            "127.0.0.1",
            {},
            None,
            id="proxy without header is itself the client",
        ),
        pytest.param(
            TrustPolicy.app_engine(), "169.254.1.1", {}, "platform", id="app engine platform"
        ),
        pytest.param(
            TrustPolicy.app_engine(),
            "169.254.1.1",
            {"X-AppEngine-User-IP": "0.1.0.2"},
            "queue",
            id="app engine queue by user IP",
        ),
        pytest.param(
            TrustPolicy.app_engine(),
            "169.254.1.1",
            {"X-AppEngine-User-Is-Admin": "1"},
            "admin",
            id="app engine admin",
        ),
        pytest.param(
            TrustPolicy.app_engine(),
            "169.254.1.1",
            {"X-AppEngine-User-Is-Admin": "0"},
            "platform",
            id="app engine non-admin",
        ),
        pytest.param(TrustPolicy.development(), "203.0.113.9", {}, "development", id="development"),
    ],
)
def test_source(
    policy: TrustPolicy, peer: str | None, headers: dict[str, str], expected: str | None
) -> None:
    """The source decision for a peer and its forwarding headers."""
    assert (
        policy.source(peer, _headers(**{k.replace("-", "_"): v for k, v in headers.items()}))
        == expected
    )


def test_repr_names_the_policy() -> None:
    """The policy's repr says what it trusts (for logs and the CLI)."""
    assert "0.1.0.2" in repr(TrustPolicy())
    assert repr(TrustPolicy.development()) == "TrustPolicy.development()"
    assert repr(TrustPolicy.app_engine()) == "TrustPolicy.app_engine()"
