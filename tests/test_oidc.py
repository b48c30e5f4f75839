"""OIDCVerifier: Cloud Tasks' bearer ID tokens checked with google-auth, trusted by TrustPolicy.

Keys are generated here and tokens signed here with google-auth's ``RSASigner``; Google's
certificate endpoint is stood in for by a small HTTP server on 127.0.0.1 serving the same
``{key id: PEM certificate}`` document. The certificate refresher's own behaviour (the
background thread, the first request, the event loop) is in ``test_oidc_certificates.py``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.server
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("google.auth", reason="the cloudtasks extra is not installed")
requests = pytest.importorskip("requests", reason="the cloudtasks extra is not installed")

from cryptography import x509  # noqa: E402 - after the skip
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from google.auth import crypt, jwt  # noqa: E402
from google.auth.transport.requests import Request  # noqa: E402
from werkzeug.test import Client  # noqa: E402

from taskhandler.asgi import TaskMiddleware as ASGITaskMiddleware  # noqa: E402
from taskhandler.context import current_task  # noqa: E402
from taskhandler.exceptions import ConfigError  # noqa: E402
from taskhandler.oidc import (  # noqa: E402
    InvalidToken,
    OIDCVerifier,
    bearer_token,
    cache_max_age,
    check_claims,
)
from taskhandler.trust import TrustPolicy  # noqa: E402
from taskhandler.wsgi import TaskMiddleware  # noqa: E402

AUDIENCE = "https://worker-abc123-uc.a.run.app"
ACCOUNT = "tasks@my-project.iam.gserviceaccount.com"
NOW = 1_700_000_000.0
# How long a certificate request may be held by a stalled server before it answers anyway,
# so that a broken test cannot hang; tests release it long before.
STALL_LIMIT = 30.0
WAIT = 10.0  # upper bound on waiting for a background fetch; never reached when all is well


class Key:
    """An RSA key pair with a self-signed certificate, like one entry of Google's certs."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, kid)])
        start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private.public_key())
            .serial_number(1)
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=3650))
            .sign(self.private, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        private_pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.signer = crypt.RSASigner.from_string(private_pem, key_id=kid)

    def token(self, now: float = NOW, **changes: Any) -> str:
        """A Cloud Tasks-style ID token, valid at ``now`` unless ``changes`` say otherwise."""
        claims: dict[str, Any] = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "azp": "1234567890",
            "sub": "1234567890",
            "email": ACCOUNT,
            "email_verified": True,
            "iat": int(now) - 60,
            "exp": int(now) + 3540,
        }
        for name, value in changes.items():
            if value is _DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        return jwt.encode(self.signer, claims).decode()


_DROP = object()


@dataclass(frozen=True)
class Keys:
    """The keys a token table needs."""

    good: Key  # in the served certificates
    forger: Key  # same key id as ``good``, another key: a forger guessing the kid
    stranger: Key  # a real RSA key whose id the certificates do not list


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims_from: str) -> str:
    """A token with the given header and the claims of another token, signature left empty."""
    return f"{_b64(json.dumps(header).encode())}.{claims_from.split('.')[1]}."


def _hs256_with_public_cert(key: Key, claims_from: str) -> str:
    """The algorithm-confusion forgery: HMAC keyed with the public certificate."""
    header = _b64(json.dumps({"alg": "HS256", "kid": key.kid, "typ": "JWT"}).encode())
    signed = f"{header}.{claims_from.split('.')[1]}"
    mac = hmac.new(key.cert_pem.encode(), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{_b64(mac)}"


def _bearer(token: str) -> str:
    return f"Bearer {token}"


class CertServer:
    """Serves ``{kid: PEM}`` on 127.0.0.1 like Google's certificate endpoint; counts fetches.

    Clearing ``answer`` stalls every request until it is set again (or STALL_LIMIT passes);
    ``waiting`` counts the requests being held.
    """

    def __init__(self) -> None:
        self.certs: dict[str, str] = {}
        self.cache_control: str | None = "public, max-age=3600, must-revalidate"
        self.status = 200
        self.body: bytes | None = None  # sent instead of the certs when set
        self.fetches = 0
        self.waiting = 0
        self.answer = threading.Event()
        self.answer.set()
        self.lock = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer.lock:
                    outer.fetches += 1
                    outer.waiting += 1
                    outer.lock.notify_all()
                outer.answer.wait(STALL_LIMIT)
                with outer.lock:
                    outer.waiting -= 1
                body = outer.body if outer.body is not None else json.dumps(outer.certs).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                if outer.cache_control is not None:
                    self.send_header("Cache-Control", outer.cache_control)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/oauth2/v1/certs"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self, certs: dict[str, str]) -> None:
        self.answer.set()
        self.certs = dict(certs)
        self.cache_control = "public, max-age=3600, must-revalidate"
        self.status = 200
        self.body = None
        with self.lock:
            self.fetches = 0

    def wait_for_waiting(self, count: int) -> bool:
        """Wait until ``count`` requests are being held (bounded by WAIT)."""
        with self.lock:
            return self.lock.wait_for(lambda: self.waiting >= count, WAIT)

    def close(self) -> None:
        self.answer.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class Clock:
    """A clock that moves only when a test moves it."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def session() -> Any:
    """A requests session for 127.0.0.1 only, whatever proxy the environment names."""
    result = requests.Session()
    result.trust_env = False
    return result


def make_verifier(cert_server: CertServer, clock: Clock, **kwargs: Any) -> OIDCVerifier:
    """A verifier fetching from ``cert_server`` (call ``close()`` when done)."""
    return OIDCVerifier(
        audience=AUDIENCE,
        service_accounts=[ACCOUNT],
        certs_url=cert_server.url,
        clock=clock,
        request=Request(session()),
        **kwargs,
    )


@pytest.fixture(scope="module")
def key() -> Key:
    return Key("key-1")


@pytest.fixture(scope="module")
def other_key() -> Key:
    return Key("key-1")  # same key id, different key: a forger guessing the kid


@pytest.fixture(scope="module")
def keys(key: Key, other_key: Key) -> Keys:
    return Keys(good=key, forger=other_key, stranger=Key("key-unknown"))


@pytest.fixture(scope="module")
def cert_server_module() -> Iterator[CertServer]:
    server = CertServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def cert_server(cert_server_module: CertServer, key: Key) -> CertServer:
    """The shared certificate server, reset to serve ``key`` only."""
    cert_server_module.reset({key.kid: key.cert_pem})
    return cert_server_module


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(cert_server: CertServer, clock: Clock) -> Iterator[OIDCVerifier]:
    result = make_verifier(cert_server, clock)
    yield result
    cert_server.answer.set()
    result.close()


Make = Callable[[Keys], "str | None"]

# (make the Authorization value, the reason expected in InvalidToken, or None: accepted)
TOKEN_CASES = [
    pytest.param(lambda k: _bearer(k.good.token()), None, id="valid token"),
    pytest.param(lambda k: "bearer  " + k.good.token(), None, id="lowercase bearer, two spaces"),
    pytest.param(lambda k: "BEARER " + k.good.token(), None, id="uppercase bearer"),
    pytest.param(lambda k: f"  Bearer {k.good.token()}  ", None, id="surrounding spaces"),
    pytest.param(
        lambda k: _bearer(k.good.token(iss="accounts.google.com")),
        None,
        id="issuer without scheme",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(email=ACCOUNT.upper())), None, id="email in another case"
    ),
    pytest.param(lambda k: _bearer(k.good.token(nbf=int(NOW) - 60)), None, id="nbf in the past"),
    # audience
    pytest.param(
        lambda k: _bearer(k.good.token(aud="https://other.run.app")),
        "wrong audience",
        id="wrong audience",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(aud=[AUDIENCE])), "wrong audience", id="audience as a list"
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(aud=[AUDIENCE, "https://other.run.app"])),
        "wrong audience",
        id="audience list naming us and another",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(aud=_DROP)), "wrong audience", id="no audience claim"
    ),
    # issuer
    pytest.param(
        lambda k: _bearer(k.good.token(iss="https://evil.example")),
        "is not Google",
        id="wrong issuer",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(iss="https://accounts.google.com/")),
        "is not Google",
        id="issuer with a trailing slash",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(iss=["accounts.google.com"])),
        "is not Google",
        id="issuer as a list",
    ),
    pytest.param(lambda k: _bearer(k.good.token(iss=_DROP)), "is not Google", id="no issuer"),
    # email and email_verified
    pytest.param(
        lambda k: _bearer(k.good.token(email="mallory@evil.iam.gserviceaccount.com")),
        "not an allowed service account",
        id="email not in the allow-list",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(email=_DROP)),
        "not an allowed service account",
        id="no email claim",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(email=[ACCOUNT])),
        "not an allowed service account",
        id="email as a list",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(email=ACCOUNT.replace("k", "\u212a"))),
        "not an allowed service account",
        id="email with a Kelvin sign that lower() turns into k",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(email=ACCOUNT + " ")),
        "not an allowed service account",
        id="email with a trailing space",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(email_verified=True)), None, id="email_verified true"
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(email_verified=False)),
        "email not verified",
        id="email_verified false",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(email_verified=_DROP)),
        "email not verified",
        id="email_verified absent",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(email_verified=1)),
        "email not verified",
        id="email_verified 1",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(email_verified="true")),
        "email not verified",
        id="email_verified string true",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(email_verified="1")),
        "email not verified",
        id="email_verified string 1",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(email_verified=None)),
        "email not verified",
        id="email_verified null",
    ),
    # time
    pytest.param(
        lambda k: _bearer(k.good.token(exp=int(NOW) - 11)),
        "expired",  # google-auth's "Token expired" or ours, whichever sees it first
        id="expired beyond clock skew",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(exp=int(NOW) - 5)), None, id="expired within clock skew"
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(iat=int(NOW) + 60)),
        "issued in the future",
        id="not yet valid: issued in the future",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(iat=int(NOW) + 5)),
        None,
        id="issued in the future within clock skew",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(nbf=int(NOW) + 60)),
        "not valid yet",
        id="not yet valid: nbf in the future",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(exp=_DROP)), "required claim exp", id="no exp claim"
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(iat=_DROP)), "required claim iat", id="no iat claim"
    ),
    # True is an int in Python and 1 s after the epoch: long expired.
    pytest.param(lambda k: _bearer(k.good.token(exp=True)), "expired", id="exp is a boolean"),
    pytest.param(lambda k: _bearer(k.good.token(iat=True)), "claim 'iat'", id="iat is a boolean"),
    pytest.param(
        lambda k: _bearer(k.good.token(exp=str(int(NOW) + 3600))),
        "not a number",
        id="exp is a string",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token(iat=str(int(NOW)))), "not a number", id="iat is a string"
    ),
    pytest.param(lambda k: _bearer(k.good.token(exp=float("nan"))), "claim 'exp'", id="exp is NaN"),
    pytest.param(
        lambda k: _bearer(k.good.token(exp=float("inf"))), "claim 'exp'", id="exp is Infinity"
    ),
    pytest.param(lambda k: _bearer(k.good.token(nbf="0")), "claim 'nbf'", id="nbf is a string"),
    # signature and algorithm
    pytest.param(
        lambda k: _bearer(k.forger.token()),
        "Could not verify token signature",
        id="bad signature (other key, same kid)",
    ),
    pytest.param(
        lambda k: _bearer(
            k.good.token().rsplit(".", 1)[0] + "." + k.forger.token().rsplit(".", 1)[1]
        ),
        "Could not verify token signature",
        id="signature of another token",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token().rsplit(".", 1)[0] + "."),
        "Could not verify token signature",
        id="RS256 with the signature cut off",
    ),
    pytest.param(
        lambda k: _bearer(_unsigned({"alg": "none", "kid": k.good.kid}, k.good.token())),
        "unexpected algorithm 'none'",
        id="alg none",
    ),
    pytest.param(
        lambda k: _bearer(_unsigned({"alg": "None", "kid": k.good.kid}, k.good.token())),
        "unexpected algorithm 'None'",
        id="alg None capitalised",
    ),
    pytest.param(
        lambda k: _bearer(_unsigned({"alg": "none"}, k.good.token()) + "AAAA"),
        "unexpected algorithm 'none'",
        id="alg none with junk signature",
    ),
    pytest.param(
        lambda k: _bearer(_unsigned({"kid": k.good.kid}, k.good.token()) + "AAAA"),
        "unexpected algorithm None",
        id="no alg",
    ),
    pytest.param(
        lambda k: _bearer(_hs256_with_public_cert(k.good, k.good.token())),
        "unexpected algorithm 'HS256'",
        id="HS256 keyed with the public certificate",
    ),
    pytest.param(
        lambda k: _bearer(_unsigned({"alg": "ES256", "kid": k.good.kid}, k.good.token()) + "AA"),
        "unexpected algorithm 'ES256'",
        id="ES256 (google-auth knows it, Google ID tokens never use it)",
    ),
    pytest.param(
        lambda k: _bearer(_unsigned({"alg": ["RS256"], "kid": k.good.kid}, k.good.token())),
        "unexpected algorithm ['RS256']",
        id="alg as a list",
    ),
    pytest.param(
        lambda k: _bearer(k.stranger.token()),
        "unknown signing key 'key-unknown'",
        id="unknown key id, properly signed",
    ),
    pytest.param(
        lambda k: _bearer(_unsigned({"alg": "RS256"}, k.good.token()) + "AAAA"),
        "no key id",
        id="no key id",
    ),
    pytest.param(
        lambda k: _bearer(_unsigned({"alg": "RS256", "kid": 1}, k.good.token()) + "AAAA"),
        "no key id",
        id="key id a number",
    ),
    pytest.param(
        lambda k: _bearer(_unsigned({"alg": "RS256", "kid": "k" * 300}, k.good.token()) + "AA"),
        "no key id",
        id="key id 300 characters",
    ),
    # malformed
    pytest.param(lambda k: None, "no Authorization header", id="missing header"),
    pytest.param(lambda k: "", "no Authorization header", id="empty header"),
    pytest.param(lambda k: "   ", "no Authorization header", id="blank header"),
    pytest.param(lambda k: "Bearer", "not 'Bearer <JWT>'", id="scheme only"),
    pytest.param(lambda k: k.good.token(), "not 'Bearer <JWT>'", id="token without Bearer"),
    pytest.param(
        lambda k: "Bearer\t" + k.good.token(), "not 'Bearer <JWT>'", id="tab after Bearer"
    ),
    pytest.param(
        lambda k: "Bearer" + k.good.token(), "not 'Bearer <JWT>'", id="no space after Bearer"
    ),
    pytest.param(lambda k: "Token " + k.good.token(), "not 'Bearer <JWT>'", id="another scheme"),
    pytest.param(lambda k: "Basic dXNlcjpwYXNz", "not 'Bearer <JWT>'", id="basic auth"),
    pytest.param(
        lambda k: "Bearer " + k.good.token().replace(".", ". ", 1),
        "not 'Bearer <JWT>'",
        id="space inside the token",
    ),
    pytest.param(lambda k: "Bearer abc.def", "not 'Bearer <JWT>'", id="two segments"),
    pytest.param(lambda k: "Bearer a.b.c.d", "not 'Bearer <JWT>'", id="four segments"),
    pytest.param(
        lambda k: _bearer(k.good.token() + "." + _b64(b"{}")),
        "not 'Bearer <JWT>'",
        id="valid token with a fourth segment",
    ),
    pytest.param(
        lambda k: f"Bearer {k.good.token()}, Bearer {k.good.token()}",
        "not 'Bearer <JWT>'",
        id="two joined Authorization headers",
    ),
    pytest.param(lambda k: "Bearer e30.e30.e30=", "not 'Bearer <JWT>'", id="padding characters"),
    pytest.param(lambda k: "Bearer !!!.e30.e30", "not 'Bearer <JWT>'", id="not base64url"),
    pytest.param(
        lambda k: "Bearer " + k.good.token().replace("e", "\u0435"),
        "not 'Bearer <JWT>'",
        id="Cyrillic look-alike letters",
    ),
    pytest.param(lambda k: "Bearer bm90anNvbg.e30.e30", "malformed token", id="header not JSON"),
    pytest.param(lambda k: "Bearer WzFd.e30.e30", "malformed token", id="header a JSON list"),
    pytest.param(
        lambda k: f"Bearer {_b64(json.dumps({'alg': 'RS256', 'kid': 'key-1'}).encode())}.WzFd.e30",
        "malformed token",
        id="claims a JSON list",
    ),
    pytest.param(
        lambda k: _bearer(k.good.token() + "xxx"),
        "malformed token",
        id="signature not base64",
    ),
    pytest.param(
        lambda k: f"Bearer {_b64(b'[' * 5000)}.e30.e30",
        "malformed token",
        id="header JSON nested 5000 deep",
    ),
    pytest.param(lambda k: "Bearer " + "a" * 9000 + ".b.c", "too long", id="huge token"),
    pytest.param(
        lambda k: "Bearer " + "a" * (1 << 20) + ".b.c", "too long", id="one-megabyte token"
    ),
]


@pytest.mark.parametrize(("make", "reason"), TOKEN_CASES)
def test_token_cases(verifier: OIDCVerifier, keys: Keys, make: Make, reason: str | None) -> None:
    """Only a Google-signed RS256 token for our audience and service account verifies."""
    authorization = make(keys)
    if reason is None:
        claims = verifier.verify(authorization)
        assert claims["aud"] == AUDIENCE
        assert verifier.verifies(authorization) is True
    else:
        with pytest.raises(InvalidToken) as info:
            verifier.verify(authorization)
        assert reason in info.value.reason
        assert verifier.verifies(authorization) is False


def _claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "accounts.google.com",
        "aud": AUDIENCE,
        "email": ACCOUNT,
        "email_verified": True,
        "iat": NOW - 60,
        "exp": NOW + 3540,
    }
    claims.update(changes)
    return claims


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        pytest.param(_claims(), None, id="valid"),
        pytest.param(_claims(exp=int(NOW) + 1), None, id="integer exp"),
        pytest.param(_claims(exp=True), "claim 'exp'", id="exp True"),
        pytest.param(_claims(exp=False), "claim 'exp'", id="exp False"),
        pytest.param(_claims(iat=True), "claim 'iat'", id="iat True"),
        pytest.param(_claims(exp="9999999999"), "claim 'exp'", id="exp a string"),
        pytest.param(_claims(exp=None), "claim 'exp'", id="exp null"),
        pytest.param(_claims(exp=[NOW + 10]), "claim 'exp'", id="exp a list"),
        pytest.param(_claims(exp=float("nan")), "claim 'exp'", id="exp NaN"),
        pytest.param(_claims(exp=float("inf")), "claim 'exp'", id="exp Infinity"),
        pytest.param(_claims(iat=float("-inf")), "claim 'iat'", id="iat minus Infinity"),
        pytest.param(_claims(nbf=True), "claim 'nbf'", id="nbf True"),
        pytest.param(_claims(nbf=NOW + 11), "not valid yet", id="nbf beyond skew"),
        pytest.param(_claims(nbf=NOW + 9), None, id="nbf within skew"),
        pytest.param(_claims(exp=NOW - 10), None, id="expired exactly at the skew"),
        pytest.param(_claims(exp=NOW - 10.5), "token expired", id="expired just past the skew"),
        pytest.param(_claims(aud=[AUDIENCE]), "wrong audience", id="aud a list"),
        pytest.param(_claims(aud=AUDIENCE + "/"), "wrong audience", id="aud with a slash"),
        pytest.param(_claims(aud=AUDIENCE.upper()), "wrong audience", id="aud in capitals"),
        pytest.param(_claims(email_verified=1), "not verified", id="email_verified 1"),
        pytest.param(_claims(email_verified=1.0), "not verified", id="email_verified 1.0"),
        pytest.param(_claims(email_verified="true"), "not verified", id="email_verified 'true'"),
        pytest.param(_claims(email_verified="True"), "not verified", id="email_verified 'True'"),
        pytest.param(_claims(email_verified="1"), "not verified", id="email_verified '1'"),
        pytest.param(_claims(email_verified=[True]), "not verified", id="email_verified [true]"),
        pytest.param(_claims(email=ACCOUNT.title()), None, id="email in title case"),
        pytest.param(_claims(email=ACCOUNT.encode()), "not an allowed", id="email bytes"),
        pytest.param(_claims(email="\u0130" + ACCOUNT[1:]), "not an allowed", id="dotted I"),
        pytest.param(_claims(iss=b"accounts.google.com"), "is not Google", id="issuer bytes"),
    ],
)
def test_check_claims(claims: dict[str, Any], reason: str | None) -> None:
    """Each claim must have the JSON type Google gives it; loose Python equality never passes."""
    kwargs: dict[str, Any] = {
        "audiences": frozenset({AUDIENCE}),
        "service_accounts": frozenset({ACCOUNT}),
        "now": NOW,
        "clock_skew": 10.0,
    }
    if reason is None:
        check_claims(claims, **kwargs)
    else:
        with pytest.raises(InvalidToken, match=reason):
            check_claims(claims, **kwargs)


@pytest.mark.parametrize(
    ("authorization", "token"),
    [
        pytest.param("Bearer a.b.c", "a.b.c", id="plain"),
        pytest.param("bearer a.b.", "a.b.", id="lowercase, empty signature kept for its name"),
        pytest.param(" Bearer   a.b.c ", "a.b.c", id="spaces around and between"),
    ],
)
def test_bearer_token(authorization: str, token: str) -> None:
    """The token is taken from 'Bearer <JWT>' in any case and with any number of spaces."""
    assert bearer_token(authorization) == token


@pytest.mark.parametrize(
    ("cache_control", "seconds"),
    [
        pytest.param("public, max-age=22350, must-revalidate, no-transform", 22350, id="Google's"),
        pytest.param("max-age=60", 60, id="max-age alone"),
        pytest.param("MAX-AGE=60", 60, id="any case"),
        pytest.param("public, max-age=9999999", 86400, id="capped at a day"),
        pytest.param("no-store", 0, id="no-store"),
        pytest.param("no-cache, max-age=0", 0, id="max-age zero"),
        pytest.param("public", 3600, id="no max-age"),
        pytest.param(None, 3600, id="no header"),
        pytest.param("s-maxage=60", 3600, id="s-maxage is not max-age"),
        pytest.param("max-age=1e9", 3600, id="not digits"),
    ],
)
def test_cache_max_age(cache_control: str | None, seconds: float) -> None:
    """The certificates are kept for the response's max-age, within bounds."""
    assert cache_max_age(cache_control) == seconds


def test_injected_certs_need_no_fetch(key: Key) -> None:
    """certs= verifies without any certificate endpoint, and starts no thread."""
    verifier = OIDCVerifier(
        audience=[AUDIENCE, "https://b.example"],
        service_accounts=ACCOUNT,
        certs={key.kid: key.cert_pem},
        clock=Clock(),
    )
    assert verifier.verify(_bearer(key.token(aud="https://b.example")))["email"] == ACCOUNT
    assert verifier.certificates is None
    assert verifier.prefetch() is True


def test_refusal_is_logged_without_the_token(
    verifier: OIDCVerifier, key: Key, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused token is logged with its reason, never with the token itself."""
    token = key.token(aud="https://other.run.app")
    with caplog.at_level(logging.WARNING, logger="taskhandler"):
        assert not verifier.verifies(_bearer(token))
    assert "wrong audience" in caplog.text
    assert token.split(".")[2] not in caplog.text
    assert token.split(".")[1] not in caplog.text


def test_refusal_reason_cannot_forge_log_lines(
    verifier: OIDCVerifier, key: Key, caplog: pytest.LogCaptureFixture
) -> None:
    """Claim values shown in the reason are quoted, so a newline cannot start a fake log line."""
    token = key.token(email="x\nINFO forged line")
    with caplog.at_level(logging.WARNING, logger="taskhandler"):
        assert not verifier.verifies(_bearer(token))
    assert "\nINFO forged line" not in caplog.text
    assert "\\nINFO forged line" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"audience": ""}, "audience", id="empty audience"),
        pytest.param({"audience": []}, "audience", id="no audience"),
        pytest.param({"audience": [1]}, "audience", id="audience not a string"),
        pytest.param({"service_accounts": []}, "name at least one", id="no service account"),
        pytest.param(
            {"service_accounts": ["tasks"]}, "not a service account email", id="account without @"
        ),
        pytest.param(
            {"service_accounts": [" a@b.c"]},
            "not a service account email",
            id="account with spaces",
        ),
        pytest.param(
            {"service_accounts": ["t\u212a@b.c"]},
            "not a service account email",
            id="account not ASCII",
        ),
        pytest.param({"certs_url": "ftp://x/certs"}, "certs_url", id="certs URL not http"),
        pytest.param({"clock_skew": -1}, "clock_skew", id="negative skew"),
        pytest.param({"clock_skew": 3600}, "clock_skew", id="skew of an hour"),
        pytest.param({"clock_skew": True}, "clock_skew", id="skew a boolean"),
        pytest.param({"first_fetch_wait": -1}, "first_fetch_wait", id="negative first wait"),
        pytest.param({"first_fetch_wait": 600}, "first_fetch_wait", id="first wait too long"),
        pytest.param({"clock": 5}, "clock", id="clock not callable"),
        pytest.param({"certs": {"keys": []}}, "oauth2/v1/certs format", id="JWK certs"),
        pytest.param({"certs": {"k": "not a pem"}}, "not a PEM certificate", id="bad PEM"),
        pytest.param({"certs": {"k": 1}}, "not a PEM certificate", id="PEM not a string"),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], message: str) -> None:
    """Bad verifier arguments raise ConfigError at construction."""
    args: dict[str, Any] = {"audience": AUDIENCE, "service_accounts": [ACCOUNT], "certs": {}}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        OIDCVerifier(**args)


@pytest.mark.parametrize(
    "module",
    [
        pytest.param("google.auth", id="google-auth missing"),
        pytest.param("google.auth.transport.requests", id="requests transport missing"),
    ],
)
def test_missing_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Without the cloudtasks extra, building a verifier says which extra to install."""
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ConfigError, match=r"pip install 'taskhandler\[cloudtasks\]'"):
        OIDCVerifier(audience=AUDIENCE, service_accounts=[ACCOUNT])


def test_trust_policy_rejects_a_non_verifier() -> None:
    """TrustPolicy(oidc=...) takes a verifier, not a string or a boolean."""
    with pytest.raises(ConfigError, match="OIDCVerifier"):
        TrustPolicy(oidc="https://worker.run.app")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("peer", "authorization", "expected"),
    [
        pytest.param("203.0.113.7", "good", "queue", id="verified token from any address"),
        pytest.param("203.0.113.7", "bad", None, id="refused token"),
        pytest.param("203.0.113.7", None, None, id="no token"),
        pytest.param("0.1.0.2", None, "queue", id="queue address needs no token"),
    ],
)
def test_trust_policy_source(
    key: Key, peer: str, authorization: str | None, expected: str | None
) -> None:
    """In strict mode a verified bearer token makes the request the queue's."""
    verifier = OIDCVerifier(
        audience=AUDIENCE, service_accounts=[ACCOUNT], certs={key.kid: key.cert_pem}, clock=Clock()
    )
    values = {
        "good": _bearer(key.token()),
        "bad": _bearer(key.token(aud="https://other.run.app")),
    }
    headers = {} if authorization is None else {"authorization": values[authorization]}
    policy = TrustPolicy(oidc=verifier)
    assert policy.source(peer, headers.get) == expected
    assert "oidc=OIDCVerifier(" in repr(policy)


def _echo_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    ctx = current_task()
    body = {
        "context": None if ctx is None else ctx.model_dump(mode="json"),
        "stripped": environ.get("taskhandler.stripped", []),
        "cloudtasks_headers": sorted(k for k in environ if k.startswith("HTTP_X_CLOUDTASKS_")),
    }
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [data]


CLOUD_TASKS_HEADERS = {
    "X-CloudTasks-QueueName": "projects/my-project/locations/us-central1/queues/mail",
    "X-CloudTasks-TaskName": "projects/my-project/locations/us-central1/queues/mail/tasks/t-42",
    "X-CloudTasks-TaskRetryCount": "2",
    "X-CloudTasks-TaskExecutionCount": "1",
    "X-CloudTasks-TaskETA": "1700000000.25",
    "X-CloudTasks-TaskPreviousResponse": "503",
    "X-CloudTasks-TaskRetryReason": "instance unavailable",
}


async def _echo_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    ctx = current_task()
    body = {
        "context": None if ctx is None else ctx.model_dump(mode="json"),
        "stripped": list(scope.get("taskhandler.stripped", [])),
        "cloudtasks_headers": sorted(
            n.decode() for n, _ in scope["headers"] if n.lower().startswith(b"x-cloudtasks-")
        ),
    }
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _post_wsgi(trust: TrustPolicy, headers: dict[str, str]) -> dict[str, Any]:
    client = Client(TaskMiddleware(_echo_app, trust=trust))
    response = client.post(
        "/tasks/mail", headers=headers, environ_base={"REMOTE_ADDR": "203.0.113.7"}
    )
    assert response.status_code == 200
    body = response.json
    assert body is not None
    return body


def _post_asgi(trust: TrustPolicy, headers: dict[str, str]) -> dict[str, Any]:
    import asyncio

    httpx = pytest.importorskip("httpx")

    async def run() -> dict[str, Any]:
        transport = httpx.ASGITransport(
            app=ASGITaskMiddleware(_echo_asgi, trust=trust), client=("203.0.113.7", 40000)
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            response = await client.post("/tasks/mail", headers=headers)
        assert response.status_code == 200
        result: dict[str, Any] = response.json()
        return result

    return asyncio.run(run())


@pytest.mark.parametrize("post", [_post_wsgi, _post_asgi], ids=["WSGI", "ASGI"])
@pytest.mark.parametrize(
    ("authorization", "trusted"),
    [
        pytest.param("good", True, id="verified token: headers become the context"),
        pytest.param("wrong-audience", False, id="wrong audience: headers stripped"),
        pytest.param("forged", False, id="forged signature: headers stripped"),
        pytest.param("none-alg", False, id="none algorithm: headers stripped"),
        pytest.param(None, False, id="no token: headers stripped"),
    ],
)
def test_middleware_end_to_end(
    key: Key, other_key: Key, authorization: str | None, trusted: bool, post: Any
) -> None:
    """Through TaskMiddleware, X-CloudTasks-* headers count only with a verified token."""
    verifier = OIDCVerifier(
        audience=AUDIENCE, service_accounts=[ACCOUNT], certs={key.kid: key.cert_pem}, clock=Clock()
    )
    values = {
        "good": _bearer(key.token()),
        "wrong-audience": _bearer(key.token(aud="https://other.run.app")),
        "forged": _bearer(other_key.token()),
        "none-alg": _bearer(_unsigned({"alg": "none", "kid": key.kid}, key.token())),
    }
    headers = dict(CLOUD_TASKS_HEADERS)
    if authorization is not None:
        headers["Authorization"] = values[authorization]
    body = post(TrustPolicy(oidc=verifier), headers)
    if trusted:
        assert body["context"] == {
            "queue_name": "mail",
            "task_name": "t-42",
            "retry_count": 2,
            "execution_count": 1,
            "eta": "2023-11-14T22:13:20.250000Z",
            "previous_response": 503,
            "retry_reason": "instance unavailable",
            "fail_fast": False,
            "trusted_by": "queue",
        }
        assert body["stripped"] == []
    else:
        assert body["context"] is None
        assert body["cloudtasks_headers"] == []
        assert sorted(body["stripped"]) == sorted(h.lower() for h in CLOUD_TASKS_HEADERS)
