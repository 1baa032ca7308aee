"""Reloading a running proxy's config: SIGHUP, `POST /api/v1/reload`, `rollout-proxy reload`.

The file is read and validated whole first. An invalid config, or one that changes what only a
restart can (proxy/config/changes.py), changes nothing: the answer, the log line, `status` and
the metrics name the key and the reason, and the proxy keeps serving the config it has. A valid
one is handed to `apply` (the runtime's swap: controller, routing, workers, engine), which
either swaps it in whole or raises StateError and changes nothing. Reloads run one at a time.

The metrics follow Prometheus's own: `rollout_config_reload_total{result}`,
`rollout_config_last_reload_successful` and `rollout_config_last_reload_success_timestamp_seconds`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.config import Config, load_source
from proxy.config.changes import describe, restart_only
from proxy.errors import ConfigError, StateError

# applied: swapped in; unchanged: valid, and the same as what runs; invalid: the file does not
# validate; refused: it changes what needs a restart; failed: the state store refused the swap.
RESULTS = ("applied", "unchanged", "invalid", "refused", "failed")
GOOD = frozenset({"applied", "unchanged"})
FAILED = frozenset({"invalid", "refused", "failed"})  # announced as config_reload_failed

Apply = Callable[[Config, str], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    result: str
    trigger: str  # SIGHUP | api | start
    time: float  # wall clock
    changes: tuple[str, ...] = ()
    error: str | None = None  # the whole message, for people
    key: str | None = None  # invalid: the key path at fault ("" for the file as a whole)
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.result in GOOD

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "trigger": self.trigger,
            "time": self.time,
            "changes": list(self.changes),
            "error": self.error,
            "key": self.key,
            "reason": self.reason,
        }

    def line(self) -> str:
        """The log line of this reload."""
        head = f"rollout-proxy: reload ({self.trigger}): {self.result}"
        if self.error:
            return f"{head}: {self.error}; still serving the config loaded before"
        return f"{head}: {'; '.join(self.changes) or 'nothing changed'}"


@dataclass(slots=True)
class ReloadCounts:
    by_result: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    last_ok: bool = True
    last_success: float = 0.0


class ReloadMetrics(Collector):
    """The reload families, read at scrape time."""

    def __init__(self, counts: ReloadCounts, registry: CollectorRegistry) -> None:
        self.counts = counts
        registry.register(self)

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        counts = self.counts
        total = CounterMetricFamily(
            "rollout_config_reload",
            "Config reloads (SIGHUP, the API, the CLI), by result: applied, unchanged, invalid, "
            "refused (needs a restart), failed (the state store refused the swap).",
            labels=("result",),
        )
        for result, count in counts.by_result.items():
            total.add_metric((result,), count)
        yield total
        yield GaugeMetricFamily(
            "rollout_config_last_reload_successful",
            "1 if the last reload attempt applied (or found nothing to change), 0 if not.",
            value=1.0 if counts.last_ok else 0.0,
        )
        yield GaugeMetricFamily(
            "rollout_config_last_reload_success_timestamp_seconds",
            "When the config now served was loaded (Unix time).",
            value=counts.last_success,
        )


class Reloader:
    """Reloads `path` into a running proxy through `apply`; keeps the last result."""

    def __init__(
        self,
        path: str | None,
        current: Callable[[], Config],
        apply: Apply,
        registry: CollectorRegistry,
        *,
        env: Mapping[str, str],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.current = current
        self.apply = apply
        self.env = env
        self.wall = wall
        self.counts = ReloadCounts(last_success=wall())
        self.metrics = ReloadMetrics(self.counts, registry)
        self.last: ReloadResult | None = None
        # Told of every reload that changed nothing because it could not (the notifier).
        self.on_failure: Callable[[ReloadResult], None] | None = None
        self._lock = asyncio.Lock()

    def status(self) -> dict[str, Any]:
        """What `status` and the API show: the config file, when what runs was loaded, and
        the last reload attempt."""
        return {
            "path": self.path,
            "loaded_at": self.counts.last_success,
            "last_reload": self.last.to_json() if self.last is not None else None,
        }

    async def reload(self, trigger: str) -> ReloadResult:
        async with self._lock:
            result = await self._reload(trigger)
        counts = self.counts
        counts.by_result[result.result] += 1
        counts.last_ok = result.ok
        if result.ok:
            counts.last_success = result.time
        self.last = result
        print(result.line(), file=sys.stderr, flush=True)
        if result.result in FAILED and self.on_failure is not None:
            self.on_failure(result)
        return result

    async def _reload(self, trigger: str) -> ReloadResult:
        now = self.wall()
        if self.path is None:
            error = "this proxy was not started from a config file: nothing to reload"
            return ReloadResult("refused", trigger, now, error=error)
        try:
            config, text = load_source(self.path, self.env)
        except ConfigError as exc:
            return ReloadResult(
                "invalid", trigger, now, error=str(exc), key=exc.path, reason=exc.reason
            )
        current = self.current()
        restart = restart_only(current, config)
        if restart:
            return ReloadResult("refused", trigger, now, error="; ".join(restart))
        changes = describe(current, config)
        if not changes:
            return ReloadResult("unchanged", trigger, now)
        try:
            notes = await self.apply(config, text)
        except ConfigError as exc:  # a certificate file changed since it was read, or valid
            # alone but not for how this proxy runs
            return ReloadResult(
                "invalid", trigger, now, error=str(exc), key=exc.path, reason=exc.reason
            )
        except StateError as exc:
            return ReloadResult("failed", trigger, now, tuple(changes), error=str(exc))
        return ReloadResult("applied", trigger, now, tuple(_merged(changes, notes)))


def _merged(changes: list[str], notes: list[str]) -> list[str]:
    """The config's changes, then what they did to the rollouts (a note that repeats a
    change's subject replaces nothing: both are kept, the note last)."""
    return [*changes, *(note for note in notes if note not in changes)]
