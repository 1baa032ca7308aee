"""Baselines: event counts of a tier measured while it still had stable traffic, and bounds on
the rates they estimate.

A tier that a step sends wholly to the canary has no concurrent control; its canary is then
compared with the tier's own stable traffic from the most recent step that had some (the
pre-exposure baseline). `TierBaseline` carries those counts from one step to the next; nothing
here keeps ids or time.

`rate_upper` / `rate_lower` are Chernoff bounds for a binomial rate: the p with
n * kl(x/n, p) = log(1/level), found by bisection. P(true rate > rate_upper) <= level, and
likewise below. They treat the baseline as a fixed sample (see analysis.py for what that
assumes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from math import log


@dataclass(frozen=True, slots=True)
class RateCount:
    """Requests and how many of them were events (errors, or slower than a threshold)."""

    requests: int = 0
    events: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.requests if self.requests else 0.0

    def __add__(self, other: RateCount) -> RateCount:
        return RateCount(self.requests + other.requests, self.events + other.events)


@dataclass(frozen=True, slots=True)
class TimingBaseline:
    """A tier's stable counts for one check, carried to the next step: `events` among
    `requests` (duration: over `edge_s`, the measured quantile; rate: the metric's events)."""

    counts: RateCount
    edge_s: float = 0.0


@dataclass(frozen=True, slots=True)
class TierBaseline:
    """A tier's stable traffic: errors, slow requests (above `latency_threshold_s`), routes.

    `latency_threshold_s` is the tier's stable latency quantile (0.0: not measured), and `slow`
    counts the requests above it; `routes` maps a route prefix to its error counts; `timing`
    a Server-Timing check's name to its counts.
    """

    errors: RateCount
    slow: RateCount = RateCount()
    latency_threshold_s: float = 0.0
    routes: Mapping[str, RateCount] = field(default_factory=dict)
    timing: Mapping[str, TimingBaseline] = field(default_factory=dict)  # by check name


def kl(p: float, q: float) -> float:
    """Bernoulli Kullback-Leibler divergence kl(p, q), for 0 < q < 1."""
    total = 0.0
    if p > 0.0:
        total += p * log(p / q)
    if p < 1.0:
        total += (1.0 - p) * log((1.0 - p) / (1.0 - q))
    return total


def _bisect(count: RateCount, level: float, low: float, high: float, up: bool) -> float:
    """The rate between low and high where n * kl(phat, rate) crosses log(1/level)."""
    target = log(1.0 / level)
    phat = count.rate
    for _ in range(64):
        mid = (low + high) / 2
        inside = count.requests * kl(phat, mid) < target
        if inside == up:
            low = mid
        else:
            high = mid
    return high if up else low  # the conservative side of the last interval


def rate_upper(count: RateCount, level: float) -> float:
    """Upper confidence bound on the rate at `level` (1.0 when there are no requests)."""
    if count.requests == 0 or count.events == count.requests:
        return 1.0
    return _bisect(count, level, count.rate, 1.0, up=True)


def rate_lower(count: RateCount, level: float) -> float:
    """Lower confidence bound on the rate at `level` (0.0 when there are no events)."""
    if count.events == 0:
        return 0.0
    return _bisect(count, level, 0.0, count.rate, up=False)
