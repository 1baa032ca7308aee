"""proxy/history.py: samples from real Metrics counters, quantiles from buckets, the ring and
the choice of each tier's baseline. Pure: time is passed in."""

from __future__ import annotations

from bisect import bisect_left
from math import ceil

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from proxy.core.analysis import AnalysisConfig, RateCount, StepAnalysis, TierBaseline
from proxy.history import Position, PreExposure, ServiceHistory, pre_exposure_of, quantile_s
from proxy.metrics import DURATION_BUCKETS, ArmCounts, Metrics

PROGRESSING = Position("progressing", 0, 10.0, None)


def _metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def _counts(metrics: Metrics) -> dict[tuple[str, str], ArmCounts]:
    return metrics.arm_counts().get("svc", {})


def test_quantile_interpolates_within_the_bucket() -> None:
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    counts[2] = 10  # (0.001, 0.0025]
    assert quantile_s(counts, 0.5) == 0.001 + 0.0015 * 0.5
    assert quantile_s(counts, 1.0) == 0.0025
    counts[-1] = 90  # beyond the last edge: the last edge is all that is known
    assert quantile_s(counts, 0.99) == DURATION_BUCKETS[-1]
    assert quantile_s([0] * len(counts), 0.5) is None


@given(
    st.lists(st.floats(min_value=1e-5, max_value=20.0), min_size=1, max_size=200),
    st.sampled_from([0.5, 0.9, 0.99]),
)
def test_quantile_lies_in_the_bucket_of_the_true_quantile(values: list[float], q: float) -> None:
    metrics = _metrics()
    for value in values:
        metrics.observe("svc", "stable", "free", 200, value)
    (counts,) = _counts(metrics).values()
    estimate = quantile_s(counts.buckets, q)
    true = sorted(values)[max(0, ceil(q * len(values)) - 1)]
    i = bisect_left(DURATION_BUCKETS, true)
    low = DURATION_BUCKETS[i - 1] if i else 0.0
    high = DURATION_BUCKETS[min(i, len(DURATION_BUCKETS) - 1)]
    assert estimate is not None
    assert low <= estimate <= high


def test_a_sample_is_what_changed_since_the_previous_read() -> None:
    metrics = _metrics()
    history = ServiceHistory(capacity=10, error_classes={"5xx"})
    metrics.observe("svc", "stable", "free", 200, 0.002)
    assert history.record(100.0, _counts(metrics), PROGRESSING, {}) is None
    for status in (200, 200, 503, 404):
        metrics.observe("svc", "stable", "free", status, 0.004)
    for status in (200, 502):
        metrics.observe("svc", "canary", "free", status, 0.2)
    metrics.observe("svc", "stable", "enterprise", 200, 0.001)
    metrics.observe("other", "canary", "free", 500, 0.001)  # another service: not counted
    sample = history.record(102.5, _counts(metrics), PROGRESSING, {})
    assert sample is not None
    assert (sample.at, sample.span_s, sample.position) == (102.5, 2.5, PROGRESSING)
    free = sample.tiers["free"]
    assert (free.stable.requests, free.stable.errors) == (4, 1)  # 404 is no error by default
    assert (free.canary.requests, free.canary.errors) == (2, 1)
    assert free.stable.error_rate == 0.25
    assert free.stable.p50_s is not None
    assert 0.0025 < free.stable.p50_s <= 0.005
    assert free.canary.p99_s is not None
    assert 0.1 < free.canary.p99_s <= 0.25
    assert free.baseline == "stable"
    assert sample.tiers["enterprise"].canary.requests == 0
    # Nothing new in enterprise next time: the tier is left out of that sample.
    metrics.observe("svc", "stable", "free", 200, 0.004)
    later = history.record(104.5, _counts(metrics), PROGRESSING, {})
    assert later is not None
    assert set(later.tiers) == {"free"}
    assert later.tiers["free"].stable.requests == 1


def test_error_classes_come_from_the_analysis() -> None:
    metrics = _metrics()
    history = ServiceHistory(capacity=10, error_classes={"5xx", "4xx"})
    history.record(0.0, _counts(metrics), PROGRESSING, {})
    for status in (200, 404, 429, 500):
        metrics.observe("svc", "canary", "free", status, 0.01)
    sample = history.record(2.0, _counts(metrics), PROGRESSING, {})
    assert sample is not None
    assert sample.tiers["free"].canary.errors == 3


def test_the_ring_keeps_the_last_samples_and_since_filters() -> None:
    metrics = _metrics()
    history = ServiceHistory(capacity=3, error_classes={"5xx"})
    for second in range(6):
        metrics.observe("svc", "stable", "free", 200, 0.01)
        history.record(float(second), _counts(metrics), PROGRESSING, {})
    assert [s.at for s in history.samples] == [3.0, 4.0, 5.0]
    assert [s.at for s in history.since(3.0)] == [4.0, 5.0]
    assert history.since(5.0) == []


def test_baseline_of_a_tier() -> None:
    metrics = _metrics()
    history = ServiceHistory(capacity=10, error_classes={"5xx"})
    history.record(0.0, _counts(metrics), PROGRESSING, {})
    pre = {"internal": PreExposure(400, 0.005, 0.03)}
    metrics.observe("svc", "canary", "internal", 200, 0.01)
    metrics.observe("svc", "canary", "free", 200, 0.01)
    sample = history.record(2.0, _counts(metrics), PROGRESSING, pre)
    assert sample is not None
    assert sample.tiers["internal"].baseline == "pre_exposure"
    assert sample.tiers["internal"].pre_exposure == pre["internal"]
    assert sample.tiers["free"].baseline == "none"  # canary only, and no pre-exposure
    # A rolled-back rollout exposes nothing: its tiers have no pre-exposure baseline.
    metrics.observe("svc", "stable", "internal", 200, 0.01)
    rolled_back = Position("rolled_back", 0, 0.0, "degraded")
    later = history.record(4.0, _counts(metrics), rolled_back, pre)
    assert later is not None
    assert later.tiers["internal"].baseline == "stable"
    assert later.tiers["internal"].pre_exposure is None


def test_pre_exposure_comes_from_the_verdict() -> None:
    before = TierBaseline(RateCount(2000, 10), RateCount(2000, 20), 0.04)
    analysis = StepAnalysis(
        AnalysisConfig(min_requests=10),
        baselines={"internal": before},
        started=0.0,
        expected_shares={"internal": 1.0, "free": 0.1},
    )
    for i in range(200):
        analysis.observe(
            tier="internal", canary=True, error=False, latency_s=0.01, path="/", id_hash=i, now=1.0
        )
        canary = i % 10 == 0
        analysis.observe(
            tier="free", canary=canary, error=False, latency_s=0.01, path="/", id_hash=i, now=1.0
        )
    verdict = analysis.assess(2.0)
    found = pre_exposure_of(verdict, analysis.tier_baselines())
    assert found == {"internal": PreExposure(2000, 0.005, 0.04)}
    assert pre_exposure_of(None, analysis.tier_baselines()) == {}


def test_sample_json() -> None:
    metrics = _metrics()
    history = ServiceHistory(capacity=10, error_classes={"5xx"})
    history.record(10.0, _counts(metrics), PROGRESSING, {})
    metrics.observe("svc", "canary", "internal", 500, 0.003)
    pre = {"internal": PreExposure(400, 0.005, None)}
    sample = history.record(12.0, _counts(metrics), PROGRESSING, pre)
    assert sample is not None
    data = sample.to_json()
    assert data["t"] == 12.0
    assert (data["status"], data["step"], data["canary_percent"]) == ("progressing", 0, 10.0)
    internal = data["tiers"]["internal"]
    assert internal["canary"]["requests"] == 1
    assert internal["canary"]["error_rate"] == 1.0
    assert internal["stable"] == {
        "requests": 0,
        "errors": 0,
        "error_rate": None,
        "p50_ms": None,
        "p99_ms": None,
    }
    assert internal["pre_exposure"] == {"requests": 400, "error_rate": 0.005, "latency_ms": None}
