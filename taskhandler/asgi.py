"""``TaskMiddleware`` for ASGI (SPEC §1, §5-7). SEAM: being built; see the ASGI issue."""

from __future__ import annotations

from typing import Any

from ._types import Receive, Scope, Send


async def handle_asgi(handler: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve an ``async def`` task handler as an ASGI application (not built yet)."""
    raise NotImplementedError("async task handlers arrive with the ASGI middleware")
