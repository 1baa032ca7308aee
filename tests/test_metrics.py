"""proxy/metrics.py: exact values after known calls, bounded labels, exposition over HTTP."""

from __future__ import annotations

import bisect

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.admin import Readiness, build_admin_app
from proxy.core.outcome import status_class
from proxy.metrics import DURATION_BUCKETS, Metrics, duration_bucket
from tests.support.promtool import promtool_check

LABELS = {"service": "checkout", "variant": "canary", "tier": "free"}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


async def scrape(registry: CollectorRegistry) -> bytes:
    app = build_admin_app(registry, Readiness())
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        return await response.read()


def test_status_class() -> None:
    assert [status_class(s) for s in (100, 204, 304, 404, 599)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
    ]
    assert status_class(99) == status_class(600) == "5xx"


def test_observe_counts_requests_by_status_class(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    for status in (200, 201, 204, 503, 404):
        metrics.observe("checkout", "canary", "free", status, 0.01)
    metrics.observe("checkout", "stable", "free", 200, 0.01)
    value = registry.get_sample_value
    assert value("rollout_requests_total", {**LABELS, "status_class": "2xx"}) == 3
    assert value("rollout_requests_total", {**LABELS, "status_class": "4xx"}) == 1
    assert value("rollout_requests_total", {**LABELS, "status_class": "5xx"}) == 1
    assert value("rollout_requests_total", {**LABELS, "status_class": "3xx"}) is None
    stable = {**LABELS, "variant": "stable", "status_class": "2xx"}
    assert value("rollout_requests_total", stable) == 1


def test_observe_fills_histogram_buckets_inclusively(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    for duration in (0.0001, 0.005, 0.0051, 0.25, 0.5, 11.0):
        metrics.observe("checkout", "canary", "free", 200, duration)
    name = "rollout_request_duration_seconds"

    def bucket(le: str) -> float | None:
        return registry.get_sample_value(f"{name}_bucket", {**LABELS, "le": le})

    assert bucket("0.0005") == 1
    assert bucket("0.005") == 2  # an observation equal to a bound falls in that bucket
    assert bucket("0.01") == 3
    assert bucket("0.25") == 4
    assert bucket("10.0") == 5
    assert bucket("+Inf") == 6
    assert registry.get_sample_value(f"{name}_count", LABELS) == 6
    assert (
        registry.get_sample_value(f"{name}_sum", LABELS)
        == 0.0001 + 0.005 + 0.0051 + 0.25 + 0.5 + 11.0
    )
    assert len(DURATION_BUCKETS) == 14


def test_children_are_cached_and_shared(registry: CollectorRegistry, metrics: Metrics) -> None:
    counter = metrics.requests("checkout", "canary", "free", "2xx")
    assert metrics.requests("checkout", "canary", "free", "2xx") is counter
    metrics.observe("checkout", "canary", "free", 200, 0.001)
    metrics.observe("checkout", "canary", "free", 204, 0.001)
    counter.inc()
    assert counter.value == 3
    assert (
        registry.get_sample_value("rollout_requests_total", {**LABELS, "status_class": "2xx"}) == 3
    )
    with pytest.raises(ValueError, match="up"):
        counter.inc(-1)


def test_failures_aborts_and_step(registry: CollectorRegistry, metrics: Metrics) -> None:
    for reason in ("connect", "timeout", "timeout", "reset", "protocol"):
        metrics.upstream_failure("checkout", "canary", reason)
    metrics.client_abort("checkout", "stable")
    metrics.client_abort("checkout", "stable")
    metrics.set_step("checkout", 1, 2.5)
    metrics.set_step("checkout", 3, 25.0)
    value = registry.get_sample_value
    failures = {"service": "checkout", "variant": "canary"}
    assert value("rollout_upstream_failures_total", {**failures, "reason": "timeout"}) == 2
    assert value("rollout_upstream_failures_total", {**failures, "reason": "connect"}) == 1
    assert value("rollout_client_aborts_total", {"service": "checkout", "variant": "stable"}) == 2
    assert value("rollout_client_aborts_total", failures) is None
    assert value("rollout_step", {"service": "checkout"}) == 3
    assert value("rollout_canary_percent", {"service": "checkout"}) == 25.0


def test_rejected_counts_refusals_by_status(registry: CollectorRegistry, metrics: Metrics) -> None:
    for status in (400, 400, 408, 431, 418, 599):
        metrics.rejected(status)
    value = registry.get_sample_value
    assert value("rollout_rejected_requests_total", {"status": "400"}) == 2
    assert value("rollout_rejected_requests_total", {"status": "408"}) == 1
    assert value("rollout_rejected_requests_total", {"status": "431"}) == 1
    # A status the proxy does not refuse with is counted under its class: the label stays bounded.
    assert value("rollout_rejected_requests_total", {"status": "418"}) is None
    assert value("rollout_rejected_requests_total", {"status": "4xx"}) == 1
    assert value("rollout_rejected_requests_total", {"status": "5xx"}) == 1


def test_labels_stay_bounded(registry: CollectorRegistry, metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="variant"):
        metrics.observe("checkout", "tenant-42", "free", 200, 0.1)
    with pytest.raises(ValueError, match="reason"):
        metrics.upstream_failure("checkout", "canary", "user 42 was rude")
    with pytest.raises(ValueError, match="variant"):
        metrics.client_abort("checkout", "blue")
    assert (
        registry.get_sample_value("rollout_requests_total", {**LABELS, "variant": "tenant-42"})
        is None
    )


def test_registry_is_injected_not_global(registry: CollectorRegistry) -> None:
    Metrics(registry).observe("checkout", "canary", "free", 200, 0.1)
    other = CollectorRegistry()
    Metrics(other)
    key = {**LABELS, "status_class": "2xx"}
    assert registry.get_sample_value("rollout_requests_total", key) == 1
    assert other.get_sample_value("rollout_requests_total", key) is None
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(registry)


async def test_exposition_over_http_is_exact_and_passes_promtool(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.observe("checkout", "canary", "enterprise", 200, 0.002)
    metrics.observe("checkout", "stable", "free", 502, 0.5)
    metrics.upstream_failure("checkout", "stable", "connect")
    metrics.client_abort("checkout", "canary")
    metrics.set_step("checkout", -1, 0.0)
    body = await scrape(registry)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    stable_5xx = (("service", "checkout"), ("status_class", "5xx"), ("tier", "free"))
    assert samples[("rollout_requests_total", (*stable_5xx, ("variant", "stable")))] == 1
    canary = (("service", "checkout"), ("tier", "enterprise"), ("variant", "canary"))
    assert samples[("rollout_request_duration_seconds_sum", canary)] == 0.002
    assert samples[("rollout_step", (("service", "checkout"),))] == -1
    assert samples[("rollout_state_stale_seconds", ())] == 0
    assert len(samples) == 2 + 2 * (15 + 2) + 1 + 1 + 2 + 1
    await promtool_check(body)


def test_state_staleness_is_read_at_scrape_time(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    assert registry.get_sample_value("rollout_state_stale_seconds") == 0
    ages = iter([3.5, 7.0])
    metrics.watch_state(lambda: next(ages))
    assert registry.get_sample_value("rollout_state_stale_seconds") == 3.5
    assert registry.get_sample_value("rollout_state_stale_seconds") == 7.0


def test_arm_counts_reads_a_copy_of_the_counters(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.observe("checkout", "canary", "free", 200, 0.003)
    metrics.observe("checkout", "canary", "free", 503, 20.0)
    metrics.observe("checkout", "stable", "enterprise", 200, 0.0001)
    metrics.observe("search", "stable", "free", 200, 0.01)
    before = generate_latest(registry)
    everything = metrics.arm_counts()
    assert generate_latest(registry) == before  # reading changes nothing
    assert set(everything) == {"checkout", "search"}
    counts = everything["checkout"]
    assert set(counts) == {("canary", "free"), ("stable", "enterprise")}
    canary = counts[("canary", "free")]
    assert dict(canary.by_class) == {"2xx": 1.0, "5xx": 1.0}
    assert len(canary.buckets) == len(DURATION_BUCKETS) + 1
    assert canary.buckets[3] == 1  # 0.003 s: in (0.0025, 0.005]
    assert canary.buckets[-1] == 1  # 20 s: beyond the last edge
    metrics.observe("checkout", "canary", "free", 200, 0.003)
    assert canary.buckets[3] == 1  # a copy: later requests do not change it
    assert metrics.arm_counts()["checkout"][("canary", "free")].buckets[3] == 2


@given(st.floats(allow_nan=False))
def test_a_duration_falls_in_the_bucket_bisect_finds(duration_s: float) -> None:
    assert duration_bucket(duration_s) == bisect.bisect_left(DURATION_BUCKETS, duration_s)


def test_a_duration_on_a_bucket_bound_is_counted_in_that_bucket() -> None:
    for index, bound in enumerate(DURATION_BUCKETS):
        assert duration_bucket(bound) == index
    assert duration_bucket(DURATION_BUCKETS[-1] * 2) == len(DURATION_BUCKETS)
