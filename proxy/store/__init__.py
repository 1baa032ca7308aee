"""Where rollout state lives: a file (the embedded default), or Redis (fleet mode)."""

from __future__ import annotations

from proxy.config import StateConfig
from proxy.errors import ConfigError
from proxy.store.file import FileStore


def open_store(config: StateConfig) -> FileStore:
    """The store the config names."""
    if config.backend != "file" or config.path is None:
        raise ConfigError("state.backend", f"backend {config.backend!r} is not available yet")
    return FileStore(config.path)
