"""Slowloris and idle connections (RELIABILITY D1, D2) against the real proxy over loopback.

A request head must arrive whole within `header_timeout` however it is dribbled; the proxy then
answers 408 (or just closes) and frees the connection, while other clients are served normally.
A connection that sends nothing is closed after `idle_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from tests.support.rawhttp import exchange, proxy_and_upstream

HEADER_TIMEOUT = 0.5
SLACK = 0.6  # sweeper period, scheduling on a busy CI machine
SLOW_HEAD = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"y" * 64 + b"\r\n\r\n"


@dataclass
class Cut:
    """How a slow connection ended: what the proxy sent, and when it closed (None: it did not)."""

    answer: bytes
    after: float | None


async def _read_to_eof(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the proxy sends until it closes, and the loop time of the close."""
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            data += chunk
    return data, asyncio.get_running_loop().time()


async def dribble(port: int, head: bytes, interval: float, *, prefix: bytes = b"") -> Cut:
    """Send `prefix` at once, then `head` one byte every `interval`, until the proxy closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = asyncio.get_running_loop().time()
    received = asyncio.create_task(_read_to_eof(reader))
    with contextlib.suppress(ConnectionError):
        writer.write(prefix)
        for byte in head:
            if received.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.wait([received], timeout=interval)
    try:
        answer, closed_at = await asyncio.wait_for(received, HEADER_TIMEOUT + SLACK)
    except TimeoutError:
        return Cut(b"", None)
    finally:
        writer.close()
    return Cut(answer, closed_at - start)


async def test_slowloris_heads_are_cut_while_others_are_served() -> None:
    limits = {"header_timeout": f"{HEADER_TIMEOUT}s", "idle_timeout": "10s"}
    async with proxy_and_upstream(limits=limits) as (port, upstream):
        slow = [asyncio.create_task(dribble(port, SLOW_HEAD, 0.1)) for _ in range(50)]
        latencies = []
        while not all(task.done() for task in slow):
            start = time.perf_counter()
            outcome = await exchange(port, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
            latencies.append(time.perf_counter() - start - 0.05)  # exchange waits 50 ms for EOF
            assert outcome.statuses == [200]
        cuts = await asyncio.gather(*slow)
    assert len(latencies) >= 3
    assert max(latencies) < 0.3, f"normal requests slowed to {max(latencies):.3f} s"
    for cut in cuts:
        assert cut.after is not None, "a slow head was not cut"
        assert cut.after < HEADER_TIMEOUT + SLACK, f"cut after {cut.after:.3f} s"
        assert cut.answer == b"" or cut.answer.startswith(b"HTTP/1.1 408 "), cut.answer
    assert {r.target for r in upstream.requests} == {"/ok"}


async def test_slow_head_after_a_served_request_keeps_the_header_deadline() -> None:
    """The head of a second request on a kept-alive connection is held to header_timeout too,
    even when the first request is answered while that head is still arriving."""
    limits = {"header_timeout": f"{HEADER_TIMEOUT}s", "idle_timeout": "10s"}
    first = b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
    async with proxy_and_upstream(limits=limits) as (port, upstream):
        cut = await dribble(port, SLOW_HEAD[1:], 0.1, prefix=first + SLOW_HEAD[:1])
    assert cut.after is not None, "the second, slow head was not cut"
    assert cut.after < HEADER_TIMEOUT + SLACK, f"cut after {cut.after:.3f} s"
    assert cut.answer.startswith(b"HTTP/1.1 200 "), cut.answer
    assert b"HTTP/1.1 408 " in cut.answer, cut.answer
    assert [r.target for r in upstream.requests] == ["/first"]


async def test_idle_connection_is_closed_after_idle_timeout() -> None:
    idle = 0.5
    limits = {"idle_timeout": f"{idle}s", "header_timeout": "5s"}
    async with proxy_and_upstream(limits=limits) as (port, upstream):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        data = await asyncio.wait_for(reader.read(65536), idle + 2)
        elapsed = time.monotonic() - start
        writer.close()
    assert data == b"", "an idle connection is closed silently"
    assert idle - 0.1 <= elapsed < idle + SLACK, f"closed after {elapsed:.3f} s"
    assert upstream.connections == 0


async def test_kept_alive_connection_is_closed_after_idle_timeout() -> None:
    idle = 0.5
    limits = {"idle_timeout": f"{idle}s", "header_timeout": "5s"}
    async with proxy_and_upstream(limits=limits) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(65536), 2)
        start = time.monotonic()
        rest = await asyncio.wait_for(reader.read(65536), idle + 2)
        elapsed = time.monotonic() - start
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert rest == b""
    assert idle - 0.1 <= elapsed < idle + SLACK, f"closed after {elapsed:.3f} s"
