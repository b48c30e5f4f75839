"""The fleet of servers and proxies, started once for the whole folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.security.harness import ALL
from tests.security.launch import Fleet


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Every backend of harness.ALL, each behind nginx (two ways), Caddy and HAProxy."""
    running = Fleet(tmp_path_factory.mktemp("security"), ALL)
    try:
        yield running
    finally:
        running.close()
