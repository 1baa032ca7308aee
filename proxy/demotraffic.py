"""Demo traffic: a bounded burst of tenant requests, counted per tier, and its report table.

Owns `drive_traffic` (aiohttp client, bounded concurrency, tenants drawn with a Zipf-like skew
from an injected `random.Random`), the frozen `TrafficReport` it returns and `render_report`.
It reads only the response status and the `X-Served-By` header the demo upstreams set, so it
works against the proxy or straight against one demo upstream. It must not start servers.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import aiohttp

SERVED_BY = "X-Served-By"
TENANT_HEADER = "X-Tenant-ID"


@dataclass(frozen=True, slots=True)
class TierCounts:
    """Requests of one tier; an error is a response >= 400 or no response at all."""

    tier: str
    requests: int = 0
    stable: int = 0
    canary: int = 0
    errors: int = 0

    @property
    def canary_share(self) -> float:
        """Canary's part of the requests that stable or canary answered (0.0 when none)."""
        served = self.stable + self.canary
        return self.canary / served if served else 0.0


@dataclass(frozen=True, slots=True)
class TrafficReport:
    """Per-tier counts, tiers in order of first appearance in the tenant list."""

    tiers: tuple[TierCounts, ...]

    def for_tier(self, tier: str) -> TierCounts:
        for counts in self.tiers:
            if counts.tier == tier:
                return counts
        raise KeyError(tier)

    @property
    def total(self) -> TierCounts:
        return TierCounts(
            "total",
            sum(c.requests for c in self.tiers),
            sum(c.stable for c in self.tiers),
            sum(c.canary for c in self.tiers),
            sum(c.errors for c in self.tiers),
        )


def demo_tenants(count: int = 40) -> tuple[tuple[str, str], ...]:
    """`count` (tenant, tier) pairs; tiers internal (1 in 10), enterprise (3 in 10), free."""
    tiers = ("internal", "enterprise", "enterprise", "enterprise") + ("free",) * 6
    return tuple((f"tenant-{i:03d}", tiers[i % len(tiers)]) for i in range(count))


@dataclass(slots=True)
class _Tally:
    """Mutable counts while traffic runs; frozen into a `TrafficReport` at the end."""

    counts: dict[str, list[int]] = field(default_factory=dict)  # [requests, stable, canary, errors]

    def add(self, tier: str, served_by: str | None, ok: bool) -> None:
        row = self.counts[tier]
        row[0] += 1
        if served_by == "stable":
            row[1] += 1
        elif served_by == "canary":
            row[2] += 1
        if not ok:
            row[3] += 1

    def freeze(self) -> TrafficReport:
        return TrafficReport(tuple(TierCounts(t, *row) for t, row in self.counts.items()))


@dataclass(frozen=True, slots=True)
class _Driver:
    session: aiohttp.ClientSession
    url: str
    tenants: Sequence[tuple[str, str]]
    tier_header: str | None
    tally: _Tally

    async def worker(self, picks: Iterator[int]) -> None:
        for index in picks:  # shared iterator: each pick is taken by exactly one worker
            tenant, tier = self.tenants[index]
            headers = {TENANT_HEADER: tenant}
            if self.tier_header:
                headers[self.tier_header] = tier
            served_by, ok = await self._send(headers)
            self.tally.add(tier, served_by, ok)

    async def _send(self, headers: dict[str, str]) -> tuple[str | None, bool]:
        try:
            async with self.session.get(self.url, headers=headers) as response:
                await response.read()
                return response.headers.get(SERVED_BY), response.status < 400
        except (aiohttp.ClientError, TimeoutError):
            return None, False


def _skewed_picks(tenants: int, requests: int, rng: random.Random) -> Iterator[int]:
    """Tenant indexes with weight 1/(rank+1): the first tenants are the busiest."""
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(tenants)))
    return iter(rng.choices(range(tenants), cum_weights=cumulative, k=requests))


async def drive_traffic(
    base_url: str,
    tenants: Sequence[tuple[str, str]],
    requests: int,
    concurrency: int,
    *,
    rng: random.Random | None = None,
    path: str = "/",
    tier_header: str | None = None,
    timeout_s: float = 10.0,
) -> TrafficReport:
    """Send `requests` GETs to `base_url + path`, at most `concurrency` in flight.

    Each carries `X-Tenant-ID` of a (tenant, tier) drawn with skew; `tier_header`, when given,
    also sends the tier (the proxy honours it only from trusted peers, after its tenant map).
    """
    if not tenants or requests < 0 or concurrency < 1:
        raise ValueError("need tenants, requests >= 0 and concurrency >= 1")
    picks = _skewed_picks(len(tenants), requests, rng if rng is not None else random.Random())
    tally = _Tally({tier: [0, 0, 0, 0] for _, tier in tenants})
    url = base_url.rstrip("/") + "/" + path.lstrip("/")
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        driver = _Driver(session, url, tenants, tier_header, tally)
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, requests)):
                group.create_task(driver.worker(picks))
    return tally.freeze()


_COLUMNS = ("tier", "requests", "stable", "canary", "canary share", "errors")


def _cells(counts: TierCounts) -> tuple[str, ...]:
    share = f"{100 * counts.canary_share:.1f}%"
    numbers = (counts.requests, counts.stable, counts.canary)
    return (counts.tier, *map(str, numbers), share, str(counts.errors))


def render_report(report: TrafficReport) -> str:
    """A plain-text table: one row per tier, then the total."""
    rows = [_COLUMNS, *map(_cells, report.tiers), _cells(report.total)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])

    rule = "-" * len(line(_COLUMNS))
    return "\n".join([line(rows[0]), rule, *map(line, rows[1:-1]), rule, line(rows[-1])])
