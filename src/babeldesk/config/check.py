"""How a config section rejects a value: a ``ConfigError`` naming the key."""

from __future__ import annotations

from babeldesk.errors import ConfigError


def check(key: str, ok: bool, message: str) -> None:
    """``engine.max_batch_size: must be >= 1`` unless ``ok``."""
    if not ok:
        raise ConfigError(key, message)
