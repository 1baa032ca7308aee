"""What the h2 library itself costs per request, driven as the proxy drives it (no sockets).

The proxy's HTTP/2 runs on h2 (pure Python: frames, HPACK, the stream state machine). This
measures that floor in CPU time: an h2 server connection configured as the proxy's
(proxy/http/h2codec.py) receives batches of `--streams` request HEADERS made by an h2 client
(as h2load sends them: 7 fields, END_STREAM) and answers each with HEADERS (the fields
nginx's response gets through the proxy) and one DATA frame ending the stream; and the same
on the client side, as the proxy's HTTP/2 upstream sessions use it. No event loop, no TLS,
no proxy code besides the field lists: whatever the proxy does around h2 comes on top.

Usage::

    python loadtests/h2cost.py                  # 20,000 requests in batches of 100
    python loadtests/h2cost.py --requests 2000 --json out.json

Compare with bench.py's `CPU us/req` for the h2 scenario: the share of it h2 takes.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events

from proxy.http import h2codec

Field = tuple[bytes, bytes]

REQUEST: list[Field] = [
    (b":method", b"GET"),
    (b":path", b"/"),
    (b":scheme", b"https"),
    (b":authority", b"127.0.0.1:8443"),
    (b"x-tenant-id", b"tenant-0001"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
    (b"accept", b"*/*"),
]
RESPONSE: list[Field] = [
    (b":status", b"200"),
    (b"server", b"nginx/1.22.1"),
    (b"date", b"Mon, 07 Dec 2026 21:00:00 GMT"),
    (b"content-type", b"text/plain"),
    h2codec.unindexed(b"content-length", b"3"),
    (b"x-pool", b"stable"),
    h2codec.unindexed(b"x-request-id", b"0123456789abcdef0123456789abcdef"),
]
BODY = b"ok\n"


@dataclass(slots=True)
class Cost:
    """CPU microseconds per request of each half, on one side of a connection."""

    side: str
    requests: int
    receive_us: float
    send_us: float

    @property
    def total_us(self) -> float:
        return self.receive_us + self.send_us


def _pair(server_side: bool) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    """(measured, peer): the measured end as the proxy configures it, the peer plain h2."""
    measured = h2codec.connection(client_side=not server_side)
    peer = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=server_side, header_encoding=None)
    )
    for conn in (measured, peer):
        conn.initiate_connection()
        conn.increment_flow_control_window(1 << 30)
    measured.receive_data(peer.data_to_send())
    peer.receive_data(measured.data_to_send())
    measured.receive_data(peer.data_to_send())
    return measured, peer


def _check(events: list[h2.events.Event], kind: type[h2.events.Event], expected: int) -> None:
    """Every request (or response) of the batch was seen: the figures are of real work."""
    seen = sum(isinstance(event, kind) for event in events)
    if seen != expected:
        raise RuntimeError(f"{seen} {kind.__name__} events where {expected} were sent")


def _timed(receive: Callable[[bytes], object], data: bytes) -> float:
    start = time.process_time()
    receive(data)
    return time.process_time() - start


def server_cost(requests: int, streams: int) -> Cost:
    """The proxy's client connections: requests in, responses out."""
    server, client = _pair(server_side=True)
    receive = send = 0.0
    for _ in range(requests // streams):
        ids = []
        for _ in range(streams):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, REQUEST, end_stream=True)
            ids.append(sid)
        wire = client.data_to_send()
        receive += _timed(
            lambda data: _check(server.receive_data(data), h2.events.RequestReceived, streams), wire
        )

        start = time.process_time()
        for sid in ids:
            server.send_headers(sid, RESPONSE, end_stream=False)
            server.send_data(sid, BODY, end_stream=True)
        reply = server.data_to_send()
        send += time.process_time() - start
        _check(client.receive_data(reply), h2.events.ResponseReceived, streams)
    done = requests // streams * streams
    return Cost("server (client connections)", done, receive / done * 1e6, send / done * 1e6)


def client_cost(requests: int, streams: int) -> Cost:
    """The proxy's HTTP/2 upstream sessions: requests out, responses in."""
    client, server = _pair(server_side=False)
    receive = send = 0.0
    for _ in range(requests // streams):
        ids: list[int] = []
        start = time.process_time()
        for _ in range(streams):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, REQUEST, end_stream=True)
            ids.append(sid)
        wire = client.data_to_send()
        send += time.process_time() - start
        _check(server.receive_data(wire), h2.events.RequestReceived, streams)
        for sid in ids:
            server.send_headers(sid, RESPONSE, end_stream=False)
            server.send_data(sid, BODY, end_stream=True)
        reply = server.data_to_send()
        receive += _timed(
            lambda data: _check(client.receive_data(data), h2.events.ResponseReceived, streams),
            reply,
        )
        client.data_to_send()
    done = requests // streams * streams
    return Cost("client (upstream sessions)", done, receive / done * 1e6, send / done * 1e6)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--streams", type=int, default=100, help="requests per batch")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.requests < args.streams or args.streams < 1:
        parser.error("--requests must be at least --streams, and --streams at least 1")
    gc.collect()
    costs = [server_cost(args.requests, args.streams), client_cost(args.requests, args.streams)]
    print(f"h2 {h2.__version__}, CPU per request ({args.streams} streams a batch):")
    for cost in costs:
        print(
            f"  {cost.side:28} receive {cost.receive_us:6.1f} us  send {cost.send_us:6.1f} us"
            f"  total {cost.total_us:6.1f} us  ({cost.requests} requests)"
        )
    if args.json is not None:
        rows = [{**asdict(c), "total_us": c.total_us} for c in costs]
        args.json.write_text(json.dumps({"h2": h2.__version__, "costs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
