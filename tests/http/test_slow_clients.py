"""Slow body and slow read (RELIABILITY D3, D4) against the real proxy over loopback.

- `body_total_timeout`: a body dribbled just under `body_timeout` per read is still cut when
  its whole takes longer: 408 and close while no response byte was sent (the upstream, which
  got part of the request, sees its connection reset), a reset once the response had begun.
  Counted as a 408 refusal, never as an upstream failure, an abort or evidence.
- `send_timeout`: response bytes the client does not take (in the proxy's buffer or the
  kernel's) for that long end the connection with a reset, whether the response is still
  streaming (an abort) or long complete; a client that reads slowly but steadily is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from proxy.runtime import Runtime
from tests.support.client import Samples, get, scrape, series, value
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.servers import ScriptedUpstream, read_head
from tests.support.upstream import RecordingUpstream, Reply

SLACK = 0.7  # the sweeper's tick and a busy machine
BIG = 4 * 1024 * 1024  # more than the socket buffers between client and proxy


@asynccontextmanager
async def proxy_for(url: str, **limits: Any) -> AsyncIterator[tuple[Runtime, int]]:
    config = config_dict(service([url], [url], rollout={"salt": "s", "steps": [{"percent": 0}]}))
    config["limits"] = limits
    async with running_proxy(config) as proxy:
        yield proxy, proxy.data_address[1]


def counted(samples: Samples) -> dict[str, float]:
    """What the metrics say happened, beyond the 408 refusals."""
    return {
        "requests": sum(series(samples, "rollout_requests_total").values()),
        "failures": sum(series(samples, "rollout_upstream_failures_total").values()),
        "aborts": sum(series(samples, "rollout_client_aborts_total").values()),
    }


async def dribble_body(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader, interval: float
) -> tuple[bytes, float]:
    """Send a 100-byte body one byte every `interval`; what the proxy sent back until it
    ended the connection, and when (loop time)."""
    writer.write(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n")
    received = asyncio.ensure_future(_read_all(reader))
    with contextlib.suppress(ConnectionError):
        for _ in range(100):
            if received.done():
                break
            writer.write(b"x")
            await writer.drain()
            await asyncio.wait([received], timeout=interval)
    async with asyncio.timeout(5):
        return await received


async def _read_all(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            data += chunk
    return data, asyncio.get_running_loop().time()


async def test_a_body_dribbled_under_the_gap_timeout_is_cut_at_the_total_with_408() -> None:
    upstream = await RecordingUpstream().start()
    async with proxy_for(upstream.url, body_timeout=0.4, body_total_timeout=1.0) as (proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = asyncio.get_running_loop().time()
        answer, ended = await dribble_body(writer, reader, 0.15)  # each gap well under 0.4 s
        writer.close()
        await asyncio.sleep(0.1)
        samples = await scrape(proxy)
    await upstream.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"\r\nConnection: close\r\n" in answer
    assert 1.0 <= ended - start < 1.0 + SLACK, ended - start
    assert upstream.connections == 1, "the body was streamed to the upstream as it came"
    assert upstream.requests == [], "the upstream saw the request cut, not completed"
    assert value(samples, "rollout_rejected_requests_total", status="408") == 1
    assert counted(samples) == {"requests": 0, "failures": 0, "aborts": 0}


async def test_a_body_late_after_the_response_began_is_reset_not_answered_twice() -> None:
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)  # answers at once, a byte every 0.1 s, reading no body
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"y")
            await writer.drain()
            await asyncio.sleep(0.1)

    upstream = await ScriptedUpstream(early).start()
    async with proxy_for(upstream.url, body_timeout=0.4, body_total_timeout=1.0) as (proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = asyncio.get_running_loop().time()
        answer, ended = await dribble_body(writer, reader, 0.15)
        writer.close()
        async with asyncio.timeout(5):
            await upstream.wait_closed()
        samples = await scrape(proxy)
    await upstream.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert answer.count(b"HTTP/1.1 ") == 1  # no 408 after the 200
    assert 3 < len(answer.partition(b"\r\n\r\n")[2]) < 1000, "the response must be seen cut"
    assert 1.0 <= ended - start < 1.0 + SLACK, ended - start
    assert value(samples, "rollout_rejected_requests_total", status="408") == 1
    assert counted(samples) == {"requests": 0, "failures": 0, "aborts": 0}


async def test_time_the_proxy_holds_the_body_up_does_not_count_against_the_client() -> None:
    """An upstream that takes its time reading the body: the proxy stops reading the client
    meanwhile, and the client's total starts again only for the time it holds the pen."""

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        size = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await asyncio.sleep(1.5)  # longer than body_total_timeout: the proxy holds the client
        await reader.readexactly(size)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    body = b"z" * BIG
    upstream = await ScriptedUpstream(slow_reader).start()
    limits = {"body_timeout": 5, "body_total_timeout": 1.0, "response_timeout": 5}
    async with proxy_for(upstream.url, **limits) as (proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        async with asyncio.timeout(10):
            await writer.drain()
            answer = await reader.readuntil(b"ok")
        writer.close()
        samples = await scrape(proxy)
    await upstream.close()
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer
    assert value(samples, "rollout_rejected_requests_total", status="408") == 0


def _small_window(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def _ended(sock: socket.socket, within: float) -> float | None:
    """Read nothing until the proxy resets the connection (probed with a zero-byte look at
    the socket's error); the loop time it did, or None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 104:  # ECONNRESET
            return loop.time()
        await asyncio.sleep(0.02)
    return None


async def test_a_client_that_never_reads_a_complete_response_is_reset() -> None:
    """256 KiB: the whole response fits in the proxy's buffer and the kernel's, so the
    exchange ends and the connection waits for its next request, its response untaken."""
    upstream = await RecordingUpstream(handler=lambda _: Reply(body=b"r" * 262144)).start()
    async with proxy_for(upstream.url, send_timeout=0.5, idle_timeout=30) as (proxy, port):
        sock = _small_window(port)
        sock.send(get("/"))
        start = asyncio.get_running_loop().time()
        ended = await _ended(sock, 5)
        sock.close()
        samples = await scrape(proxy)
    await upstream.close()
    assert ended is not None, "a client that reads nothing kept its connection"
    assert ended - start < 0.5 + SLACK, ended - start
    assert len(upstream.requests) == 1
    # The upstream had finished: the exchange was counted as served, and nothing else.
    assert counted(samples) == {"requests": 1, "failures": 0, "aborts": 0}


async def test_a_client_that_stops_reading_a_streaming_response_is_an_abort() -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (16 * BIG))
        for _ in range(16 * BIG // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()

    upstream = await ScriptedUpstream(flood).start()
    async with proxy_for(upstream.url, send_timeout=0.5, body_timeout=30) as (proxy, port):
        sock = _small_window(port)
        sock.send(get("/"))
        start = asyncio.get_running_loop().time()
        ended = await _ended(sock, 5)
        sock.close()
        async with asyncio.timeout(5):
            await upstream.wait_closed()
        samples = await scrape(proxy)
    await upstream.close()
    assert ended is not None
    assert ended - start < 0.5 + SLACK, ended - start
    assert counted(samples) == {"requests": 0, "failures": 0, "aborts": 1}


async def test_a_slow_but_steady_reader_gets_everything_even_after_a_close() -> None:
    """It takes 64 KiB every 0.1 s, never stalling for send_timeout; the response says
    `Connection: close`, so the proxy closes while most of it still waits for the client."""
    upstream = await RecordingUpstream(handler=lambda _: Reply(body=b"s" * 2_000_000)).start()
    async with proxy_for(upstream.url, send_timeout=0.5, body_timeout=1) as (_proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=65536)
        writer.write(get("/", {"Connection": "close"}))
        received = 0
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(15):
                while chunk := await reader.read(65536):
                    received += len(chunk)
                    await asyncio.sleep(0.1)
        took = time.monotonic() - started
        writer.close()
    await upstream.close()
    assert received > 2_000_000, received
    assert took > 2.0, "the read was not slow: the linger was not tested"
