"""Who is asking: the trust decision for task headers (SPEC step 1).

A header such as ``X-AppEngine-QueueName`` tells a handler that the queue sent the request.
Anyone can type that header, so believing it from an arbitrary client lets a stranger
run task code with forged retry counts, names and ETAs. This module decides, from the
immediate peer address (and only from forwarding headers that a named trusted proxy
vouches for), whether the request came from the queue.

Pure: standard library only.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from .exceptions import ConfigError

if TYPE_CHECKING:
    from .oidc import OIDCVerifier

__all__ = [
    "FORWARDING_HEADERS",
    "SCHEME_HEADERS",
    "Authenticator",
    "RequestInfo",
    "TrustPolicy",
    "TrustedBy",
    "User",
    "forwarded_addresses",
    "parse_address",
    "scheme_from_header",
]

log = logging.getLogger("taskhandler")

TrustedBy = Literal["queue", "admin", "platform", "development"]
TrustMode = Literal["strict", "app_engine", "development"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Bounded cache of peer address -> parsed address; peers repeat a lot behind a proxy.
_PARSE_CACHE_MAX = 1024
_FORWARDED_FOR = re.compile(r'(?i)(?:^|[;,\s])for=("[^"]*"|[^;,\s]*)')

# Request headers (lower case, exact dash spelling) that proxies use to tell the client's
# address, scheme, host or mount prefix. Only this spelling is ever read; every "_" spelling
# of them is removed from the request by the adapters, like a task header.
FORWARDING_HEADERS = frozenset(
    (
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-prefix",
    )
)
# The headers servers take a peer address from (see forwarded_addresses).
_PEER_HEADERS = ("x-forwarded-for", "x-real-ip", "forwarded")
SCHEME_HEADERS = (
    "x-forwarded-proto",
    "x-forwarded-protocol",
    "x-forwarded-ssl",
    "forwarded",
    "front-end-https",
    "x-forwarded-scheme",
    "x-scheme",
    "x-url-scheme",
)


@dataclass(frozen=True, slots=True)
class User:
    """A signed-in user, as an :class:`Authenticator` reports it."""

    email: str
    user_id: str | None = None
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """A protocol-neutral view of a request, so one authenticator serves WSGI and ASGI.

    ``headers`` has lower-case names (several values joined with ``", "``); ``cookies``
    maps cookie names to values; ``client`` is the immediate peer address.
    """

    method: str
    scheme: str
    host: str
    path: str
    query_string: str
    headers: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)
    client: str | None = None

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), or ``None``."""
        return self.headers.get(name.lower())

    @property
    def url(self) -> str:
        """The full URL of the request."""
        query = f"?{self.query_string}" if self.query_string else ""
        return f"{self.scheme}://{self.host}{self.path}{query}"


class Authenticator(Protocol):
    """Tells who the user of a request is: ``RequestInfo -> User | None``."""

    def __call__(self, request: RequestInfo, /) -> User | None: ...


@functools.lru_cache(maxsize=_PARSE_CACHE_MAX)
def parse_address(text: str, *, hop: bool = False) -> IPAddress | None:
    """Parse an IP address as a server reports a peer, or as a forwarding header names a hop.

    A peer (``REMOTE_ADDR``, ASGI ``client``) must be exactly an address: ``" 0.1.0.2"``,
    ``"0.1.0.2 "``, ``"[::1]"`` or a zone id (``fe80::1%eth0``) is not, because trust rests on
    it and a string that only looks like an address did not come from a socket. A hop
    (``hop=True``) may have spaces around it and ``[v6]`` brackets, as proxies write them.
    ``::ffff:a.b.c.d`` becomes ``a.b.c.d`` so that an IPv4 rule matches a dual-stack peer.
    Nothing else is guessed: a port, a name or a zone id is not an address. Answers are
    kept in a bounded cache: the same peers (the queue, a proxy) come again and again.
    """
    if hop:
        text = text.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
    if "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_addresses(header: Callable[[str], str | None]) -> Iterator[IPAddress]:
    """Every address that the request's forwarding headers name, in any position.

    ``X-Forwarded-For`` hops, ``X-Real-IP`` and ``Forwarded: for=``. A server that takes the
    peer address from one of these (uvicorn and gunicorn's ``forwarded-allow-ips``,
    hypercorn's and granian's proxy modes, werkzeug ``ProxyFix``) leaves the header in the
    request, so a peer named here may have come from a header rather than the socket.

    Every hop is read, however many (servers take the *last* ones), each with any port
    removed as those servers remove it (``0.1.0.2:1``, ``[::ffff:0.1.0.2]:80``). The work
    is linear in the headers' length, which the server bounds.
    """
    for name in _PEER_HEADERS[:2]:
        value = header(name)
        if value:
            for hop in value.split(","):
                address = parse_address(_strip_port(hop.strip()), hop=True)
                if address is not None:
                    yield address
    value = header("forwarded")
    if value:
        for match in _FORWARDED_FOR.finditer(value):
            address = parse_address(_strip_port(match.group(1).strip('"')), hop=True)
            if address is not None:
                yield address


def _strip_port(node: str) -> str:
    """``[v6]:port`` -> ``[v6]``, ``v4:port`` -> ``v4``; a bare v6 stays as it is."""
    if node.startswith("["):
        return node[: node.find("]") + 1] if "]" in node else node
    return node.split(":", 1)[0] if node.count(":") == 1 else node


def scheme_from_header(header: Callable[[str], str | None]) -> bool:
    """True when the request carries a header that some server turns into its URL scheme.

    gunicorn (``X-Forwarded-Proto``, ``X-Forwarded-Protocol``, ``X-Forwarded-Ssl``), uvicorn,
    hypercorn and werkzeug ``ProxyFix`` (``X-Forwarded-Proto``), ``Forwarded: proto=``, and
    older conventions (``Front-End-Https``, ``X-Forwarded-Scheme``, ``X-Scheme``,
    ``X-Url-Scheme``). With one present, an ``https`` scheme may be the client's word.
    """
    return any(header(name) is not None for name in SCHEME_HEADERS)


class _AddressSet:
    """IPs and CIDRs parsed once; asks whether a peer (or hop) address is among them.

    A malformed entry is a ``ConfigError`` at construction. Peers repeat a lot (the queue,
    a proxy), so the answer for an address string is kept in a bounded cache private to
    this set, the way uvicorn's ``_TrustedHosts`` keeps its own.
    """

    __slots__ = ("_contains", "_exact", "_networks")

    def __init__(self, entries: Iterable[str], what: str) -> None:
        if isinstance(entries, str):
            entries = [entries]
        networks: list[IPNetwork] = []
        exact: set[str] = set()
        for entry in entries:
            if not isinstance(entry, str) or not entry.strip():
                raise ConfigError(f"{what}: not an IP address or CIDR", value=entry)
            text = entry.strip()
            try:
                network = ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise ConfigError(f"{what}: {exc}", value=entry) from None
            if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
                mapped = network.network_address.ipv4_mapped
                if mapped is not None:
                    network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
            networks.append(network)
            if network.num_addresses == 1:
                exact.add(str(network.network_address))
        self._networks = tuple(networks)
        self._exact = frozenset(exact)
        self._contains = functools.lru_cache(maxsize=_PARSE_CACHE_MAX)(self._compute)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, text: object) -> bool:
        if not isinstance(text, str):
            return False
        return text in self._exact or self._contains(text)

    def _compute(self, text: str) -> bool:
        return self.holds(parse_address(text))

    def holds(self, address: IPAddress | None) -> bool:
        """True when the parsed ``address`` is in one of the networks."""
        return address is not None and any(address in net for net in self._networks)

    def __repr__(self) -> str:
        return repr([str(n) for n in self._networks])


class TrustPolicy:
    """Decides per request whether ``X-AppEngine-*`` / ``X-CloudTasks-*`` headers are believed.

    The default is strict: a request is from the queue only when its immediate peer
    address is in ``queue_sources`` (default ``0.1.0.2``, the address App Engine's queue
    sends from). Forwarding headers are ignored unless ``trusted_proxies`` names the
    proxies allowed to set ``X-Forwarded-For``; it is then walked right to left, skipping
    those proxies, and the first other address is the client.

    Args:
        queue_sources: IPs or CIDRs of the queue. A malformed entry raises ``ConfigError``.
        trusted_proxies: CIDRs of proxies whose ``X-Forwarded-For`` is believed.
        oidc: an :class:`~taskhandler.oidc.OIDCVerifier`: a request from any other address
            is from the queue when its ``Authorization: Bearer`` ID token verifies (Cloud
            Tasks HTTP targets on Cloud Run, GKE, a VM).
        proxy_drops_underscore_headers: the trusted proxies remove every request header
            whose name holds ``_`` (nginx does by default). Needed only under a WSGI server
            that folds ``X_Forwarded_For`` into ``X-Forwarded-For`` (cheroot, wsgiref, the
            WSGI modes of hypercorn, granian and uvicorn): there a stranger's underscore
            spelling cannot be told from the proxy's header, so without this promise the
            forwarding headers are not believed at all (fail closed, logged once).
        platform_sets_proto: every request reaches this server through a platform front end
            that sets ``X-Forwarded-Proto`` itself, overwriting any client's value (Cloud Run,
            App Engine flexible, a Google Cloud load balancer): its last value is then the
            scheme for ``secure: always``, from any peer. Without it, a scheme header from a
            peer not in ``trusted_proxies`` is taken as a client's claim and the request is
            held to plain HTTP. Never set it where clients can reach the server directly.

    Example::

        TrustPolicy(queue_sources=["10.8.0.0/24"], trusted_proxies=["127.0.0.1"])
    """

    __slots__ = (
        "_exact_sources",
        "_proxied",
        "_warned_folded",
        "mode",
        "oidc",
        "platform_sets_proto",
        "proxy_drops_underscore_headers",
        "queue_sources",
        "trusted_proxies",
    )

    mode: TrustMode

    def __init__(
        self,
        queue_sources: Iterable[str] = ("0.1.0.2",),
        trusted_proxies: Iterable[str] = (),
        *,
        oidc: OIDCVerifier | None = None,
        proxy_drops_underscore_headers: bool = False,
        platform_sets_proto: bool = False,
    ) -> None:
        self.mode = "strict"
        self.platform_sets_proto = bool(platform_sets_proto)
        self.proxy_drops_underscore_headers = bool(proxy_drops_underscore_headers)
        self._warned_folded = False
        self.queue_sources = _AddressSet(queue_sources, "queue_sources")
        self.trusted_proxies = _AddressSet(trusted_proxies, "trusted_proxies")
        # Read on every task request: the usual answer without a Python-level call.
        self._exact_sources = self.queue_sources._exact
        self._proxied = bool(self.trusted_proxies)
        if oidc is not None and not callable(getattr(oidc, "verifies", None)):
            raise ConfigError("oidc must be an OIDCVerifier", value=oidc)
        self.oidc = oidc

    @classmethod
    def app_engine(cls, queue_sources: Iterable[str] = ("0.1.0.2",)) -> TrustPolicy:
        """For App Engine itself, where the platform strips client-sent ``X-AppEngine-*``.

        Headers are believed as they arrive; the queue is recognised by the platform's
        ``X-AppEngine-User-IP`` and an admin by ``X-AppEngine-User-Is-Admin: 1``. Use it only
        on App Engine: anywhere else it lets any client forge task headers.
        """
        policy = cls(queue_sources=queue_sources)
        policy.mode = "app_engine"
        return policy

    @classmethod
    def development(cls) -> TrustPolicy:
        """Like App Engine's development server: nothing is stripped, any request may be a task.

        Logs a warning when a middleware starts with it; the CLI refuses it on a
        non-loopback address.
        """
        policy = cls()
        policy.mode = "development"
        return policy

    def __repr__(self) -> str:
        if self.mode != "strict":
            return f"TrustPolicy.{self.mode}()"
        return (
            f"TrustPolicy(queue_sources={self.queue_sources!r}, "
            f"trusted_proxies={self.trusted_proxies!r}"
            + ("" if self.oidc is None else f", oidc={self.oidc!r}")
            + ")"
        )

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client: the peer, or the ``X-Forwarded-For`` hop a trusted proxy vouches for."""
        if peer is None or not self.trusted_proxies or forwarded_for is None:
            return peer
        if peer not in self.trusted_proxies:
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        for hop in reversed(hops):
            if not self.trusted_proxies.holds(parse_address(hop, hop=True)):
                return hop
        # Every hop is a trusted proxy: the request started inside; the leftmost is the client.
        return hops[0] if hops and hops[0] else peer

    def peer_from_header(self, peer: str | None, header: Callable[[str], str | None]) -> bool:
        """True when the server may have taken ``peer`` from a forwarding header.

        Several servers replace the socket's address with one from ``X-Forwarded-For`` by
        default when the connection comes from a local proxy (uvicorn, and gunicorn's
        ``forwarded-allow-ips``), and so do hypercorn's and granian's proxy modes and
        werkzeug ``ProxyFix``. They all leave the header in the request. A peer that is not
        one of our ``trusted_proxies`` and is named by a forwarding header is therefore
        never the queue: a stranger who sends ``X-Forwarded-For: 0.1.0.2`` through a proxy
        that passes it on stays a stranger, whatever the server did with it.
        """
        if peer is None:
            return False
        if (  # _PEER_HEADERS, written out: this runs for every task request
            header("x-forwarded-for") is None
            and header("x-real-ip") is None
            and header("forwarded") is None
        ):
            return False  # the usual case: nothing a server could have taken the peer from
        address = parse_address(peer)
        if address is None or self.trusted_proxies.holds(address):
            return False
        return any(address == named for named in forwarded_addresses(header))

    def _believes_proxies(self, folded: bool) -> bool:
        """Whether forwarding headers from a trusted proxy can be believed for this request."""
        if not self._proxied:
            return False
        if not folded or self.proxy_drops_underscore_headers:
            return True
        if not self._warned_folded:
            self._warned_folded = True
            log.warning(
                "taskhandler: X-Forwarded-For and X-Forwarded-Proto are not believed: this "
                "WSGI server may fold a client's X_Forwarded_For into them. Drop headers "
                "with '_' at the proxy and say so with "
                "TrustPolicy(..., proxy_drops_underscore_headers=True)"
            )
        return False

    def scheme(
        self,
        scheme: str,
        peer: str | None,
        header: Callable[[str], str | None],
        *,
        folded: bool = False,
    ) -> str:
        """The URL scheme to hold a request to for ``secure: always``.

        Behind one of our ``trusted_proxies``, its ``X-Forwarded-Proto`` (the last value) is
        believed. Otherwise an ``https`` scheme is believed only when no header that servers
        turn into a scheme is present (see :func:`scheme_from_header`): gunicorn and uvicorn
        take ``X-Forwarded-Proto`` from a local proxy by default, so ``https`` may be the
        client's own word. On App Engine the platform sets the scheme itself.
        """
        if self.mode == "app_engine":
            return scheme
        from_proxy = peer is not None and peer in self.trusted_proxies
        if (from_proxy and self._believes_proxies(folded)) or self.platform_sets_proto:
            proto = header("x-forwarded-proto")
            if proto:
                last = proto.rsplit(",", 1)[-1].strip().lower()
                if last in ("http", "https"):
                    return last
            # No usable word from the proxy: the server's https may come from another
            # scheme header the client sent (gunicorn reads X-Forwarded-Ssl too).
        if scheme == "https" and scheme_from_header(header):
            return "http"
        return scheme

    def source(
        self, peer: str | None, header: Callable[[str], str | None], *, folded: bool = False
    ) -> TrustedBy | None:
        """How far the request's source alone is trusted, before asking who the user is.

        Args:
            peer: the immediate peer address (``REMOTE_ADDR``, ASGI ``client[0]``).
            header: looks up a request header by its lower-case, dash-spelled name (never an
                ``_`` spelling).
            folded: the server may have folded ``_`` spellings of header names into the dash
                spelling (a WSGI server not known to drop them).

        Returns ``"queue"``, ``"platform"`` or ``"development"``, ``"admin"`` when the
        platform itself says so (App Engine mode), else ``None``.
        """
        mode = self.mode
        if mode == "strict":
            client = peer
            if self._believes_proxies(folded):
                client = self.client_address(peer, header("x-forwarded-for"))
            if (
                client in self._exact_sources or client in self.queue_sources
            ) and not self.peer_from_header(peer, header):
                return "queue"
            if self.oidc is not None and self.oidc.verifies(header("authorization")):
                return "queue"
            return None
        if mode == "development":
            return "development"
        user_ip = header("x-appengine-user-ip")
        if user_ip is not None and user_ip in self.queue_sources:
            return "queue"
        if header("x-appengine-user-is-admin") == "1":
            return "admin"
        return "platform"
