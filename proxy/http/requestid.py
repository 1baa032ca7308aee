"""Request ids: the `X-Request-ID` every forwarded request carries and every response returns.

A trusted peer's id is kept when it is well-formed (1 to `MAX_LENGTH` visible ASCII characters,
sent once); otherwise the proxy makes one. Making one must cost next to nothing: a random
per-process prefix and a counter (32 hex digits, like a UUID without dashes), not `uuid4`, which
reads the system's random source for every request (about ten times the cost).
"""

from __future__ import annotations

import os
import re
from typing import Final

MAX_LENGTH: Final = 128
_VALID: Final = re.compile(rb"[\x21-\x7e]{1,%d}\Z" % MAX_LENGTH)
# What a request head holds when its X-Request-ID cannot be kept (sent twice, or empty).
INVALID: Final = b" "
# The counter starts here so that every id it makes has 16 hex digits with no padding to
# format (2**64 - 2**60 ids before a 17th digit).
_FIRST: Final = 1 << 60
# The counter's last two hex digits, ready-made: `%x` of an int is a generic formatting call,
# so the rest of the id is formatted once per 256 ids, and each id is one concatenation.
_LOW_DIGITS: Final = tuple(b"%02x" % low for low in range(256))


def acceptable(value: bytes) -> bool:
    """A peer's id that may be kept: visible ASCII only, bounded length."""
    return _VALID.match(value) is not None


class RequestIds:
    """Makes ids unique across processes (64 random bits) and within one (a counter)."""

    __slots__ = ("_block", "_high", "_low", "_prefix")

    def __init__(self, prefix: bytes | None = None) -> None:
        self._prefix = prefix if prefix is not None else os.urandom(8).hex().encode()
        # The counter is `_high * 256 + _low`; `_block` is the prefix and `_high` in hex.
        self._high = _FIRST >> 8
        self._low = 0
        self._block = self._prefix + b"%x" % self._high

    def make(self) -> bytes:
        low = self._low
        if low == 256:
            self._high += 1
            self._block = self._prefix + b"%x" % self._high
            low = 0
        self._low = low + 1
        return self._block + _LOW_DIGITS[low]
