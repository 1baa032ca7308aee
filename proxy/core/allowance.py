"""A rate allowance (token bucket): how many events a peer may cause per second.

Pure: the time is passed in. An allowance starts full (one second's worth, the burst) and
refills at `rate` per second; an event it cannot pay for is refused. HTTP/2 uses one per
connection for stream resets (rapid reset, CVE-2023-44487) and one for SETTINGS and PING
frames (floods), and ends the connection once either is spent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Allowance:
    rate: float  # events per second, and the burst
    tokens: float
    at: float  # when `tokens` was last brought up to date


def full(rate: float, now: float) -> Allowance:
    """An allowance of `rate` events per second, with a burst of one second's worth."""
    return Allowance(rate, rate, now)


def spend(allowance: Allowance, now: float) -> bool:
    """Pay for one event at `now`; False when the allowance is spent (the event is refused)."""
    elapsed = max(0.0, now - allowance.at)
    allowance.tokens = min(allowance.rate, allowance.tokens + elapsed * allowance.rate)
    allowance.at = max(allowance.at, now)
    if allowance.tokens >= 1.0:
        allowance.tokens -= 1.0
        return True
    return False
