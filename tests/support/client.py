"""Clients for end-to-end tests: a strict raw HTTP/1.1 connection, a fast pipelining client and
a Prometheus scrape of the admin listener.

`RawConnection` parses what the proxy sends with h11 (an implementation independent of the
proxy's llhttp), so a malformed or truncated response is an error, never a silent pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import h11
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT_S = 5.0


@dataclass
class Response:
    """One response as the client saw it."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    informational: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name.lower()]
        return ", ".join(values) if values else None


class RawConnection:
    """One client connection: write raw bytes, read responses strictly (h11)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, method: str = "GET", *, within: float = TIMEOUT_S) -> Response:
        """Read the next response (to a request made with `method`), body included."""
        async with asyncio.timeout(within):
            return await self._response(method)

    async def _response(self, method: str) -> Response:
        conn = self._h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        # h11 only learns the method (HEAD has no body) from a request it sent itself; the
        # bytes it would send are discarded, the test has written its own.
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        response: Response | None = None
        informational: list[int] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                headers = [(n.decode(), v.decode("latin-1")) for n, v in event.headers]
                response = Response(event.status_code, headers, informational=informational)
            elif isinstance(event, h11.Data):
                assert response is not None
                response.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response
            else:
                raise AssertionError(f"unexpected event {event!r}")

    @property
    def reusable(self) -> bool:
        """False when the last response said the connection ends (h11's view)."""
        return self._h11.their_state is h11.DONE

    async def closed_by_peer(self, within: float = TIMEOUT_S) -> bool:
        """True when the peer closes the connection without sending anything more."""
        async with asyncio.timeout(within):
            try:
                data = await self.reader.read(65536)
            except ConnectionResetError:
                return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def exchange(port: int, data: bytes, method: str = "GET") -> Response:
    """Send one request on a new connection and read its response."""
    conn = await RawConnection.open(port)
    try:
        await conn.send(data)
        return await conn.response(method)
    finally:
        await conn.close()


def get(target: str = "/", headers: Mapping[str, str] | None = None, host: str = "app") -> bytes:
    """A GET request head (HTTP/1.1, keep-alive)."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _pipeline(port: int, requests: Sequence[bytes], depth: int) -> list[bytes]:
    """Send `requests` on one connection, `depth` at a time; return the response bodies.

    Responses must carry Content-Length (the test upstreams always send it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    bodies: list[bytes] = []
    buffer = b""
    try:
        for start in range(0, len(requests), depth):
            batch = requests[start : start + depth]
            writer.write(b"".join(batch))
            done = 0
            while done < len(batch):
                end = buffer.find(b"\r\n\r\n")
                length = _content_length(buffer[:end]) if end >= 0 else -1
                if end < 0 or len(buffer) < end + 4 + length:
                    data = await reader.read(65536)
                    assert data, "connection closed in the middle of a pipeline"
                    buffer += data
                    continue
                assert buffer.startswith(b"HTTP/1.1 200 "), buffer[:200]
                bodies.append(buffer[end + 4 : end + 4 + length])
                buffer = buffer[end + 4 + length :]
                done += 1
    finally:
        writer.close()
    return bodies


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError(f"response without Content-Length: {head!r}")


async def bodies_for(
    port: int, requests: Sequence[bytes], *, connections: int = 8, depth: int = 8
) -> list[bytes]:
    """Response bodies of `requests` (in order), spread over several pipelining connections."""
    async with asyncio.timeout(30):
        parts = await asyncio.gather(
            *(_pipeline(port, requests[k::connections], depth) for k in range(connections))
        )
    out: list[bytes] = [b""] * len(requests)
    for k, part in enumerate(parts):
        out[k::connections] = part
    return out


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class AdminServing(Protocol):
    """What serves an admin port: a Runtime in this process, or a ProxyProcess."""

    @property
    def admin_url(self) -> str: ...


async def scrape(proxy: AdminServing) -> Samples:
    """Every sample of the admin /metrics, keyed by (sample name, labels)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy.admin_url + "/metrics") as reply,
    ):
        assert reply.status == 200
        text = await reply.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (counters start at 0)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every series of sample `name`."""
    return {labels: v for (n, labels), v in samples.items() if n == name}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
