"""proxy/http/upstream.py, end to end: a response head is relayed whatever the reads it arrives
in; one over the bound is a 502, and a response the upstream sends after the one asked for is
never taken for the next request's."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from proxy.http.upstream import MAX_RESPONSE_HEAD
from proxy.runtime import Runtime
from tests.support.client import RawConnection, exchange, get, scrape, series
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.servers import (
    ScriptedUpstream,
    answering,
    per_request,
    read_head,
    target_of,
)

RESPONSE = (
    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nServer:scripted\r\nConnection:  keep-alive, X-Hop\r\nX-Hop: 1\r\n"
    b"Content-Length: 4 \r\nX-Tail:  t \r\n\r\nbody"
)


@asynccontextmanager
async def proxy_for(
    upstream: ScriptedUpstream, **limits: int
) -> AsyncIterator[tuple[Runtime, int]]:
    config = config_dict(service([upstream.url], [upstream.url]), limits=limits)
    async with running_proxy(config) as proxy:
        yield proxy, proxy.data_address[1]


def in_pieces(pieces: list[bytes]) -> ScriptedUpstream:
    """Answers every request with `pieces`, each written and drained on its own, apart."""

    async def reply(head: bytes, writer: asyncio.StreamWriter) -> None:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.005)

    return ScriptedUpstream(per_request(reply))


def cut(data: bytes, at: list[int]) -> list[bytes]:
    bounds = [0, *at, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize(
    "pieces",
    [
        [RESPONSE],
        # within the interim head, in the final one's CRLF CRLF, inside a field line
        cut(RESPONSE, [20, RESPONSE.index(b"\r\n\r\nbody") + 2]),
        cut(RESPONSE, [RESPONSE.index(b"HTTP/1.1 200"), RESPONSE.index(b"X-Hop: 1") + 3]),
        cut(RESPONSE, list(range(1, len(RESPONSE) - 4, 7))),
    ],
    ids=["one-read", "cut-in-blank-line", "cut-after-interim", "every-7-bytes"],
)
async def test_response_head_is_relayed_whatever_the_reads(pieces: list[bytes]) -> None:
    upstream = await in_pieces(pieces).start()
    async with proxy_for(upstream) as (_, port):
        conn = await RawConnection.open(port)
        responses = []
        for path in ("/a", "/b"):  # the second on the same upstream connection
            await conn.send(get(path))
            responses.append(await conn.response())
        await conn.close()
    await upstream.close()
    assert upstream.connections == 1
    for response in responses:
        assert (response.status, response.body, response.informational) == (200, b"body", [])
        assert response.header("server") == "scripted"
        assert response.header("x-tail") == "t"
        assert response.header("content-length") == "4"
        assert response.header("x-hop") is None
        assert response.header("connection") is None


def never_ending_head(size: int) -> ScriptedUpstream:
    """Answers with a head of `size` bytes of fields that never ends."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(size // 1000):
            writer.write(b"X-Big: " + b"b" * 991 + b"\r\n")
            await writer.drain()
        await reader.read()

    return ScriptedUpstream(script)


async def test_response_head_too_large_is_a_502_counted_as_protocol() -> None:
    upstream = await never_ending_head(MAX_RESPONSE_HEAD + 4000).start()
    async with proxy_for(upstream) as (proxy, port):
        response = await exchange(port, get("/"))
        samples = await scrape(proxy)
    await upstream.close()
    assert response.status == 502
    failed = series(samples, "rollout_upstream_failures_total")
    assert {dict(k)["reason"]: v for k, v in failed.items() if v} == {"protocol": 1}


async def test_response_head_just_under_the_limit_is_relayed() -> None:
    fields = b"".join(b"X-Big-%d: %s\r\n" % (i, b"b" * 990) for i in range(60))
    head = b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\n"
    assert len(head) < MAX_RESPONSE_HEAD
    upstream = await in_pieces(cut(head + b"ok", list(range(4000, len(head), 4000)))).start()
    async with proxy_for(upstream) as (_, port):
        response = await exchange(port, get("/"))
    await upstream.close()
    assert (response.status, response.body) == (200, b"ok")
    assert response.header("x-big-59") == "b" * 990


async def test_bytes_after_a_response_are_not_the_next_requests_response() -> None:
    """An upstream that writes a second response after the first: that one was asked for by
    no request, and the next request on the connection gets its own answer or a 502."""
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"

    def with_extra(head: bytes) -> bytes:
        body = target_of(head)
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s%s" % (len(body), body, extra)

    upstream = await ScriptedUpstream(answering(with_extra)).start()
    async with proxy_for(upstream) as (_, port):
        conn = await RawConnection.open(port)
        answers = []
        for path in (b"/first", b"/second", b"/third"):
            await conn.send(get(path.decode()))
            response = await conn.response()
            answers.append((response.status, response.body))
            if response.status != 200:
                break
        await conn.close()
    await upstream.close()
    assert answers[0] == (200, b"/first")
    assert all(body != b"extra" for _, body in answers)
    assert all(status == 200 or status == 502 for status, _ in answers)


async def test_a_queued_request_is_not_answered_by_bytes_after_a_response() -> None:
    """The connection goes to the request queued for it as soon as the first response ends,
    with the rest of that read still to parse: a response in it is not this request's."""
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        await asyncio.sleep(0.3)  # the second request queues meanwhile
        body = target_of(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        writer.write(extra)
        await writer.drain()
        await reader.read()

    upstream = await ScriptedUpstream(script).start()
    async with proxy_for(upstream, pool_max_concurrency=1, pool_queue=1) as (_, port):
        first = asyncio.ensure_future(exchange(port, get("/first")))
        await asyncio.sleep(0.1)
        second = await exchange(port, get("/second"))
        await first
    await upstream.close()
    assert (first.result().status, first.result().body) == (200, b"/first")
    assert second.status == 502
