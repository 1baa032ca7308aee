"""The demo's pieces: its upstreams, its steady traffic and its live view (real sockets)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest
from rich.console import Console

from proxy.demo import SERVED_BY, DemoUpstreams, start_demo_upstreams
from proxy.demolive import SteadyTraffic, render


@pytest.fixture
async def upstreams() -> AsyncIterator[DemoUpstreams]:
    async with await start_demo_upstreams(0.0, rng=random.Random(0)) as running:
        yield running


async def _statuses(url: str, count: int) -> list[int]:
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(count):
            async with session.get(url + "/x") as response:
                await response.read()
                statuses.append(response.status)
        return statuses


async def test_upstreams_answer_any_path_and_method(upstreams: DemoUpstreams) -> None:
    assert upstreams.stable_url.startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession() as session:
        for url, variant in ((upstreams.stable_url, "stable"), (upstreams.canary_url, "canary")):
            async with session.post(f"{url}/a/b?c=1", data=b"x" * 100_000) as response:
                assert response.status == 200
                assert response.headers[SERVED_BY] == variant
                assert await response.json() == {"variant": variant, "path": "/a/b"}


async def test_canary_fails_at_the_seeded_rate_exactly() -> None:
    rate, requests = 0.3, 400
    seeded = random.Random(7)
    expected = sum(seeded.random() < rate for _ in range(requests))
    async with await start_demo_upstreams(rate, rng=random.Random(7)) as running:
        canary = await _statuses(running.canary_url, requests)
        stable = await _statuses(running.stable_url, 50)
    assert canary.count(500) == expected
    assert set(stable) == {200}


async def test_base_rate_applies_to_both_and_rates_are_checked() -> None:
    async with await start_demo_upstreams(0.0, base_error_rate=1.0) as running:
        assert set(await _statuses(running.stable_url, 5)) == {500}
        assert set(await _statuses(running.canary_url, 5)) == {500}
    with pytest.raises(ValueError, match=r"0\.\.1"):
        await start_demo_upstreams(1.5)


async def test_close_stops_both_servers() -> None:
    running = await start_demo_upstreams()
    await running.close()
    with pytest.raises(aiohttp.ClientError):
        await _statuses(running.stable_url, 1)


async def test_steady_traffic_counts_by_arm_and_tier_and_renders(upstreams: DemoUpstreams) -> None:
    tenants = [("acme", "enterprise"), ("t1", "free"), ("t2", "free")]
    traffic = SteadyTraffic(upstreams.canary_url + "/", tenants, concurrency=4)
    await traffic.start()
    await asyncio.sleep(0.5)
    await traffic.stop()
    recent = list(traffic.recent)
    assert traffic.total >= len(recent) > 10
    assert {o.variant for o in recent} == {"canary"}
    assert {o.tier for o in recent} == {"enterprise", "free"}
    assert sum(o.tier == "enterprise" for o in recent) > len(recent) / 3  # the busiest tenant
    status = {
        "service": "shop",
        "status": "progressing",
        "step": 1,
        "steps": 4,
        "step_definition": {"baseline": False, "percent": 10, "tiers": [], "tenants": [],
                            "observe_s": 5},
        "time_in_step_s": 3.2,
        "verdict": {"verdict": "inconclusive", "summary": "waiting for evidence"},
    }  # fmt: skip
    console = Console(width=120, record=True)
    console.print(render(status, traffic, ["enterprise", "free"]))
    text = console.export_text()
    assert "step 2/4: 10% of everyone" in text
    assert "canary" in text
    assert "inconclusive: waiting for evidence" in text
