"""loadtests/bare.py, the benchmark's bare reference proxy, as a real process between a strict
(h11) client and real upstreams: keep-alive and its upstream pool, bodies of 1 MiB both ways
with Content-Length, chunked bodies both ways, `Connection: close`, and flow control both ways
(memory stays bounded when one side stops reading)."""

from __future__ import annotations

import asyncio
import random
import re
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests.support.client import RawConnection, Response, get
from tests.support.process import ready_line
from tests.support.servers import ScriptedUpstream, answering, content_length, read_head
from tests.support.upstream import Received, RecordingUpstream, Reply

SCRIPT = Path(__file__).resolve().parents[2] / "loadtests" / "bare.py"
MIB = 1024 * 1024
PAYLOAD = random.Random(2026).randbytes(MIB)  # no repeating pattern: a misplaced piece shows
BIG = 16 * MIB  # much more than the kernel's socket buffers hold on loopback
LITTLE_MIB = 6.0  # what the proxy may grow by while one side does not read (flow control)


_READY = re.compile(r"bare proxy on http://127\.0\.0\.1:(\d+)")


@asynccontextmanager
async def bare_proxy(upstream_port: int) -> AsyncIterator[tuple[int, int]]:
    """Run bare.py against 127.0.0.1:upstream_port; yields (the port it listens on, its pid)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        f"127.0.0.1:{upstream_port}",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        match = await ready_line(proc.stderr, _READY)
        yield int(match.group(1)), proc.pid
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def post(body: bytes, extra: str = "") -> bytes:
    head = f"POST /body HTTP/1.1\r\nHost: app\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


async def test_keep_alive_requests_share_one_upstream_connection() -> None:
    upstream = await RecordingUpstream("stable").start()
    try:
        async with bare_proxy(upstream.port) as (port, _):
            conn = await RawConnection.open(port)
            responses: list[Response] = []
            for target in ("/a", "/b?x=1"):
                await conn.send(get(target, {"X-Tenant-ID": "tenant-7"}))
                responses.append(await conn.response())
            assert conn.reusable
            await conn.close()
    finally:
        await upstream.close()
    for response in responses:
        assert (response.status, response.body) == (200, b"stable\n")
        assert response.header("x-pool") == "stable"
        assert response.header("connection") is None
    assert upstream.connections == 1
    assert [(r.method, r.target) for r in upstream.requests] == [("GET", "/a"), ("GET", "/b?x=1")]
    assert [r.header("x-tenant-id") for r in upstream.requests] == ["tenant-7", "tenant-7"]
    assert upstream.protocol_errors == []


async def test_connection_close_ends_the_client_connection_not_the_upstream_one() -> None:
    upstream = await RecordingUpstream("stable").start()
    try:
        async with bare_proxy(upstream.port) as (port, _):
            for _ in range(3):
                conn = await RawConnection.open(port)
                await conn.send(get("/", {"Connection": "close"}))
                response = await conn.response()
                assert (response.status, response.body) == (200, b"stable\n")
                assert response.header("connection") == "close"
                assert await conn.closed_by_peer()
                await conn.close()
    finally:
        await upstream.close()
    assert len(upstream.requests) == 3
    assert all(r.header("connection") is None for r in upstream.requests)  # hop-by-hop
    assert upstream.connections == 1  # pooled across the three client connections


async def test_a_1_mib_post_body_arrives_intact() -> None:
    upstream = await RecordingUpstream("stable").start()
    try:
        async with bare_proxy(upstream.port) as (port, _):
            conn = await RawConnection.open(port)
            await conn.send(post(PAYLOAD))
            response = await conn.response("POST")
            await conn.close()
    finally:
        await upstream.close()
    assert (response.status, response.body) == (200, b"stable\n")
    [received] = upstream.requests
    assert (received.method, received.header("content-length")) == ("POST", str(MIB))
    assert received.body == PAYLOAD
    assert upstream.protocol_errors == []


async def test_a_1_mib_response_arrives_intact() -> None:
    def big(_: Received) -> Reply:
        return Reply(body=PAYLOAD)

    upstream = await RecordingUpstream("stable", big).start()
    try:
        async with bare_proxy(upstream.port) as (port, _):
            conn = await RawConnection.open(port)
            for _ in range(2):  # the second on the same connections: the first ended cleanly
                await conn.send(get("/body"))
                response = await conn.response()
                assert (response.status, response.header("content-length")) == (200, str(MIB))
                assert response.body == PAYLOAD
            await conn.close()
    finally:
        await upstream.close()
    assert upstream.connections == 1


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def test_a_client_that_does_not_read_stops_the_upstream_being_read() -> None:
    huge = random.Random(7).randbytes(BIG)
    upstream = await RecordingUpstream("stable", lambda _: Reply(body=huge)).start()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the kernel holds little
    try:
        async with bare_proxy(upstream.port) as (port, pid):
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            conn = RawConnection(*await asyncio.open_connection(sock=sock))
            before = rss_mib(pid)
            await conn.send(get("/huge"))
            await asyncio.sleep(1.0)  # not reading: without flow control the proxy buffers it
            grown = rss_mib(pid) - before
            response = await conn.response()
            await conn.close()
    finally:
        await upstream.close()
    assert response.body == huge
    assert grown < LITTLE_MIB, f"{grown:.1f} MiB buffered for a client that does not read"


async def test_an_upstream_that_does_not_read_stops_the_client_being_read() -> None:
    huge = random.Random(8).randbytes(BIG)
    received: list[bytes] = []

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        await asyncio.sleep(1.0)  # not reading: without flow control the proxy buffers it
        received.append(await reader.readexactly(content_length(head)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        await writer.drain()
        await reader.read()

    upstream = await ScriptedUpstream(slow).start()
    try:
        async with bare_proxy(upstream.port) as (port, pid):
            conn = await RawConnection.open(port)
            before = rss_mib(pid)
            conn.writer.write(post(huge))
            await asyncio.sleep(0.8)
            grown = rss_mib(pid) - before
            response = await conn.response("POST")
            await conn.close()
    finally:
        await upstream.close()
    assert (response.status, response.body) == (200, b"ok\n")
    assert received == [huge]
    assert grown < LITTLE_MIB, f"{grown:.1f} MiB buffered for an upstream that does not read"


async def test_an_early_response_lets_the_request_body_finish_and_the_connection_go_on() -> None:
    bodies: list[bytes] = []

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)  # answered at once, as nginx answers POST /body
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nearly\n")
        bodies.append(await reader.readexactly(content_length(head)))
        await answering(lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnext\n")(
            reader, writer
        )

    upstream = await ScriptedUpstream(early).start()
    try:
        async with bare_proxy(upstream.port) as (port, _):
            conn = await RawConnection.open(port)
            request = post(PAYLOAD)
            half = len(request) // 2
            await conn.send(request[:half])
            first = await conn.response("POST")
            await conn.send(request[half:] + get("/next"))  # the body's end and the next request
            second = await conn.response()
            await conn.close()
    finally:
        await upstream.close()
    assert (first.status, first.body, second.status, second.body) == (
        200,
        b"early\n",
        200,
        b"next\n",
    )
    assert bodies == [PAYLOAD]
    assert upstream.connections == 1


async def test_chunked_bodies_are_relayed_both_ways() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    upstream = ScriptedUpstream(answering(lambda head: chunked))
    recorder = await RecordingUpstream("stable").start()
    await upstream.start()
    try:
        async with bare_proxy(upstream.port) as (port, _):
            conn = await RawConnection.open(port)
            for _ in range(2):  # the framing ended where it should: the connection goes on
                await conn.send(get("/"))
                response = await conn.response()
                assert (response.status, response.body) == (200, b"hello world")
                assert response.header("transfer-encoding") == "chunked"
            await conn.close()
        async with bare_proxy(recorder.port) as (port, _):
            conn = await RawConnection.open(port)
            pieces = [PAYLOAD[:100_000], PAYLOAD[100_000:100_001], PAYLOAD[100_001:300_000]]
            body = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
            await conn.send(
                b"POST /up HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n" + body
            )
            response = await conn.response("POST")
            await conn.close()
    finally:
        await upstream.close()
        await recorder.close()
    assert upstream.connections == 1
    assert response.status == 200
    [received] = recorder.requests
    assert received.header("transfer-encoding") == "chunked"
    assert received.body == PAYLOAD[:300_000]
    assert recorder.protocol_errors == []
