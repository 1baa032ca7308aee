"""Load from a process of its own: keep-alive HTTP/1.1 clients that record every outcome.

    python -m tests.faults.loadgen URL --out FILE [--concurrency N] [--duration S] [--ids N]
        [--method GET|POST] [--body-bytes N] [--readiness URL] [--abort]

Runs until --duration passes or it gets SIGINT/SIGTERM, then writes FILE: a JSON list of
`[start, latency_s, outcome, served_by, body_bytes]` per request, `start` in time.monotonic()
seconds (the system-wide CLOCK_MONOTONIC, comparable with the test process), `outcome` the
status code or an error name (connect, reset, eof, truncated, timeout, malformed), `served_by`
the first word of the body. It prints `started` once the first response has arrived.

The client is strict: a body shorter than its Content-Length, or a chunked body without its
last chunk, is `truncated`, never a success. With --readiness it polls that URL every 50 ms and
stops sending new requests once it fails (a client that honours readiness, like a load balancer
that takes the proxy out of rotation). With --abort every request is sent and its connection
closed at once (clients that go away).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson

TIMEOUT_S = 10.0


class Load:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        url = urlsplit(options.url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 80
        self.records: list[tuple[float, float, int | str, str, int]] = []
        self.stop = asyncio.Event()
        self.counter = 0
        self.started = False
        self.rng = random.Random(options.seed)

    def request(self) -> bytes:
        options = self.options
        self.counter += 1
        tenant = f"t{self.rng.randrange(options.ids)}"
        body = b"b" * options.body_bytes if options.method != "GET" else b""
        head = (
            f"{options.method} /load/{self.counter} HTTP/1.1\r\nHost: app\r\n"
            f"X-Tenant-ID: {tenant}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    def record(self, start: float, outcome: int | str, body: bytes = b"") -> None:
        served_by = body.split(b" ", 1)[0].decode("latin-1")
        self.records.append((start, time.monotonic() - start, outcome, served_by, len(body)))
        if not self.started and isinstance(outcome, int):
            self.started = True
            print("started", flush=True)

    async def client(self) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while not self.stop.is_set():
            start = time.monotonic()
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                except OSError:
                    self.record(start, "connect")
                    await asyncio.sleep(0.01)
                    continue
            assert reader is not None
            try:
                writer.write(self.request())
                if self.options.abort:
                    self.record(start, 0)
                    raise ConnectionAbortedError
                async with asyncio.timeout(TIMEOUT_S):
                    status, body, close = await read_response(reader)
            except (ConnectionAbortedError, OSError, asyncio.IncompleteReadError, Malformed,
                    TimeoutError) as exc:  # fmt: skip
                if not self.options.abort:
                    self.record(start, error_name(exc))
                writer.close()
                writer = None
                continue
            self.record(start, status, body)
            if close:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    async def readiness(self, url: str) -> None:
        parts = urlsplit(url)
        host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
        while not self.stop.is_set():
            ready = False
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, Malformed,
                                     TimeoutError):  # fmt: skip
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode()
                )
                async with asyncio.timeout(1.0):
                    status, _, _ = await read_response(reader)
                writer.close()
                ready = status == 200
            if not ready:
                print(f"not-ready {time.monotonic():.6f}", flush=True)
                self.stop.set()
                return
            await asyncio.sleep(0.05)


class Malformed(Exception):
    pass


def error_name(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "truncated" if exc.partial or exc.expected else "eof"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, Malformed):
        return "malformed"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    return type(exc).__name__


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, the server closes) of one response; strict about framing."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise Malformed(lines[0])
    status = int(parts[1])
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or name != name.strip():
            raise Malformed(line)
        fields[name.lower()] = value.strip()
    close = fields.get(b"connection", b"").lower() == b"close"
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        return status, await read_chunked(reader), close
    if b"content-length" in fields:
        return status, await reader.readexactly(int(fields[b"content-length"])), close
    if status in (204, 304) or 100 <= status < 200:
        return status, b"", close
    raise Malformed(b"no framing")


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def main(options: argparse.Namespace) -> list[tuple[float, float, int | str, str, int]]:
    load = Load(options)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, load.stop.set)
    tasks = [asyncio.create_task(load.client()) for _ in range(options.concurrency)]
    if options.readiness:
        tasks.append(asyncio.create_task(load.readiness(options.readiness)))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(options.duration):
            await load.stop.wait()
    load.stop.set()
    # Requests in flight may finish (a drill may be waiting for exactly those).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TIMEOUT_S + 1):
            await asyncio.gather(*tasks, return_exceptions=True)
    return load.records


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loadgen")
    parser.add_argument("url")
    parser.add_argument("--out", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--ids", type=int, default=10_000)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body-bytes", type=int, default=0)
    parser.add_argument("--readiness", default="")
    parser.add_argument("--abort", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


if __name__ == "__main__":
    import uvloop

    arguments = parse(sys.argv[1:])
    records = uvloop.run(main(arguments))
    Path(arguments.out).write_bytes(orjson.dumps(records))
