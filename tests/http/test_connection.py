"""proxy/http/connection.py: how a client connection ends.

A client that asked for the close with a request read whole sends nothing more: its socket is
closed as soon as the response is out. Any other close lingers (the write side shut, what the
client still sends read and dropped for a moment), so that unread input never turns into a
reset that destroys the response in flight.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from proxy.http.server import Engine
from tests.support.client import get
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.upstream import RecordingUpstream

# Under the linger (2 s): a connection gone within this was not lingered on.
QUICK_S = 1.0


@asynccontextmanager
async def engine_and_port() -> AsyncIterator[tuple[Engine, int]]:
    upstream = await RecordingUpstream().start()
    config = config_dict(service([upstream.url], [upstream.url]), limits={"max_body_bytes": 1000})
    try:
        async with running_proxy(config) as proxy:
            assert proxy._engine is not None
            yield proxy._engine, proxy.data_address[1]
    finally:
        await upstream.close()


async def open_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def read_to_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(5):
        while chunk := await loop.sock_recv(sock, 65536):
            data += chunk
    return data


async def gone_within(engine: Engine, seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while engine.connections and loop.time() < deadline:  # noqa: ASYNC110 - no event for it
        await asyncio.sleep(0.01)
    return not engine.connections


@pytest.mark.parametrize(
    "request_bytes",
    [
        get("/", {"Connection": "close"}),
        b"GET / HTTP/1.0\r\nHost: app\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: app\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbody",
    ],
    ids=["connection-close", "http10", "post-with-body"],
)
async def test_a_client_that_asked_for_the_close_is_not_lingered_on(request_bytes: bytes) -> None:
    async with engine_and_port() as (engine, port):
        sock = await open_socket(port)
        try:
            await asyncio.get_running_loop().sock_sendall(sock, request_bytes)
            response = await read_to_eof(sock)  # the proxy's FIN; this side stays open
            assert response.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 "))
            assert await gone_within(engine, QUICK_S)
        finally:
            sock.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        # more after the request that asked for the close
        get("/", {"Connection": "close"}) + get("/after"),
        # the body not sent yet when the response comes (a 413 refused at the head)
        b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 5000\r\n\r\n",
    ],
    ids=["bytes-after-the-close", "body-still-coming"],
)
async def test_any_other_close_lingers(request_bytes: bytes) -> None:
    async with engine_and_port() as (engine, port):
        sock = await open_socket(port)
        try:
            await asyncio.get_running_loop().sock_sendall(sock, request_bytes)
            response = await read_to_eof(sock)
            assert response.startswith(b"HTTP/1.1 ")
            assert not await gone_within(engine, QUICK_S)
        finally:
            sock.close()
        assert await gone_within(engine, 5)
