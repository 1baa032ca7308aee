"""A raw-socket HTTP/1.1 client for hostile-input tests, and an h11 oracle for what upstreams got.

The client writes exact bytes (nothing is normalised), then reads what the proxy answers and
whether it closed the connection. The oracle re-parses the bytes an upstream received with h11
(strict and independent of the proxy's llhttp) and reports any bytes left over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11

from tests.support.proxy import config_dict, running_proxy, service
from tests.support.upstream import Handler, RecordingUpstream

UNTRUSTED = ["10.9.9.9/32"]  # so that 127.0.0.1, the test client, is an untrusted peer


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return b", ".join(values) if values else None


@dataclass
class Outcome:
    """What a client saw: the parsed responses, trailing bytes, and whether it was closed."""

    responses: list[Response]
    closed: bool
    rest: bytes = b""
    raw: bytes = b""

    @property
    def status(self) -> int:
        assert self.responses, f"no response; got {self.raw!r}"
        return self.responses[0].status

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


@dataclass
class Seen:
    """One request as h11 parsed it from the bytes an upstream received."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name.lower()]

    def header(self, name: bytes) -> bytes | None:
        found = self.values(name)
        assert len(found) <= 1, f"{name!r} appears {len(found)} times"
        return found[0] if found else None


@dataclass
class Oracle:
    requests: list[Seen] = field(default_factory=list)
    leftover: bytes = b""
    error: str | None = None


def _split_head(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    return status, headers, data[end + 4 :]


def _chunked(data: bytes) -> tuple[bytes, bytes] | None:
    body = b""
    while True:
        line_end = data.find(b"\r\n")
        if line_end < 0:
            return None
        size = int(data[:line_end].split(b";")[0], 16)
        data = data[line_end + 2 :]
        if size == 0:
            trailer_end = data.find(b"\r\n")
            while trailer_end > 0:  # skip trailer fields
                data = data[trailer_end + 2 :]
                trailer_end = data.find(b"\r\n")
            return (body, data[2:]) if trailer_end == 0 else None
        if len(data) < size + 2:
            return None
        body += data[:size]
        data = data[size + 2 :]


def parse_responses(
    data: bytes, *, head: bool = False, at_eof: bool = False
) -> tuple[list[Response], bytes]:
    """Complete responses at the start of `data`, and the bytes after them."""
    responses: list[Response] = []
    while True:
        split = _split_head(data)
        if split is None:
            return responses, data
        status, headers, rest = split
        response = Response(status, headers)
        length = response.header(b"content-length")
        if status < 200 or status in (204, 304) or head:
            pass
        elif length is not None:
            if len(rest) < int(length):
                return responses, data
            response.body, rest = rest[: int(length)], rest[int(length) :]
        elif response.header(b"transfer-encoding") == b"chunked":
            decoded = _chunked(rest)
            if decoded is None:
                return responses, data
            response.body, rest = decoded
        elif at_eof:
            response.body, rest = rest, b""
        else:
            return responses, data
        responses.append(response)
        data = rest


async def _read_some(reader: asyncio.StreamReader, wait_s: float) -> bytes | None:
    """Bytes read, b"" at EOF or reset, None when nothing came within `wait_s`."""
    try:
        return await asyncio.wait_for(reader.read(65536), wait_s)
    except TimeoutError:
        return None
    except ConnectionError:
        return b""


async def exchange(
    port: int,
    data: bytes | Sequence[bytes],
    *,
    responses: int = 1,
    wait: float = 3.0,
    gap: float = 0.0,
    head: bool = False,
) -> Outcome:
    """Send `data` (parts `gap` seconds apart), read `responses` responses, then see whether
    the proxy closes the connection: waited for up to `wait` when the last response said
    `Connection: close`, briefly otherwise; `wait` bounds the whole read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parts = [data] if isinstance(data, bytes) else list(data)
    try:
        for i, part in enumerate(parts):
            if i and gap:
                await asyncio.sleep(gap)
            writer.write(part)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        return await _collect(reader, responses, wait, head)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _collect(reader: asyncio.StreamReader, wanted: int, wait_s: float, head: bool) -> Outcome:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    buffer = b""
    closed = False
    while not closed:
        parsed, _ = parse_responses(buffer, head=head)
        if len(parsed) >= wanted:
            last = parsed[-1]
            closing = last.header(b"connection") == b"close"
            wait = max(0.0, deadline - loop.time()) if closing else 0.05
            more = await _read_some(reader, wait)
            if more is None:
                break
            closed = more == b""
            buffer += more
            continue
        more = await _read_some(reader, max(0.0, deadline - loop.time()))
        if more is None:
            break
        closed = more == b""
        buffer += more
    parsed, rest = parse_responses(buffer, head=head, at_eof=closed)
    return Outcome(parsed, closed, rest, buffer)


def h11_oracle(raw: bytes) -> Oracle:
    """Parse `raw` (what an upstream received) as consecutive requests with h11."""
    oracle = Oracle()
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    current: Seen | None = None
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                current = Seen(event.method, event.target, list(event.headers))
            elif isinstance(event, h11.Data) and current is not None:
                current.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage) and current is not None:
                oracle.requests.append(current)
                current = None
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
    except h11.ProtocolError as exc:
        oracle.error = str(exc)
    oracle.leftover = conn.trailing_data[0]
    return oracle


@contextlib.asynccontextmanager
async def proxy_and_upstream(
    *,
    limits: dict[str, Any] | None = None,
    trusted: bool = False,
    handler: Handler | None = None,
    env: dict[str, str] | None = None,
    **service_extra: Any,
) -> AsyncIterator[tuple[int, RecordingUpstream]]:
    """A proxy on a free loopback port whose stable and canary pools are one recording upstream.

    The test client (127.0.0.1) is an untrusted peer unless `trusted`."""
    upstream = await RecordingUpstream("stable", handler).start()
    data = config_dict(
        service([upstream.url], [upstream.url], **service_extra),
        limits=limits or {},
        **({} if trusted else {"trusted_peers": UNTRUSTED}),
    )
    try:
        async with running_proxy(data, env) as proxy:
            yield proxy.data_address[1], upstream
    finally:
        await upstream.close()
        await asyncio.sleep(0.01)  # let the upstream's connection handlers see EOF and end
