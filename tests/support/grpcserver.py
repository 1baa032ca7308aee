"""A real gRPC server for tests: grpcio's, with generic handlers (no generated code).

`test.Echo/Ping` (unary) answers `pong:<request>`; `test.Echo/Count` (server streaming)
answers the request's bytes once per count in its first byte; `test.Echo/Sum` (client
streaming) the total length of what it received; `test.Echo/Chat` (both ways) echoes each
message. A server built with `fail` aborts calls with that status instead: every call, or
only those of the `methods` named, and of those every `every`-th.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Collection, Iterator
from concurrent import futures
from contextlib import asynccontextmanager

import grpc

SERVICE = "test.Echo"


def _ident(data: bytes) -> bytes:
    return data


class EchoServer:
    """An h2c gRPC server on 127.0.0.1:<free port>, its threads its own."""

    def __init__(
        self,
        name: str,
        fail: grpc.StatusCode | None = None,
        *,
        methods: Collection[str] | None = None,
        every: int = 1,
    ) -> None:
        self.name = name
        self.fail = fail
        self.methods = methods  # None: every method fails
        self.every = every
        self.calls = 0
        self.failing_calls = 0  # calls of the failing methods (every `every`-th is failed)
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {
            "Ping": grpc.unary_unary_rpc_method_handler(self._ping, _ident, _ident),
            "Count": grpc.unary_stream_rpc_method_handler(self._count, _ident, _ident),
            "Sum": grpc.stream_unary_rpc_method_handler(self._sum, _ident, _ident),
            "Chat": grpc.stream_stream_rpc_method_handler(self._chat, _ident, _ident),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EchoServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None)

    def _check(self, context: grpc.ServicerContext, method: str) -> None:
        with self._lock:  # the server's threads answer calls at once
            self.calls += 1
            if self.fail is None or (self.methods is not None and method not in self.methods):
                return
            self.failing_calls += 1
            failed = self.failing_calls % self.every == 0
        if failed:
            context.abort(self.fail, f"{self.name} is failing")

    def _ping(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._check(context, "Ping")
        return f"pong:{self.name}:".encode() + request

    def _count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._check(context, "Count")
        for _ in range(request[0] if request else 0):
            yield request

    def _sum(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._check(context, "Sum")
        return str(sum(len(r) for r in requests)).encode()

    def _chat(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._check(context, "Chat")
        for request in requests:
            yield b"echo:" + request


def frame(message: bytes) -> bytes:
    """One gRPC message on the wire: uncompressed flag, 4-byte length, the bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@asynccontextmanager
async def echo_pair(
    canary_fails: grpc.StatusCode | None = None,
) -> AsyncIterator[tuple[EchoServer, EchoServer]]:
    """A stable and a canary server (the canary failing every call with `canary_fails`)."""
    stable = EchoServer("stable").start()
    canary = EchoServer("canary", canary_fails).start()
    try:
        yield stable, canary
    finally:
        stable.stop()
        canary.stop()
