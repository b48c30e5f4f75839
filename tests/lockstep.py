"""Run one script in several processes at once, round after round, in lock step.

Each process prints ``ready``, waits for ``go`` on its standard input, does one round's work
and prints ``ok`` (or what went wrong). A round starts only when every process is ready, so
they all hit the same file at the same moment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_in_lockstep(script: str, args: list[str], processes: int, rounds: int) -> list[str]:
    """Run ``python -c script *args worker`` in ``processes`` processes; return the failures."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args, str(worker)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for worker in range(processes)
    ]
    failures: list[str] = []
    try:
        for _ in range(rounds):
            # A barrier: every process is ready before any is told to go.
            ready = [p.stdout.readline().strip() for p in procs if p.stdout]
            if ready != ["ready"] * processes:
                return [f"not every process got ready: {ready}"]
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            for p in procs:
                assert p.stdout is not None
                line = p.stdout.readline().strip()
                if line != "ok":
                    failures.append(line or f"process exited with {p.wait()}")
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
    return failures
