"""Real webhook receivers for notification tests: an aiohttp server on 127.0.0.1:<free port>
that records what each path received, and answers as the test scripts it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Delivery:
    path: str
    content_type: str
    body: Any  # the JSON received
    at: float  # loop time


@dataclass(slots=True)
class Behaviour:
    delay_s: float = 0.0
    statuses: list[int] = field(default_factory=list)  # answered in order, then 200


class Webhooks:
    """`url(path)` is where a receiver posts; `got(path)` what arrived there."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.behaviours: dict[str, Behaviour] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def got(self, path: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.path == path]

    async def start(self) -> Webhooks:
        app = web.Application()
        app.router.add_post("/{path}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = await request.json()
        loop = asyncio.get_running_loop()
        self.deliveries.append(Delivery(path, request.content_type, body, loop.time()))
        behaviour = self.behaviours.get(path, Behaviour())
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        status = behaviour.statuses.pop(0) if behaviour.statuses else 200
        return web.json_response({"ok": status == 200}, status=status)


async def eventually(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]], within: float = 5.0
) -> None:
    """Wait until `check()` holds (polled every 20 ms); fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
