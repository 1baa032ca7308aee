"""An HTTP/1.1 origin for the HTTP/2 tests (aiohttp): what it saw, echoes, big bodies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web


@dataclass
class Origin:
    """An aiohttp origin that records every request it is sent."""

    name: str
    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


ORIGIN = web.AppKey("origin", Origin)


async def _handle(request: web.Request) -> web.StreamResponse:
    origin = request.app[ORIGIN]
    body = await request.read()
    origin.seen.append(
        {
            "method": request.method,
            "path": request.path_qs,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": len(body),
            "chunked": request.headers.get("Transfer-Encoding") == "chunked",
        }
    )
    if request.path == "/echo":
        return web.Response(body=body, headers={"X-Origin": origin.name})
    if request.path.startswith("/big/"):
        size = int(request.path.rsplit("/", 1)[1])
        return web.Response(body=b"x" * size, headers={"X-Origin": origin.name})
    if request.path == "/slow":
        await asyncio.sleep(3)
        return web.Response(text="slow")
    if request.path == "/fail":
        return web.Response(status=503, text="down")
    seen = origin.seen[-1]
    return web.Response(body=orjson.dumps(seen), headers={"X-Origin": origin.name})


async def _start(name: str) -> tuple[Origin, web.AppRunner]:
    origin = Origin(name)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[ORIGIN] = origin
    app.router.add_route("*", "/{tail:.*}", _handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server  # the bound port of port 0
    origin.port = int(server.sockets[0].getsockname()[1])
    return origin, runner


@pytest.fixture
async def stable() -> AsyncIterator[Origin]:
    origin, runner = await _start("stable")
    yield origin
    await runner.cleanup()


@pytest.fixture
async def canary() -> AsyncIterator[Origin]:
    origin, runner = await _start("canary")
    yield origin
    await runner.cleanup()
