"""History: a bounded time series of each service's traffic per tier and arm, for the admin page.

The Metrics object keeps cumulative counters per service, variant and tier (requests by status
class, latency counts per histogram bucket). Every few seconds the sampler hands their current
values to `ServiceHistory.record`, which keeps what changed since the previous read as one
`Sample`: per tier and arm the requests, the errors (requests in the error status classes of
the service's analysis) and the latency p50/p99 estimated from the bucket counts (linear within
a bucket, as Prometheus's histogram_quantile does), with where the rollout stood at that time.
A ring keeps the last `capacity` samples, so memory is bounded by capacity x tiers.

Each tier's *baseline* in a sample is what its canary is compared with:
- "pre_exposure" when the latest verdict judged the tier against its stable traffic from before
  the tier went (almost) wholly to the canary: the verdict's counts, and the tier's stable
  latency quantile of then when the analysis measured one;
- else "stable": the tier's stable arm in the same sample, when it has traffic;
- else "none".
A rolled-back rollout exposes nothing, so its tiers are never compared with a pre-exposure
baseline.

Pure: no I/O and no clock; times are passed in (wall seconds, shown to people).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.core.analysis import Assessment, TierBaseline
from proxy.core.verdict import Source
from proxy.metrics import DURATION_BUCKETS, ArmCounts

VARIANTS = ("stable", "canary")


def quantile_s(
    counts: Sequence[int], q: float, edges: Sequence[float] = DURATION_BUCKETS
) -> float | None:
    """The q-quantile of latencies counted per bucket (`counts[i]`: at most `edges[i]`, above
    the previous edge; one more count for +Inf), interpolated linearly within its bucket. The
    +Inf bucket answers its lower edge. None without counts."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    running = 0
    for i, count in enumerate(counts):
        if count and running + count >= rank:
            if i >= len(edges):
                return float(edges[-1])
            lower = edges[i - 1] if i else 0.0
            return lower + (edges[i] - lower) * (rank - running) / count
        running += count
    return float(edges[-1])


@dataclass(frozen=True, slots=True)
class ArmSample:
    """One arm of one tier over one sample."""

    requests: int
    errors: int
    p50_s: float | None
    p99_s: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": _round(self.error_rate, 6),
            "p50_ms": _ms(self.p50_s),
            "p99_ms": _ms(self.p99_s),
        }


def arm_sample(
    now: ArmCounts | None, before: ArmCounts | None, error_classes: Iterable[str]
) -> ArmSample:
    """What one arm did between two reads of its cumulative counters."""
    if now is None:
        return ArmSample(0, 0, None, None)
    classes = set(error_classes)
    old_classes = before.by_class if before is not None else {}
    requests = errors = 0
    for kind, value in now.by_class.items():
        delta = max(0, round(value - old_classes.get(kind, 0.0)))
        requests += delta
        if kind in classes:
            errors += delta
    old_buckets = before.buckets if before is not None else (0,) * len(now.buckets)
    buckets = [max(0, a - b) for a, b in zip(now.buckets, old_buckets, strict=True)]
    return ArmSample(requests, errors, quantile_s(buckets, 0.5), quantile_s(buckets, 0.99))


@dataclass(frozen=True, slots=True)
class PreExposure:
    """A tier's stable traffic from before it went wholly to the canary, as the verdict used
    it: requests and error rate, and the stable latency quantile of then (None: unmeasured)."""

    requests: int
    error_rate: float
    latency_s: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "error_rate": _round(self.error_rate, 6),
            "latency_ms": _ms(self.latency_s),
        }


def pre_exposure_of(
    verdict: Assessment | None, baselines: Mapping[str, TierBaseline]
) -> dict[str, PreExposure]:
    """The tiers the verdict judged against a pre-exposure baseline, with its numbers."""
    if verdict is None:
        return {}
    errors = next((c for c in verdict.checks if c.check == "errors"), None)
    if errors is None:
        return {}
    result = {}
    for tier in errors.tiers:
        if tier.source is Source.PRE_EXPOSURE:
            known = baselines.get(tier.tier)
            latency = known.latency_threshold_s if known and known.latency_threshold_s else None
            result[tier.tier] = PreExposure(tier.baseline.requests, tier.baseline.rate, latency)
    return result


@dataclass(frozen=True, slots=True)
class TierSample:
    stable: ArmSample
    canary: ArmSample
    baseline: str  # "stable" | "pre_exposure" | "none"
    pre_exposure: PreExposure | None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "stable": self.stable.to_json(),
            "canary": self.canary.to_json(),
            "baseline": self.baseline,
        }
        if self.pre_exposure is not None:
            data["pre_exposure"] = self.pre_exposure.to_json()
        return data


@dataclass(frozen=True, slots=True)
class Position:
    """Where the rollout stood when a sample was taken."""

    status: str
    step: int  # the configured step (-1: the baseline period)
    canary_percent: float
    verdict: str | None  # healthy | degraded | inconclusive | None (none yet this step)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # wall seconds at the end of the sample
    span_s: float  # seconds since the previous read
    position: Position
    tiers: Mapping[str, TierSample]  # tiers without traffic in the sample are left out

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.at,  # exact, so that `since` can be given it back
            "span_s": round(self.span_s, 3),
            "status": self.position.status,
            "step": self.position.step,
            "canary_percent": self.position.canary_percent,
            "verdict": self.position.verdict,
            "tiers": {name: tier.to_json() for name, tier in sorted(self.tiers.items())},
        }


def tier_sample(stable: ArmSample, canary: ArmSample, pre: PreExposure | None) -> TierSample:
    if pre is not None:
        return TierSample(stable, canary, "pre_exposure", pre)
    return TierSample(stable, canary, "stable" if stable.requests else "none", None)


class ServiceHistory:
    """The last `capacity` samples of one service."""

    def __init__(self, capacity: int, error_classes: Iterable[str]) -> None:
        self.samples: deque[Sample] = deque(maxlen=capacity)
        self.error_classes = frozenset(error_classes)
        self._previous: Mapping[tuple[str, str], ArmCounts] | None = None
        self._previous_at = 0.0

    def record(
        self,
        at: float,
        counts: Mapping[tuple[str, str], ArmCounts],
        position: Position,
        pre_exposure: Mapping[str, PreExposure],
    ) -> Sample | None:
        """Read the counters at `at`; the sample since the previous read (None the first
        time: it only sets where counting starts)."""
        before, since = self._previous, self._previous_at
        self._previous, self._previous_at = dict(counts), at
        if before is None:
            return None
        exposing = position.status != "rolled_back"
        tiers = {}
        for tier in sorted({t for _, t in counts}):
            stable, canary = (
                arm_sample(counts.get((v, tier)), before.get((v, tier)), self.error_classes)
                for v in VARIANTS
            )
            if stable.requests or canary.requests:
                pre = pre_exposure.get(tier) if exposing else None
                tiers[tier] = tier_sample(stable, canary, pre)
        sample = Sample(at, max(0.0, at - since), position, tiers)
        self.samples.append(sample)
        return sample

    def since(self, at: float) -> list[Sample]:
        """The samples taken after `at`, oldest first."""
        return [s for s in self.samples if s.at > at]


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)
