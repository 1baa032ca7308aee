"""Forced variants for testers: may this request's `X-Rollout-Force` choose its pool?

The header's value is a variant (`canary` or `stable`), alone or with a signed, expiring token:

    canary                                   honoured from a trusted peer only
    canary;exp=1767225600;sig=<64 hex>       honoured from any peer while the token holds

A value carrying a token is judged by its token alone, whoever sends it (a trusted load
balancer relays its clients' values: trust does not make a forged token good).
`sig` is the lower-case hex HMAC-SHA256, under the service's key, of `service|variant|exp`
(`exp`: Unix seconds, written without leading zeros), so a token is good for one service and
one variant until `exp`. A value that is too long, malformed, unsigned from an untrusted peer,
expired, forged or signed for another service or variant is refused (None): the request is then
routed as if it had no such header. Pure functions; the time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Final

from proxy.core.routing import Variant

# The longest value looked at: `canary;exp=<12 digits>;sig=<64 hex>` is 90 bytes.
MAX_VALUE_BYTES: Final = 128
MIN_KEY_BYTES: Final = 32  # HMAC-SHA256's output size (RFC 2104: no shorter key)
_TOKEN: Final = re.compile(rb"(canary|stable);exp=([1-9][0-9]{0,11});sig=([0-9a-f]{64})\Z")
_VARIANTS: Final = {b"canary": Variant.CANARY, b"stable": Variant.STABLE}


@dataclass(frozen=True, slots=True)
class ForcePolicy:
    """Who may force a variant of one service: trusted peers (`trusted`), and anyone holding
    a token signed with `key` (None: tokens are refused)."""

    trusted: bool
    key: bytes | None = field(default=None, repr=False)


def signature(key: bytes, service: str, variant: str, expires: int) -> str:
    """The hex HMAC-SHA256 of `service|variant|expires` under `key`."""
    message = f"{service}|{variant}|{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def mint(key: bytes, service: str, variant: Variant, expires: int) -> str:
    """The header value forcing `variant` of `service` until `expires` (Unix seconds)."""
    if expires < 1:
        raise ValueError("expires must be a positive Unix time")
    return f"{variant.value};exp={expires};sig={signature(key, service, variant.value, expires)}"


def forced_variant(
    policy: ForcePolicy, service: str, value: bytes, trusted: bool, now: float
) -> Variant | None:
    """The variant `value` forces for this peer at `now` (Unix seconds), or None: refused."""
    if len(value) > MAX_VALUE_BYTES:
        return None
    bare = _VARIANTS.get(value)
    if bare is not None:
        return bare if trusted and policy.trusted else None
    match = _TOKEN.match(value)
    if match is None:
        return None
    variant, exp, sig = (part.decode("ascii") for part in match.groups())
    key = policy.key
    if key is None or int(exp) <= now:
        return None
    if not hmac.compare_digest(sig, signature(key, service, variant, int(exp))):
        return None
    return _VARIANTS[match.group(1)]
