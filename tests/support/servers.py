"""More upstream servers for end-to-end tests (see upstream.py for the recording one).

- `NameUpstream`: a fast keep-alive origin answering every request with its name and the
  variant and step the proxy said it chose; for tests that send thousands of requests.
- `ScriptedUpstream`: a raw TCP origin whose per-connection coroutine writes whatever bytes a
  test needs (chunked, close-delimited, malformed, reset in the middle, never answering...).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable

import httptools


class _NameProtocol(asyncio.Protocol):
    def __init__(self, server: NameUpstream) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.variant = b""
        self.step = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1
        self.server.transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.variant = b""
        self.step = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"x-rollout-variant":
            self.variant += value
        elif lower == b"x-rollout-step":
            self.step += value

    def on_message_complete(self) -> None:
        self.server.requests += 1
        body = b"%s %s %s" % (self.server.name.encode(), self.variant, self.step)
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class NameUpstream:
    """Answers `<name> <X-Rollout-Variant> <X-Rollout-Step>` (as received) to every request."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self.connections = 0
        self.port = 0
        self.transports: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> NameUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _NameProtocol(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self.transports):
            transport.close()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptedUpstream:
    """A TCP origin running `script(reader, writer)` for every connection it accepts."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.closed = 0  # connections whose script ended (or whose peer went away)
        self._changed = asyncio.Event()  # set whenever a connection ends
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ScriptedUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed += 1
            self._changed.set()
            self._writers.discard(writer)
            writer.close()

    async def wait_closed(self, count: int = 1) -> None:
        """Until `count` connections have ended (bound it with asyncio.timeout)."""
        while self.closed < count:
            self._changed.clear()
            await self._changed.wait()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """The next request head (up to and including the blank line)."""
    return await reader.readuntil(b"\r\n\r\n")


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


Responder = Callable[[bytes], bytes]
Replier = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


def per_request(reply: Replier) -> Script:
    """A keep-alive script: for each request (head + Content-Length body), await
    `reply(head, writer)`; ends when the proxy closes the connection."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await read_head(reader)
            except asyncio.IncompleteReadError:
                return
            await reader.readexactly(content_length(head))
            await reply(head, writer)

    return script


def answering(responder: Responder) -> Script:
    """A keep-alive script writing `responder(head)` for each request."""

    async def reply(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(responder(head))
        await writer.drain()

    return per_request(reply)


def target_of(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]
