"""OIDCVerifier's certificates: fetched by a background thread, never on the request path.

A stranger sending tokens with unknown key ids must not make requests wait on Google, nor
make the verifier fetch more than once every 30 seconds; the asyncio event loop must keep
running while a fetch is stalled. The certificate endpoint is a real HTTP server on
127.0.0.1 (``CertServer``) that can hold requests until the test releases them, so every
"is it blocked?" question is answered by events and counts, never by a timer.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

pytest.importorskip("google.auth", reason="the cloudtasks extra is not installed")
pytest.importorskip("requests", reason="the cloudtasks extra is not installed")

from taskhandler.asgi import TaskMiddleware as ASGITaskMiddleware
from taskhandler.oidc import OIDCVerifier
from taskhandler.trust import TrustPolicy
from tests.test_oidc import (
    ACCOUNT,
    AUDIENCE,
    CLOUD_TASKS_HEADERS,
    WAIT,
    CertServer,
    Clock,
    Key,
    _bearer,
    _echo_asgi,
    make_verifier,
)

THREAD_NAME = "taskhandler-oidc-certificates"


@pytest.fixture(scope="module")
def key() -> Key:
    return Key("key-1")


@pytest.fixture(scope="module")
def stranger() -> Key:
    return Key("key-unknown")


@pytest.fixture(scope="module")
def cert_server_module() -> Iterator[CertServer]:
    server = CertServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def cert_server(cert_server_module: CertServer, key: Key) -> CertServer:
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


def _settled(verifier: OIDCVerifier, attempts: int) -> None:
    """Wait until ``attempts`` fetches have finished and none is asked for or under way."""
    certificates = verifier.certificates
    assert certificates is not None
    assert certificates.wait_for_attempts(attempts, WAIT)
    assert not certificates.pending
    assert certificates.attempts == attempts


# -- the thread --------------------------------------------------------------------------------


def test_importing_starts_no_thread() -> None:
    """Importing taskhandler (and its oidc module) starts no thread."""
    code = "import threading, taskhandler, taskhandler.oidc; print(threading.active_count())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "1"


def test_thread_starts_on_first_use(verifier: OIDCVerifier, key: Key) -> None:
    """Building a verifier starts nothing; the first check starts one daemon refresher."""
    certificates = verifier.certificates
    assert certificates is not None
    assert certificates._thread is None
    assert verifier.verifies(_bearer(key.token()))
    thread = certificates._thread
    assert thread is not None
    assert thread.name == THREAD_NAME
    assert thread.daemon
    assert thread.is_alive()


def test_close_stops_the_thread(verifier: OIDCVerifier, key: Key, cert_server: CertServer) -> None:
    """close() ends the thread; the certificates held keep verifying, nothing is fetched again."""
    assert verifier.prefetch(WAIT)
    certificates = verifier.certificates
    assert certificates is not None
    thread = certificates._thread
    verifier.close()
    assert thread is not None
    thread.join(WAIT)
    assert not thread.is_alive()
    assert verifier.verifies(_bearer(key.token()))
    assert not verifier.verifies(_bearer(Key("key-2").token()))
    assert not certificates.pending
    assert cert_server.fetches == 1


# -- the first request -------------------------------------------------------------------------


def test_first_request_in_a_thread_waits_for_the_first_fetch(
    verifier: OIDCVerifier, key: Key, cert_server: CertServer
) -> None:
    """A synchronous (WSGI) first request waits for the first fetch and is then verified."""
    assert verifier.verifies(_bearer(key.token()))
    assert cert_server.fetches == 1


def test_first_request_in_a_thread_waits_only_so_long(
    cert_server: CertServer, clock: Clock, key: Key
) -> None:
    """With the endpoint stalled, a synchronous first request gives up after first_fetch_wait."""
    verifier = make_verifier(cert_server, clock, first_fetch_wait=0.2)
    try:
        cert_server.answer.clear()
        with pytest.raises(Exception, match="not loaded yet"):
            verifier.verify(_bearer(key.token()))
        certificates = verifier.certificates
        assert certificates is not None
        assert certificates.attempts == 0  # the fetch is still held by the server
        assert cert_server.wait_for_waiting(1)
        cert_server.answer.set()
        assert verifier.prefetch(WAIT)
        assert verifier.verifies(_bearer(key.token()))
        assert cert_server.fetches == 1
    finally:
        cert_server.answer.set()
        verifier.close()


def test_first_request_on_the_event_loop_never_waits(
    verifier: OIDCVerifier, key: Key, cert_server: CertServer
) -> None:
    """On a running loop the first request is refused at once, not after the first fetch."""
    cert_server.answer.clear()
    certificates = verifier.certificates
    assert certificates is not None

    async def first_request() -> tuple[bool, int]:
        return verifier.verifies(_bearer(key.token())), certificates.attempts

    verified, attempts = asyncio.run(first_request())
    assert (verified, attempts) == (False, 0)
    assert cert_server.wait_for_waiting(1)
    cert_server.answer.set()
    _settled(verifier, 1)
    assert asyncio.run(first_request()) == (True, 1)
    assert cert_server.fetches == 1


def test_prefetch_warms_the_certificates(
    verifier: OIDCVerifier, key: Key, cert_server: CertServer
) -> None:
    """prefetch() returns once the certificates are held; requests then never fetch."""
    assert verifier.prefetch(WAIT) is True
    assert cert_server.fetches == 1
    for _ in range(5):
        assert verifier.verifies(_bearer(key.token()))
    _settled(verifier, 1)
    assert cert_server.fetches == 1


def test_start_returns_at_once(verifier: OIDCVerifier, cert_server: CertServer) -> None:
    """start() begins the first fetch in the background without waiting for it."""
    cert_server.answer.clear()
    verifier.start()
    assert cert_server.wait_for_waiting(1)
    certificates = verifier.certificates
    assert certificates is not None
    assert certificates.attempts == 0
    assert not certificates.loaded.is_set()
    cert_server.answer.set()
    assert verifier.prefetch(WAIT)


def test_prefetch_reports_an_unreachable_endpoint(clock: Clock, key: Key) -> None:
    """With nothing listening, prefetch() says False and tokens are refused, not waited on."""
    from google.auth.transport.requests import Request

    from tests.test_oidc import session

    verifier = OIDCVerifier(
        audience=AUDIENCE,
        service_accounts=[ACCOUNT],
        certs_url="http://127.0.0.1:9/certs",  # the discard port: nothing listens
        clock=clock,
        request=Request(session()),
    )
    try:
        assert verifier.prefetch(0.5) is False
        certificates = verifier.certificates
        assert certificates is not None
        assert certificates.first_attempt_done.is_set()
        assert not verifier.verifies(_bearer(key.token()))
    finally:
        verifier.close()


# -- the schedule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache_control", "early", "due"),
    [
        pytest.param("public, max-age=600, must-revalidate", 449, 451, id="max-age 600: at 450 s"),
        pytest.param(None, 2699, 2701, id="no Cache-Control: an hour, so at 2700 s"),
        pytest.param("no-store", 29, 31, id="no-store: after the 30 s minimum"),
    ],
)
def test_certificates_are_refreshed_before_max_age(
    verifier: OIDCVerifier,
    cert_server: CertServer,
    key: Key,
    clock: Clock,
    cache_control: str | None,
    early: float,
    due: float,
) -> None:
    """Certificates are fetched again when three quarters of max-age have passed, not before."""
    cert_server.cache_control = cache_control
    assert verifier.prefetch(WAIT)
    start = clock.now
    clock.now = start + early
    assert verifier.verifies(_bearer(key.token(clock.now)))
    _settled(verifier, 1)
    clock.now = start + due
    assert verifier.verifies(_bearer(key.token(clock.now)))  # answered from the held certs
    _settled(verifier, 2)
    assert cert_server.fetches == 2


def test_unknown_key_schedules_one_rate_limited_fetch(
    verifier: OIDCVerifier, cert_server: CertServer, key: Key, stranger: Key, clock: Clock
) -> None:
    """Tokens with an unknown key id are refused and ask for at most one fetch per 30 s."""
    forged = _bearer(stranger.token())
    assert verifier.prefetch(WAIT)
    for _ in range(20):
        assert not verifier.verifies(forged)  # within 30 s of the first fetch: none asked
    _settled(verifier, 1)
    clock.now += 30
    for _ in range(20):
        assert not verifier.verifies(forged)
    _settled(verifier, 2)
    assert cert_server.fetches == 2
    clock.now += 29
    for _ in range(20):
        assert not verifier.verifies(forged)
    _settled(verifier, 2)
    clock.now += 1
    assert not verifier.verifies(forged)
    _settled(verifier, 3)
    assert cert_server.fetches == 3
    assert verifier.verifies(_bearer(key.token()))


def test_rotated_key_is_accepted_after_the_refresh(
    verifier: OIDCVerifier, cert_server: CertServer, key: Key, clock: Clock
) -> None:
    """A token signed with a newly published key is refused once, then verifies."""
    assert verifier.prefetch(WAIT)
    new = Key("key-2")
    cert_server.certs = {key.kid: key.cert_pem, new.kid: new.cert_pem}
    clock.now += 31
    token = _bearer(new.token(clock.now))
    assert not verifier.verifies(token)  # refused now; the fetch is scheduled
    _settled(verifier, 2)
    assert verifier.verifies(token)
    assert verifier.verifies(_bearer(key.token(clock.now)))
    assert cert_server.fetches == 2


def test_removed_key_stops_verifying(
    verifier: OIDCVerifier, cert_server: CertServer, key: Key, clock: Clock
) -> None:
    """A key Google no longer publishes is dropped at the next refresh."""
    assert verifier.prefetch(WAIT)
    new = Key("key-2")
    cert_server.certs = {new.kid: new.cert_pem}
    clock.now += 31
    assert not verifier.verifies(_bearer(new.token(clock.now)))
    _settled(verifier, 2)
    assert not verifier.verifies(_bearer(key.token(clock.now)))


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(503, None, id="HTTP 503"),
        pytest.param(200, b"<html>", id="not JSON"),
        pytest.param(200, b'{"keys": []}', id="JWK set instead of PEMs"),
        pytest.param(200, b'{"k": "not a pem"}', id="not a PEM"),
        pytest.param(200, b"[]", id="a JSON list"),
        pytest.param(200, b" " * (1 << 20) + b"{}", id="over a megabyte"),
    ],
)
def test_failed_fetch_keeps_the_certificates_held(
    verifier: OIDCVerifier,
    cert_server: CertServer,
    key: Key,
    clock: Clock,
    status: int,
    body: bytes | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When a later fetch fails, the certificates already held keep verifying."""
    cert_server.cache_control = "max-age=60"
    assert verifier.prefetch(WAIT)
    cert_server.status = status
    cert_server.body = body
    clock.now += 61
    assert verifier.verifies(_bearer(key.token(clock.now)))
    _settled(verifier, 2)
    assert verifier.verifies(_bearer(key.token(clock.now)))
    assert "could not fetch certificates" in caplog.text


def test_failed_unscheduled_fetch_keeps_the_schedule(
    verifier: OIDCVerifier, cert_server: CertServer, key: Key, stranger: Key, clock: Clock
) -> None:
    """A fetch asked for by an unknown key id that fails leaves the regular refresh in place."""
    cert_server.cache_control = "max-age=600"
    assert verifier.prefetch(WAIT)
    start = clock.now
    cert_server.status = 503
    clock.now = start + 31
    assert not verifier.verifies(_bearer(stranger.token(clock.now)))
    _settled(verifier, 2)
    cert_server.status = 200
    clock.now = start + 449
    assert verifier.verifies(_bearer(key.token(clock.now)))
    _settled(verifier, 2)  # no retry of the failed fetch while the certificates are fresh
    clock.now = start + 451
    assert verifier.verifies(_bearer(key.token(clock.now)))
    _settled(verifier, 3)  # the refresh due at 450 s still happens
    assert cert_server.fetches == 3


# -- never blocking ----------------------------------------------------------------------------


def test_event_loop_keeps_running_while_a_fetch_stalls(
    verifier: OIDCVerifier, cert_server: CertServer, key: Key, stranger: Key, clock: Clock
) -> None:
    """Unknown key ids on a running loop return at once; the loop ticks through a stalled fetch."""
    assert verifier.prefetch(WAIT)
    certificates = verifier.certificates
    assert certificates is not None
    cert_server.answer.clear()  # from now on the endpoint holds every request
    clock.now += 31
    forged = _bearer(stranger.token(clock.now))
    good = _bearer(key.token(clock.now))
    wanted_ticks = 50

    async def scenario() -> tuple[int, list[bool], list[bool], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        forged_answers: list[bool] = []
        good_answers: list[bool] = []
        while ticks < wanted_ticks:
            forged_answers.append(verifier.verifies(forged))
            good_answers.append(verifier.verifies(good))
            await asyncio.sleep(0.005)
        # Had verifies() waited for the fetch, the fetch would have ended (answered or timed
        # out) before the ticker could tick this often; it is still held by the server.
        attempts_while_stalled = certificates.attempts
        task.cancel()
        return ticks, forged_answers, good_answers, attempts_while_stalled

    ticks, forged_answers, good_answers, attempts_while_stalled = asyncio.run(scenario())
    assert ticks >= wanted_ticks
    assert attempts_while_stalled == 1  # only the prefetch has finished
    assert cert_server.waiting == 1  # the one refresh, held
    assert not any(forged_answers)
    assert all(good_answers)  # known keys keep verifying during the fetch
    assert len(forged_answers) >= 2
    cert_server.answer.set()
    _settled(verifier, 2)
    assert cert_server.fetches == 2  # the prefetch and exactly one refresh


def test_threads_never_wait_for_a_refresh(
    verifier: OIDCVerifier, cert_server: CertServer, key: Key, stranger: Key, clock: Clock
) -> None:
    """Worker threads hammering unknown key ids during a stalled fetch all get answers at once."""
    assert verifier.prefetch(WAIT)
    certificates = verifier.certificates
    assert certificates is not None
    cert_server.answer.clear()
    clock.now += 31
    forged = _bearer(stranger.token(clock.now))
    answers: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            answer = verifier.verifies(forged)
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(answers) == 200  # every worker finished while the fetch was still held
    assert not any(answers)
    assert certificates.attempts == 1
    assert cert_server.wait_for_waiting(1)
    cert_server.answer.set()
    _settled(verifier, 2)
    assert cert_server.fetches == 2


def test_asgi_middleware_first_request_and_prefetch(
    cert_server: CertServer, clock: Clock, key: Key
) -> None:
    """Through the ASGI middleware: refused before the certificates arrive, trusted after."""
    httpx = pytest.importorskip("httpx")
    verifier = make_verifier(cert_server, clock)
    cert_server.answer.clear()
    app = ASGITaskMiddleware(_echo_asgi, trust=TrustPolicy(oidc=verifier))
    headers = dict(CLOUD_TASKS_HEADERS, Authorization=_bearer(key.token()))

    async def post() -> dict[str, object]:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            response = await client.post("/tasks/mail", headers=headers)
        assert response.status_code == 200
        result: dict[str, object] = response.json()
        return result

    try:
        assert asyncio.run(post())["context"] is None  # first request: not loaded yet
        cert_server.answer.set()
        assert verifier.prefetch(WAIT)
        context = asyncio.run(post())["context"]
        assert isinstance(context, dict)
        assert context["trusted_by"] == "queue"
        assert cert_server.fetches == 1
    finally:
        cert_server.answer.set()
        verifier.close()


_FORK_SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[1])
from google.auth.transport.requests import Request
import requests
from taskhandler.oidc import OIDCVerifier

url, token = sys.argv[2], sys.argv[3]
session = requests.Session()
session.trust_env = False
verifier = OIDCVerifier(
    audience=sys.argv[4], service_accounts=[sys.argv[5]], certs_url=url,
    clock=lambda: float(sys.argv[6]), request=Request(session),
)
assert verifier.prefetch(10)
pid = os.fork()
if pid == 0:
    certificates = verifier.certificates
    ok = certificates._thread is None and verifier.verifies(token)
    ok = ok and certificates._thread is not None and certificates._thread.is_alive()
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_a_forked_worker_keeps_the_certificates_and_runs_its_own_thread(
    cert_server: CertServer, key: Key, clock: Clock
) -> None:
    """After fork() (gunicorn --preload) the child verifies with what the parent fetched."""
    from tests.servers import ROOT

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _FORK_SCRIPT,
            str(ROOT),
            cert_server.url,
            _bearer(key.token()),
            AUDIENCE,
            ACCOUNT,
            repr(clock.now),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip() == "child 0", result.stderr
    assert cert_server.fetches == 1  # the child did not fetch again
