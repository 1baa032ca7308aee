"""Open the state store the config names: the file (the embedded default) or Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.config import StateConfig
from proxy.errors import ConfigError
from proxy.store.file import FileStore

if TYPE_CHECKING:
    from proxy.store.redis_store import RedisStore


def open_store(config: StateConfig) -> FileStore | RedisStore:
    """The store the config names (nothing is contacted yet)."""
    if config.backend == "file" and config.path is not None:
        return FileStore(config.path)
    try:
        from proxy.store.redis_store import RedisStore
    except ImportError as exc:  # the optional extra is not installed
        raise ConfigError(
            "state.backend", "redis needs the optional extra: pip install 'rollout-proxy[redis]'"
        ) from exc
    if config.url is None:
        raise ConfigError("state.url_env", "no Redis URL")
    return RedisStore(config.url, config.prefix, config.timeout_s)
