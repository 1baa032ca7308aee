"""Latency: the log histogram's buckets, its quantile edge, and its two generations."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.latency import (
    BUCKETS,
    GENERATION_S,
    LOW_S,
    LatencyHistogram,
    bucket_of,
    upper_edge,
)


@given(st.floats(min_value=LOW_S * 1.0001, max_value=3000.0))
def test_a_latency_lies_below_its_bucket_edge(latency: float) -> None:
    bucket = bucket_of(latency)
    assert 0 <= bucket < BUCKETS
    assert latency < upper_edge(bucket) * (1 + 1e-9)
    if bucket:
        assert latency >= upper_edge(bucket - 1) * (1 - 1e-9)


def test_out_of_range_latencies_are_clamped() -> None:
    assert bucket_of(0.0) == 0
    assert bucket_of(1e9) == BUCKETS - 1


def test_the_quantile_edge_leaves_at_most_the_tail_above() -> None:
    rng = random.Random(1)
    histogram = LatencyHistogram(0.0)
    samples = [rng.lognormvariate(-3.0, 0.5) for _ in range(20_000)]
    for latency in samples:
        histogram.add(latency)
    measured = histogram.threshold(0.99)
    assert measured is not None
    above = sum(latency > measured.edge_s for latency in samples)
    assert measured.above == above <= 0.01 * len(samples)
    assert above >= 0.01 * len(samples) * 0.6  # the edge is within one bucket of the quantile
    assert measured.samples == len(samples)


def test_too_few_samples_give_no_quantile() -> None:
    histogram = LatencyHistogram(0.0)
    for _ in range(1999):
        histogram.add(0.1)
    assert histogram.threshold(0.99) is None


def test_old_generations_are_dropped() -> None:
    histogram = LatencyHistogram(0.0)
    for _ in range(3000):
        histogram.add(0.010)
    histogram.rotate(GENERATION_S)  # the 10 ms generation becomes the previous one
    for _ in range(3000):
        histogram.add(1.0)
    assert histogram.total == 6000
    histogram.rotate(GENERATION_S / 2 * 3)  # too soon: nothing happens
    assert histogram.total == 6000
    histogram.rotate(2 * GENERATION_S)  # the 10 ms samples are gone
    assert histogram.total == 3000
    measured = histogram.threshold(0.99)
    assert measured is not None
    assert measured.edge_s == pytest.approx(1.0, rel=0.05)
