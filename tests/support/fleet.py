"""Several `rollout-proxy run` processes sharing one real redis-server (fleet mode)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, service

TOKEN = "fleet-process-token"


def fleet_config(stable: str, canary: str, steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    data = config_dict(service([stable], [canary], name="shop", steps=list(steps)))
    data["state"] = {
        "backend": "redis",
        "url_env": "ROLLOUT_REDIS_URL",
        "reconcile": "500ms",
        "lease": "1500ms",
        "timeout": "250ms",
    }
    data["admin"]["token_env"] = "ADMIN_TOKEN"
    return data


async def start_fleet(
    config: dict[str, Any], redis_url: str, workdir: Path, replicas: int = 3
) -> list[ProxyProcess]:
    env = {"ROLLOUT_REDIS_URL": redis_url, "ADMIN_TOKEN": TOKEN}
    proxies = []
    for i in range(replicas):
        (workdir / f"r{i}").mkdir()
        # Two worker processes each: the fleet and the workers together, as users run them.
        proxies.append(ProxyProcess(config, workdir / f"r{i}", env, ("--workers", "2")))
    await asyncio.gather(*(p.start() for p in proxies))
    return proxies


async def get_json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        body: dict[str, Any] = await reply.json()
        return body


async def status(proxy: ProxyProcess) -> dict[str, Any]:
    return await get_json(f"{proxy.admin_url}/api/v1/services/shop")


async def state(proxy: ProxyProcess) -> dict[str, Any]:
    """What /readyz says about the shared state (decider, staleness, error)."""
    body = await get_json(f"{proxy.admin_url}/readyz")
    found: dict[str, Any] = body["state"]
    return found


async def act(
    proxy: ProxyProcess, action: str, version: int | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if version is not None:
        headers["If-Match"] = f'"{version}"'
    url = f"{proxy.admin_url}/api/v1/services/shop/{action}"
    async with aiohttp.ClientSession() as session, session.post(url, headers=headers) as reply:
        return reply.status, await reply.json()


async def wait_for(check: Callable[[], Any], within: float, poll: float = 0.01) -> float:
    """Seconds until the coroutine function `check` returns true; fails after `within`."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - polling other processes
            await asyncio.sleep(poll)
    return time.monotonic() - started
