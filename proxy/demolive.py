"""The live part of `rollout-proxy demo`: steady traffic and a terminal view of the rollout.

`SteadyTraffic` keeps requests flowing from many tenants (skewed: a few are busy) and keeps
the last seconds of outcomes per arm and tier. `render` draws what an operator wants to see
(rich): the step, the split, each arm's error rate and latency, and the controller's verdict in
its own words. Nothing here steers the rollout: the controller does, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from proxy.demo import SERVED_BY

WINDOW_S = 5.0


@dataclass(frozen=True, slots=True)
class Outcome:
    at: float
    tier: str
    variant: str  # stable | canary | "" (no answer)
    error: bool
    latency_s: float


class SteadyTraffic:
    """Workers sending GETs with `X-Tenant-ID`; the last WINDOW_S seconds of outcomes."""

    def __init__(
        self, url: str, tenants: Sequence[tuple[str, str]], concurrency: int, seed: int = 1
    ) -> None:
        self.url = url
        self.tenants = tenants
        self.concurrency = concurrency
        self.recent: deque[Outcome] = deque()
        self.total = 0
        self._rng = random.Random(seed)
        weights = [1.0 / (rank + 1) for rank in range(len(tenants))]
        self._cumulative = list(itertools.accumulate(weights))
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        timeout = aiohttp.ClientTimeout(total=10)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker()) for _ in range(self.concurrency)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    async def _worker(self) -> None:
        assert self._session is not None
        while True:
            ((tenant, tier),) = self._rng.choices(self.tenants, cum_weights=self._cumulative)
            started = time.monotonic()
            variant, error = "", True
            try:
                headers = {"X-Tenant-ID": tenant}
                async with self._session.get(self.url, headers=headers) as response:
                    await response.read()
                    variant = response.headers.get(SERVED_BY, "")
                    error = response.status >= 500
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.05)
            now = time.monotonic()
            self._add(Outcome(now, tier, variant, error, now - started))

    def _add(self, outcome: Outcome) -> None:
        self.total += 1
        self.recent.append(outcome)
        horizon = outcome.at - WINDOW_S
        while self.recent and self.recent[0].at < horizon:
            self.recent.popleft()


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values.sort()
    return values[min(len(values) - 1, int(q * len(values)))]


def _arms(recent: Sequence[Outcome]) -> Table:
    table = Table(title=f"last {WINDOW_S:g} s", expand=False)
    for column in ("arm", "req/s", "errors", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right" if column != "arm" else "left")
    for arm in ("stable", "canary"):
        rows = [o for o in recent if o.variant == arm]
        latencies = [o.latency_s * 1000 for o in rows]
        errors = sum(o.error for o in rows)
        rate = f"{100 * errors / len(rows):.1f}%" if rows else "-"
        p50, p99 = _quantile(latencies, 0.5), _quantile(latencies, 0.99)
        table.add_row(arm, f"{len(rows) / WINDOW_S:.0f}", rate, f"{p50:.1f}", f"{p99:.1f}")
    return table


def _split(recent: Sequence[Outcome], tiers: Sequence[str]) -> Table:
    table = Table(title="split by tier", expand=False)
    for column in ("tier", "requests", "on canary"):
        table.add_column(column, justify="right" if column != "tier" else "left")
    for tier in tiers:
        rows = [o for o in recent if o.tier == tier and o.variant]
        canary = sum(o.variant == "canary" for o in rows)
        share = f"{100 * canary / len(rows):.0f}%" if rows else "-"
        table.add_row(tier, str(len(rows)), share)
    return table


def render(status: dict[str, Any], traffic: SteadyTraffic, tiers: Sequence[str]) -> Panel:
    """One frame of the live view."""
    step = status["step_definition"]
    cohort = ", ".join(step["tiers"] + step["tenants"]) or "everyone"
    observe = step["observe_s"]
    head = Text.assemble(
        (f"{status['service']}  ", "bold"),
        (status["status"], "bold green" if status["status"] != "rolled_back" else "bold red"),
        "   baseline: all stable, measuring each tier"
        if step.get("baseline")
        else f"   step {status['step'] + 1}/{status['steps']}: {step['percent']:g}% of {cohort}",
        f"   in step {status['time_in_step_s']:.0f}s"
        + (f" (observe {observe:g}s)" if observe else ""),
        f"   sent {traffic.total}",
    )
    recent = list(traffic.recent)
    tables = Table.grid(padding=(0, 4))
    tables.add_row(_arms(recent), _split(recent, tiers))
    verdict = status.get("verdict")
    words = f"{verdict['verdict']}: {verdict['summary']}" if verdict else "waiting for data"
    return Panel(Group(head, tables, Text(words, style="italic")), title="rollout-proxy demo")
