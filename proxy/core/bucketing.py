"""Bucketing: the one place where an identity is hashed into a rollout bucket.

The rule is part of the user-facing contract, because changing it moves users between stable
and canary in the middle of a rollout:

    bucket = xxh3_64(utf8(salt) + b"\\x00" + utf8(canonical_id(id))) mod 10_000

where `xxh3_64` is XXH3 64-bit with seed 0, read as an unsigned integer, and `canonical_id` is
Unicode NFC followed by stripping surrounding whitespace (case is kept). The result is stable
across processes, machines and restarts (Python's `hash()` is randomised per process and must
never be used for this). Golden vectors in tests/core/test_bucketing.py pin the values.

This module must stay pure: no I/O, no clock, no state.
"""

from __future__ import annotations

import unicodedata
from typing import Final

import xxhash

BUCKETS: Final = 10_000
"""Buckets per rollout; a percentage p exposes buckets 0 .. p*100-1 (resolution 0.01 %)."""

_hash = xxhash.xxh3_64_intdigest
_normalize = unicodedata.normalize


def canonical_id(raw: str) -> str:
    """The canonical form of an identity: Unicode NFC, surrounding whitespace removed."""
    return _normalize("NFC", raw).strip()


def salt_key(salt: str) -> bytes:
    """The hashed prefix for `salt` (precomputed once per routing plan)."""
    return salt.encode() + b"\x00"


def bucket_for(key: bytes, ident: str) -> int:
    """`bucket_of` with the salt prefix already computed by `salt_key`."""
    return int(_hash(key + _normalize("NFC", ident).strip().encode()) % BUCKETS)


def bucket_of(salt: str, ident: str) -> int:
    """The bucket (0 .. BUCKETS-1) of `ident` under `salt`; see the module docstring."""
    return bucket_for(salt_key(salt), ident)
