"""Real servers on 127.0.0.1 for end-to-end tests: started in a subprocess, always stopped.

Usage::

    with serve("gunicorn", "examples.flask_style.main:app") as base_url:
        httpx.get(base_url + "/")

Every server binds a free port on 127.0.0.1, is waited for until it accepts connections
(bounded), and is terminated (then killed) when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 20.0


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(kind: str, target: str, port: int, extra: Sequence[str]) -> list[str]:
    python = sys.executable
    if kind == "gunicorn":
        return [
            python,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--log-level",
            "warning",
            *extra,
            target,
        ]
    if kind == "uvicorn":
        module, app = target.split(":", 1)
        return [
            python,
            "-m",
            "uvicorn",
            f"{module}:{app}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra,
        ]
    if kind == "waitress":
        return [python, "-m", "waitress", "--host=127.0.0.1", f"--port={port}", *extra, target]
    if kind == "werkzeug":
        return [
            python,
            "-c",
            "import sys, importlib; from werkzeug.serving import run_simple; "
            "m, a = sys.argv[1].split(':'); app = getattr(importlib.import_module(m), a); "
            "run_simple('127.0.0.1', int(sys.argv[2]), app, threaded=True)",
            target,
            str(port),
        ]
    raise ValueError(f"unknown server kind {kind!r}")


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = STARTUP_TIMEOUT
) -> None:
    """Block until 127.0.0.1:port accepts a connection (or fail, with the server's output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


@contextlib.contextmanager
def serve(
    kind: str,
    target: str,
    *,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[str]:
    """Run ``target`` (``module:app``) under a real server; yield its base URL."""
    port = free_port()
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    proc = subprocess.Popen(
        _command(kind, target, port, extra),
        cwd=cwd or ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server this test started (then kill it), and close its output."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


def raw_request(base_url: str, request: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes exactly as given on a fresh socket; return everything the server answers.

    For request lines and header spellings that HTTP clients normalise away.
    """
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout) as sock:
        sock.sendall(request)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP/1.x response."""
    return int(response.split(b" ", 2)[1])
