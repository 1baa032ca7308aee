"""The proxy forwards a request to the upstream and answers with its response."""

from __future__ import annotations

import asyncio

from tests.support.proxy import config_dict, running_proxy, service
from tests.support.upstream import RecordingUpstream


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return out


async def test_get_is_forwarded_with_forwarding_headers() -> None:
    stable = await RecordingUpstream("stable").start()
    canary = await RecordingUpstream("canary").start()
    async with running_proxy(config_dict(service([stable.url], [canary.url]))) as proxy:
        port = proxy.data_address[1]
        out = await _raw(port, b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n"), out
    assert out.endswith(b"stable\n")
    (received,) = stable.requests
    assert received.target == "/a?b=1"
    assert received.header("x-forwarded-for") == "127.0.0.1"
    assert received.header("x-rollout-variant") == "stable"
    assert received.header("connection") is None
    await stable.close()
    await canary.close()


async def test_an_answer_the_proxy_makes_honours_the_clients_close() -> None:
    """A 502 (nothing listens upstream) to a client that asked for the close says so and
    ends the connection at once, as an upstream's answer does; HTTP/1.0 likewise."""
    upstream = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback
    async with running_proxy(config_dict(service([upstream], [], steps=[{"percent": 0}]))) as proxy:
        port = proxy.data_address[1]
        for request in (
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            async with asyncio.timeout(2):  # not the 60 s idle timeout
                reply = await reader.read()  # to the end: the proxy closed
            writer.close()
            assert reply.startswith(b"HTTP/1.1 502 "), reply
            assert b"\r\nConnection: close\r\n" in reply
