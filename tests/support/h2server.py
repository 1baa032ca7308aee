"""A real HTTP/2 origin for tests: the `h2` library's server side on an asyncio socket.

It speaks h2c by prior knowledge, or h2 over TLS (ALPN) when given a context; records every
request (fields and body) and the connections it accepted; and answers each with the reply a
handler returns: status, fields, a body (sent within the client's flow-control window, so a
test can see how far a client that does not read lets it get) and trailers.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


@dataclass
class H2Request:
    fields: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.fields if n == name]
        return ", ".join(values) if values else None


@dataclass
class H2Reply:
    status: int = 200
    fields: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b"ok\n"
    trailers: list[tuple[str, str]] = field(default_factory=list)
    reset: int | None = None  # answer with RST_STREAM of this code instead
    delay_s: float = 0.0  # answer this long after the request ended


H2Handler = Callable[[H2Request], H2Reply]


class _Conn(asyncio.Protocol):
    def __init__(self, server: H2Origin) -> None:
        self.server = server
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, H2Request] = {}
        self.sending: dict[int, bytes] = {}  # body not yet sent, per stream
        self.trailers: dict[int, list[tuple[str, str]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1
        self.server.alive.add(self)
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        self.h2.initiate_connection()
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.alive.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.server.errors.append(str(exc))
            self._send()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                fields = [(str(n), str(v)) for n, v in event.headers]
                self.requests[event.stream_id] = H2Request(fields)
            elif isinstance(event, h2.events.DataReceived):
                self.requests[event.stream_id].body += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._answer(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.sending.pop(event.stream_id, None)
                self.server.resets += 1
            elif isinstance(event, h2.events.WindowUpdated):
                self._pump()
        self._send()

    def _answer(self, sid: int) -> None:
        request = self.requests.pop(sid)
        self.server.requests.append(request)
        reply = self.server.handler(request)
        if reply.delay_s:
            asyncio.get_running_loop().call_later(reply.delay_s, self._reply, sid, reply)
        else:
            self._reply(sid, reply)

    def _reply(self, sid: int, reply: H2Reply) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self._respond(sid, reply)
        except h2.exceptions.StreamClosedError:
            return
        self._send()

    def _respond(self, sid: int, reply: H2Reply) -> None:
        if reply.reset is not None:
            self.h2.reset_stream(sid, reply.reset)
            return
        fields = [(":status", str(reply.status)), *reply.fields]
        self.h2.send_headers(sid, fields, end_stream=not reply.body and not reply.trailers)
        if reply.body or reply.trailers:
            self.sending[sid] = reply.body
            self.trailers[sid] = reply.trailers
            self._pump()

    def _pump(self) -> None:
        for sid in list(self.sending):
            body = self.sending[sid]
            try:
                while body:
                    room = min(self.h2.local_flow_control_window(sid), 16384)
                    if room <= 0:
                        break
                    self.h2.send_data(sid, body[:room])
                    self.server.sent += min(room, len(body))
                    body = body[room:]
            except h2.exceptions.StreamClosedError:
                self.sending.pop(sid, None)
                continue
            if body:
                self.sending[sid] = body
                continue
            del self.sending[sid]
            trailers = self.trailers.pop(sid, [])
            if trailers:
                self.h2.send_headers(sid, trailers, end_stream=True)
            else:
                self.h2.end_stream(sid)

    def _send(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class H2Origin:
    """An HTTP/2 origin on 127.0.0.1:<free port> (`tls`: h2 over TLS, else h2c)."""

    def __init__(self, handler: H2Handler | None = None, tls: ssl.SSLContext | None = None):
        self.handler: H2Handler = handler or (lambda request: H2Reply())
        self.tls = tls
        self.requests: list[H2Request] = []
        self.errors: list[str] = []
        self.connections = 0
        self.resets = 0
        self.sent = 0  # response body bytes handed to the h2 state machine
        self.alive: set[_Conn] = set()
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> H2Origin:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def goaway(self) -> None:
        """Tell every connection to go away (no stream processed beyond those open)."""
        for conn in list(self.alive):
            conn.h2.close_connection(last_stream_id=conn.h2.highest_inbound_stream_id)
            conn._send()

    async def close(self) -> None:
        for conn in list(self.alive):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A TLS server context that offers h2 only (as an HTTP/2-only origin does)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context
