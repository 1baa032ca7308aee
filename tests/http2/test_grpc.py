"""gRPC end to end: a real grpcio client, through the proxy's HTTP/2 listener (h2c, and h2
over TLS), to real grpcio servers on HTTP/2 upstreams.

Unary, server-streaming, client-streaming and bidirectional calls are relayed whole, with the
call's status and its message reaching the client from the upstream's trailers; the
canary/stable split holds per tenant; and a canary failing with UNAVAILABLE is rolled back
while every call keeps going.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from prometheus_client import generate_latest

from tests.support.certs import TestCA
from tests.support.grpcserver import SERVICE, EchoServer, echo_pair
from tests.support.proxy import config_dict, running_proxy, service


def _ident(data: bytes) -> bytes:
    return data


def _config(stable: EchoServer, canary: EchoServer, percent: float, **top: Any) -> dict[str, Any]:
    svc = service([stable.url], [canary.url], name="echo", steps=[{"percent": percent}])
    svc["identity"] = [{"header": "x-tenant-id", "kind": "tenant"}]
    svc["upstreams"]["protocol"] = "h2c"
    svc["rollout"]["analysis"] = {"interval": "100ms", "min_requests": 20}
    return config_dict(svc, http2={"enabled": True, "h2c": True}, **top)


class Calls:
    """The four kinds of call on one channel (bytes in, bytes out: no generated code)."""

    def __init__(self, channel: grpc.Channel) -> None:
        base = f"/{SERVICE}/"
        self.ping = channel.unary_unary(base + "Ping", _ident, _ident)
        self.count = channel.unary_stream(base + "Count", _ident, _ident)
        self.sum = channel.stream_unary(base + "Sum", _ident, _ident)
        self.chat = channel.stream_stream(base + "Chat", _ident, _ident)


def _all_kinds(calls: Calls, tenant: str) -> list[object]:
    meta = (("x-tenant-id", tenant),)

    def three() -> Iterator[bytes]:
        yield from (b"a", b"bb", b"ccc")

    return [
        calls.ping(b"hi", metadata=meta, timeout=10),
        list(calls.count(b"\x03", metadata=meta, timeout=10)),
        calls.sum(three(), metadata=meta, timeout=10),
        list(calls.chat(three(), metadata=meta, timeout=10)),
    ]


async def test_a_grpcio_client_makes_every_kind_of_call_through_h2c() -> None:
    async with (
        echo_pair(None) as (stable, canary),
        running_proxy(_config(stable, canary, 0)) as runtime,
    ):
        target = f"127.0.0.1:{runtime.data_address[1]}"
        with grpc.insecure_channel(target) as channel:
            results = await asyncio.to_thread(_all_kinds, Calls(channel), "t1")
        text = generate_latest(runtime.registry).decode()
    assert results == [
        b"pong:stable:hi",
        [b"\x03", b"\x03", b"\x03"],
        b"6",
        [b"echo:a", b"echo:bb", b"echo:ccc"],
    ]
    assert 'status_class="grpc:OK",tier="free",variant="stable"} 4.0' in text


async def test_a_failing_canary_is_seen_by_the_client_and_rolled_back() -> None:
    async with (
        echo_pair(grpc.StatusCode.UNAVAILABLE) as (stable, canary),
        running_proxy(_config(stable, canary, 50)) as runtime,
        aiohttp.ClientSession() as client,
    ):
        target = f"127.0.0.1:{runtime.data_address[1]}"
        host, port = runtime.admin_address
        codes: list[grpc.StatusCode] = []
        details: list[str] = []

        def calls(first: int) -> None:
            with grpc.insecure_channel(target) as channel:
                ping = Calls(channel).ping
                for i in range(first, first + 20):
                    try:
                        ping(b"x", metadata=(("x-tenant-id", f"t{i}"),), timeout=10)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.RpcError as error:
                        codes.append(error.code())
                        details.append(error.details() or "")

        status: dict[str, Any] = {}
        for round_ in range(20):
            await asyncio.to_thread(calls, round_ * 20)
            async with client.get(f"http://{host}:{port}/api/v1/services/echo") as reply:
                status = await reply.json()
            if status["status"] == "rolled_back":
                break
        assert status["status"] == "rolled_back", status
        assert grpc.StatusCode.UNAVAILABLE in codes  # the trailers reached the client
        assert set(details) == {"canary is failing"}  # with the server's message
        after: list[bytes] = []
        with grpc.insecure_channel(target) as channel:
            ping = Calls(channel).ping
            for i in range(20):
                meta = (("x-tenant-id", f"t{i}"),)
                after.append(await asyncio.to_thread(ping, b"x", metadata=meta, timeout=10))
    assert set(after) == {b"pong:stable:x"}


async def test_grpc_over_tls_with_alpn_h2(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    cert = ca.issue("proxy", ["localhost"])
    async with echo_pair(None) as (stable, canary):
        data = _config(stable, canary, 100, tls={"cert": str(cert.cert), "key": str(cert.key)})
        async with running_proxy(data) as runtime:
            credentials = grpc.ssl_channel_credentials(ca.pem.read_bytes())
            target = f"localhost:{runtime.data_address[1]}"
            with grpc.secure_channel(target, credentials) as channel:
                results = await asyncio.to_thread(_all_kinds, Calls(channel), "t1")
    assert results[0] == b"pong:canary:hi"
    assert results[3] == [b"echo:a", b"echo:bb", b"echo:ccc"]
