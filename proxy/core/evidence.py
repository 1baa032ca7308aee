"""Evidence: the likelihood of a canary/baseline rate ratio theta, and what is tested with it.

This module owns the arithmetic of one check (see analysis.py for the theory of operation):
a log-likelihood profile over a fixed grid of ratios theta, fed one event at a time, and the
e-values and confidence bounds read from it. It knows nothing about requests, tiers or time.

Two kinds of evidence add into one profile, because their likelihood ratios multiply:
- a *conditional* event: an event in a tier where the canary carries the share `s` of the
  requests came from the canary (or from the baseline). Under a ratio theta it is the canary's
  with probability q = theta*s / (theta*s + 1 - s); only q depends on theta, so the profile
  gains log(q) or log(1 - q) (constants common to every theta are dropped);
- a *one-sample* tally: n canary requests with x events in a tier that has no concurrent
  baseline, against a reference rate p: the binomial log-likelihood x*log(theta*p) +
  (n - x)*log(1 - theta*p). Tallies change on every request, so they are folded in only when
  a verdict is read (`with_tally`), never stored in the profile.

A third, separate test reads the canary's own rate against an absolute floor f (`floor_log_e`):
n canary requests with x events, null rate >= f, alternatives f/2, f/4, f/8, f/16 evenly
weighted. It needs no events at all to gather evidence (a clean canary's rate is shown below f
from its request count alone), which the ratio tests cannot do. Non-inferiority averages it
with the ratio's advance e-value (weights 1/4 and 3/4, `either_log_e`).

E-values are mixtures of likelihood ratios over fixed alternatives with fixed prior weights, so
they are test supermartingales under their null (Ville's inequality bounds the probability that
they ever cross 1/alpha by alpha).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import exp, inf, log, sqrt

SQRT2 = sqrt(2.0)
UP_POINTS = 9  # rollback alternatives: up_start * sqrt(2)**k, k = 0..8 (a factor 16 in all)
UP_NEAR = 0.7  # prior mass on the first octave above up_start (k = 0, 1); the rest is even
P_MAX = 1.0 - 1e-9  # a one-sample alternative rate theta*p is capped below 1
FLOOR_DOWN = (0.5, 0.25, 0.125, 0.0625)  # floor-test alternatives, as fractions of the floor
_LOG_FLOOR_WEIGHT = log(1.0 / len(FLOOR_DOWN))
FLOOR_WEIGHT = 0.25  # of the advance e-value on the floor test; the ratio test keeps the rest
_LOG_RATIO_WEIGHT = log(1.0 - FLOOR_WEIGHT)


def _log_weights(raw: Sequence[float]) -> tuple[float, ...]:
    total = sum(raw)
    return tuple(log(w / total) for w in raw)


@dataclass(frozen=True, slots=True)
class RatioGrid:
    """The ratios a check's profile is kept at, and the alternatives of its two tests.

    `up` (rollback, null theta <= 1): alternatives up_start * sqrt(2)**k, 70% of the prior on
    k = 0, 1 and the rest evenly over k = 2..8. `down` (non-inferiority, null theta >=
    tolerance): the given points with the given weights. Each is a tuple of (index into
    `points`, log weight).
    """

    points: tuple[float, ...]
    logs: tuple[float, ...]
    null: int  # index of theta = 1
    tolerance: int  # index of the non-inferiority null
    up: tuple[tuple[int, float], ...]
    down: tuple[tuple[int, float], ...]

    @classmethod
    def build(
        cls,
        *,
        tolerance: float,
        up_start: float,
        down: Sequence[float],
        down_weights: Sequence[float],
    ) -> RatioGrid:
        if up_start <= 1.0 or max(down) >= tolerance:
            raise ValueError("alternatives must lie on their side of the nulls")
        up = [up_start * SQRT2**k for k in range(UP_POINTS)]
        fine = [1.0 + (tolerance - 1.0) * j / 4 for j in range(1, 4)] if tolerance > 1 else []
        points = tuple(sorted({1.0, tolerance, *down, *fine, *up}))
        index = {p: i for i, p in enumerate(points)}
        up_weights = _log_weights(
            [UP_NEAR / 2] * 2 + [(1 - UP_NEAR) / (UP_POINTS - 2)] * (UP_POINTS - 2)
        )
        return cls(
            points=points,
            logs=tuple(log(p) for p in points),
            null=index[1.0],
            tolerance=index[tolerance],
            up=tuple(zip((index[p] for p in up), up_weights, strict=True)),
            down=tuple(zip((index[p] for p in down), _log_weights(down_weights), strict=True)),
        )


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -inf:
        return -inf
    return top + log(sum(exp(v - top) for v in values))


class Profile:
    """The log-likelihood of each grid ratio, up to a constant, from conditional events."""

    __slots__ = ("events", "grid", "loglik")

    def __init__(self, grid: RatioGrid) -> None:
        self.grid = grid
        self.loglik = [0.0] * len(grid.points)
        self.events = 0

    def add(self, canary: bool, share: float) -> None:
        """One event in a tier whose canary share of requests is `share` (0 < share < 1)."""
        rest = 1.0 - share
        points = self.grid.points
        if canary:
            logs = self.grid.logs
            self.loglik = [
                v + lt - log(t * share + rest)
                for v, t, lt in zip(self.loglik, points, logs, strict=True)
            ]
        else:
            self.loglik = [
                v - log(t * share + rest) for v, t in zip(self.loglik, points, strict=True)
            ]
        self.events += 1

    def with_tally(self, tallies: Sequence[tuple[int, int, float]]) -> list[float]:
        """The profile plus one-sample tallies (requests, events, reference rate)."""
        total = list(self.loglik)
        for n, x, rate in tallies:
            if n == 0 or rate <= 0.0:
                continue
            for i, t in enumerate(self.grid.points):
                p = min(t * rate, P_MAX)
                total[i] += x * log(p) + (n - x) * log(1.0 - p)
        return total


def rollback_log_e(grid: RatioGrid, loglik: Sequence[float]) -> float:
    """log of the rollback e-value: the mixture over `up` of LR(theta vs 1)."""
    base = loglik[grid.null]
    return _logsumexp([w + loglik[i] - base for i, w in grid.up])


def advance_log_e(grid: RatioGrid, loglik: Sequence[float]) -> float:
    """log of the non-inferiority e-value: the mixture over `down` of LR(theta vs tolerance)."""
    base = loglik[grid.tolerance]
    return _logsumexp([w + loglik[i] - base for i, w in grid.down])


def upper_bound(grid: RatioGrid, loglik: Sequence[float], log_threshold: float) -> float:
    """Smallest grid ratio such that it and every larger one are rejected, from below.

    Ratio theta0 is rejected when the mixture over the `down` alternatives below theta0 of
    LR(theta vs theta0) reaches the threshold; inf when the largest grid ratio is not rejected.
    """
    bound = inf
    for j in range(len(grid.points) - 1, -1, -1):
        terms = [w + loglik[i] - loglik[j] for i, w in grid.down if i < j]
        if not terms or _logsumexp(terms) < log_threshold:
            break
        bound = grid.points[j]
    return bound


def lower_bound(grid: RatioGrid, loglik: Sequence[float], log_threshold: float) -> float:
    """Largest grid ratio such that it and every smaller one are rejected, from above (0: none)."""
    bound = 0.0
    for j in range(len(grid.points)):
        terms = [w + loglik[i] - loglik[j] for i, w in grid.up if i > j]
        if not terms or _logsumexp(terms) < log_threshold:
            break
        bound = grid.points[j]
    return bound


def best_ratio(grid: RatioGrid, loglik: Sequence[float]) -> float:
    """The grid ratio of highest likelihood (a coarse point estimate)."""
    return grid.points[max(range(len(loglik)), key=loglik.__getitem__)]


def _floor_terms(floor: float) -> list[tuple[float, float]]:
    """Per alternative a = k * floor: (log(a / floor), log((1 - a) / (1 - floor)))."""
    return [(log(k), log((1.0 - k * floor) / (1.0 - floor))) for k in FLOOR_DOWN]


def floor_log_e(requests: int, events: int, floor: float) -> float:
    """log of the floor e-value: the mixture over alternatives below `floor` of the binomial
    LR(a vs floor) of `events` in `requests` (null: the rate is at least `floor`)."""
    if floor <= 0.0 or floor >= 1.0:
        return -inf
    rest = requests - events
    return _logsumexp(
        [_LOG_FLOOR_WEIGHT + events * hit + rest * miss for hit, miss in _floor_terms(floor)]
    )


def floor_drift(rate: float, floor: float) -> float:
    """Expected growth per request (nats) of the floor test's best alternative at `rate`."""
    if floor <= 0.0 or floor >= 1.0:
        return 0.0
    return max(rate * hit + (1.0 - rate) * miss for hit, miss in _floor_terms(floor))


def either_log_e(ratio: float, floor: float) -> float:
    """log of the weighted average of the ratio and floor e-values (FLOOR_WEIGHT on the floor):
    an e-value for the intersection of their nulls."""
    return _logsumexp([ratio + _LOG_RATIO_WEIGHT, floor + log(FLOOR_WEIGHT)])
