"""h2c by prior knowledge when the client preface comes in pieces: held while it may still be
the preface (at most its 24 bytes, within the header timeout), HTTP/2 once it is whole, and
HTTP/1.1 with every byte read from the first one that differs. Raw sockets, the real proxy,
an upstream that records every byte it gets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from proxy.http.h2connection import PREFACE
from proxy.runtime import Runtime
from tests.support.h2client import RawH2
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.upstream import RecordingUpstream

GAP_S = 0.05  # between pieces: each is a read of its own


@asynccontextmanager
async def _proxy(header_timeout: str = "10s") -> AsyncIterator[tuple[Runtime, RecordingUpstream]]:
    upstream = await RecordingUpstream("stable").start()
    data = config_dict(
        service([upstream.url], [], steps=[{"percent": 0}]),
        http2={"enabled": True, "h2c": True},
        limits={"header_timeout": header_timeout},
    )
    try:
        async with running_proxy(data) as runtime:
            yield runtime, upstream
    finally:
        await upstream.close()


async def _h2_in_pieces(port: int, pieces: Sequence[int]) -> RawH2:
    """An HTTP/2 client whose preface and SETTINGS go in pieces of these sizes (the rest in
    one), then one GET; its response read."""
    client = await RawH2.open(port, preface=False)
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.h2.initiate_connection()
    opening = client.h2.data_to_send()
    at = 0
    for size in pieces:
        client.writer.write(opening[at : at + size])
        await client.writer.drain()
        await asyncio.sleep(GAP_S)
        at += size
    client.writer.write(opening[at:])  # the rest, then the request
    sid = client.request("/h2")
    await client.send()
    assert await client.until(lambda c: c.ended(sid))
    assert client.status(sid) == 200
    assert bytes(client.bodies[sid]) == b"stable\n"  # the upstream's answer
    return client


async def _http11(port: int, pieces: Sequence[bytes]) -> bytes:
    """Send `pieces` as separate reads; everything the proxy answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(GAP_S)
    answer = bytearray()
    while chunk := await asyncio.wait_for(reader.read(65536), 10):
        answer += chunk
    writer.close()
    return bytes(answer)


async def test_a_preface_in_two_pieces_or_byte_by_byte_speaks_http2() -> None:
    async with _proxy() as (runtime, upstream):
        port = runtime.data_address[1]
        await (await _h2_in_pieces(port, [10])).close()  # 10 + 14 bytes, then SETTINGS
        await (await _h2_in_pieces(port, [1] * len(PREFACE))).close()
        await (await _h2_in_pieces(port, [])).close()  # preface + SETTINGS in one read
        await (await _h2_in_pieces(port, [len(PREFACE)])).close()  # exactly the preface
    assert [r.target for r in upstream.requests] == ["/h2"] * 4
    assert upstream.protocol_errors == []


async def test_a_preface_begun_and_stalled_is_closed_by_the_header_timeout() -> None:
    async with _proxy(header_timeout="300ms") as (runtime, upstream):
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await _http11(runtime.data_address[1], [b"PRI"])
        waited = loop.time() - started
        engine = runtime._engine
        assert engine is not None
        for _ in range(200):  # nothing is kept for it once its close is through
            if not engine.connections:
                break
            await asyncio.sleep(0.01)
        assert not engine.connections
    assert answer == b""  # closed, nothing said: it may have been an HTTP/2 client
    assert 0.25 <= waited < 5
    assert upstream.raw == b""
    assert upstream.connections == 0


async def test_bytes_that_stop_matching_are_read_as_one_http11_request() -> None:
    request = b"OST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab"
    async with _proxy() as (runtime, upstream):
        port = runtime.data_address[1]
        answer = await _http11(port, [b"P", request])
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert answer.endswith(b"\r\n\r\nstable\n")
        (seen,) = upstream.requests
        assert (seen.method, seen.target, seen.body) == ("POST", "/form", b"ab")
        # A preface that goes wrong only at its end is HTTP/1.1 as well: refused, never sent.
        answer = await _http11(port, [PREFACE[:16], PREFACE[16:20] + b"XX\r\n\r\n"])
        assert answer.startswith(b"HTTP/1.1 4") or answer.startswith(b"HTTP/1.1 5"), answer
    assert len(upstream.requests) == 1


async def test_an_http11_request_in_one_read_is_unchanged() -> None:
    async with _proxy() as (runtime, upstream):
        head = b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = await _http11(runtime.data_address[1], [head])
        assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert [(r.method, r.target) for r in upstream.requests] == [("GET", "/plain")]
