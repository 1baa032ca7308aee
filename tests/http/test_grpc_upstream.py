"""gRPC outcomes through an HTTP/2 upstream: a real grpcio server behind the proxy.

A call answers HTTP 200 and carries its outcome in `grpc-status`: the proxy counts it as
`grpc:<NAME>` in the metrics, and the analysis counts UNAVAILABLE (and the other server-side
codes) as errors, so a canary that answers 200 with `grpc-status: 14` is rolled back. The
calls here are gRPC-framed POSTs from an HTTP/1.1 client (the proxy speaks HTTP/2 to the
server); per-method paths (`/test.Echo/Ping`) are routes like any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
from prometheus_client import generate_latest

from proxy.runtime import Runtime
from tests.support.grpcserver import EchoServer, echo_pair, frame
from tests.support.proxy import config_dict, running_proxy, service

GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}


def _config(stable: EchoServer, canary: EchoServer, **analysis: Any) -> dict[str, Any]:
    svc = service([stable.url], [canary.url], name="echo", steps=[{"percent": 50}])
    svc["upstreams"]["protocol"] = "h2c"
    svc["rollout"]["analysis"] = {"interval": "100ms", "min_requests": 20, **analysis}
    return config_dict(svc)


async def _call(
    client: aiohttp.ClientSession, runtime: Runtime, tenant: str, method: str = "Ping"
) -> bytes:
    url = f"http://127.0.0.1:{runtime.data_address[1]}/test.Echo/{method}"
    headers = {**GRPC_HEADERS, "X-Tenant-ID": tenant}
    async with client.post(url, data=frame(b"hi"), headers=headers) as reply:
        assert reply.status == 200  # a failed call is still HTTP 200
        return await reply.read()


async def _status(client: aiohttp.ClientSession, runtime: Runtime) -> dict[str, Any]:
    host, port = runtime.admin_address
    async with client.get(f"http://{host}:{port}/api/v1/services/echo") as reply:
        body: dict[str, Any] = await reply.json()
        return body


async def test_grpc_outcomes_are_counted_as_their_status_and_a_failing_canary_rolls_back() -> None:
    async with (
        echo_pair(grpc.StatusCode.UNAVAILABLE) as (stable, canary),
        running_proxy(_config(stable, canary)) as runtime,
        aiohttp.ClientSession() as client,
    ):
        bodies = [await _call(client, runtime, f"t{i}") for i in range(40)]
        assert frame(b"pong:stable:hi") in bodies  # stable's answers came back whole
        status: dict[str, Any] = {}
        for i in range(200):
            status = await _status(client, runtime)
            if status["status"] == "rolled_back":
                break
            await _call(client, runtime, f"u{i}")
        assert status["status"] == "rolled_back", status
        text = generate_latest(runtime.registry).decode()
    assert canary.calls > 0
    ok = (
        'rollout_requests_total{service="echo",status_class="grpc:OK",tier="free",variant="stable"}'
    )
    bad = (
        'rollout_requests_total{service="echo",status_class="grpc:UNAVAILABLE",tier="free",'
        'variant="canary"}'
    )
    assert ok in text
    assert bad in text


async def test_a_code_the_service_does_not_count_as_an_error_does_not_roll_back() -> None:
    """NOT_FOUND is the caller's business, not the server's: not an error by default."""
    async with (
        echo_pair(grpc.StatusCode.NOT_FOUND) as (stable, canary),
        running_proxy(_config(stable, canary)) as runtime,
        aiohttp.ClientSession() as client,
    ):
        for i in range(150):
            await _call(client, runtime, f"t{i}")
        await asyncio.sleep(0.3)
        status = await _status(client, runtime)
        text = generate_latest(runtime.registry).decode()
    assert status["status"] != "rolled_back", status
    assert 'status_class="grpc:NOT_FOUND"' in text


async def test_error_statuses_name_grpc_outcomes_and_streaming_calls_are_relayed() -> None:
    """A service may count a caller-side code as an error; after the rollback, stable serves
    server-streaming, client-streaming and bidirectional calls through the proxy."""
    async with (
        echo_pair(grpc.StatusCode.NOT_FOUND) as (stable, canary),
        running_proxy(_config(stable, canary, error_statuses=["5xx", "grpc:NOT_FOUND"])) as rt,
        aiohttp.ClientSession() as client,
    ):
        status: dict[str, Any] = {}
        for i in range(300):
            await _call(client, rt, f"t{i}")
            if i % 10 == 0:
                status = await _status(client, rt)
                if status["status"] == "rolled_back":
                    break
        assert status["status"] == "rolled_back", status
        # A server-streaming call (stable now): three messages back, in one response.
        url = f"http://127.0.0.1:{rt.data_address[1]}/test.Echo/Count"
        headers = {**GRPC_HEADERS, "X-Tenant-ID": "t0"}
        async with client.post(url, data=frame(b"\x03"), headers=headers) as reply:
            assert await reply.read() == frame(b"\x03") * 3

        async def messages() -> AsyncIterator[bytes]:
            for text in (b"a", b"bb", b"ccc"):
                yield frame(text)  # each its own chunk upstream: DATA frames of one stream

        # Client streaming, and both ways: the request body streams up as it comes.
        base = f"http://127.0.0.1:{rt.data_address[1]}/test.Echo"
        async with client.post(f"{base}/Sum", data=messages(), headers=headers) as reply:
            assert await reply.read() == frame(b"6")
        async with client.post(f"{base}/Chat", data=messages(), headers=headers) as reply:
            assert await reply.read() == frame(b"echo:a") + frame(b"echo:bb") + frame(b"echo:ccc")
