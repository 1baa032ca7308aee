"""A real upstream server for tests that records exactly what it received.

It parses what arrives with h11 (a strict, independent HTTP/1.1 implementation), so a test can
assert both "the upstream received nothing" and "it received exactly one well-formed request".
Responses are produced by a handler; the default answers 200 with a small body naming the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11


@dataclass
class Received:
    """One request as the upstream saw it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name.lower()]
        return ", ".join(values) if values else None


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b"ok\n"


Handler = Callable[[Received], Awaitable[Reply] | Reply]


class RecordingUpstream:
    """An HTTP/1.1 origin on 127.0.0.1:<free port> that records requests and raw bytes."""

    def __init__(self, name: str = "stable", handler: Handler | None = None) -> None:
        self.name = name
        self.handler = handler
        self.requests: list[Received] = []
        self.raw = bytearray()
        self.connections = 0
        self.protocol_errors: list[str] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RecordingUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()

    async def _reply(self, received: Received) -> Reply:
        if self.handler is None:
            return Reply(headers=[("X-Pool", self.name)], body=f"{self.name}\n".encode())
        result = self.handler(received)
        return await result if isinstance(result, Awaitable) else result

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        try:
            await self._loop(conn, reader, writer)
        except h11.RemoteProtocolError as exc:
            self.protocol_errors.append(str(exc))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _loop(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        current: Received | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                self.raw += data
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    return
                continue
            if isinstance(event, h11.Request):
                current = Received(
                    event.method.decode(),
                    event.target.decode(),
                    [(n.decode(), v.decode("latin-1")) for n, v in event.headers],
                )
            elif isinstance(event, h11.Data) and current is not None:
                current.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage) and current is not None:
                self.requests.append(current)
                await self._respond(conn, writer, current)
                current = None
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return

    async def _respond(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, received: Received
    ) -> None:
        reply = await self._reply(received)
        headers = [*reply.headers, ("Content-Length", str(len(reply.body)))]
        body = b"" if received.method == "HEAD" else reply.body
        writer.write(conn.send(h11.Response(status_code=reply.status, headers=headers)))
        if body:
            writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
