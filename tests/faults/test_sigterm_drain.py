"""F7: SIGTERM under load, behind a client that honours readiness.

Expected: /readyz fails first, while the data plane still accepts and serves (the drain notice);
a client that stops sending once /readyz fails sees no failed request; requests in flight finish;
then the listener closes and the process exits once in-flight work is done. A WebSocket tunnel
(bytes, not frames: the proxy cannot tell a frame boundary, so it cannot inject a 1001 close
frame without risking a corrupt stream) is closed cleanly with a FIN to both sides at the drain
deadline; the upstream application sees the end and the client sees an orderly close, never a
reset. Figures: failed requests, requests served after SIGTERM, drain duration.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.faults.harness import load, origin, report, tally
from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, service

DRAIN_S = 2.0
NOTICE_S = 0.5


async def _ws_upstream(closed: asyncio.Event) -> tuple[web.AppRunner, int]:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(f"echo {message.data}")
        closed.set()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def _config(tmp_path: Path, stable: str, ws: str) -> dict[str, Any]:
    plain = service([stable], [stable], name="shop", match={"host": "app"})
    sockets = service([ws], [ws], name="sockets", match={"host": "ws"})
    data = config_dict(plain, sockets, limits={"drain": DRAIN_S, "drain_notice": NOTICE_S})
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    return data


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_under_load_fails_no_request_of_a_readiness_aware_client(
    tmp_path: Path, workers: str
) -> None:
    stable = await origin("stable", "--delay", "0.05")
    ws_closed = asyncio.Event()
    runner, ws_port = await _ws_upstream(ws_closed)
    proxy = await ProxyProcess(
        _config(tmp_path, stable.url, f"http://127.0.0.1:{ws_port}"),
        tmp_path,
        {},
        ("--workers", workers),
    ).start()
    traffic = await load(
        proxy.data_url,
        tmp_path / "load.json",
        "--concurrency",
        "16",
        "--duration",
        "20",
        "--readiness",
        f"{proxy.admin_url}/readyz",
    )
    session = aiohttp.ClientSession()
    try:
        await traffic.started()
        ws = await session.ws_connect(proxy.data_url + "/ws", headers={"Host": "ws"})
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "echo hello"
        await asyncio.sleep(0.5)
        assert proxy.proc is not None
        terminated = time.monotonic()
        proxy.proc.send_signal(15)
        # During the notice the listener still serves a client that ignores readiness.
        async with session.get(proxy.data_url + "/late", headers={"Host": "app"}) as late:
            late_status = late.status
        message = await ws.receive(timeout=DRAIN_S + 3)
        ws_end = time.monotonic() - terminated
        outcomes = await traffic.finished(within=30)
        async with asyncio.timeout(DRAIN_S + 5):
            exit_code = await proxy.proc.wait()
        exited = time.monotonic() - terminated
        async with asyncio.timeout(2):
            await ws_closed.wait()
    finally:
        await session.close()
        await traffic.kill()
        await proxy.kill()
        await stable.kill()
        await runner.cleanup()
    failed = [o for o in outcomes if not o.ok]
    after = [o for o in outcomes if o.start >= terminated]
    report(
        "F7 SIGTERM drain",
        requests=len(outcomes),
        failed=len(failed),
        errors=tally(failed),
        served_after_sigterm=len(after),
        drain_s=round(exited, 3),
        websocket_closed_after_s=round(ws_end, 3),
        websocket_close=message.type.name,
    )
    assert exit_code == 0
    assert failed == [], tally(failed)
    assert late_status == 200, "the data plane stopped serving before readiness failed"
    # The tunnel ends at the drain deadline with an orderly close: aiohttp reports CLOSED (EOF)
    # for a FIN; a reset would be ERROR.
    assert message.type is aiohttp.WSMsgType.CLOSED, message
    assert NOTICE_S + DRAIN_S - 0.2 <= ws_end <= NOTICE_S + DRAIN_S + 1.0, ws_end
    assert exited <= NOTICE_S + DRAIN_S + 2.0
