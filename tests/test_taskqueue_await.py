"""``await taskqueue.add_async(...)``: async code waits for an add without blocking the loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path
from typing import Any

import pytest

from taskhandler import taskqueue
from taskhandler.taskqueue import LocalTaskQueue


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b""]


def test_await_add_async_on_the_local_queue(tmp_path: Path) -> None:
    """With the local queue the add has happened; awaiting gives the added task."""
    queue = LocalTaskQueue(_app, db=str(tmp_path / "q.sqlite3"))

    async def main() -> taskqueue.Task:
        return await taskqueue.add_async(url="/t", name="awaited")

    with taskqueue.use(queue):
        task = asyncio.run(main())
        assert task.name == "awaited" and task.was_enqueued
        assert [t.task_name for t in queue.tasks("default")] == ["awaited"]
    queue.close()


class _SlowBackend:
    """A backend whose adds finish in another thread once the test says so (a network
    service stand-in: only its timing matters here)."""

    def __init__(self, fail: bool = False) -> None:
        self.release = threading.Event()
        self.fail = fail
        self.pool = concurrent.futures.ThreadPoolExecutor(1)

    def now(self) -> float:
        import time

        return time.time()

    def check_queue(self, queue_name: str) -> None:
        return None

    def enqueue(self, records: Any, *, atomic: bool = False) -> list[Any]:
        return [record.task_name or "generated" for record in records]

    def delete(self, queue_name: str, task_name: str) -> bool:
        return False

    def purge(self, queue_name: str) -> int:
        return 0

    def enqueue_async(self, records: Any) -> concurrent.futures.Future[list[Any]]:
        def later() -> list[Any]:
            self.release.wait(30)
            if self.fail:
                return [taskqueue.TaskAlreadyExistsError("exists")]
            return self.enqueue(records)

        return self.pool.submit(later)


@pytest.mark.parametrize("fail", [False, True], ids=["added", "refused"])
def test_await_does_not_block_the_event_loop(fail: bool) -> None:
    """While the backend's add is in flight, the loop runs other work; then the result (or
    the add's error) comes as from get_result()."""
    backend = _SlowBackend(fail=fail)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            if ticks == 20:
                backend.release.set()  # the add finishes only after the loop has run freely
            await asyncio.sleep(0.001)

    async def main() -> Any:
        tick = asyncio.create_task(ticker())
        try:
            return await taskqueue.add_async(url="/t", name="slow")
        finally:
            tick.cancel()

    with taskqueue.use(backend):  # type: ignore[arg-type]
        if fail:
            with pytest.raises(taskqueue.TaskAlreadyExistsError):
                asyncio.run(main())
        else:
            assert asyncio.run(main()).name == "slow"
    assert ticks >= 20
    backend.pool.shutdown()
