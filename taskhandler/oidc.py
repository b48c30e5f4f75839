"""Trust for Cloud Tasks HTTP targets: a verified OIDC ID token instead of a peer address.

Off App Engine (Cloud Run, GKE, a VM), a Cloud Tasks request arrives from an ordinary
internet address, so the peer cannot tell the queue from a stranger who typed
``X-CloudTasks-QueueName``. Cloud Tasks can instead sign each request: with an
``oidc_token`` on the task it sends ``Authorization: Bearer <ID token>``, a JWT that
Google signs for the task's service account. :class:`OIDCVerifier` checks that token
(signature with ``google-auth`` against Google's published certificates, then issuer,
audience, the service account's ``email`` and ``email_verified``, expiry) and
:class:`~taskhandler.trust.TrustPolicy` believes the task headers of a request that passes::

    from taskhandler.oidc import OIDCVerifier
    from taskhandler.trust import TrustPolicy

    verifier = OIDCVerifier(
        audience="https://worker-abc123-uc.a.run.app",
        service_accounts=["tasks@my-project.iam.gserviceaccount.com"],
    )
    verifier.start()  # optional: fetch the certificates now rather than on the first request
    trust = TrustPolicy(oidc=verifier)

The request path never touches the network. Google's certificates are fetched by one
daemon thread per verifier (:class:`CertificateRefresher`), started on first use or by
:meth:`OIDCVerifier.start` / :meth:`OIDCVerifier.prefetch`, and refreshed before the
response's ``Cache-Control: max-age`` runs out. A token naming a key the verifier does not
hold is refused at once and only *asks* the thread for a new fetch, at most once every
30 seconds, so a stranger cannot make requests wait on Google or make the verifier hammer it.

``google-auth`` is an optional dependency: install the ``cloudtasks`` extra
(``pip install 'taskhandler[cloudtasks]'``). It is imported when a verifier is built, never
when this module is imported.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigError, TaskHandlerError

if TYPE_CHECKING:
    from google.auth.transport import Request

__all__ = [
    "GOOGLE_CERTS_URL",
    "GOOGLE_ISSUERS",
    "INSTALL_HINT",
    "CertificateRefresher",
    "InvalidToken",
    "OIDCVerifier",
    "bearer_token",
    "check_claims",
]

log = logging.getLogger("taskhandler")

#: Google's certificates for ID tokens, as ``{key id: PEM certificate}``.
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
#: The ``iss`` values Google writes into ID tokens.
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
INSTALL_HINT = "install the cloudtasks extra: pip install 'taskhandler[cloudtasks]'"

# Google signs ID tokens with RS256 only; anything else ("none", HS256 keyed with the
# public certificate, ES256, ...) is an attack or a misconfiguration, never a Google token.
_ALGORITHM = "RS256"
# Google's ID tokens are about 1 KB; nothing longer is even parsed.
_MAX_TOKEN_LENGTH = 8192
_MAX_KEY_ID_LENGTH = 256
# The signature may be empty so that an unsigned ("alg": "none") token is refused by name.
_BEARER = re.compile(r"Bearer +([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*) *", re.IGNORECASE)
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age=(\d{1,9})(?:$|[,\s])", re.IGNORECASE)
# Certificates are kept this long when the response gives no max-age, and never longer
# than the cap whatever it says (a rotated key would otherwise wait on an unknown kid).
_DEFAULT_CERTS_MAX_AGE = 3600.0
_MAX_CERTS_MAX_AGE = 86400.0
# Refresh when this share of max-age has passed, so that requests never see expired ones.
_REFRESH_EARLY = 0.75
# An unknown key id asks for a fetch at most this often: Google publishes new keys well
# before signing with them, so an unknown key id is usually a forgery.
_MIN_REFETCH_INTERVAL = 30.0
_FETCH_TIMEOUT = 10.0
# A failed fetch is retried after 2, 4, 8, ... seconds, at most this long.
_MAX_RETRY_DELAY = 300.0
# The refresher wakes at least this often (real seconds), whatever the clock says.
_MAX_SLEEP = 3600.0
_MAX_CERTS_BYTES = 1 << 20
_MAX_CERTS_KEYS = 100
# How long a synchronous caller (a WSGI worker thread) waits for the very first fetch.
_FIRST_FETCH_WAIT = 5.0


class InvalidToken(TaskHandlerError, ValueError):
    """The request's bearer token is missing or does not verify.

    Attributes:
        reason: why, in a few words (never the token itself).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _show(value: object, limit: int = 100) -> str:
    """A claim value fit for a log line: repr (so no newline survives), truncated."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _import_google() -> tuple[Any, Any, Any]:
    """google-auth's ``jwt``, ``crypt`` and ``exceptions`` modules, or a ConfigError."""
    try:
        from google.auth import crypt, exceptions, jwt
    except ImportError as exc:
        raise ConfigError(f"OIDCVerifier needs google-auth: {INSTALL_HINT}") from exc
    return jwt, crypt, exceptions


def _default_request() -> Request:
    try:
        from google.auth.transport.requests import Request as RequestsRequest
    except ImportError as exc:
        raise ConfigError(
            f"OIDCVerifier fetches Google's certificates with requests: {INSTALL_HINT}"
        ) from exc
    return RequestsRequest()


def _on_event_loop() -> bool:
    """True when called from a coroutine or callback of a running asyncio loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# -- the pure parts ------------------------------------------------------------------------


def bearer_token(authorization: str | None) -> str:
    """The JWT of an ``Authorization: Bearer <JWT>`` value, checked for shape and size only.

    The scheme is matched in any case and may be followed by several spaces (RFC 7235,
    RFC 6750); surrounding whitespace is ignored. Anything else — no scheme, another
    scheme, two headers joined with a comma, not three base64url segments, padding, more
    than 8 KiB — raises :class:`InvalidToken` before anything is decoded.
    """
    if authorization is None or not authorization.strip():
        raise InvalidToken("no Authorization header")
    if len(authorization) > _MAX_TOKEN_LENGTH:
        raise InvalidToken("Authorization header too long")
    match = _BEARER.fullmatch(authorization.strip())
    if match is None:
        raise InvalidToken("Authorization is not 'Bearer <JWT>'")
    return match.group(1)


def _time_claim(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    # bool is an int in Python: a JSON true is not a time. NaN and infinity (which Python's
    # json accepts) would make every comparison below pass.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidToken(f"claim {name!r} missing or not a number: {_show(value)}")
    return float(value)


def check_claims(
    claims: Mapping[str, Any],
    *,
    audiences: frozenset[str],
    service_accounts: frozenset[str],
    now: float,
    clock_skew: float,
) -> None:
    """Check the claims of a token whose signature has been verified; raise InvalidToken.

    Each claim must have the JSON type Google gives it, so that no other value passes by
    Python's loose comparisons: ``iss`` one of :data:`GOOGLE_ISSUERS`; ``aud`` a string in
    ``audiences`` (a list is refused: Google's ID tokens name one audience, and a token
    minted for several must not be replayed here); ``exp`` and ``iat`` finite numbers (not
    strings, not booleans) with ``exp`` not passed and ``iat`` not in the future, each within
    ``clock_skew``, and ``nbf`` likewise when present; ``email`` an ASCII string equal, ignoring
    ASCII case, to one of ``service_accounts`` (given in lower case); ``email_verified`` the
    JSON boolean ``true`` — not ``"true"``, ``1`` or ``"1"``.
    """
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or issuer not in GOOGLE_ISSUERS:
        raise InvalidToken(f"issuer {_show(issuer)} is not Google")
    audience = claims.get("aud")
    if not isinstance(audience, str) or audience not in audiences:
        raise InvalidToken(f"wrong audience {_show(audience, 200)}")
    expires = _time_claim(claims, "exp")
    issued = _time_claim(claims, "iat")
    if now > expires + clock_skew:
        raise InvalidToken("token expired")
    if issued > now + clock_skew:
        raise InvalidToken("token issued in the future")
    if "nbf" in claims and _time_claim(claims, "nbf") > now + clock_skew:
        raise InvalidToken("token not valid yet (nbf)")
    email = claims.get("email")
    # ASCII only before lower(): "\u212a".lower() is "k", so a Unicode email could
    # otherwise match an allowed ASCII one.
    if not isinstance(email, str) or not email.isascii() or email.lower() not in service_accounts:
        raise InvalidToken(f"email {_show(email, 200)} is not an allowed service account")
    verified = claims.get("email_verified")
    if verified is not True:
        raise InvalidToken(f"email not verified (email_verified={_show(verified)})")


def cache_max_age(cache_control: str | None) -> float:
    """Seconds the certificates may be kept, from the response's ``Cache-Control``.

    ``max-age`` when given (capped at a day), 0 for ``no-store``/``no-cache``, else an hour.
    """
    if not cache_control:
        return _DEFAULT_CERTS_MAX_AGE
    match = _MAX_AGE.search(cache_control)
    if match:
        return min(float(match.group(1)), _MAX_CERTS_MAX_AGE)
    if re.search(r"no-store|no-cache", cache_control, re.IGNORECASE):
        return 0.0
    return _DEFAULT_CERTS_MAX_AGE


def _parse_certs(crypt: Any, certs: object, *, source: str) -> Mapping[str, str]:
    """``{key id: PEM certificate}`` checked entry by entry; ConfigError names the problem."""
    if not isinstance(certs, Mapping) or "keys" in certs:
        raise ConfigError(
            f"{source}: expected {{key id: PEM certificate}} (the oauth2/v1/certs format)",
            value=type(certs).__name__,
        )
    if len(certs) > _MAX_CERTS_KEYS:
        raise ConfigError(f"{source}: more than {_MAX_CERTS_KEYS} keys", value=len(certs))
    parsed: dict[str, str] = {}
    for kid, pem in certs.items():
        if not isinstance(kid, str) or not kid or not isinstance(pem, str):
            raise ConfigError(f"{source}: key {_show(kid)} is not a PEM certificate string")
        try:
            crypt.RSAVerifier.from_string(pem)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: key {kid!r} is not a PEM certificate") from exc
        parsed[kid] = pem
    return MappingProxyType(parsed)


# -- the certificate refresher ---------------------------------------------------------------

# Refreshers whose locks and thread must be renewed in a child process after fork().
_REFRESHERS: weakref.WeakSet[CertificateRefresher] = weakref.WeakSet()


def _renew_after_fork() -> None:
    for refresher in list(_REFRESHERS):
        refresher._after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_renew_after_fork)


class CertificateRefresher:
    """Google's ID-token certificates, fetched and kept fresh by one daemon thread.

    The request path only reads: :meth:`get` looks a key id up in the current set (a
    read-only mapping replaced whole, so readers take no lock) and, when the key is
    unknown, asks the thread for a fetch — at most one every ``min_interval`` seconds,
    counted from the start of the last fetch. It never waits for the network.

    The thread starts on first use (or :meth:`start`), fetches at once, then again when
    three quarters of the response's ``max-age`` have passed; a failed fetch is logged and
    retried after 2, 4, 8, ... seconds (at most 5 minutes) while the certificates already
    held keep being used. After ``fork()`` the child starts its own thread on first use.

    Args:
        url: where the ``{key id: PEM certificate}`` document is fetched.
        request: a ``google.auth.transport.Request``; only the refresher thread calls it.
        clock: seconds since the epoch, the same clock the verifier uses, so that a test
            moves the schedule by moving the clock.
        min_interval: seconds between fetches asked for by unknown key ids.
        fetch_timeout: seconds one fetch may take.
    """

    def __init__(
        self,
        url: str,
        request: Request,
        *,
        clock: Callable[[], float] = time.time,
        min_interval: float = _MIN_REFETCH_INTERVAL,
        fetch_timeout: float = _FETCH_TIMEOUT,
    ) -> None:
        self.url = url
        self.min_interval = min_interval
        self.fetch_timeout = fetch_timeout
        self._request = request
        self._clock = clock
        self._crypt = _import_google()[1]
        self._certs: Mapping[str, str] = MappingProxyType({})
        #: Set once certificates are held (the first successful fetch).
        self.loaded = threading.Event()
        #: Set once the first fetch has ended, whether it succeeded or not.
        self.first_attempt_done = threading.Event()
        self._new_locks()
        _REFRESHERS.add(self)

    def _new_locks(self) -> None:
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._wanted = False  # a fetch was asked for and has not started yet
        self._fetching = False
        self._last_attempt = -math.inf  # clock time the last fetch started
        self._refresh_at = -math.inf  # clock time the next scheduled fetch is due
        self._failures = 0
        #: Fetches finished (successful or not) since the refresher was made.
        self.attempts = 0

    def _after_fork(self) -> None:
        # The parent's thread does not exist here and its lock may have been held at fork;
        # the certificates and the schedule carry over (a fetch under way is done again).
        saved = (self._certs, self._closed, self._last_attempt, self._refresh_at)
        self._new_locks()
        self._certs, self._closed, self._last_attempt, self._refresh_at = saved
        if self._refresh_at == math.inf:
            self._refresh_at = -math.inf

    def __repr__(self) -> str:
        return f"CertificateRefresher({self.url!r}, keys={sorted(self._certs)!r})"

    # -- what the request path calls: no I/O, no waiting ---------------------------------------

    @property
    def certificates(self) -> Mapping[str, str]:
        """The certificates held now, ``{key id: PEM}`` (read-only)."""
        return self._certs

    @property
    def pending(self) -> bool:
        """True while a fetch is asked for or under way."""
        return self._wanted or self._fetching

    def get(self, kid: str, now: float) -> str | None:
        """The PEM certificate for ``kid``, or ``None`` (and a fetch is asked for)."""
        thread = self._thread
        if (thread is None or not thread.is_alive()) and not self._closed:
            self.start()
        if now >= self._refresh_at and not self.pending:
            # The thread sleeps in real seconds; with another clock it may be late.
            with self._cond:
                self._cond.notify()
        pem = self._certs.get(kid)
        if pem is None:
            self.request_refresh(now)
        return pem

    def request_refresh(self, now: float) -> bool:
        """Ask the thread for a fetch, unless one is under way or began < min_interval ago.

        Returns whether a fetch was scheduled. Takes the lock only for bookkeeping, which
        the thread never holds across I/O, so this never waits on the network.
        """
        if self._closed or self.pending or now - self._last_attempt < self.min_interval:
            return False
        with self._cond:
            if self._closed or self.pending or now - self._last_attempt < self.min_interval:
                return False
            self._wanted = True
            self._cond.notify()
        log.debug("taskhandler: certificate fetch from %s scheduled", self.url)
        return True

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the refresher thread if it is not running (it fetches at once)."""
        with self._cond:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(
                target=self._run, name="taskhandler-oidc-certificates", daemon=True
            )
            self._thread.start()

    def wait_loaded(self, timeout: float) -> bool:
        """Start if needed and wait up to ``timeout`` seconds for certificates; True if held."""
        self.start()
        return self.loaded.wait(timeout)

    def wait_for_attempts(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` fetches have finished (for start-up code and tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.attempts >= count, timeout)

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread (the certificates held stay usable); it is not started again."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = self._clock()
                    if self._wanted or now >= self._refresh_at:
                        break
                    self._cond.wait(min(self._refresh_at - now, _MAX_SLEEP))
                self._wanted = False
                self._fetching = True
                self._last_attempt = now
                scheduled, self._refresh_at = self._refresh_at, math.inf
            certs, max_age = self._fetch()
            with self._cond:
                now = self._clock()
                if certs is not None:
                    self._certs = certs
                    self._failures = 0
                    self._refresh_at = now + max(self.min_interval, max_age * _REFRESH_EARLY)
                elif self._certs and scheduled > now:
                    # A fetch asked for by an unknown key id failed while the certificates
                    # held are fresh: their schedule stands, nothing to retry early.
                    self._refresh_at = scheduled
                else:
                    self._failures += 1
                    self._refresh_at = now + min(2.0**self._failures, _MAX_RETRY_DELAY)
                self._fetching = False
                self.attempts += 1
                self._cond.notify_all()
            if certs is not None:
                self.loaded.set()
            self.first_attempt_done.set()

    def _fetch(self) -> tuple[Mapping[str, str] | None, float]:
        """One fetch: (certificates, max-age), or (None, 0) after logging why not."""
        try:
            response = self._request(url=self.url, method="GET", timeout=self.fetch_timeout)
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            data = response.data
            if len(data) > _MAX_CERTS_BYTES:
                raise ValueError(f"response larger than {_MAX_CERTS_BYTES} bytes")
            certs = _parse_certs(self._crypt, json.loads(data), source=self.url)
            headers = response.headers
            max_age = cache_max_age(headers.get("cache-control") or headers.get("Cache-Control"))
        except Exception as exc:  # any transport, HTTP or format problem: keep what is held
            log.warning(
                "taskhandler: could not fetch certificates from %s: %s%s",
                self.url,
                str(exc)[:300],
                " (the certificates held keep being used)" if self._certs else "",
            )
            return None, 0.0
        log.debug("taskhandler: fetched %d certificates from %s", len(certs), self.url)
        return certs, max_age


# -- the verifier ----------------------------------------------------------------------------


class OIDCVerifier:
    """Verifies the ``Authorization: Bearer`` ID token Cloud Tasks sends to an HTTP target.

    A token is accepted only when all of these hold: it is a three-part JWT whose header
    says RS256 and names a key in Google's current certificates, and ``google-auth``
    (``google.auth.jwt.decode``) verifies its signature with that key; then
    :func:`check_claims`: ``iss`` is Google's; ``aud`` is one of ``audience``; ``email`` is
    one of ``service_accounts`` and ``email_verified`` is JSON ``true``; ``exp`` has not passed
    and ``iat`` is not in the future (each within ``clock_skew``).

    :meth:`verifies` never performs network I/O. Certificates come from a
    :class:`CertificateRefresher` thread, started by the first call or by :meth:`start` /
    :meth:`prefetch`. Until the first fetch has ended, a call from a synchronous thread (a
    WSGI worker) waits for it, at most ``first_fetch_wait`` seconds; a call on a running
    asyncio loop never waits and the token is refused (so the queue retries the task later).
    Call :meth:`start` at start-up, or :meth:`prefetch` to wait for the certificates.

    Args:
        audience: the audience (or audiences) the tasks' ``oidc_token`` names; Cloud Tasks
            uses the task URL when none is set, so set one explicitly (for Cloud Run, the
            service URL).
        service_accounts: the emails of the service accounts the tasks' tokens are minted
            for. At least one; compared ignoring ASCII case.
        certs_url: where Google's certificates are fetched (``{key id: PEM certificate}``).
        certs: certificates to use instead of fetching (``{key id: PEM}``): for tests and
            for hosts that cannot reach Google. No thread is started then.
        clock: seconds since the epoch; injectable so expiry and the certificate schedule
            are tested by moving time.
        request: a ``google.auth.transport.Request`` used by the refresher thread to fetch
            certificates (default: ``google.auth.transport.requests.Request()``).
        clock_skew: seconds of disagreement between clocks tolerated on ``exp`` and ``iat``.
        first_fetch_wait: seconds a synchronous caller waits for the very first fetch
            (0: never wait). Never waited on a running event loop.

    Raises:
        ConfigError: a bad argument, or google-auth (the ``cloudtasks`` extra) is missing.

    Example::

        verifier = OIDCVerifier(
            audience="https://worker-abc123-uc.a.run.app",
            service_accounts=["tasks@my-project.iam.gserviceaccount.com"],
        )
        verifier.prefetch()  # at start-up: certificates in hand before the first task
    """

    __slots__ = (
        "_exceptions",
        "_jwt",
        "_static",
        "audiences",
        "certificates",
        "certs_url",
        "clock",
        "clock_skew",
        "first_fetch_wait",
        "service_accounts",
    )

    def __init__(
        self,
        audience: str | Iterable[str],
        service_accounts: str | Iterable[str],
        *,
        certs_url: str = GOOGLE_CERTS_URL,
        certs: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        request: Request | None = None,
        clock_skew: float = 10.0,
        first_fetch_wait: float = _FIRST_FETCH_WAIT,
    ) -> None:
        audiences = [audience] if isinstance(audience, str) else list(audience)
        if not audiences or not all(isinstance(a, str) and a.strip() for a in audiences):
            raise ConfigError(
                "OIDCVerifier audience: a non-empty string is required", value=audience
            )
        accounts = (
            [service_accounts] if isinstance(service_accounts, str) else list(service_accounts)
        )
        if not accounts:
            raise ConfigError("OIDCVerifier service_accounts: name at least one", value=accounts)
        for account in accounts:
            if (
                not isinstance(account, str)
                or not account.isascii()
                or account.count("@") != 1
                or account != account.strip()
            ):
                raise ConfigError(
                    "OIDCVerifier service_accounts: not a service account email", value=account
                )
        if not isinstance(certs_url, str) or not certs_url.startswith(("https://", "http://")):
            raise ConfigError("OIDCVerifier certs_url: not an http(s) URL", value=certs_url)
        if not _seconds(clock_skew, 300):
            raise ConfigError(
                "OIDCVerifier clock_skew: seconds between 0 and 300", value=clock_skew
            )
        if not _seconds(first_fetch_wait, 60):
            raise ConfigError(
                "OIDCVerifier first_fetch_wait: seconds between 0 and 60", value=first_fetch_wait
            )
        if not callable(clock):
            raise ConfigError("OIDCVerifier clock: must be callable", value=clock)

        self._jwt, crypt, self._exceptions = _import_google()
        self.audiences = frozenset(audiences)
        self.service_accounts = frozenset(a.lower() for a in accounts)
        self.certs_url = certs_url
        self.clock = clock
        self.clock_skew = float(clock_skew)
        self.first_fetch_wait = float(first_fetch_wait)
        self._static: Mapping[str, str] | None = None
        self.certificates: CertificateRefresher | None = None
        if certs is not None:
            self._static = _parse_certs(crypt, certs, source="certs")
        else:
            self.certificates = CertificateRefresher(
                certs_url,
                request if request is not None else _default_request(),
                clock=clock,
            )

    def __repr__(self) -> str:
        return (
            f"OIDCVerifier(audience={sorted(self.audiences)!r}, "
            f"service_accounts={sorted(self.service_accounts)!r})"
        )

    # -- start-up --------------------------------------------------------------------------

    def start(self) -> None:
        """Start fetching Google's certificates in the background; returns at once."""
        if self.certificates is not None:
            self.certificates.start()

    def prefetch(self, timeout: float = 10.0) -> bool:
        """Start, and wait up to ``timeout`` seconds for the certificates; True when held.

        Blocks the calling thread: on an asyncio loop, ``await asyncio.to_thread(verifier.
        prefetch)`` (or call :meth:`start`, which does not wait).
        """
        if self.certificates is None:
            return True
        return self.certificates.wait_loaded(timeout)

    def close(self) -> None:
        """Stop the refresher thread (tests, shutdown). Certificates held stay usable."""
        if self.certificates is not None:
            self.certificates.close()

    # -- tokens ----------------------------------------------------------------------------

    def _certificate(self, kid: str, now: float) -> str:
        """The PEM for ``kid`` from what is held; never fetches on the caller's behalf."""
        if self._static is not None:
            pem = self._static.get(kid)
            if pem is None:
                raise InvalidToken(f"unknown signing key {_show(kid)}")
            return pem
        refresher = self.certificates
        assert refresher is not None
        if (
            not refresher.first_attempt_done.is_set()
            and self.first_fetch_wait > 0
            and not _on_event_loop()
        ):
            refresher.start()
            refresher.first_attempt_done.wait(self.first_fetch_wait)
        pem = refresher.get(kid, now)
        if pem is not None:
            return pem
        if not refresher.loaded.is_set():
            raise InvalidToken("Google's certificates are not loaded yet")
        raise InvalidToken(f"unknown signing key {_show(kid)} (certificates refresh scheduled)")

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """Check an ``Authorization`` header value; return the token's claims.

        Raises:
            InvalidToken: naming the first check that failed.
        """
        token = bearer_token(authorization)
        try:
            header = self._jwt.decode_header(token)
        except (self._exceptions.GoogleAuthError, ValueError, TypeError, RecursionError):
            # RecursionError: JSON nested thousands deep ("[[[[..."), which json refuses so.
            raise InvalidToken("malformed token: not base64url JSON objects") from None
        algorithm = header.get("alg")
        if algorithm != _ALGORITHM:
            raise InvalidToken(f"unexpected algorithm {_show(algorithm)} (expected {_ALGORITHM})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > _MAX_KEY_ID_LENGTH:
            raise InvalidToken("token header names no key id")

        now = self.clock()
        pem = self._certificate(kid, now)
        try:
            # google-auth checks the signature first, then iat/exp against the system clock
            # and the audience. Its window is widened by how far ``clock`` is from the system
            # clock (0 unless a test injected one), so check_claims, on ``clock``, decides time.
            claims = self._jwt.decode(
                token,
                certs={kid: pem},
                verify=True,
                audience=sorted(self.audiences),
                clock_skew_in_seconds=self.clock_skew + abs(time.time() - now),
            )
        except TypeError:  # iat/exp of a type google-auth cannot do arithmetic with
            raise InvalidToken("claim 'iat' or 'exp' not a number") from None
        except (self._exceptions.GoogleAuthError, ValueError, RecursionError) as exc:
            raise InvalidToken(f"refused by google-auth: {_show(str(exc), 200)}") from None
        check_claims(
            claims,
            audiences=self.audiences,
            service_accounts=self.service_accounts,
            now=now,
            clock_skew=self.clock_skew,
        )
        return dict(claims)

    def verifies(self, authorization: str | None) -> bool:
        """True when the ``Authorization`` value holds a token that :meth:`verify` accepts.

        Never performs network I/O (see the class). A refused token is logged (at DEBUG
        when there is none, else WARNING) with the reason, never the token.
        """
        try:
            self.verify(authorization)
        except InvalidToken as exc:
            level = logging.DEBUG if authorization is None else logging.WARNING
            log.log(level, "taskhandler: task headers not trusted: %s", exc.reason)
            return False
        return True


def _seconds(value: object, maximum: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= maximum
