"""The gRPC upstream of loadtests/bench.py's `grpc` scenario: a real grpcio server (h2c), with
generic handlers (no generated code), serving until SIGTERM or SIGINT.

Methods (request and response messages are raw bytes, no protobuf):
- `/bench.Echo/Unary`: answers the request's bytes (the timed load);
- `/bench.Echo/Pool`: answers this server's `--pool` name (the pre-flight's stickiness check);
- `/bench.Echo/Stats`: answers how many Unary calls it has served, in decimal ASCII (the
  benchmark compares it with the 2xx answers h2load counted).

The benchmark starts two of them (stable and canary), pinned to the load generator's CPU::

    taskset -c 0 python loadtests/grpc_upstream.py --listen 127.0.0.1:PORT --pool stable \\
        --threads 64

Calls wait for a thread in a queue of up to 20,000 (gRPC core's default refuses calls
beyond 1,000 with RESOURCE_EXHAUSTED, behind an HTTP 200 that h2load counts as a success).
It prints `listening on HOST:PORT` once bound. SO_REUSEPORT is off, so a port someone else
holds makes the start fail instead of sharing the traffic.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent import futures

import grpc

SERVICE = "bench.Echo"
MAX_PENDING = 20_000  # calls waiting for a handler thread before gRPC core refuses them


def _ident(data: bytes) -> bytes:
    return data


class Echo:
    """The handlers and the count of Unary calls served."""

    def __init__(self, pool: str) -> None:
        self.pool = pool.encode()
        self._lock = threading.Lock()
        self.calls = 0

    def unary(self, request: bytes, _context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.calls += 1
        return request

    def pool_name(self, _request: bytes, _context: grpc.ServicerContext) -> bytes:
        return self.pool

    def stats(self, _request: bytes, _context: grpc.ServicerContext) -> bytes:
        with self._lock:
            return str(self.calls).encode()


def build(listen: str, pool: str, threads: int) -> tuple[grpc.Server, Echo, int]:
    """The server (not started), its handlers, and the port it bound."""
    echo = Echo(pool)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads),
        options=[
            ("grpc.so_reuseport", 0),
            # gRPC core answers calls beyond 1,000 waiting for a handler thread with
            # RESOURCE_EXHAUSTED ("Too many pending requests"): 800 streams of one run plus a
            # proxy's calls still in flight from the last one go past that.
            ("grpc.server.max_pending_requests", MAX_PENDING),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING),
        ],
    )
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(echo.unary, _ident, _ident),
        "Pool": grpc.unary_unary_rpc_method_handler(echo.pool_name, _ident, _ident),
        "Stats": grpc.unary_unary_rpc_method_handler(echo.stats, _ident, _ident),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return server, echo, port


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default 127.0.0.1:0)")
    p.add_argument("--pool", default="stable", help="the name Pool answers (default stable)")
    p.add_argument(
        "--threads",
        type=int,
        default=64,
        help="handler threads (default 64; a call waiting for a thread is queued, not refused)",
    )
    args = p.parse_args(argv)
    try:
        server, _, port = build(args.listen, args.pool, args.threads)
    except (OSError, RuntimeError) as exc:
        print(f"grpc_upstream: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: stop.set())
    server.start()
    print(f"listening on {args.listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop.wait()
    server.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
