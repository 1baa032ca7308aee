"""An upstream origin in a process of its own, so that a drill can SIGKILL it like a real host.

    python -m tests.faults.origin NAME [--delay S] [--body-bytes N] [--reset-every K]
                                      [--malformed-every K] [--fail-every K]

Prints its port on the first line of stdout, then serves HTTP/1.1 keep-alive on 127.0.0.1 until
killed. Every answer is `200` with a body that starts with NAME (`NAME <X-Rollout-Variant>`,
padded with `.` to --body-bytes). Faults, every K-th request of the process:
--reset-every sends the head and half the body, then a TCP reset; --malformed-every answers a
head with whitespace before the colon (`Content-Length : 2`, which a proxy must refuse with 502);
--fail-every answers 503. --delay waits before every answer (a slow host).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys
from typing import cast


class Origin(asyncio.Protocol):
    """One connection: requests parsed by their head (bodies by Content-Length)."""

    count = 0  # requests answered by this process

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        length = _content_length(head)
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length :]
        Origin.count += 1
        self.busy = True
        delay = self.options.delay
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._answer, head, Origin.count)
        else:
            self._answer(head, Origin.count)

    def _answer(self, head: bytes, n: int) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        options = self.options
        variant = _header(head, b"x-rollout-variant")
        body = b"%s %s " % (options.name.encode(), variant)
        body += b"." * max(0, options.body_bytes - len(body))
        if options.malformed_every and n % options.malformed_every == 0:
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok")
        elif options.reset_every and n % options.reset_every == 0:
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            transport.write(body[: len(body) // 2])
            _reset(transport)
            return
        elif options.fail_every and n % options.fail_every == 0:
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nfail\n")
        else:
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.busy = False
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _content_length(head: bytes) -> int:
    value = _header(head, b"content-length")
    return int(value) if value else 0


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return b""


def _reset(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def main(options: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Origin(options), "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="origin")
    parser.add_argument("name")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--body-bytes", type=int, default=0)
    parser.add_argument("--reset-every", type=int, default=0)
    parser.add_argument("--malformed-every", type=int, default=0)
    parser.add_argument("--fail-every", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main(parse(sys.argv[1:])))
    except KeyboardInterrupt:
        pass
