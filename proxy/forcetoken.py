"""`rollout-proxy force-token`: mint the X-Rollout-Force value of a signed, expiring token.

The key is read from an environment variable (the one the service's `force.key_env` names);
the token is good for one service and one variant until now + ttl (at most MAX_TTL_S).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final

from proxy.config import reader
from proxy.config.force import key_from_env
from proxy.core.force import mint
from proxy.core.routing import Variant
from proxy.errors import ConfigError

DEFAULT_KEY_ENV: Final = "ROLLOUT_FORCE_KEY"
DEFAULT_TTL: Final = "1h"
MAX_TTL_S: Final = 168 * 3600.0  # a week


def force_token(
    service: str,
    variant: str,
    ttl: str,
    key_env: str,
    env: Mapping[str, str],
    wall: Callable[[], float] = time.time,
) -> str:
    """The header value; ConfigError naming the argument or variable that is wrong."""
    chosen = Variant(reader.choice(variant, "VARIANT", [v.value for v in Variant]))
    seconds = reader.duration(ttl, "--ttl")
    if seconds > MAX_TTL_S:
        raise ConfigError(
            "--ttl", "must be at most 168h (a token cannot be revoked before it expires)"
        )
    key = key_from_env(env.get(key_env), key_env, "--key-env")
    return mint(key, service, chosen, int(wall() + seconds))
