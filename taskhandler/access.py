"""Access rules (SPEC §4). SEAM: the contract the adapters call; full rules are being built."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .config import AccessRule
from .trust import User


@dataclass(frozen=True, slots=True)
class Refusal:
    """An eager answer instead of running the app."""

    status: int
    reason: str
    location: str | None = None


def check_access(
    rules: Sequence[AccessRule],
    *,
    path: str,
    scheme: str,
    host: str,
    query_string: str,
    trusted: bool,
    user: Callable[[], User | None],
    login_url: str = "/_ah/login",
) -> Refusal | None:
    """Return a :class:`Refusal` when the request may not proceed, else ``None``."""
    return None
