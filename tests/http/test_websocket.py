"""End to end: a WebSocket upgrade is relayed after the upstream's 101, then frames flow both
ways through the proxy until a clean close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.support.client import exchange, get, scrape, series, value
from tests.support.proxy import config_dict, running_proxy, service


async def echo_socket(request: web.Request) -> web.WebSocketResponse:
    """Echo every message back, prefixed with the variant the proxy chose."""
    variant = request.headers.get("X-Rollout-Variant", "?")
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str(f"{variant}:{message.data}")
        elif message.type is WSMsgType.BINARY:
            await ws.send_bytes(variant.encode() + b":" + message.data)
    return ws


async def plain(request: web.Request) -> web.Response:
    return web.Response(text="plain")


async def refuse(request: web.Request) -> web.Response:
    return web.Response(status=403, text="no upgrade for you")


@asynccontextmanager
async def websocket_upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/ws", echo_socket)
    app.router.add_get("/plain", plain)
    app.router.add_get("/refuse", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


async def test_websocket_messages_flow_both_ways_and_close_cleanly() -> None:
    texts = ["hello", "ünïcödé", "x" * 70_000]
    blobs = [b"\x00\x01\x02", bytes(range(256)) * 300]
    async with websocket_upstream() as origin:
        config = config_dict(service([origin], [origin], steps=[{"percent": 0}]))
        async with running_proxy(config) as proxy, aiohttp.ClientSession() as session:
            async with session.ws_connect(proxy.data_url + "/ws", autoping=False) as ws:
                for text in texts:
                    await ws.send_str(text)
                    assert await ws.receive_str(timeout=5) == f"stable:{text}"
                for blob in blobs:
                    await ws.send_bytes(blob)
                    assert await ws.receive_bytes(timeout=5) == b"stable:" + blob
                await ws.ping(b"are you there")
                pong = await ws.receive(timeout=5)
                assert pong.type is WSMsgType.PONG
                assert pong.data == b"are you there"
                assert await ws.close()
            assert ws.close_code == aiohttp.WSCloseCode.OK
            # The proxy keeps serving plain HTTP afterwards.
            after = await exchange(proxy.data_address[1], get("/plain"))
            samples = await scrape(proxy)
    assert after.body == b"plain"
    # The upgrade is counted once, as a 1xx answer of the stable variant.
    labels = {"service": "svc", "variant": "stable", "tier": "free"}
    assert value(samples, "rollout_requests_total", **labels, status_class="1xx") == 1
    assert not any(series(samples, "rollout_upstream_failures_total").values())
    assert not any(series(samples, "rollout_client_aborts_total").values())


async def test_several_websockets_at_once_stay_separate() -> None:
    async with websocket_upstream() as origin:
        config = config_dict(service([origin], [origin], steps=[{"percent": 0}]))
        async with running_proxy(config) as proxy, aiohttp.ClientSession() as session:

            async def talk(n: int) -> list[str]:
                async with session.ws_connect(proxy.data_url + "/ws") as ws:
                    got = []
                    for i in range(5):
                        await ws.send_str(f"{n}-{i}")
                        got.append(await ws.receive_str(timeout=5))
                    await ws.close()
                    return got

            results = await asyncio.gather(*(talk(n) for n in range(5)))
    for n, got in enumerate(results):
        assert got == [f"stable:{n}-{i}" for i in range(5)]


async def test_refused_upgrade_relays_the_upstream_answer() -> None:
    async with websocket_upstream() as origin:
        config = config_dict(service([origin], [origin], steps=[{"percent": 0}]))
        async with running_proxy(config) as proxy, aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(proxy.data_url + "/refuse")
            after = await exchange(proxy.data_address[1], get("/plain"))
    assert refused.value.status == 403
    assert after.body == b"plain"
