"""Testing task handlers: ``TaskTestApp``, ``assert_idempotent`` and a pytest plugin (SPEC §10)."""

from __future__ import annotations
