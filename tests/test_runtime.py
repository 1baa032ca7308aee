"""Runtime: readiness and drain with a real proxy, a real slow upstream and a real client."""

from __future__ import annotations

import asyncio
import gc

import aiohttp
from aiohttp import web

from proxy.runtime import GC_YOUNG_THRESHOLD, run_loop
from tests.support.proxy import config_dict, running_proxy, service


async def _slow_upstream(delay: float) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def test_drain_fails_readiness_and_lets_in_flight_requests_finish() -> None:
    runner, url = await _slow_upstream(0.4)
    data = config_dict(service([url], [url]))
    async with running_proxy(data) as proxy, aiohttp.ClientSession() as session:
        async with session.get(proxy.admin_url + "/readyz") as response:
            assert response.status == 200
        in_flight = asyncio.create_task(session.get(proxy.data_url + "/slow"))
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(proxy.stop(drain_s=3.0, notice_s=0.0))
        await asyncio.sleep(0.05)
        assert not proxy.readiness.ready
        assert proxy.readiness.reason == "draining"
        response = await in_flight
        assert response.status == 200
        assert await response.text() == "done"
        assert response.headers.get("Connection") == "close"
        assert await stopping == 0
    await runner.cleanup()


async def test_drain_cuts_what_outlives_the_deadline() -> None:
    runner, url = await _slow_upstream(5.0)
    data = config_dict(service([url], [url]))
    async with running_proxy(data) as proxy, aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(session.get(proxy.data_url + "/slow"))
        await asyncio.sleep(0.1)
        assert await proxy.stop(drain_s=0.2, notice_s=0.0) == 1
        in_flight.cancel()
    await runner.cleanup()


async def test_readiness_fails_while_the_listener_still_serves_during_the_notice() -> None:
    runner, url = await _slow_upstream(0.0)
    data = config_dict(service([url], [url]))
    async with running_proxy(data) as proxy, aiohttp.ClientSession() as session:
        stopping = asyncio.create_task(proxy.stop(drain_s=1.0, notice_s=0.6))
        await asyncio.sleep(0.1)
        assert not proxy.readiness.ready
        # A client that has not yet seen /readyz fail still gets its answer, on a new
        # connection, told to close it.
        async with session.get(proxy.data_url + "/slow") as response:
            assert response.status == 200
            assert response.headers.get("Connection") == "close"
        assert not stopping.done()
        assert await stopping == 0
    await runner.cleanup()


def test_the_loop_runs_with_the_young_collection_threshold_raised() -> None:
    before = gc.get_threshold()

    async def threshold() -> int:
        return gc.get_threshold()[0]

    try:
        assert run_loop(threshold()) == GC_YOUNG_THRESHOLD > before[0]
        assert gc.get_threshold()[1:] == before[1:]  # the older generations' are left as they are
    finally:
        gc.set_threshold(*before)
