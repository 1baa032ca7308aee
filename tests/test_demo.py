"""proxy/demo.py and proxy/demotraffic.py: demo upstreams, traffic driver, report table."""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from proxy.demo import (
    DemoUpstreams,
    TierCounts,
    TrafficReport,
    demo_tenants,
    drive_traffic,
    render_report,
    start_demo_upstreams,
)

ONE_PER_TIER = tuple((f"t{i}", f"tier{i}") for i in range(10))


@pytest.fixture
async def upstreams() -> AsyncIterator[DemoUpstreams]:
    async with await start_demo_upstreams(0.0, rng=random.Random(0)) as running:
        yield running


async def test_upstreams_answer_any_path_and_method(upstreams: DemoUpstreams) -> None:
    assert upstreams.stable_url.startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession() as session:
        for url, variant in ((upstreams.stable_url, "stable"), (upstreams.canary_url, "canary")):
            async with session.post(f"{url}/a/b?c=1", data=b"x" * 100_000) as response:
                assert response.status == 200
                assert response.headers["X-Served-By"] == variant
                assert await response.json() == {"variant": variant, "path": "/a/b"}


async def test_canary_fails_at_the_seeded_rate_exactly() -> None:
    rate, requests = 0.3, 400
    seeded = random.Random(7)
    expected = sum(seeded.random() < rate for _ in range(requests))
    async with await start_demo_upstreams(rate, rng=random.Random(7)) as running:
        report = await drive_traffic(running.canary_url, ONE_PER_TIER, requests, 8)
        stable = await drive_traffic(running.stable_url, ONE_PER_TIER, 50, 8)
    assert (report.total.canary, report.total.errors) == (requests, expected)
    assert (stable.total.stable, stable.total.errors) == (50, 0)


async def test_error_rate_bounds() -> None:
    async with await start_demo_upstreams(1.0) as running:
        report = await drive_traffic(running.canary_url, ONE_PER_TIER, 20, 4)
    assert report.total == TierCounts("total", 20, 0, 20, 20)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        await start_demo_upstreams(1.5)


async def test_traffic_counts_per_tier_in_order(upstreams: DemoUpstreams) -> None:
    tenants = demo_tenants(40)
    report = await drive_traffic(upstreams.stable_url, tenants, 300, 16, rng=random.Random(3))
    assert [c.tier for c in report.tiers] == ["internal", "enterprise", "free"]
    assert sum(c.requests for c in report.tiers) == 300
    assert report.total == TierCounts("total", 300, 300, 0, 0)
    assert all(c.canary_share == 0.0 for c in report.tiers)
    again = await drive_traffic(upstreams.stable_url, tenants, 300, 4, rng=random.Random(3))
    assert again == report  # same seed, same draw, whatever the concurrency


async def test_tenants_are_skewed(upstreams: DemoUpstreams) -> None:
    report = await drive_traffic(upstreams.canary_url, ONE_PER_TIER, 400, 8, rng=random.Random(5))
    first, last = report.for_tier("tier0").requests, report.for_tier("tier9").requests
    assert first > 4 * last  # weights 1/(rank+1): about 136 against 14
    assert report.for_tier("tier0").canary_share == 1.0


async def test_headers_sent_and_concurrency_bounded() -> None:
    seen: Counter[tuple[str, str | None]] = Counter()
    in_flight = peak = 0

    async def record(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        seen[(request.headers["X-Tenant-ID"], request.headers.get("X-Tenant-Tier"))] += 1
        await asyncio.sleep(0.01)
        in_flight -= 1
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/probe", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        tenants = [("acme", "enterprise"), ("qa", "internal")]
        report = await drive_traffic(url, tenants, 30, 3, path="probe", tier_header="X-Tenant-Tier")
    finally:
        await runner.cleanup()
    assert peak == 3
    assert set(seen) <= {("acme", "enterprise"), ("qa", "internal")}
    assert report.for_tier("enterprise").requests == seen[("acme", "enterprise")]
    assert report.total == TierCounts("total", 30, 0, 0, 30)  # 404 without X-Served-By


async def test_dead_upstream_counts_errors() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = await drive_traffic(f"http://127.0.0.1:{port}", ONE_PER_TIER, 12, 3)
    assert report.total == TierCounts("total", 12, 0, 0, 12)


async def test_close_stops_both_servers() -> None:
    running = await start_demo_upstreams()
    await running.close()
    report = await drive_traffic(running.stable_url, ONE_PER_TIER, 2, 1)
    assert report.total.errors == 2


async def test_bad_arguments() -> None:
    for tenants, requests, concurrency in (((), 1, 1), (ONE_PER_TIER, -1, 1), (ONE_PER_TIER, 1, 0)):
        with pytest.raises(ValueError, match="concurrency"):
            await drive_traffic("http://127.0.0.1:1", tenants, requests, concurrency)
    empty = await drive_traffic("http://127.0.0.1:1", ONE_PER_TIER, 0, 2)
    assert empty.total == TierCounts("total")


def test_render_report_table() -> None:
    report = TrafficReport(
        (TierCounts("internal", 40, 0, 40, 0), TierCounts("free", 1960, 1470, 490, 3))
    )
    assert render_report(report) == "\n".join(
        [
            "tier      requests  stable  canary  canary share  errors",
            "--------------------------------------------------------",
            "internal        40       0      40        100.0%       0",
            "free          1960    1470     490         25.0%       3",
            "--------------------------------------------------------",
            "total         2000    1470     530         26.5%       3",
        ]
    )
