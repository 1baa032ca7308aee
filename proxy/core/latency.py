"""Latency: a bounded streaming estimate of the stable arm's recent latency quantile.

A log-bucketed histogram (buckets 2**(1/16) ~ 4.4% wide, from 100 us to about an hour, 400
counters) in two generations: `rotate` starts a new generation once the current one is
`GENERATION_S` old, dropping the older one, so a quantile always reflects the last 30 to 60
seconds. Memory and the cost of `add` are constant (one log, one increment).

`threshold(q)` returns the upper edge of the bucket that holds the q-quantile, so at most a
fraction 1 - q of the recorded latencies lie above it, with the exact count of those above
(edges are bucket boundaries).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import log
from typing import Final

LOW_S: Final = 1e-4
PER_DOUBLING: Final = 16
BUCKETS: Final = 400
GENERATION_S: Final = 30.0
_SCALE: Final = PER_DOUBLING / log(2.0)
_OFFSET: Final = log(LOW_S)


def bucket_of(latency_s: float) -> int:
    """The bucket index of a latency (clamped into the histogram's range)."""
    if latency_s <= LOW_S:
        return 0
    return min(int((log(latency_s) - _OFFSET) * _SCALE), BUCKETS - 1)


def upper_edge(bucket: int) -> float:
    """The upper edge in seconds of a bucket."""
    return float(LOW_S * 2.0 ** ((bucket + 1) / PER_DOUBLING))


@dataclass(frozen=True, slots=True)
class Threshold:
    """A latency quantile: `edge_s`, and how many of `samples` lie above it."""

    edge_s: float
    above: int
    samples: int


class LatencyHistogram:
    """Recent latencies of one tier's stable arm."""

    __slots__ = ("_counts", "_previous", "_started", "total")

    def __init__(self, now: float) -> None:
        self._counts = [0] * BUCKETS
        self._previous = [0] * BUCKETS
        self._started = now
        self.total = 0  # samples in both generations

    def add(self, latency_s: float) -> None:
        bucket = int((log(latency_s) - _OFFSET) * _SCALE) if latency_s > LOW_S else 0
        self._counts[bucket if bucket < BUCKETS else BUCKETS - 1] += 1
        self.total += 1

    def rotate(self, now: float) -> None:
        """Start a new generation if the current one is old enough."""
        if now - self._started < GENERATION_S:
            return
        self.total -= sum(self._previous)
        self._previous = self._counts
        self._counts = [0] * BUCKETS
        self._started = now

    def threshold(self, quantile: float) -> Threshold | None:
        """The q-quantile's bucket edge, or None before 20 samples would lie above it."""
        allowed = (1.0 - quantile) * self.total
        if allowed < 20:
            return None
        above = 0
        for bucket in range(BUCKETS - 1, -1, -1):
            count = self._counts[bucket] + self._previous[bucket]
            if above + count > allowed:
                return Threshold(upper_edge(bucket), above, self.total)
            above += count
        return None
