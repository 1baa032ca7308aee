"""A bare reverse proxy, used only as a reference target by loadtests/bench.py (`bare`).

It does the least a Python proxy must do per request on this stack: uvloop, asyncio.Protocol on
both sides, httptools (llhttp) parsing requests and responses, a keep-alive pool of upstream
connections and one write() per small response. The benchmark runs it beside rollout-proxy so
that the gap between the full product and this floor is measured on the same machine at the
same moment.

No routing, no metrics, no hardening: no timeouts, no limits, no header checks, no HEAD, 1xx,
upgrades or pipelining; any error closes the connection. It is not part of the product and must
never face real traffic.

    python loadtests/bare.py --listen 127.0.0.1:8080 --upstream 127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import cast

import httptools
import uvloop

Headers = list[tuple[bytes, bytes]]
HOP_BY_HOP = frozenset({b"connection", b"keep-alive"})  # about one connection: not relayed
PARSE_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)
LAST_CHUNK = b"0\r\n\r\n"


def is_chunked(headers: Headers) -> bool:
    return any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in headers)


def head_lines(first: bytes, headers: Headers, extra: bytes = b"") -> bytes:
    """A message head: the first line, the end-to-end headers as received, `extra`."""
    lines = [first, *(b"%b: %b\r\n" % (n, v) for n, v in headers if n.lower() not in HOP_BY_HOP)]
    return b"".join([*lines, extra, b"\r\n"])


def framed(body: bytes, chunked: bool) -> bytes:
    """httptools hands over de-chunked data: chunked bodies are chunked again on the way out."""
    return b"%x\r\n%b\r\n" % (len(body), body) if chunked else body


class Pool:
    """Keep-alive connections to the one upstream; idle ones are reused last in, first out."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop, self.host, self.port = loop, host, port
        self.idle: list[Upstream] = []

    def acquire(self, client: Client) -> Upstream:
        upstream = self.idle.pop() if self.idle else Upstream(self)
        while upstream.transport is not None and upstream.transport.is_closing():
            upstream = self.idle.pop() if self.idle else Upstream(self)  # closed while idle
        upstream.client = client
        if upstream.transport is None:  # a new one: connect, and hold the client meanwhile
            client.hold(True)
            connect = self.loop.create_connection(lambda: upstream, self.host, self.port)
            upstream.connecting = self.loop.create_task(connect)
            upstream.connecting.add_done_callback(upstream.connect_done)
        return upstream


class Upstream(asyncio.Protocol):
    """One connection to the upstream; parses responses and relays them to its client."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.connecting: asyncio.Task[object] | None = None  # referenced until it is done
        self.client: Client | None = None
        self.pending: list[bytes] = []  # written by the client before the connection is up
        self.out: list[bytes] = []  # for the client: one write() per data_received
        self.reason = b""
        self.headers: Headers = []
        self.chunked = self.done = self.paused = self.keep_alive = False

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)

    def connect_done(self, task: asyncio.Task[object]) -> None:
        self.connecting = None
        if task.cancelled() or task.exception() is not None:
            self.connection_lost(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.client is not None:  # before the write, which may hold it again (flow control)
            self.client.hold(False)
        self.transport.write(b"".join(self.pending))
        self.pending.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(ValueError):
            self.pool.idle.remove(self)
        client, self.client = self.client, None
        if client is not None:  # mid-exchange: what was relayed is all the client gets
            client.upstream = None
            client.transport.close()

    def pause_writing(self) -> None:  # the request body outruns the upstream
        if self.client is not None:
            self.client.hold(True)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.hold(False)

    def pause_reading(self, pause: bool) -> None:  # the client's write buffer is full, or not
        if self.transport is not None and pause != self.paused:
            self.paused = pause
            (self.transport.pause_reading if pause else self.transport.resume_reading)()

    def detach(self, reuse: bool) -> None:
        self.client = None
        self.pause_reading(False)
        if self.transport is None:  # still connecting: the request is gone, so is this
            if self.connecting is not None:
                self.connecting.cancel()
        elif reuse and not self.transport.is_closing():
            self.pool.idle.append(self)
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        client = self.client
        try:
            if client is None:
                raise ConnectionError("data from an idle upstream connection")
            self.parser.feed_data(data)
        except (*PARSE_ERRORS, ConnectionError):
            if self.transport is not None:
                self.transport.close()
            self.connection_lost(None)
            return
        if self.out:
            client.transport.write(b"".join(self.out))
            self.out.clear()
        if self.done:
            self.done = False
            client.response_done(self.keep_alive)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.reason, self.headers = b"", []

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.client is not None
        self.chunked = is_chunked(self.headers)
        first = b"HTTP/1.1 %d %b\r\n" % (self.parser.get_status_code(), self.reason)
        close = b"" if self.client.keep_alive else b"Connection: close\r\n"
        self.out.append(head_lines(first, self.headers, close))

    def on_body(self, body: bytes) -> None:
        self.out.append(framed(body, self.chunked))

    def on_message_complete(self) -> None:
        if self.chunked:
            self.out.append(LAST_CHUNK)
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it right after
        self.done = True


class Client(asyncio.Protocol):
    """One client connection: parses requests and relays each to a pooled upstream."""

    transport: asyncio.Transport  # set on connection_made, the first call

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.upstream: Upstream | None = None
        self.out: list[bytes] = []  # for the upstream: one write() per data_received
        self.url = b""
        self.headers: Headers = []
        self.chunked = self.held = self.responded = self.reusable = False
        self.keep_alive = self.request_done = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:  # its response is unfinished: the connection is spoilt
            upstream.detach(reuse=False)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except PARSE_ERRORS:
            self.transport.close()
            return
        self.flush()

    def flush(self) -> None:
        if self.out and self.upstream is not None:
            self.upstream.send(b"".join(self.out))
            self.out.clear()

    def hold(self, hold: bool) -> None:  # not reading while the upstream cannot take more
        if hold != self.held and not self.transport.is_closing():
            self.held = hold
            (self.transport.pause_reading if hold else self.transport.resume_reading)()

    def pause_writing(self) -> None:  # flow control: the client reads slower than we relay
        if self.upstream is not None:
            self.upstream.pause_reading(True)

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading(False)

    def response_done(self, upstream_keep_alive: bool) -> None:
        self.responded, self.reusable = True, upstream_keep_alive
        if self.request_done:  # else the rest of the request body is relayed first
            self.finish()

    def finish(self) -> None:
        upstream, self.upstream, self.responded = self.upstream, None, False
        if upstream is not None:
            upstream.detach(reuse=self.reusable)
        if self.keep_alive:
            self.hold(False)
        else:
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.upstream is not None:
            raise ConnectionError("pipelined request")
        self.url, self.headers, self.request_done = b"", [], False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self.chunked = is_chunked(self.headers)
        first = b"%b %b HTTP/1.1\r\n" % (self.parser.get_method(), self.url)
        self.out.append(head_lines(first, self.headers))
        self.upstream = self.pool.acquire(self)

    def on_body(self, body: bytes) -> None:
        self.out.append(framed(body, self.chunked))

    def on_message_complete(self) -> None:
        if self.chunked:
            self.out.append(LAST_CHUNK)
        self.request_done = True
        if self.responded:  # it came early: done now, before the client's next request
            self.flush()
            self.finish()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    pool = Pool(loop, *upstream)
    server = await loop.create_server(lambda: Client(pool), *listen, backlog=4096)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"bare proxy on http://{host}:{port} -> {upstream[0]}:{upstream[1]}", file=sys.stderr)
    sys.stderr.flush()
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--listen", type=address, required=True, help="HOST:PORT (port 0: any)")
    p.add_argument("--upstream", type=address, required=True, help="HOST:PORT")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.listen, args.upstream))


if __name__ == "__main__":
    main()
