"""OIDCVerifier: Cloud Tasks' bearer ID tokens checked like Google says, and trusted by TrustPolicy.

Keys are generated here and tokens signed here; Google's certificate endpoint is stood in for
by a small server on 127.0.0.1 serving the same ``{key id: PEM certificate}`` document.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.server
import json
import logging
import threading
from collections.abc import Iterator
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
from taskhandler.oidc import InvalidToken, OIDCVerifier  # noqa: E402
from taskhandler.trust import TrustPolicy  # noqa: E402
from taskhandler.wsgi import TaskMiddleware  # noqa: E402

AUDIENCE = "https://worker-abc123-uc.a.run.app"
ACCOUNT = "tasks@my-project.iam.gserviceaccount.com"
NOW = 1_700_000_000.0


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

    def token(self, **changes: Any) -> str:
        """A Cloud Tasks-style ID token, valid at NOW unless ``changes`` say otherwise."""
        claims: dict[str, Any] = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "azp": "1234567890",
            "sub": "1234567890",
            "email": ACCOUNT,
            "email_verified": True,
            "iat": int(NOW) - 60,
            "exp": int(NOW) + 3540,
        }
        for name, value in changes.items():
            if value is _DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        return jwt.encode(self.signer, claims).decode()


_DROP = object()


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


class CertServer:
    """Serves ``{kid: PEM}`` on 127.0.0.1 like Google's certificate endpoint; counts fetches."""

    def __init__(self) -> None:
        self.certs: dict[str, str] = {}
        self.max_age = 3600
        self.status = 200
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.certs).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header(
                    "Cache-Control", f"public, max-age={outer.max_age}, must-revalidate"
                )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/oauth2/v1/certs"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def key() -> Key:
    return Key("key-1")


@pytest.fixture(scope="module")
def other_key() -> Key:
    return Key("key-1")  # same key id, different key: a forger guessing the kid


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
    cert_server_module.certs = {key.kid: key.cert_pem}
    cert_server_module.max_age = 3600
    cert_server_module.status = 200
    cert_server_module.fetches = 0
    return cert_server_module


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _session() -> Any:
    session = requests.Session()
    session.trust_env = False  # 127.0.0.1 only, whatever proxy the environment names
    return session


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(cert_server: CertServer, clock: Clock) -> Iterator[OIDCVerifier]:
    session = _session()
    yield OIDCVerifier(
        audience=AUDIENCE,
        service_accounts=[ACCOUNT],
        certs_url=cert_server.url,
        clock=clock,
        request=Request(session),
    )
    session.close()


def _bearer(token: str) -> str:
    return f"Bearer {token}"


TOKEN_CASES = [
    pytest.param(lambda k, o: _bearer(k.token()), None, id="valid token"),
    pytest.param(lambda k, o: "bearer  " + k.token(), None, id="scheme in any case, extra spaces"),
    pytest.param(
        lambda k, o: _bearer(k.token(iss="accounts.google.com")), None, id="issuer without scheme"
    ),
    pytest.param(
        lambda k, o: _bearer(k.token(email=ACCOUNT.upper())), None, id="email in another case"
    ),
    pytest.param(
        lambda k, o: _bearer(k.token(aud="https://other.run.app")),
        "wrong audience",
        id="wrong audience",
    ),
    pytest.param(
        lambda k, o: _bearer(k.token(aud=[AUDIENCE])), "wrong audience", id="audience as a list"
    ),
    pytest.param(
        lambda k, o: _bearer(k.token(email="mallory@evil.iam.gserviceaccount.com")),
        "not an allowed service account",
        id="wrong email",
    ),
    pytest.param(
        lambda k, o: _bearer(k.token(email=_DROP)),
        "not an allowed service account",
        id="no email claim",
    ),
    pytest.param(
        lambda k, o: _bearer(k.token(email_verified=False)),
        "email not verified",
        id="unverified email",
    ),
    pytest.param(
        lambda k, o: _bearer(k.token(email_verified=_DROP)),
        "email not verified",
        id="no email_verified claim",
    ),
    pytest.param(
        lambda k, o: _bearer(k.token(exp=int(NOW) - 11)),
        "token expired",
        id="expired beyond clock skew",
    ),
    pytest.param(
        lambda k, o: _bearer(k.token(exp=int(NOW) - 5)), None, id="expired within clock skew"
    ),
    pytest.param(
        lambda k, o: _bearer(k.token(iat=int(NOW) + 60)),
        "issued in the future",
        id="issued in the future",
    ),
    pytest.param(lambda k, o: _bearer(k.token(exp=_DROP)), "claim 'exp'", id="no exp claim"),
    pytest.param(lambda k, o: _bearer(k.token(exp=True)), "claim 'exp'", id="exp is a boolean"),
    pytest.param(
        lambda k, o: _bearer(k.token(iss="https://evil.example")),
        "is not Google",
        id="wrong issuer",
    ),
    pytest.param(
        lambda k, o: _bearer(o.token()), "bad signature", id="bad signature (other key, same kid)"
    ),
    pytest.param(
        lambda k, o: _bearer(k.token().rsplit(".", 1)[0] + "." + o.token().rsplit(".", 1)[1]),
        "bad signature",
        id="signature of another token",
    ),
    pytest.param(
        lambda k, o: _bearer(_unsigned({"alg": "none", "kid": k.kid}, k.token())),
        "unexpected algorithm 'none'",
        id="none algorithm",
    ),
    pytest.param(
        lambda k, o: _bearer(_unsigned({"alg": "none"}, k.token()) + "AAAA"),
        "unexpected algorithm 'none'",
        id="none algorithm with junk signature",
    ),
    pytest.param(
        lambda k, o: _bearer(_hs256_with_public_cert(k, k.token())),
        "unexpected algorithm 'HS256'",
        id="HS256 keyed with the public certificate",
    ),
    pytest.param(
        lambda k, o: _bearer(_unsigned({"alg": "RS256", "kid": "nope"}, k.token()) + "AAAA"),
        "unknown signing key",
        id="unknown key id",
    ),
    pytest.param(
        lambda k, o: _bearer(_unsigned({"alg": "RS256"}, k.token()) + "AAAA"),
        "no key id",
        id="no key id",
    ),
    pytest.param(
        lambda k, o: _bearer(k.token() + "xxx"),
        "malformed token signature",
        id="signature not base64",
    ),
    pytest.param(lambda k, o: None, "no Authorization header", id="missing header"),
    pytest.param(lambda k, o: "", "no Authorization header", id="empty header"),
    pytest.param(lambda k, o: k.token(), "not 'Bearer <JWT>'", id="token without scheme"),
    pytest.param(lambda k, o: "Basic dXNlcjpwYXNz", "not 'Bearer <JWT>'", id="basic auth"),
    pytest.param(lambda k, o: "Bearer abc.def", "not 'Bearer <JWT>'", id="two segments"),
    pytest.param(lambda k, o: "Bearer a.b.c.d", "not 'Bearer <JWT>'", id="four segments"),
    pytest.param(
        lambda k, o: f"Bearer {k.token()}, Bearer {k.token()}",
        "not 'Bearer <JWT>'",
        id="two joined Authorization headers",
    ),
    pytest.param(lambda k, o: "Bearer e30.e30.e30=", "not 'Bearer <JWT>'", id="padding characters"),
    pytest.param(lambda k, o: "Bearer !!!.e30.e30", "not 'Bearer <JWT>'", id="not base64url"),
    pytest.param(
        lambda k, o: "Bearer bm90anNvbg.e30.e30", "malformed token header", id="header not JSON"
    ),
    pytest.param(
        lambda k, o: "Bearer WzFd.e30.e30",
        "malformed token header: not a JSON object",
        id="header a JSON list",
    ),
    pytest.param(lambda k, o: "Bearer " + "a" * 9000 + ".b.c", "too long", id="huge header"),
]


@pytest.mark.parametrize(("make", "reason"), TOKEN_CASES)
def test_token_cases(
    verifier: OIDCVerifier, key: Key, other_key: Key, make: Any, reason: str | None
) -> None:
    """Only a Google-signed RS256 token for our audience and service account verifies."""
    authorization = make(key, other_key)
    if reason is None:
        claims = verifier.verify(authorization)
        assert claims["aud"] == AUDIENCE
        assert verifier.verifies(authorization) is True
    else:
        with pytest.raises(InvalidToken) as info:
            verifier.verify(authorization)
        assert reason in info.value.reason
        assert verifier.verifies(authorization) is False


def test_injected_certs_need_no_fetch(key: Key) -> None:
    """certs= verifies without any certificate endpoint."""
    verifier = OIDCVerifier(
        audience=[AUDIENCE, "https://b.example"],
        service_accounts=ACCOUNT,
        certs={key.kid: key.cert_pem},
        clock=Clock(),
    )
    assert verifier.verify(_bearer(key.token(aud="https://b.example")))["email"] == ACCOUNT


def test_refusal_is_logged_without_the_token(
    verifier: OIDCVerifier, key: Key, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused token is logged with its reason, never with the token itself."""
    token = key.token(aud="https://other.run.app")
    with caplog.at_level(logging.WARNING, logger="taskhandler"):
        assert not verifier.verifies(_bearer(token))
    assert "wrong audience" in caplog.text
    assert token.split(".")[2] not in caplog.text


def test_certificates_are_cached_for_max_age(
    verifier: OIDCVerifier, cert_server: CertServer, key: Key, clock: Clock
) -> None:
    """Certificates are fetched once, kept for the response's max-age, then fetched again."""
    cert_server.max_age = 600
    for _ in range(5):
        assert verifier.verifies(_bearer(key.token()))
    assert cert_server.fetches == 1
    clock.now += 599
    assert verifier.verifies(_bearer(key.token(exp=int(clock.now) + 60)))
    assert cert_server.fetches == 1
    clock.now += 2
    assert verifier.verifies(_bearer(key.token(exp=int(clock.now) + 60)))
    assert cert_server.fetches == 2


def test_unknown_key_fetches_at_most_every_30s(
    verifier: OIDCVerifier, cert_server: CertServer, key: Key, clock: Clock
) -> None:
    """Tokens naming unknown keys cannot make every request cost a certificate fetch."""
    forged = _bearer(_unsigned({"alg": "RS256", "kid": "unknown"}, key.token()) + "AAAA")
    assert verifier.verifies(_bearer(key.token()))
    for _ in range(5):
        assert not verifier.verifies(forged)
    assert cert_server.fetches == 1
    clock.now += 31
    assert not verifier.verifies(forged)
    assert cert_server.fetches == 2


def test_rotated_key_is_picked_up(
    verifier: OIDCVerifier, cert_server: CertServer, key: Key, clock: Clock
) -> None:
    """A token signed with a newly published key verifies once the certificates are fetched again."""
    assert verifier.verifies(_bearer(key.token()))
    new = Key("key-2")
    cert_server.certs = {key.kid: key.cert_pem, new.kid: new.cert_pem}
    clock.now += 31
    assert verifier.verifies(_bearer(new.token(exp=int(clock.now) + 60)))
    assert cert_server.fetches == 2


def test_failed_fetch_keeps_the_certificates_held(
    verifier: OIDCVerifier, cert_server: CertServer, key: Key, clock: Clock
) -> None:
    """When a later fetch fails, the certificates already held keep verifying."""
    cert_server.max_age = 60
    assert verifier.verifies(_bearer(key.token()))
    cert_server.status = 503
    clock.now += 61
    assert verifier.verifies(_bearer(key.token(exp=int(clock.now) + 60)))
    assert cert_server.fetches == 2


def test_unreachable_endpoint_refuses(key: Key, clock: Clock) -> None:
    """With no certificates at all (the endpoint is down) no token verifies."""
    session = _session()
    verifier = OIDCVerifier(
        audience=AUDIENCE,
        service_accounts=[ACCOUNT],
        certs_url="http://127.0.0.1:9/certs",  # the discard port: nothing listens
        clock=clock,
        request=Request(session),
    )
    with pytest.raises(InvalidToken, match="unknown signing key"):
        verifier.verify(_bearer(key.token()))
    session.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"audience": ""}, "audience", id="empty audience"),
        pytest.param({"audience": []}, "audience", id="no audience"),
        pytest.param({"service_accounts": []}, "name at least one", id="no service account"),
        pytest.param(
            {"service_accounts": ["tasks"]}, "not a service account email", id="account without @"
        ),
        pytest.param(
            {"service_accounts": [" a@b.c"]},
            "not a service account email",
            id="account with spaces",
        ),
        pytest.param({"certs_url": "ftp://x/certs"}, "certs_url", id="certs URL not http"),
        pytest.param({"clock_skew": -1}, "clock_skew", id="negative skew"),
        pytest.param({"clock_skew": 3600}, "clock_skew", id="skew of an hour"),
        pytest.param({"certs": {"keys": []}}, "oauth2/v1/certs format", id="JWK certs"),
        pytest.param({"certs": {"k": "not a pem"}}, "not a PEM certificate", id="bad PEM"),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], message: str) -> None:
    """Bad verifier arguments raise ConfigError at construction."""
    args: dict[str, Any] = {"audience": AUDIENCE, "service_accounts": [ACCOUNT], "certs": {}}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        OIDCVerifier(**args)


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
