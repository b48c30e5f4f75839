"""Trust for Cloud Tasks HTTP targets: a verified OIDC ID token instead of a peer address.

Off App Engine (Cloud Run, GKE, a VM), a Cloud Tasks request arrives from an ordinary
internet address, so the peer cannot tell the queue from a stranger who typed
``X-CloudTasks-QueueName``. Cloud Tasks can instead sign each request: with an
``oidc_token`` on the task it sends ``Authorization: Bearer <ID token>``, a JWT that
Google signs for the task's service account. :class:`OIDCVerifier` checks that token the
way Google recommends (signature against Google's published certificates, issuer,
audience, the service account's ``email`` and ``email_verified``, expiry) and
:class:`~taskhandler.trust.TrustPolicy` believes the task headers of a request that passes::

    from taskhandler.oidc import OIDCVerifier
    from taskhandler.trust import TrustPolicy

    trust = TrustPolicy(
        oidc=OIDCVerifier(
            audience="https://worker-abc123-uc.a.run.app",
            service_accounts=["tasks@my-project.iam.gserviceaccount.com"],
        )
    )

Signatures are checked with ``google-auth``, which is an optional dependency: install the
``cloudtasks`` extra (``pip install 'taskhandler[cloudtasks]'``). It is imported when a
verifier is built, never when this module is imported.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .exceptions import ConfigError, TaskHandlerError

if TYPE_CHECKING:
    from google.auth.transport import Request

__all__ = [
    "GOOGLE_CERTS_URL",
    "GOOGLE_ISSUERS",
    "INSTALL_HINT",
    "InvalidToken",
    "OIDCVerifier",
]

log = logging.getLogger("taskhandler")

#: Google's certificates for ID tokens, as ``{key id: PEM certificate}``.
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
#: The ``iss`` values Google writes into ID tokens.
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
INSTALL_HINT = "install the cloudtasks extra: pip install 'taskhandler[cloudtasks]'"

# Google signs ID tokens with RS256 only; anything else ("none", HS256 keyed with the
# public certificate, ...) is an attack or a misconfiguration, never a Google token.
_ALGORITHM = "RS256"
_MAX_TOKEN_LENGTH = 8192
# The signature may be empty so that an unsigned ("alg": "none") token is refused by name.
_BEARER = re.compile(r"Bearer +([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*) *", re.IGNORECASE)
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age=(\d{1,9})(?:$|[,\s])", re.IGNORECASE)
# Certificates are kept this long when the response gives no max-age.
_DEFAULT_CERTS_MAX_AGE = 3600.0
# Expired certificates or an unknown key id make the verifier fetch again, but not more often
# than this: Google publishes new keys well before using them, so an unknown key id is usually
# a forgery, and a stranger must not be able to make every request cost a fetch.
_MIN_REFETCH_INTERVAL = 30.0
_FETCH_TIMEOUT = 10.0


class _Verifier(Protocol):
    """What ``google.auth.crypt.RSAVerifier`` offers (its own stubs leave it untyped)."""

    def verify(self, message: bytes, signature: bytes) -> bool: ...


class InvalidToken(TaskHandlerError, ValueError):
    """The request's bearer token is missing or does not verify.

    Attributes:
        reason: why, in a few words (never the token itself).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _b64json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken(f"malformed token {what}") from exc
    if not isinstance(value, dict):
        raise InvalidToken(f"malformed token {what}: not a JSON object")
    return value


def _b64bytes(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as exc:
        raise InvalidToken("malformed token signature") from exc


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    # bool is an int in Python; a JSON true is not a time.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidToken(f"claim {name!r} missing or not a number")
    return float(value)


def _import_crypt() -> Any:
    try:
        from google.auth import crypt
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ConfigError(f"OIDCVerifier needs google-auth: {INSTALL_HINT}") from exc
    return crypt


def _default_request() -> Request:
    try:
        from google.auth.transport.requests import Request as RequestsRequest
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ConfigError(
            f"OIDCVerifier fetches Google's certificates with requests: {INSTALL_HINT}"
        ) from exc
    return RequestsRequest()


class OIDCVerifier:
    """Verifies the ``Authorization: Bearer`` ID token Cloud Tasks sends to an HTTP target.

    A token is accepted only when all of these hold: it is a three-part JWT signed with
    RS256 by a key in Google's current certificates; ``iss`` is Google's; ``aud`` is one of
    ``audience``; ``email`` is one of ``service_accounts`` and ``email_verified`` is true;
    ``exp`` has not passed and ``iat`` is not in the future (each within ``clock_skew``).
    Certificates are fetched once and kept for the ``max-age`` their response gives; a token
    naming an unknown key makes the verifier fetch again (at most every 30 s); if a fetch
    fails the certificates already held keep being used.

    Args:
        audience: the audience (or audiences) the tasks' ``oidc_token`` names; Cloud Tasks
            uses the task URL when none is set, so set one explicitly (for Cloud Run, the
            service URL).
        service_accounts: the emails of the service accounts the tasks' tokens are minted
            for. At least one.
        certs_url: where Google's certificates are fetched (``{key id: PEM certificate}``).
        certs: certificates to use instead of fetching (``{key id: PEM}``): for tests and
            for hosts that cannot reach Google.
        clock: seconds since the epoch; injectable so expiry is tested by moving time.
        request: a ``google.auth.transport.Request`` used to fetch certificates (default:
            ``google.auth.transport.requests.Request()``).
        clock_skew: seconds of disagreement between clocks tolerated on ``exp`` and ``iat``.

    Raises:
        ConfigError: a bad argument, or google-auth (the ``cloudtasks`` extra) is missing.

    Example::

        OIDCVerifier(
            audience="https://worker-abc123-uc.a.run.app",
            service_accounts=["tasks@my-project.iam.gserviceaccount.com"],
        )
    """

    __slots__ = (
        "_certs_expire",
        "_crypt",
        "_fetched_at",
        "_lock",
        "_request",
        "_verifiers",
        "audiences",
        "certs_url",
        "clock",
        "clock_skew",
        "service_accounts",
    )

    def __init__(
        self,
        audience: str | Iterable[str],
        service_accounts: Iterable[str],
        *,
        certs_url: str = GOOGLE_CERTS_URL,
        certs: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        request: Request | None = None,
        clock_skew: float = 10.0,
    ) -> None:
        audiences = [audience] if isinstance(audience, str) else list(audience)
        if not audiences or not all(isinstance(a, str) and a.strip() for a in audiences):
            raise ConfigError(
                "OIDCVerifier audience: a non-empty string is required", value=audience
            )
        if isinstance(service_accounts, str):
            service_accounts = [service_accounts]
        accounts = list(service_accounts)
        if not accounts:
            raise ConfigError("OIDCVerifier service_accounts: name at least one", value=accounts)
        for account in accounts:
            if (
                not isinstance(account, str)
                or account.count("@") != 1
                or account != account.strip()
            ):
                raise ConfigError(
                    "OIDCVerifier service_accounts: not a service account email", value=account
                )
        if not isinstance(certs_url, str) or not certs_url.startswith(("https://", "http://")):
            raise ConfigError("OIDCVerifier certs_url: not an http(s) URL", value=certs_url)
        if not (isinstance(clock_skew, (int, float)) and 0 <= clock_skew <= 300):
            raise ConfigError(
                "OIDCVerifier clock_skew: seconds between 0 and 300", value=clock_skew
            )
        if not callable(clock):
            raise ConfigError("OIDCVerifier clock: must be callable", value=clock)

        self._crypt = _import_crypt()
        self.audiences = frozenset(audiences)
        self.service_accounts = frozenset(a.lower() for a in accounts)
        self.certs_url = certs_url
        self.clock = clock
        self.clock_skew = float(clock_skew)
        self._lock = threading.Lock()
        self._verifiers: dict[str, _Verifier] = {}
        self._certs_expire = float("-inf")
        self._fetched_at = float("-inf")
        if certs is not None:
            self._verifiers = self._parse_certs(certs, source="certs")
            self._certs_expire = float("inf")
            self._request: Request | None = None
        else:
            self._request = request if request is not None else _default_request()

    def __repr__(self) -> str:
        return (
            f"OIDCVerifier(audience={sorted(self.audiences)!r}, "
            f"service_accounts={sorted(self.service_accounts)!r})"
        )

    # -- certificates ----------------------------------------------------------------------

    def _parse_certs(self, certs: Mapping[str, Any], *, source: str) -> dict[str, _Verifier]:
        if not isinstance(certs, Mapping) or "keys" in certs:
            raise ConfigError(
                f"{source}: expected {{key id: PEM certificate}} (the oauth2/v1/certs format)",
                value=type(certs).__name__,
            )
        verifiers: dict[str, _Verifier] = {}
        for kid, pem in certs.items():
            try:
                verifiers[str(kid)] = self._crypt.RSAVerifier.from_string(pem)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{source}: key {kid!r} is not a PEM certificate") from exc
        return verifiers

    def _fetch(self, now: float) -> None:
        """Fetch the certificates; on failure keep the ones held (Google's keys stay Google's)."""
        assert self._request is not None
        self._fetched_at = now
        try:
            response = self._request(url=self.certs_url, method="GET", timeout=_FETCH_TIMEOUT)
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            verifiers = self._parse_certs(json.loads(response.data), source=self.certs_url)
        except Exception as exc:  # any transport, HTTP or format problem
            log.warning(
                "taskhandler: could not fetch certificates from %s: %s", self.certs_url, exc
            )
            return
        max_age = _DEFAULT_CERTS_MAX_AGE
        cache_control = response.headers.get("cache-control") or response.headers.get(
            "Cache-Control"
        )
        if cache_control:
            match = _MAX_AGE.search(cache_control)
            if match:
                max_age = float(match.group(1))
        self._verifiers = verifiers
        self._certs_expire = now + max_age

    def _needs_fetch(self, kid: str, now: float) -> bool:
        return (now >= self._certs_expire or kid not in self._verifiers) and (
            now - self._fetched_at >= _MIN_REFETCH_INTERVAL
        )

    def _verifier(self, kid: str, now: float) -> _Verifier | None:
        if self._request is not None and self._needs_fetch(kid, now):
            with self._lock:
                if self._needs_fetch(kid, now):  # another thread may have fetched meanwhile
                    self._fetch(now)
        return self._verifiers.get(kid)

    # -- tokens ----------------------------------------------------------------------------

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """Check an ``Authorization`` header value; return the token's claims.

        Raises:
            InvalidToken: naming the first check that failed.
        """
        if authorization is None or not authorization.strip():
            raise InvalidToken("no Authorization header")
        if len(authorization) > _MAX_TOKEN_LENGTH:
            raise InvalidToken("Authorization header too long")
        match = _BEARER.fullmatch(authorization.strip())
        if match is None:
            raise InvalidToken("Authorization is not 'Bearer <JWT>'")
        token = match.group(1)
        encoded_header, encoded_claims, encoded_signature = token.split(".")
        header = _b64json(encoded_header, "header")
        algorithm = header.get("alg")
        if algorithm != _ALGORITHM:
            raise InvalidToken(f"unexpected algorithm {algorithm!r} (expected {_ALGORITHM})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token header names no key id")
        claims = _b64json(encoded_claims, "claims")
        signature = _b64bytes(encoded_signature)

        now = self.clock()
        verifier = self._verifier(kid, now)
        if verifier is None:
            raise InvalidToken(f"unknown signing key {kid[:64]!r}")
        signed = f"{encoded_header}.{encoded_claims}".encode("ascii")
        if not verifier.verify(signed, signature):
            raise InvalidToken("bad signature")

        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise InvalidToken(f"issuer {str(claims.get('iss'))[:100]!r} is not Google")
        audience = claims.get("aud")
        if not isinstance(audience, str) or audience not in self.audiences:
            raise InvalidToken(f"wrong audience {str(audience)[:200]!r}")
        expires = _number(claims, "exp")
        issued = _number(claims, "iat")
        if now > expires + self.clock_skew:
            raise InvalidToken("token expired")
        if issued > now + self.clock_skew:
            raise InvalidToken("token issued in the future")
        email = claims.get("email")
        if not isinstance(email, str) or email.lower() not in self.service_accounts:
            raise InvalidToken(f"email {str(email)[:200]!r} is not an allowed service account")
        if claims.get("email_verified") not in (True, "true"):
            raise InvalidToken("email not verified")
        return claims

    def verifies(self, authorization: str | None) -> bool:
        """True when the ``Authorization`` value holds a token that :meth:`verify` accepts.

        A refused token is logged (at DEBUG when there is none, else WARNING) with the reason,
        never the token.
        """
        try:
            self.verify(authorization)
        except InvalidToken as exc:
            level = logging.DEBUG if authorization is None else logging.WARNING
            log.log(level, "taskhandler: task headers not trusted: %s", exc.reason)
            return False
        return True
