"""End to end: bodies stream through the proxy with back-pressure, and every framing case of
HTTP/1.0 and 1.1 (chunked both ways, close-delimited, HEAD, 204, 304, 100-continue, keep-alive,
pipelining, Connection: close) arrives well-formed on the other side.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from proxy.http.downstream import DownstreamProtocol
from tests.support.client import RawConnection, exchange, get
from tests.support.process import ready_line
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.servers import ScriptedUpstream, answering, read_head, target_of
from tests.support.upstream import Received, RecordingUpstream, Reply

BIG = 64 * 1024 * 1024
BLOCK = 256 * 1024
MAX_GROWTH = 32 * 1024 * 1024


# --- a 64 MiB body each way through a proxy process -----------------------------------------


def block(i: int) -> bytes:
    return bytes([i % 251]) * BLOCK


def big_digest() -> str:
    digest = hashlib.sha256()
    for i in range(BIG // BLOCK):
        digest.update(block(i))
    return digest.hexdigest()


async def _throttle(received: int, size: int) -> None:
    """Consume at most about 1 MiB per 4 ms, slower than the other side can produce."""
    if received // (1 << 20) != (received - size) // (1 << 20):
        await asyncio.sleep(0.004)


async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    received = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        digest.update(chunk)
        received += len(chunk)
        await _throttle(received, len(chunk))
    return web.json_response({"length": received, "sha256": digest.hexdigest()})


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("size", BIG))
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(size // BLOCK):
        await response.write(block(i))
    await response.write_eof()
    return response


@asynccontextmanager
async def aiohttp_upstream(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def proxy_process(config: dict[str, Any], workdir: Path) -> AsyncIterator[tuple[int, str]]:
    """`python -m proxy run` on `config`; yields (pid, data-plane URL)."""
    path = workdir / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "run", "-c", str(path),
        cwd=workdir, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        found = await ready_line(process.stderr, re.compile(r"data plane on (http://\S+?),"))
        yield process.pid, found.group(1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def memory_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    assert found, f"{field} not in /proc/{pid}/status"
    return int(found.group(1))


async def send_big(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async def blocks() -> AsyncIterator[bytes]:
        for i in range(BIG // BLOCK):
            yield block(i)

    headers = {"Content-Length": str(BIG), "Content-Type": "application/octet-stream"}
    async with session.post(url + "/upload", data=blocks(), headers=headers) as reply:
        assert reply.status == 200
        result: dict[str, Any] = await reply.json()
        return result


async def receive_big(session: aiohttp.ClientSession, url: str) -> tuple[int, str, str | None]:
    digest = hashlib.sha256()
    received = 0
    async with session.get(url + "/download") as reply:
        assert reply.status == 200
        async for chunk in reply.content.iter_chunked(1 << 16):
            digest.update(chunk)
            received += len(chunk)
            await _throttle(received, len(chunk))
        return received, digest.hexdigest(), reply.headers.get("Transfer-Encoding")


async def test_64_mib_each_way_streams_without_buffering(tmp_path: Path) -> None:
    app = web.Application(client_max_size=2 * BIG)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    expected = big_digest()
    async with aiohttp_upstream(app) as origin:
        config = config_dict(service([origin], [origin]))
        async with (
            proxy_process(config, tmp_path) as (pid, url),
            aiohttp.ClientSession() as session,
        ):
            async with session.get(url + f"/download?size={BLOCK}") as warm:
                assert len(await warm.read()) == BLOCK
            baseline = memory_kib(pid, "VmRSS")
            sent = await send_big(session, url)
            received, digest, framing = await receive_big(session, url)
            peak = memory_kib(pid, "VmHWM")
    assert sent == {"length": BIG, "sha256": expected}
    assert (received, digest) == (BIG, expected)
    assert framing == "chunked"
    growth = (peak - baseline) * 1024
    assert growth < MAX_GROWTH, f"proxy RSS grew by {growth / 2**20:.1f} MiB for a 64 MiB body"


# --- framing -------------------------------------------------------------------------------


@asynccontextmanager
async def proxied(upstream: RecordingUpstream | ScriptedUpstream) -> AsyncIterator[int]:
    """The data-plane port of a proxy whose every request goes to `upstream`."""
    await upstream.start()
    try:
        async with running_proxy(config_dict(service([upstream.url], [upstream.url]))) as proxy:
            yield proxy.data_address[1]
    finally:
        await upstream.close()


def echo(received: Received) -> Reply:
    return Reply(body=f"{received.method} {received.target} {len(received.body)}".encode())


async def test_chunked_request_body_reaches_the_upstream_well_formed() -> None:
    upstream = RecordingUpstream(handler=echo)
    request = (
        b"POST /up HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with proxied(upstream) as port:
        conn = await RawConnection.open(port)
        await conn.send(request + get("/after"))
        first = await conn.response()
        second = await conn.response()
        await conn.close()
    assert (first.status, first.body) == (200, b"POST /up 11")
    assert second.body == b"GET /after 0"
    assert upstream.protocol_errors == []
    posted = upstream.requests[0]
    assert posted.body == b"hello world"
    assert posted.header("transfer-encoding") == "chunked" or posted.header("content-length")


async def test_upstream_chunked_response_is_chunked_to_the_client() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n"
        b"4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with proxied(ScriptedUpstream(answering(lambda head: chunked))) as port:
        conn = await RawConnection.open(port)
        await conn.send(get("/one"))
        first = await conn.response()
        await conn.send(get("/two"))
        second = await conn.response()
        await conn.close()
    for response in (first, second):
        assert response.status == 200
        assert response.body == b"abcdefg"
        assert response.header("transfer-encoding") == "chunked"
        assert response.header("content-length") is None
        assert response.header("x-kind") == "chunked"
        # The trailer is not relayed, nor taken for a field of the next response on the
        # same upstream connection.
        assert response.header("x-trailer") is None


async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    for part in (b"first ", b"second ", b"third"):
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.01)


async def test_close_delimited_upstream_response_is_chunked_to_an_http11_client() -> None:
    async with proxied(ScriptedUpstream(close_delimited)) as port:
        conn = await RawConnection.open(port)
        await conn.send(get("/a"))
        first = await conn.response()
        await conn.send(get("/b"))
        second = await conn.response()
        await conn.close()
    for response in (first, second):
        assert response.body == b"first second third"
        assert response.header("transfer-encoding") == "chunked"


async def read_to_close(port: int, request: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    async with asyncio.timeout(5):
        raw = await reader.read()  # until the proxy closes
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("kind", ["chunked", "close-delimited"])
async def test_http10_client_gets_the_body_then_a_close(kind: str) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    upstream = (
        ScriptedUpstream(answering(lambda head: chunked))
        if kind == "chunked"
        else ScriptedUpstream(close_delimited)
    )
    expected = b"hello" if kind == "chunked" else b"first second third"
    async with proxied(upstream) as port:
        # Even asking for keep-alive: without a length the only delimiter is the close.
        request = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        head, body = await read_to_close(port, request)
    lower = head.lower()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in lower
    assert b"content-length" not in lower
    assert body == expected


async def test_http10_keep_alive_with_a_length_stays_open() -> None:
    upstream = RecordingUpstream(handler=echo)
    async with proxied(upstream) as port:
        conn = await RawConnection.open(port)
        for target in ("/1", "/2"):
            await conn.send(f"GET {target} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            response = await conn.response()
            assert response.body == f"GET {target} 0".encode()
            assert response.header("connection") == "keep-alive"
        await conn.send(b"GET /3 HTTP/1.0\r\n\r\n")
        last = await conn.response()
        assert last.body == b"GET /3 0"
        assert await conn.closed_by_peer()
        await conn.close()


def bodiless(head: bytes) -> bytes:
    target = target_of(head)
    if head.startswith(b"HEAD "):
        return b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\nETag: "v1"\r\n\r\n'
    if target == b"/204":
        return b"HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n"
    if target == b"/304":
        return b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 11\r\n\r\n'
    return b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"


async def test_head_204_304_have_no_body_and_keep_the_connection() -> None:
    async with proxied(ScriptedUpstream(answering(bodiless))) as port:
        conn = await RawConnection.open(port)
        await conn.send(b"HEAD /h HTTP/1.1\r\nHost: app\r\n\r\n")
        head = await conn.response("HEAD")
        await conn.send(get("/204"))
        no_content = await conn.response()
        await conn.send(get("/304", {"If-None-Match": '"v1"'}))
        not_modified = await conn.response()
        await conn.send(get("/full"))
        full = await conn.response()
        # Nothing may follow: a stray body byte would have shown up here as garbage.
        await conn.send(get("/again"))
        again = await conn.response()
        await conn.close()
    assert (head.status, head.body, head.header("content-length")) == (200, b"", "11")
    assert (no_content.status, no_content.body) == (204, b"")
    assert no_content.header("content-length") is None
    assert no_content.header("transfer-encoding") is None
    assert (not_modified.status, not_modified.body) == (304, b"")
    assert not_modified.header("transfer-encoding") is None
    assert (full.status, full.body) == (200, b"hello world")
    assert (again.status, again.body) == (200, b"hello world")


async def continue_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await read_head(reader)
    assert b"expect: 100-continue" in head.lower()
    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await writer.drain()
    body = await reader.readexactly(5)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body)
    await writer.drain()
    await reader.read()


async def test_expect_100_continue_relays_100_then_the_final_response() -> None:
    async with proxied(ScriptedUpstream(continue_then_echo)) as port:
        conn = await RawConnection.open(port)
        await conn.send(
            b"PUT /x HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        async with asyncio.timeout(5):
            interim = await conn.reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 ")
        await conn.send(b"hello")
        final = await conn.response()
        await conn.close()
    assert (final.status, final.body) == (200, b"hello")


async def test_expect_100_continue_refused_early_closes_instead_of_reading_the_body() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        await reader.read()

    async with proxied(ScriptedUpstream(refuse)) as port:
        conn = await RawConnection.open(port)
        await conn.send(
            b"PUT /x HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        response = await conn.response()
        closed = await conn.closed_by_peer()
        await conn.close()
    assert response.informational == []
    assert (response.status, response.body) == (413, b"big")
    assert response.header("connection") == "close"
    assert closed


async def test_keep_alive_reuses_client_and_upstream_connections() -> None:
    upstream = RecordingUpstream(handler=echo)
    async with proxied(upstream) as port:
        conn = await RawConnection.open(port)
        for i in range(10):
            await conn.send(get(f"/{i}"))
            response = await conn.response()
            assert response.body == f"GET /{i} 0".encode()
            assert conn.reusable
        await conn.close()
    assert len(upstream.requests) == 10
    assert upstream.connections == 1


async def test_an_idle_keep_alive_connection_keeps_none_of_its_last_read() -> None:
    """After a request with a large body, the connection waits for the next request holding
    no reference to what it read (up to a whole read buffer per idle connection otherwise)."""
    upstream = RecordingUpstream(handler=echo)
    body = b"b" * (1024 * 1024)
    await upstream.start()
    try:
        config = config_dict(service([upstream.url], [upstream.url]))
        async with running_proxy(config) as proxy:
            conn = await RawConnection.open(proxy.data_address[1])
            head = b"POST /big HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % len(body)
            await conn.send(head + body)
            response = await conn.response()
            assert response.body == b"POST /big 1048576"
            assert proxy._engine is not None
            (client,) = proxy._engine.connections
            assert isinstance(client, DownstreamProtocol)
            held = [client.head.chunk, client.head.scan_chunk, *client.head.chunks]
            await conn.close()
    finally:
        await upstream.close()
    assert [len(part) for part in held] == [0, 0]


async def test_pipelined_requests_are_answered_in_order() -> None:
    upstream = RecordingUpstream(handler=echo)
    post = b"POST /2 HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\n\r\nbody"
    async with proxied(upstream) as port:
        conn = await RawConnection.open(port)
        await conn.send(get("/1") + post + get("/3"))
        answers = [await conn.response() for _ in range(3)]
        await conn.close()
    assert [a.body for a in answers] == [b"GET /1 0", b"POST /2 4", b"GET /3 0"]
    assert [r.target for r in upstream.requests] == ["/1", "/2", "/3"]


async def test_a_full_pipeline_pauses_reading_and_still_answers_everything() -> None:
    upstream = RecordingUpstream(handler=echo)
    count = 40  # more than limits.max_pipelined (16)
    async with proxied(upstream) as port:
        conn = await RawConnection.open(port)
        await conn.send(b"".join(get(f"/{i}") for i in range(count)))
        answers = [await conn.response(within=2) for _ in range(count)]
        await conn.close()
    assert [a.body for a in answers] == [f"GET /{i} 0".encode() for i in range(count)]


async def test_connection_close_is_honoured() -> None:
    upstream = RecordingUpstream(handler=echo)
    async with proxied(upstream) as port:
        conn = await RawConnection.open(port)
        await conn.send(get("/bye", {"Connection": "close"}))
        response = await conn.response()
        closed = await conn.closed_by_peer()
        await conn.close()
        plain = await exchange(port, get("/still-serving"))
    assert response.body == b"GET /bye 0"
    assert response.header("connection") == "close"
    assert closed
    assert plain.status == 200
    assert upstream.requests[0].header("connection") is None


async def test_interim_responses_the_client_did_not_ask_for_are_dropped() -> None:
    def with_interims(head: bytes) -> bytes:
        return (
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"
        )

    async with proxied(ScriptedUpstream(answering(with_interims))) as port:
        conn = await RawConnection.open(port)
        await conn.send(get("/a"))
        first = await conn.response()
        await conn.send(get("/b"))
        second = await conn.response()
        await conn.close()
    for response in (first, second):
        assert (response.status, response.body, response.informational) == (200, b"body", [])
