"""Run gcloud-tasks-emulator with its gRPC server on 127.0.0.1 only.

The emulator's own ``run()`` binds every interface; tests and benchmarks stay on loopback.
Usage: ``python tests/emulator_on_loopback.py PORT TARGET_PORT MAX_RETRIES`` (used by
``tests/test_cloudtasks_emulator.py`` and ``bench/local_queue.py``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from gcloud_tasks_emulator import server


def run_on_loopback(self: Any) -> None:
    self._httpd = server.grpc.server(server.futures.ThreadPoolExecutor(max_workers=4))
    server.add_CloudTasksServicer_to_server(server.Greeter(self._state), self._httpd)
    self._httpd.add_insecure_port(f"127.0.0.1:{self._port}")
    self._httpd.start()


if __name__ == "__main__":
    server.APIThread.run = run_on_loopback
    logging.basicConfig(level=logging.WARNING)
    port, target_port, max_retries = map(int, sys.argv[1:4])
    server.create_server("127.0.0.1", port, "127.0.0.1", target_port, [], max_retries).run()
