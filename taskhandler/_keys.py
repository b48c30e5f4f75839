"""Signing keys, read one way for the sign-in cookie and for deferred payloads.

Pure: standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .exceptions import ConfigError

__all__ = ["MIN_KEY_BYTES", "SecretKey", "signing_keys"]

#: The shortest key accepted (bytes): a signature is no stronger than its key.
MIN_KEY_BYTES = 32

SecretKey = str | bytes | Sequence[str | bytes]
"""A key, or a list of keys for rotation (the first signs, all verify)."""


def signing_keys(secret_key: SecretKey) -> tuple[bytes, ...]:
    """The keys as bytes, newest first; ``ConfigError`` for a missing, short or odd key.

    The error never shows a key, only its position and length.
    """
    keys_in: Iterable[object] = [secret_key] if isinstance(secret_key, str | bytes) else secret_key
    try:
        keys = tuple(_key_bytes(key, i) for i, key in enumerate(keys_in))
    except TypeError:
        raise ConfigError("secret_key must be str, bytes or a list of them") from None
    if not keys:
        raise ConfigError("secret_key: at least one key is required")
    return keys


def _key_bytes(key: object, index: int) -> bytes:
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes):
        raise ConfigError(f"secret key {index + 1} must be str or bytes, not {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"secret key {index + 1} is {len(key)} bytes; at least {MIN_KEY_BYTES} are required "
            "(e.g. secrets.token_urlsafe(32))"
        )
    return key
