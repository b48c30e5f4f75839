"""The ``adapter`` fixture: every conformance test runs once on WSGI and once on ASGI."""

from __future__ import annotations

import pytest

from .harness import Adapter, ASGIAdapter, WSGIAdapter


@pytest.fixture(params=[WSGIAdapter(), ASGIAdapter()], ids=lambda a: a.name)
def adapter(request: pytest.FixtureRequest) -> Adapter:
    """The middleware under test, WSGI or ASGI, behind one interface."""
    return request.param  # type: ignore[no-any-return]
