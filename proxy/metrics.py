"""Prometheus families of the data plane, on an injected CollectorRegistry.

Owns the metric names, label sets and histogram buckets, and the per-request recording call
`Metrics.observe`. It must not decide anything (routing, outcome) and holds no global state:
every `Metrics` lives on the registry it is given.

Why plain accumulators instead of prometheus_client Counter/Histogram children: the data plane
budget is about 1 us per request for metrics. A cached Counter child `inc()` plus a Histogram
child `observe()` cost 1.7-3 us on the reference machine (each takes a lock, the histogram walks
its buckets in Python), while a dict lookup on the label tuple and three integer additions cost
about 0.6 us. So the series are plain slotted objects, cached in dicts keyed by the label tuple,
and a collector turns them into families at scrape time. The proxy is single-threaded (one event
loop) and scrapes run on the same loop, so no locks are needed; a histogram's `_count` is derived
from its buckets, so a scrape always sees a self-consistent histogram.

Labels stay bounded: `service` and `tier` come from the configuration, `variant` and `reason`
are checked against closed sets when a series is first created, status codes become classes
(a refusal keeps its code when it is one of the few the proxy answers with).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy.core.outcome import FAILURE_REASONS, status_class

DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
VARIANTS: Final = frozenset({"stable", "canary"})  # values of proxy.core.routing.Variant


def duration_bucket(duration_s: float) -> int:
    """The index of the first bucket of DURATION_BUCKETS that holds `duration_s` (`le`), or
    len(DURATION_BUCKETS) for +Inf. A compiled scan: most requests stop at the first few
    buckets, and floats are compared unboxed, where `bisect` compares Python objects."""
    index = 0
    for bound in DURATION_BUCKETS:
        if duration_s <= bound:
            return index
        index += 1
    return index


_LE: Final[tuple[str, ...]] = (
    *(repr(b) for b in DURATION_BUCKETS),
    "+Inf",
)  # as prometheus_client spells `le`


class RequestCounter:
    """One `rollout_requests_total` series; `inc()` like a prometheus_client Counter child."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class _Latency:
    """One `rollout_request_duration_seconds` series: per-bucket (not cumulative) counts."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * len(_LE)
        self.total = 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for le, count in zip(_LE, self.buckets, strict=True):
            running += count
            out.append((le, float(running)))
        return out


@dataclass(frozen=True, slots=True)
class ArmCounts:
    """A copy of one (service, variant, tier)'s cumulative counters, for readers other than
    Prometheus: requests by status class, and latency counts per bucket of DURATION_BUCKETS
    (not cumulative; the last one is +Inf)."""

    by_class: Mapping[str, float]
    buckets: tuple[int, ...]


# What became of a stable answer sampled for a shadow step (`rollout_shadow_requests_total`).
SHADOW_RESULTS: Final = frozenset(
    {
        "mirrored",  # a copy sent to the canary: the canary's load from shadowing
        "noise",  # a copy sent to stable a second time, to learn the noise
        "compared",  # the canary's answer compared with stable's
        "mismatched",  # ... and the canary alone changed a field
        "failed",  # the canary (or stable's second answer) failed or timed out: not compared
        "dropped_queue",  # the mirror's queue was full
        "dropped_concurrency",  # max_concurrency copies were already in flight
        "dropped_too_large",  # a body over max_body: not compared
    }
)
ROLLOUT_STATUSES: Final = frozenset({"progressing", "paused", "completed", "rolled_back"})
# The statuses of the refusals the proxy raises (BadRequest and NoRoute, proxy/errors.py).
REJECT_STATUSES: Final = frozenset({400, 404, 405, 408, 413, 414, 417, 429, 431, 501, 505})


def _in_sync() -> float:
    return 0.0


def _check(name: str, value: str, allowed: frozenset[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")


class ArmSeries:
    """What one (service, variant, tier) counts into: its request counter per status code and
    its duration histogram. A route holds its arm's, so a finished request costs a lookup by
    status code alone."""

    __slots__ = ("_by_status", "_metrics", "key", "latency")

    def __init__(self, metrics: Metrics, key: tuple[str, str, str], latency: _Latency) -> None:
        self._metrics = metrics
        self.key = key
        self.latency = latency
        self._by_status: dict[int, RequestCounter] = {}

    def observe(self, status: int, duration_s: float) -> None:
        """Count one finished request and record its duration (seconds)."""
        counter = self._by_status.get(status)
        if counter is None:
            service, variant, tier = self.key
            counter = self._metrics.requests(service, variant, tier, status_class(status))
            self._by_status[status] = counter
        counter.value += 1.0
        latency = self.latency
        latency.buckets[duration_bucket(duration_s)] += 1
        latency.total += duration_s


class ForcedSeries(ArmSeries):
    """What the forced requests of one (service, variant) count into: their own counter per
    status class (`rollout_forced_requests_total`), kept apart from the arm's series so that
    testers never weigh in the traffic a rollout is judged by."""

    __slots__ = ()

    def observe(self, status: int, duration_s: float) -> None:
        counter = self._by_status.get(status)
        if counter is None:
            service, variant, _ = self.key
            counter = self._metrics.forced_requests(service, variant, status_class(status))
            self._by_status[status] = counter
        counter.value += 1.0


class Metrics(Collector):
    """The proxy's metric families. A finished request is counted once, through the series
    of its arm (`arm`, held by each route; `observe` is the same by labels)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._arms: dict[tuple[str, str, str], ArmSeries] = {}
        self._requests: dict[tuple[str, str, str, str], RequestCounter] = {}
        self._forced: dict[tuple[str, str, str], RequestCounter] = {}
        self._latency: dict[tuple[str, str, str], _Latency] = {}
        self._failures: dict[tuple[str, str, str], int] = {}
        self._aborts: dict[tuple[str, str], int] = {}
        self._retries: dict[tuple[str, str, str], int] = {}
        self._steps: dict[str, tuple[int, float]] = {}
        self._status: dict[str, str] = {}
        self._decisions: dict[tuple[str, str], int] = {}
        self._rejected: dict[str, int] = {}
        self._shadow: dict[tuple[str, str], int] = {}
        self._staleness: Callable[[], float] = _in_sync
        registry.register(self)

    def requests(self, service: str, variant: str, tier: str, status_class: str) -> RequestCounter:
        """The cached `rollout_requests_total` series for these labels."""
        key = (service, variant, tier, status_class)
        counter = self._requests.get(key)
        if counter is None:
            _check("variant", variant, VARIANTS)
            counter = self._requests[key] = RequestCounter()
        return counter

    def forced_requests(self, service: str, variant: str, status_class: str) -> RequestCounter:
        """The cached `rollout_forced_requests_total` series for these labels."""
        key = (service, variant, status_class)
        counter = self._forced.get(key)
        if counter is None:
            _check("variant", variant, VARIANTS)
            counter = self._forced[key] = RequestCounter()
        return counter

    def forced(self, service: str, variant: str) -> ForcedSeries:
        """The series the forced route of `variant` counts into (one per route: its cache of
        counters by status code is its own)."""
        _check("variant", variant, VARIANTS)
        return ForcedSeries(self, (service, variant, ""), _Latency())

    def observe(
        self, service: str, variant: str, tier: str, status: int, duration_s: float
    ) -> None:
        """Count one finished request and record its duration (seconds)."""
        self.arm(service, variant, tier).observe(status, duration_s)

    def arm(self, service: str, variant: str, tier: str) -> ArmSeries:
        """The series of one arm of a tier (the data plane's routes hold theirs)."""
        key = (service, variant, tier)
        series = self._arms.get(key)
        if series is None:
            _check("variant", variant, VARIANTS)
            latency = self._latency.setdefault(key, _Latency())
            series = self._arms[key] = ArmSeries(self, key, latency)
        return series

    def arm_counts(self) -> dict[str, dict[tuple[str, str], ArmCounts]]:
        """Every service's cumulative counters per (variant, tier), copied in one pass (the
        history of the admin page reads them; nothing here changes)."""
        classes: dict[tuple[str, str, str], dict[str, float]] = {}
        for (service, variant, tier, kind), counter in self._requests.items():
            classes.setdefault((service, variant, tier), {})[kind] = counter.value
        result: dict[str, dict[tuple[str, str], ArmCounts]] = {}
        for key, by_class in classes.items():
            latency = self._latency.get(key)
            buckets = tuple(latency.buckets) if latency is not None else (0,) * len(_LE)
            service, variant, tier = key
            arms = result.setdefault(service, {})
            arms[(variant, tier)] = ArmCounts(MappingProxyType(by_class), buckets)
        return result

    def export(self) -> dict[str, list[list[Any]]]:
        """The data plane's cumulative counters as plain JSON (a worker process sends them to
        the process that serves /metrics, which `absorb`s them)."""
        return {
            "requests": [[*key, c.value] for key, c in self._requests.items()],
            "forced": [[*key, c.value] for key, c in self._forced.items()],
            "latency": [[*key, list(h.buckets), h.total] for key, h in self._latency.items()],
            "failures": [[*key, n] for key, n in self._failures.items()],
            "aborts": [[*key, n] for key, n in self._aborts.items()],
            "retries": [[*key, n] for key, n in self._retries.items()],
            "rejected": [[key, n] for key, n in self._rejected.items()],
        }

    def absorb(self, seen: dict[str, Any], snapshot: Mapping[str, list[list[Any]]]) -> None:
        """Add what grew in another process's `export` since the last one (`seen` remembers,
        per source; a fresh `seen` for a restarted source): every counter here only grows."""
        for name, rows in snapshot.items():
            last = seen.setdefault(name, {})
            for row in rows:
                key, value = tuple(row[:-2] if name == "latency" else row[:-1]), row[-1]
                if name == "latency":
                    self._absorb_latency(key, row[-2], value, last)
                    continue
                grown = value - last.get(key, 0)
                last[key] = value
                if grown > 0:
                    self._add(name, key, grown)

    def _add(self, name: str, key: tuple[Any, ...], grown: float) -> None:
        if name == "requests":
            self.requests(*key).inc(grown)
        elif name == "forced":
            self.forced_requests(*key).inc(grown)
        else:
            table: dict[Any, int] = getattr(self, f"_{name}")
            label = key[0] if name == "rejected" else key
            table[label] = table.get(label, 0) + int(grown)

    def _absorb_latency(
        self, key: tuple[Any, ...], buckets: list[int], total: float, last: dict[Any, Any]
    ) -> None:
        before_buckets, before_total = last.get(key, ([0] * len(_LE), 0.0))
        mine = self._latency.setdefault(key, _Latency())
        for i, (now, then) in enumerate(zip(buckets, before_buckets, strict=True)):
            mine.buckets[i] += max(0, now - then)
        mine.total += max(0.0, total - before_total)
        last[key] = (list(buckets), total)

    def upstream_failure(self, service: str, variant: str, reason: str) -> None:
        """An upstream of `variant` failed with `reason` (connect, tls, timeout, reset,
        protocol)."""
        key = (service, variant, reason)
        if key not in self._failures:
            _check("variant", variant, VARIANTS)
            _check("reason", reason, FAILURE_REASONS)
            self._failures[key] = 0
        self._failures[key] += 1

    def client_abort(self, service: str, variant: str) -> None:
        """The client went away before its exchange with `variant` finished."""
        key = (service, variant)
        if key not in self._aborts:
            _check("variant", variant, VARIANTS)
            self._aborts[key] = 0
        self._aborts[key] += 1

    def retry(self, service: str, variant: str, allowed: bool) -> None:
        """A failed attempt on `variant` was retried on stable, or the retry budget refused."""
        key = (service, variant, "retried" if allowed else "budget_exhausted")
        if key not in self._retries:
            _check("variant", variant, VARIANTS)
            self._retries[key] = 0
        self._retries[key] += 1

    def rejected(self, status: int) -> None:
        """The proxy refused a request itself (malformed, too large, too slow, no route) and
        answers `status`. Such a request reaches no service, so it has no service label; a
        status outside REJECT_STATUSES is counted under its class (`4xx`), never raised on."""
        label = str(status) if status in REJECT_STATUSES else status_class(status)
        self._rejected[label] = self._rejected.get(label, 0) + 1

    def shadow(self, service: str, result: str) -> None:
        """A sampled stable answer of a shadow step came to `result` (SHADOW_RESULTS)."""
        key = (service, result)
        if key not in self._shadow:
            _check("result", result, SHADOW_RESULTS)
            self._shadow[key] = 0
        self._shadow[key] += 1

    def shadow_counts(self, service: str) -> dict[str, int]:
        """The shadow results of `service` so far, by result."""
        return {result: n for (name, result), n in self._shadow.items() if name == service}

    def set_step(self, service: str, step: int, canary_percent: float) -> None:
        """The rollout step now served (-1: nothing exposed) and its share of everyone."""
        self._steps[service] = (step, canary_percent)

    def set_status(self, service: str, status: str) -> None:
        """The rollout's status (one of ROLLOUT_STATUSES)."""
        _check("status", status, ROLLOUT_STATUSES)
        self._status[service] = status

    def decision(self, service: str, action: str) -> None:
        """A transition was applied (advance, degraded, guardrail, promote, pause, ...)."""
        key = (service, action)
        self._decisions[key] = self._decisions.get(key, 0) + 1

    def watch_state(self, staleness: Callable[[], float]) -> None:
        """Read at scrape time: seconds since the rollout state was last confirmed with the
        state store (0 while in sync)."""
        self._staleness = staleness

    def describe(self) -> list[Metric]:
        """Family names, so a second `Metrics` on the same registry is refused."""
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        """Called by the registry at scrape time."""
        return self._families()

    def _families(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "rollout_requests",
            "Requests answered, by variant, tier and status class.",
            labels=("service", "variant", "tier", "status_class"),
        )
        for labels, counter in self._requests.items():
            requests.add_metric(labels, counter.value)
        yield requests
        duration = HistogramMetricFamily(
            "rollout_request_duration_seconds",
            "Upstream round trip as seen by the client, in seconds.",
            labels=("service", "variant", "tier"),
        )
        for key, latency in self._latency.items():
            duration.add_metric(key, latency.cumulative(), latency.total)
        yield duration
        yield from self._rare_families()

    def _rare_families(self) -> Iterator[Metric]:
        forced = CounterMetricFamily(
            "rollout_forced_requests",
            "Requests whose variant a tester forced (X-Rollout-Force), by the variant served "
            "and status class; never counted in rollout_requests_total nor judged.",
            labels=("service", "variant", "status_class"),
        )
        for key, counter in self._forced.items():
            forced.add_metric(key, counter.value)
        yield forced
        failures = CounterMetricFamily(
            "rollout_upstream_failures",
            "Upstream failures (connect, tls, timeout, reset, protocol), by variant.",
            labels=("service", "variant", "reason"),
        )
        for key, count in self._failures.items():
            failures.add_metric(key, count)
        yield failures
        aborts = CounterMetricFamily(
            "rollout_client_aborts",
            "Exchanges the client abandoned; never counted as upstream errors.",
            labels=("service", "variant"),
        )
        for pair, count in self._aborts.items():
            aborts.add_metric(pair, count)
        yield aborts
        retries = CounterMetricFamily(
            "rollout_retries",
            "Failed attempts sent again to stable (retried) or not (budget_exhausted), by the "
            "variant that failed; the failed attempt also counts as a request of that variant.",
            labels=("service", "variant", "outcome"),
        )
        for key, count in self._retries.items():
            retries.add_metric(key, count)
        yield retries
        rejected = CounterMetricFamily(
            "rollout_rejected_requests",
            "Requests the proxy refused itself (malformed, too large, too slow, no route), "
            "by the status it answers them with.",
            labels=("status",),
        )
        for label, count in self._rejected.items():
            rejected.add_metric((label,), count)
        yield rejected
        step = GaugeMetricFamily(
            "rollout_step", "Rollout step served (-1: nothing exposed).", labels=("service",)
        )
        percent = GaugeMetricFamily(
            "rollout_canary_percent", "Percent of everyone routed to canary.", labels=("service",)
        )
        for service, (index, share) in self._steps.items():
            step.add_metric((service,), index)
            percent.add_metric((service,), share)
        yield step
        yield percent
        yield from self._rollout_families()

    def _rollout_families(self) -> Iterator[Metric]:
        status = GaugeMetricFamily(
            "rollout_status",
            "1 for the rollout's current status, 0 for the others.",
            labels=("service", "status"),
        )
        for service, current in self._status.items():
            for name in sorted(ROLLOUT_STATUSES):
                status.add_metric((service, name), 1.0 if name == current else 0.0)
        yield status
        decisions = CounterMetricFamily(
            "rollout_decisions",
            "Rollout transitions applied, by action (automatic and by people).",
            labels=("service", "action"),
        )
        for pair, count in self._decisions.items():
            decisions.add_metric(pair, count)
        yield decisions
        shadow = CounterMetricFamily(
            "rollout_shadow_requests",
            "Sampled stable answers of shadow steps, by what became of them (mirrored: the "
            "canary's shadow load; compared, mismatched, dropped_*, failed).",
            labels=("service", "result"),
        )
        for pair, count in self._shadow.items():
            shadow.add_metric(pair, count)
        yield shadow
        yield GaugeMetricFamily(
            "rollout_state_stale_seconds",
            "Seconds since this process last confirmed the rollout state with its store "
            "(0 while in sync; a shared store that cannot be reached makes it grow).",
            value=self._staleness(),
        )
