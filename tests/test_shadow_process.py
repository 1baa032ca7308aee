"""The shadow step's two live cases against the real proxy process (`rollout-proxy run`, one
process: shadowing runs in the single-process data plane), read through its admin API: a
canary changing one JSON field on 2% of one route is rolled back in the shadow step while every
client got stable's answer; an identical canary with random timestamps and ids advances."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.process import ProxyProcess
from tests.test_shadow_live import apps, canary_item, noisy, shadow_config, stable_item


async def _state(session: aiohttp.ClientSession, proxy: ProxyProcess) -> dict[str, Any]:
    async with session.get(f"{proxy.admin_url}/api/v1/services/svc") as reply:
        body: dict[str, Any] = await reply.json()
        return body


async def _decisions(session: aiohttp.ClientSession, proxy: ProxyProcess) -> list[Any]:
    async with session.get(f"{proxy.admin_url}/api/v1/services/svc/decisions") as reply:
        entries: list[Any] = (await reply.json())["decisions"]
        return entries


async def _drive(
    session: aiohttp.ClientSession, proxy: ProxyProcess, paths: list[str], until: str
) -> tuple[list[tuple[str, int, Any]], dict[str, Any]]:
    """GET the paths (20 at a time) until the rollout's status or step says `until` (or the
    paths run out); what each client got, and the last state seen."""
    got: list[tuple[str, int, Any]] = []
    queue = list(reversed(paths))
    state: dict[str, Any] = {}

    def done() -> bool:
        return state.get("status") == until or (until == "advanced" and state.get("step", 0) >= 1)

    async def client(n: int) -> None:
        while queue and not done():
            path = queue.pop()
            headers = {"X-Tenant-ID": f"tenant-{n}"}
            async with session.get(proxy.data_url + path, headers=headers) as response:
                got.append((path, response.status, await response.json()))

    async def watch() -> None:
        deadline = time.monotonic() + 60
        while not done() and (queue or time.monotonic() < deadline):
            state.update(await _state(session, proxy))
            await asyncio.sleep(0.1)

    await asyncio.gather(watch(), *(client(n) for n in range(20)))
    return got, state


async def test_the_real_process_rolls_back_a_canary_wrong_on_one_field(tmp_path: Path) -> None:
    async with apps(stable_item, canary_item) as (stable, canary):
        proxy = await ProxyProcess(shadow_config([stable], canary, 0.002), tmp_path, {}).start()
        try:
            async with aiohttp.ClientSession() as session:
                paths = [f"/{'items' if i % 4 else 'users'}/{i}" for i in range(1, 8001)]
                got, state = await _drive(session, proxy, paths, "rolled_back")
                decisions = await _decisions(session, proxy)
        finally:
            await proxy.kill()
    assert state["status"] == "rolled_back", state
    assert all(status == 200 for _, status, _ in got)
    for path, _, body in got:  # every client got stable's answer, never the canary's
        _, kind, ident = path.split("/")
        assert body == stable_item(kind, ident), path
    entry = next(e for e in decisions if e["action"] == "degraded")
    assert entry["from"]["step"] == 0
    assert entry["evidence"]["check"] == "shadow:/items/{id}"
    (failing,) = [c for c in entry["evidence"]["checks"] if c["check"] == "shadow:/items/{id}"]
    assert [path for path, _ in failing["paths"]] == ["$.price"]


async def test_the_real_process_advances_an_identical_noisy_canary(tmp_path: Path) -> None:
    async with apps(noisy, noisy, noisy) as (stable_a, stable_b, canary):
        config = shadow_config([stable_a, stable_b], canary, 0.02)
        proxy = await ProxyProcess(config, tmp_path, {}).start()
        try:
            async with aiohttp.ClientSession() as session:
                paths = [f"/{'items' if i % 2 else 'users'}/{i}" for i in range(1, 6001)]
                _, state = await _drive(session, proxy, paths, "advanced")
                decisions = await _decisions(session, proxy)
        finally:
            await proxy.kill()
    assert state["step"] >= 1, state
    assert state["status"] != "rolled_back"
    assert "degraded" not in {e["action"] for e in decisions}
    advance = next(e for e in decisions if e["action"] == "advance")
    shadow = [c for c in advance["evidence"]["checks"] if c["check"].startswith("shadow:")]
    assert shadow
    assert all(c["canary"]["events"] == 0 for c in shadow)  # no false mismatch
