"""rollout_forced_requests_total: its own family, by status class, kept out of the requests'
series, and carried from worker processes like every other counter (export/absorb)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from proxy.metrics import Metrics


def _lines(metrics: Metrics, registry: CollectorRegistry) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith(("rollout_forced_requests_total", "rollout_requests_total"))
    ]


def test_forced_requests_count_by_status_class_and_nowhere_else() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    series = metrics.forced("shop", "canary")
    for status in (200, 204, 500):
        series.observe(status, 0.01)
    assert _lines(metrics, registry) == [
        'rollout_forced_requests_total{service="shop",status_class="2xx",variant="canary"} 2.0',
        'rollout_forced_requests_total{service="shop",status_class="5xx",variant="canary"} 1.0',
    ]
    assert metrics.arm_counts() == {}


def test_a_workers_forced_counts_reach_the_main_process() -> None:
    worker, main = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    series = worker.forced("shop", "stable")
    seen: dict[str, Any] = {}
    series.observe(200, 0.01)
    main.absorb(seen, worker.export())
    series.observe(200, 0.01)
    main.absorb(seen, worker.export())
    assert main.forced_requests("shop", "stable", "2xx").value == 2.0
