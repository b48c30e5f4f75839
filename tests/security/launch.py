"""Start the servers and proxies of the security suite on 127.0.0.1; always stop them.

A *backend* is one server process serving one app variant under one trust policy, with its
own record file. Every backend is started at once (in parallel) and then fronted by one
process per proxy kind (nginx, Caddy, HAProxy) that listens on one port per backend, so the
whole matrix costs one start per server and three proxy processes.

Everything a process writes goes to a log file in the run's temporary directory (a pipe
nobody reads would fill and stall the server); a process that dies or never answers is
reported with that log.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from tests.servers import ROOT

STARTUP_TIMEOUT = 60.0  # many processes start at once on two cores
PROXY_DIR = Path(__file__).resolve().parent / "proxies"
APPS = "tests.security.apps"

Command = Callable[[str, int], list[str]]

# Ports are handed out below Linux's ephemeral range (32768-60999), so that no outgoing
# connection (a proxy's, a client's) takes one between choosing it and a server binding it,
# and never twice in a run: ~150 listeners start at once.
_PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()
_next_port = _PORT_RANGE[0] + (os.getpid() * 97) % (_PORT_RANGE[1] - _PORT_RANGE[0])


def free_port() -> int:
    """A port on 127.0.0.1 that is free now and not handed out before in this process."""
    global _next_port
    for _ in range(_PORT_RANGE[1] - _PORT_RANGE[0]):
        port = _next_port
        _next_port = port + 1 if port + 1 < _PORT_RANGE[1] else _PORT_RANGE[0]
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port left on 127.0.0.1")


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def _gunicorn(*extra: str) -> Command:
    return lambda target, port: _py(
        "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
        "--log-level", "warning", *extra, target,
    )  # fmt: skip


def _uvicorn(http: str, *extra: str) -> Command:
    return lambda target, port: _py(
        "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
        "--http", http, "--log-level", "warning", *extra,
    )  # fmt: skip


def _hypercorn(target: str, port: int) -> list[str]:
    return _py("-m", "hypercorn", "--bind", f"127.0.0.1:{port}", target)


def _granian(interface: str) -> Command:
    return lambda target, port: _py(
        "-m", "granian", "--interface", interface, "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1", "--log-level", "warning", "--no-ws", target,
    )  # fmt: skip


def _waitress(target: str, port: int) -> list[str]:
    return _py("-m", "waitress", "--host=127.0.0.1", f"--port={port}", "--threads=4", target)


def _daphne(target: str, port: int) -> list[str]:
    return _py("-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0", target)


_LOAD = "import importlib, sys; m, a = sys.argv[1].split(':'); app = getattr(importlib.import_module(m), a); "


def _werkzeug(target: str, port: int) -> list[str]:
    code = _LOAD + (
        "from werkzeug.serving import run_simple; "
        "run_simple('127.0.0.1', int(sys.argv[2]), app, threaded=True)"
    )
    return _py("-c", code, target, str(port))


def _cheroot(target: str, port: int) -> list[str]:
    code = _LOAD + (
        "from cheroot.wsgi import Server; "
        "Server(('127.0.0.1', int(sys.argv[2])), app, numthreads=4).safe_start()"
    )
    return _py("-c", code, target, str(port))


def _wsgiref(target: str, port: int) -> list[str]:
    code = _LOAD + (
        "from wsgiref.simple_server import make_server, WSGIRequestHandler\n"
        "class Quiet(WSGIRequestHandler):\n"
        "    def log_request(self, *args): pass\n"
        "make_server('127.0.0.1', int(sys.argv[2]), app, handler_class=Quiet).serve_forever()"
    )
    return _py("-c", code, target, str(port))


@dataclass(frozen=True)
class Server:
    """A way to serve an app: its command line, protocol, and the module it needs."""

    name: str
    protocol: str  # "wsgi" or "asgi"
    needs: str  # importable module; without it the server is skipped
    command: Command


SERVERS: dict[str, Server] = {
    server.name: server
    for server in (
        Server("gunicorn-sync", "wsgi", "gunicorn", _gunicorn("-k", "sync")),
        Server("gunicorn-gthread", "wsgi", "gunicorn", _gunicorn("-k", "gthread", "--threads", "4")),
        Server("waitress", "wsgi", "waitress", _waitress),
        Server("werkzeug", "wsgi", "werkzeug", _werkzeug),
        Server("cheroot", "wsgi", "cheroot", _cheroot),
        Server("wsgiref", "wsgi", "wsgiref", _wsgiref),
        Server("hypercorn-wsgi", "wsgi", "hypercorn", _hypercorn),
        Server("granian-wsgi", "wsgi", "granian", _granian("wsgi")),
        Server("uvicorn-h11", "asgi", "h11", _uvicorn("h11")),
        Server("uvicorn-httptools", "asgi", "httptools", _uvicorn("httptools")),
        Server("uvicorn-noproxy", "asgi", "h11", _uvicorn("h11", "--no-proxy-headers")),
        Server("gunicorn-uvicornworker", "asgi", "uvicorn", _gunicorn("-k", "uvicorn.workers.UvicornWorker")),
        Server("hypercorn", "asgi", "hypercorn", _hypercorn),
        Server("daphne", "asgi", "daphne", _daphne),
        Server("granian", "asgi", "granian", _granian("asgi")),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Backend:
    """One server process: a server, an app variant, a trust policy.

    ``id`` reads ``server`` for the plain app under strict trust, ``server+proxied`` for
    ``trusted_proxies=["127.0.0.1"]``, ``server+platform`` for ``platform_sets_proto=True``,
    and ``server:variant`` for another app variant.
    """

    server: str
    app: str = "app"  # attribute of the protocol's app module, or "fastapi"
    trust: str = "strict"

    @property
    def id(self) -> str:
        name = self.server if self.app == "app" else f"{self.server}:{self.app}"
        return name if self.trust == "strict" else f"{name}+{self.trust}"

    @property
    def target(self) -> str:
        if self.app == "fastapi":
            return f"{APPS}.fastapi_app:app"
        if self.app in ("django", "django_nested"):  # Django's handler for the protocol
            protocol = SERVERS[self.server].protocol
            attribute = protocol if self.app == "django" else f"nested_{protocol}"
            return f"{APPS}.django_app:{attribute}"
        module = "wsgi_app" if SERVERS[self.server].protocol == "wsgi" else "asgi_app"
        return f"{APPS}.{module}:{self.app}"

    def missing(self) -> str | None:
        """Why this backend cannot run here, or ``None``."""
        for needs in (
            SERVERS[self.server].needs,
            *(("django",) if self.app.startswith("django") else ()),
        ):
            if importlib.util.find_spec(needs) is None:
                return f"{needs} is not installed"
        return None


@dataclass
class Running:
    """A started process with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-4000:]
        return ""


@dataclass
class RunningBackend(Running):
    backend: Backend = field(default_factory=lambda: Backend("gunicorn-sync"))
    port: int = 0
    record: Path = Path()


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        # An outer PYTHONPATH comes first, so the suite can be pointed at another taskhandler.
        "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p),
        "PYTHONDONTWRITEBYTECODE": "1",
        **extra,
    }


def _popen(name: str, command: list[str], log: Path, env: dict[str, str]) -> Running:
    out = log.open("wb")
    try:
        proc = subprocess.Popen(
            command,
            cwd=log.parent,  # not the repo: -m puts the cwd first on sys.path
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: gunicorn's worker goes with it
        )
    finally:
        out.close()
    return Running(name, proc, log)


def start_backend(backend: Backend, tmp: Path) -> RunningBackend:
    """Start ``backend`` on a free port (without waiting for it)."""
    port = free_port()
    slug = backend.id.replace(":", "_").replace("+", "_")
    record = tmp / f"{slug}.record.jsonl"
    record.touch()
    env = _env(SECURITY_RECORD=str(record), SECURITY_TRUST=backend.trust)
    command = SERVERS[backend.server].command(backend.target, port)
    run = _popen(backend.id, command, tmp / f"{slug}.log", env)
    return RunningBackend(run.name, run.proc, run.log, backend, port, record)


def answers_http(port: int) -> bool:
    """Whether 127.0.0.1:port answers an HTTP request (any status)."""
    try:
        with socket.create_connection(("127.0.0.1", port), 1.0) as sock:
            sock.settimeout(5.0)
            sock.sendall(b"GET /_ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def wait_ready(runs: Iterable[tuple[Running, int]], timeout: float = STARTUP_TIMEOUT) -> None:
    """Block until every process answers HTTP on its port; fail with the log of one that won't."""
    pending = list(runs)
    deadline = time.monotonic() + timeout
    while pending:
        still = []
        for run, port in pending:
            if run.proc.poll() is not None:
                raise RuntimeError(f"{run.name} exited with {run.proc.returncode}:\n{run.output()}")
            if not answers_http(port):
                still.append((run, port))
        pending = still
        if pending and time.monotonic() > deadline:
            run, port = pending[0]
            raise RuntimeError(
                f"{run.name} did not answer on {port} in {timeout}s:\n{run.output()}"
            )
        if pending:
            time.sleep(0.1)


def stop(*runs: Running) -> None:
    """Terminate the processes (and their groups) at once, then kill any that linger."""
    live = [run for run in runs if run.proc.poll() is None]
    for run in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    for run in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for run in live:
        if run.proc.poll() is None:  # still there: kill the group (a master and its workers)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.proc.wait(timeout=5)


# -- proxies ------------------------------------------------------------------------------

PROXIES = ("direct", "nginx-plain", "nginx-xff", "caddy", "haproxy")
BINARIES = {"nginx": "/usr/sbin/nginx", "caddy": "/usr/bin/caddy", "haproxy": "/usr/sbin/haproxy"}
PROXY_BINARY = {
    "nginx-plain": "nginx",
    "nginx-xff": "nginx",
    "caddy": "caddy",
    "haproxy": "haproxy",
}


def binary(kind: str) -> str | None:
    """The path of a proxy's binary, or ``None`` when it is not installed."""
    path = BINARIES[kind]
    return path if os.access(path, os.X_OK) else shutil.which(kind)


def _template(name: str) -> Template:
    return Template((PROXY_DIR / name).read_text())


def _nginx(tmp: Path, upstreams: dict[str, int]) -> tuple[list[str], dict[str, dict[str, int]]]:
    ports: dict[str, dict[str, int]] = {"nginx-plain": {}, "nginx-xff": {}}
    blocks = []
    for flavour, name in (("nginx-plain", "nginx-plain.server"), ("nginx-xff", "nginx-xff.server")):
        block = _template(name)
        for backend_id, upstream in upstreams.items():
            port = free_port()
            ports[flavour][backend_id] = port
            blocks.append(block.substitute(port=port, upstream=upstream, id=backend_id))
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / sub).mkdir(exist_ok=True)
    user = "user root root;" if os.geteuid() == 0 else ""
    conf = _template("nginx.conf").substitute(tmp=tmp, user=user, servers="\n".join(blocks))
    (tmp / "nginx.conf").write_text(conf)
    path = binary("nginx") or "nginx"
    return [path, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log"),
            "-g", "daemon off;"], ports  # fmt: skip


def _caddy(tmp: Path, upstreams: dict[str, int]) -> tuple[list[str], dict[str, dict[str, int]]]:
    ports: dict[str, int] = {}
    block = _template("caddy.site")
    sites = []
    for backend_id, upstream in upstreams.items():
        port = ports[backend_id] = free_port()
        sites.append(block.substitute(port=port, upstream=upstream))
    (tmp / "Caddyfile").write_text(_template("Caddyfile").substitute(sites="\n".join(sites)))
    path = binary("caddy") or "caddy"
    return [path, "run", "--config", str(tmp / "Caddyfile"), "--adapter", "caddyfile"], {
        "caddy": ports
    }


def _haproxy(tmp: Path, upstreams: dict[str, int]) -> tuple[list[str], dict[str, dict[str, int]]]:
    ports: dict[str, int] = {}
    block = _template("haproxy.pair")
    pairs = []
    for n, (backend_id, upstream) in enumerate(upstreams.items()):
        port = ports[backend_id] = free_port()
        pairs.append(block.substitute(n=n, port=port, upstream=upstream, id=backend_id))
    cfg = _template("haproxy.cfg").substitute(pairs="\n".join(pairs))
    (tmp / "haproxy.cfg").write_text(cfg)
    path = binary("haproxy") or "haproxy"
    return [path, "-f", str(tmp / "haproxy.cfg"), "-db"], {"haproxy": ports}


_PROXY_STARTERS = {"nginx": _nginx, "caddy": _caddy, "haproxy": _haproxy}


class Fleet:
    """Every backend, and every proxy in front of each, running until :meth:`close`."""

    def __init__(self, tmp: Path, backends: Iterable[Backend]) -> None:
        self.tmp = tmp
        self.backends: dict[str, RunningBackend] = {}
        self.missing: dict[str, str] = {}
        self.ports: dict[str, dict[str, int]] = {"direct": {}}
        self.proxy_missing: dict[str, str] = {}
        self._runs: list[Running] = []
        try:
            self._start(list(backends))
        except BaseException:
            self.close()
            raise

    def _start(self, backends: list[Backend]) -> None:
        for backend in backends:
            why = backend.missing()
            if why is not None:
                self.missing[backend.id] = why
                continue
            run = start_backend(backend, self.tmp)
            self.backends[backend.id] = run
            self._runs.append(run)
            self.ports["direct"][backend.id] = run.port
        wait_ready((run, run.port) for run in self.backends.values())
        upstreams = {backend_id: run.port for backend_id, run in self.backends.items()}
        waits: list[tuple[Running, int]] = []
        for kind, starter in _PROXY_STARTERS.items():
            if binary(kind) is None:
                for proxy, needs in PROXY_BINARY.items():
                    if needs == kind:
                        self.proxy_missing[proxy] = f"{BINARIES[kind]} is not installed"
                continue
            workdir = self.tmp / kind
            workdir.mkdir(exist_ok=True)
            command, ports = starter(workdir, upstreams)
            env = _env(XDG_DATA_HOME=str(workdir), XDG_CONFIG_HOME=str(workdir), HOME=str(workdir))
            run = _popen(kind, command, workdir / "proxy.log", env)
            self._runs.append(run)
            self.ports.update(ports)
            waits.extend((run, port) for port in next(iter(ports.values())).values())
        wait_ready(waits)

    def port(self, backend_id: str, proxy: str) -> int:
        """The port a client connects to for ``backend_id`` through ``proxy``."""
        return self.ports[proxy][backend_id]

    def skip_reason(self, backend_id: str, proxy: str) -> str | None:
        """Why this pair cannot be tested here, or ``None``."""
        if backend_id in self.missing:
            return f"{backend_id}: {self.missing[backend_id]}"
        if proxy in self.proxy_missing:
            return f"{proxy}: {self.proxy_missing[proxy]}"
        return None

    def close(self) -> None:
        """Stop every process this fleet started."""
        stop(*self._runs)


@contextlib.contextmanager
def fleet(tmp: Path, backends: Iterable[Backend]) -> Iterator[Fleet]:
    """A :class:`Fleet` for the duration of the block."""
    running = Fleet(tmp, backends)
    try:
        yield running
    finally:
        running.close()
