"""The admin page's server side on a running proxy: its assets, /series and /plan, the sampler."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import aiohttp
import pytest

from proxy.adminpage import ASSETS, Sampler
from proxy.runtime import Runtime
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.upstream import Received, RecordingUpstream, Reply

STEPS: list[dict[str, Any]] = [
    {"tiers": ["internal"], "percent": 100, "observe": "1h"},
    {"percent": 30},
]
TENANTS = {"staff-1": "internal", "staff-2": "internal"}


async def _get(runtime: Runtime, path: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(runtime.admin_url + path) as r:
        return r.status, dict(r.headers), await r.read()


async def _json(runtime: Runtime, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(runtime.admin_url + path) as r:
        return r.status, await r.json()


def _failing_every(n: int) -> Any:
    seen = Counter[str]()

    def reply(received: Received) -> Reply:
        seen["n"] += 1
        return Reply(500 if seen["n"] % n == 0 else 200, [], b"ok\n")

    return reply


@pytest.fixture
async def upstreams() -> Any:
    stable = await RecordingUpstream("stable", _failing_every(10)).start()
    canary = await RecordingUpstream("canary", _failing_every(4)).start()
    yield stable, canary
    await stable.close()
    await canary.close()


def _config(stable: RecordingUpstream, canary: RecordingUpstream) -> dict[str, Any]:
    section = service(
        [stable.url],
        [canary.url],
        name="shop",
        steps=STEPS,
        tiers={"tenants": TENANTS, "default": "free"},
    )
    section["rollout"]["baseline"] = "0s"
    return config_dict(section)


async def test_the_page_is_served_self_contained(upstreams: Any) -> None:
    async with running_proxy(_config(*upstreams)) as runtime:
        for path, (_, content_type) in ASSETS.items():
            status, headers, body = await _get(runtime, path)
            assert status == 200
            assert headers["Content-Type"] == content_type
            assert "default-src 'none'" in headers["Content-Security-Policy"]
            # Nothing is fetched from elsewhere: the only absolute URL is the SVG namespace.
            urls = set(re.findall(rb"https?://[^\s\"'`)]+", body))
            assert urls <= {b"http://www.w3.org/2000/svg"}, urls
        _, _, html = await _get(runtime, "/")
        assert b'src="/page/app.js"' in html
        assert b'href="/page/style.css"' in html
        assert (await _get(runtime, "/page/other.js"))[0] == 404


async def test_series_counts_what_the_upstreams_answered(upstreams: Any) -> None:
    stable, canary = upstreams
    async with running_proxy(_config(stable, canary)) as runtime, aiohttp.ClientSession() as s:
        sampler = runtime.sampler
        assert sampler is not None
        seen: Counter[tuple[str, int]] = Counter()
        for i in range(120):
            tenant = "staff-1" if i % 3 == 0 else f"user-{i}"
            headers = {"X-Tenant-ID": tenant}
            async with s.get(runtime.data_url + "/x", headers=headers) as response:
                await response.read()
                seen[("internal" if i % 3 == 0 else "free", response.status)] += 1
        sampler.sample()
        status, body = await _json(runtime, "/api/v1/services/shop/series")
    assert status == 200
    assert (body["interval_s"], body["window_s"]) == (2.0, 1800.0)
    assert body["error_statuses"] == [
        "5xx",
        "grpc:DEADLINE_EXCEEDED",
        "grpc:INTERNAL",
        "grpc:UNAVAILABLE",
        "grpc:UNKNOWN",
    ]
    # The runtime's own sampler may have taken a sample meanwhile: add them up.
    total: Counter[tuple[str, str, str]] = Counter()
    for sample in body["samples"]:
        assert (sample["status"], sample["step"]) == ("progressing", 0)
        for tier, arms in sample["tiers"].items():
            assert arms["baseline"] == ("stable" if tier == "free" else "none")
            for arm in ("stable", "canary"):
                total[(tier, arm, "requests")] += arms[arm]["requests"]
                total[(tier, arm, "errors")] += arms[arm]["errors"]
    # The internal tier is wholly on the canary, the free tier wholly on stable.
    assert total[("internal", "canary", "requests")] == len(canary.requests) == 40
    assert total[("internal", "canary", "errors")] == seen[("internal", 500)] == 10
    assert total[("internal", "stable", "requests")] == 0
    assert total[("free", "stable", "requests")] == len(stable.requests) == 80
    assert total[("free", "stable", "errors")] == seen[("free", 500)] == 8
    assert all(
        arms["stable"]["p50_ms"] > 0
        for sample in body["samples"]
        for tier, arms in sample["tiers"].items()
        if tier == "free"
    )


async def test_series_since_and_errors(upstreams: Any) -> None:
    async with running_proxy(_config(*upstreams)) as runtime:
        sampler = runtime.sampler
        assert sampler is not None
        sampler.sample()
        await asyncio.sleep(0.01)
        sampler.sample()
        _, body = await _json(runtime, "/api/v1/services/shop/series")
        first, second = body["samples"]
        _, newer = await _json(runtime, f"/api/v1/services/shop/series?since={first['t']}")
        assert newer["samples"] == [second]
        status, error = await _json(runtime, "/api/v1/services/shop/series?since=soon")
        assert (status, error) == (400, {"error": "since: expected seconds since the epoch"})
        assert (await _json(runtime, "/api/v1/services/nope/series"))[0] == 404
        assert (await _json(runtime, "/api/v1/services/nope/plan"))[0] == 404


async def test_plan_lists_every_step_and_the_split_per_tier(upstreams: Any) -> None:
    async with running_proxy(_config(*upstreams)) as runtime:
        status, plan = await _json(runtime, "/api/v1/services/shop/plan")
        assert status == 200
        assert plan["steps"] == [
            {
                "percent": 100.0,
                "tiers": ["internal"],
                "tenants": [],
                "observe_s": 3600.0,
                "shadow": 0.0,
            },
            {"percent": 30.0, "tiers": [], "tenants": [], "observe_s": None, "shadow": 0.0},
        ]
        assert (plan["step"], plan["baseline_s"]) == (0, 0.0)
        assert plan["tiers"] == {"free": 0.0, "internal": 100.0}


async def test_the_sampler_samples_on_its_own_and_stops(upstreams: Any) -> None:
    async with running_proxy(_config(*upstreams)) as runtime:
        assert runtime.controller is not None
        sampler = Sampler(runtime.controller, runtime.metrics, interval_s=0.02, window_s=0.1)
        sampler.start()
        await asyncio.sleep(0.3)
        await sampler.close()
        history = sampler.histories["shop"]
        assert len(history.samples) == 5  # the ring holds window / interval samples
        taken = [s.at for s in history.samples]
        await asyncio.sleep(0.05)
        assert [s.at for s in history.samples] == taken
    assert runtime.sampler is None  # the runtime closed its own sampler
