"""A raw HTTP/2 client for tests: the h2 library's client side over a real socket.

It sends exactly what a test asks (frames built by h2, or raw bytes for what h2 would refuse
to build) and hands back h2's events, so a test can act as a well-behaved client, a slow
reader that opens no window, or a hostile one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import TypeVar

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError

E = TypeVar("E", bound=Event)
Fields = list[tuple[bytes, bytes]]


class RawH2:
    """One client connection; `events` collects everything h2 reported so far."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h2 = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.events: list[Event] = []
        self.eof = False
        self.bodies: dict[int, bytearray] = {}
        self.auto_ack = True  # reopen the windows as DATA arrives

    @classmethod
    async def open(
        cls, port: int, *, tls: ssl.SSLContext | None = None, preface: bool = True
    ) -> RawH2:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
        )
        client = cls(reader, writer)
        if preface:
            client.h2.initiate_connection()
            await client.send()
        return client

    async def send(self, raw: bytes = b"") -> None:
        data = self.h2.data_to_send() + raw
        if data:
            self.writer.write(data)
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    def request(
        self, path: str = "/", *, method: str = "GET", extra: Fields | None = None, end: bool = True
    ) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        fields: Fields = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", b"localhost"),
            (b":path", path.encode()),
            *(extra or ()),
        ]
        self.h2.send_headers(stream_id, fields, end_stream=end)
        return stream_id

    async def read(self, wait: float = 5.0) -> list[Event]:
        """One read's events ([] at EOF or when nothing came within `wait` seconds)."""
        if self.eof:
            return []
        try:
            data = await asyncio.wait_for(self.reader.read(65536), wait)
        except TimeoutError:
            return []
        except ConnectionError:
            data = b""
        if not data:
            self.eof = True
            return []
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self.eof = True
            return []
        for event in events:
            if isinstance(event, DataReceived) and event.stream_id is not None:
                self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data or b"")
                if self.auto_ack and event.flow_controlled_length:
                    with contextlib.suppress(ProtocolError):
                        self.h2.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
        self.events += events
        await self.send()
        return events

    async def until(self, done: Callable[[RawH2], bool], within: float = 10.0) -> bool:
        """Read until `done(self)` holds (True), or EOF or `within` s (False)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while not done(self):
            left = end - loop.time()
            if self.eof or left <= 0:
                return False
            await self.read(min(left, 1.0))
        return True

    def of(self, kind: type[E], stream_id: int | None = None) -> list[E]:
        found = [e for e in self.events if isinstance(e, kind)]
        if stream_id is None:
            return found
        return [e for e in found if getattr(e, "stream_id", None) == stream_id]

    def status(self, stream_id: int) -> int | None:
        for event in self.of(ResponseReceived, stream_id):
            for name, value in event.headers or ():
                if name == b":status":
                    return int(value)
        return None

    def headers(self, stream_id: int) -> dict[bytes, bytes]:
        for event in self.of(ResponseReceived, stream_id):
            return dict(event.headers or ())
        return {}

    def ended(self, stream_id: int) -> bool:
        return bool(self.of(StreamEnded, stream_id) or self.of(StreamReset, stream_id))

    def reset_code(self, stream_id: int) -> int | None:
        resets = self.of(StreamReset, stream_id)
        return int(resets[0].error_code) if resets else None

    def goaway(self) -> int | None:
        ended = self.of(ConnectionTerminated)
        code = ended[0].error_code if ended else None
        return None if code is None else int(code)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
