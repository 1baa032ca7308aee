"""Built-in demo upstreams for `rollout-proxy demo`.

Owns the two loopback demo servers ("stable" and "canary"): each answers any method and path
with a small JSON body naming its variant and the header `X-Served-By: stable|canary`, after a
log-normal delay; both fail with 500 at a base rate and the canary at a chosen extra rate,
drawn from an injected `random.Random`. Nothing here knows the proxy: the demo starts these
upstreams, the proxy in front of them, then drives traffic (`proxy.demolive`).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web

SERVED_BY = "X-Served-By"  # which demo upstream answered: stable | canary

__all__ = ["SERVED_BY", "DemoUpstreams", "start_demo_upstreams"]


@dataclass(frozen=True, slots=True)
class _Responder:
    """Request handler of one demo upstream: fails at `error_rate`, answers after a
    log-normal delay around `latency_s` (real services have tails)."""

    variant: str
    error_rate: float
    rng: random.Random
    latency_s: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        async for _ in request.content.iter_any():  # drain any body without keeping it
            pass
        if self.latency_s > 0:
            await asyncio.sleep(self.rng.lognormvariate(math.log(self.latency_s), 0.5))
        failed = self.error_rate > 0 and self.rng.random() < self.error_rate
        body = {"variant": self.variant, "path": request.path}
        if failed:
            body["error"] = "injected failure"
        return web.json_response(
            body, status=500 if failed else 200, headers={SERVED_BY: self.variant}
        )


@dataclass(frozen=True, slots=True)
class DemoUpstreams:
    """The running demo upstreams; `close()` (or `async with`) stops both."""

    stable_url: str
    canary_url: str
    _runners: Sequence[web.AppRunner]

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    async def __aenter__(self) -> DemoUpstreams:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _serve(responder: _Responder, host: str) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", responder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0)
        await site.start()
        port = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    return runner, f"http://{host}:{port}"


async def start_demo_upstreams(
    canary_error_rate: float = 0.0,
    *,
    rng: random.Random | None = None,
    host: str = "127.0.0.1",
    base_error_rate: float = 0.0,
    latency_s: float = 0.0,
    canary_latency_s: float | None = None,
) -> DemoUpstreams:
    """Start "stable" and "canary" on `host`, random free ports. Both fail at
    `base_error_rate`, the canary at `canary_error_rate` more; both answer after about
    `latency_s` (the canary after `canary_latency_s` when given)."""
    for name, rate in (("canary_error_rate", canary_error_rate), ("base", base_error_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be 0..1, got {rate}")
    draw = rng if rng is not None else random.Random()
    canary_rate = min(1.0, base_error_rate + canary_error_rate)
    slow = latency_s if canary_latency_s is None else canary_latency_s
    stable, stable_url = await _serve(_Responder("stable", base_error_rate, draw, latency_s), host)
    try:
        canary, canary_url = await _serve(_Responder("canary", canary_rate, draw, slow), host)
    except BaseException:
        await stable.cleanup()
        raise
    return DemoUpstreams(stable_url, canary_url, (stable, canary))
