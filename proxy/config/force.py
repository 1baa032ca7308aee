"""Configuration of a service's `force:` block: forced variants for testers (X-Rollout-Force).

    force:
      enabled: true        # default false: the header is stripped and ignored
      trusted: true        # default true: a bare `canary`/`stable` from trusted_peers is honoured
      key_env: FORCE_KEY   # optional: signed tokens are honoured from any peer

The token key is read from the environment variable `key_env` when the config is loaded; a
variable that is unset, empty or shorter than 32 bytes is a ConfigError naming `key_env`. A
block that is enabled but honours neither trusted peers nor tokens is refused too.
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.config import reader as read
from proxy.config.model import ForceConfig
from proxy.core.force import MIN_KEY_BYTES
from proxy.errors import ConfigError

_KEYS = ("enabled", "trusted", "key_env")


def force(value: object, path: str, env: Mapping[str, str]) -> ForceConfig:
    data = read.mapping(value, path, _KEYS)
    enabled = read.boolean(data.get("enabled", False), read.key(path, "enabled"))
    trusted = read.boolean(data.get("trusted", True), read.key(path, "trusted"))
    key_env: str | None = None
    key: bytes | None = None
    if "key_env" in data:
        env_path = read.key(path, "key_env")
        key_env = read.env_name(data["key_env"], env_path)
        if enabled:
            key = key_from_env(env.get(key_env), key_env, env_path)
    if enabled and not trusted and key_env is None:
        raise ConfigError(
            read.key(path, "trusted"),
            "is false and no key_env is given, so no forced request could ever be honoured: "
            "set trusted: true, or key_env to the variable holding the token key",
        )
    return ForceConfig(enabled=enabled, trusted=trusted, key_env=key_env, key=key)


def key_from_env(value: str | None, variable: str, path: str) -> bytes:
    """The token key held by the environment variable `variable` (`value`: its value)."""
    if not value:
        raise ConfigError(path, f"environment variable {variable} is not set (or is empty)")
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            path,
            f"the key in {variable} is {len(key)} bytes; at least {MIN_KEY_BYTES} are needed "
            "(e.g. openssl rand -hex 32)",
        )
    return key
