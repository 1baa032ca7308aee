"""gRPC per-method routes: a route check whose `path_prefix` is a method's path
(`/test.Echo/Ping`) judges that method's calls alone. Real grpcio servers behind the proxy
(h2c both sides), a grpcio client, the rollout's verdict read from the admin API.

- One method failing on the canary with UNAVAILABLE, the others healthy, while stable fails
  as often overall on other methods: the service-wide check sees the same rate on both arms,
  and only the method's route check can tell them apart: it rolls the step back, named.
- The converse: a method outside every route failing on the canary is judged by the
  service-wide check only; the route's own evidence shows its calls clean.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import grpc

from tests.http2.test_grpc import Calls
from tests.support.grpcserver import SERVICE, EchoServer
from tests.support.proxy import config_dict, running_proxy, service

PING = f"/{SERVICE}/Ping"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _config(stable: EchoServer, canary: EchoServer) -> dict[str, Any]:
    svc = service([stable.url], [canary.url], name="echo", steps=[{"percent": 50}])
    svc["identity"] = [{"header": "x-tenant-id", "kind": "tenant"}]
    svc["upstreams"]["protocol"] = "h2c"
    svc["rollout"]["analysis"] = {
        "interval": "100ms",
        "min_requests": 20,
        "routes": [{"path_prefix": PING, "errors": {"max_increase": 0.2}}],
        # Neither arm fails often enough for the guardrail: the interval checks decide.
        "guardrail": {"max_error_rate": 0.9, "min_requests": 1000},
    }
    return config_dict(svc, http2={"enabled": True, "h2c": True})


@asynccontextmanager
async def _servers(stable: EchoServer, canary: EchoServer) -> AsyncIterator[None]:
    stable.start()
    canary.start()
    try:
        yield
    finally:
        stable.stop()
        canary.stop()


def _rolled_back(status: dict[str, Any]) -> bool:
    return bool(status["status"] == "rolled_back")


async def _until_rolled_back(
    runtime: Any,
    is_ping: Callable[[int], bool],
    codes: dict[str, list[grpc.StatusCode]],
    watch: str = "/api/v1/services/echo",
    done: Callable[[dict[str, Any]], bool] = _rolled_back,
) -> dict[str, Any]:
    """Calls from new tenants, the `i`-th a Ping when `is_ping(i)` and a Count otherwise,
    until what the admin API shows at `watch` is `done` (or 40 rounds); what it shows."""
    target = f"127.0.0.1:{runtime.data_address[1]}"
    host, port = runtime.admin_address

    def round_of_calls(first: int) -> None:
        with grpc.insecure_channel(target) as channel:
            calls = Calls(channel)
            for i in range(first, first + 40):
                meta = (("x-tenant-id", f"t{i}"),)
                method = "Ping" if is_ping(i) else "Count"
                try:
                    if method == "Ping":
                        calls.ping(b"x", metadata=meta, timeout=10)
                    else:
                        list(calls.count(b"\x01", metadata=meta, timeout=10))
                    codes[method].append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes[method].append(error.code())

    status: dict[str, Any] = {}
    async with aiohttp.ClientSession() as client:
        for round_ in range(40):
            await asyncio.to_thread(round_of_calls, round_ * 40)
            async with client.get(f"http://{host}:{port}{watch}") as reply:
                status = await reply.json()
            if done(status):
                break
    return status


def _check(verdict: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in verdict["checks"] if c["check"] == name]
    assert len(found) == 1, verdict["checks"]
    return found[0]


async def test_a_failing_method_is_rolled_back_by_its_own_route_check() -> None:
    # The canary fails every Ping (a quarter of the calls); stable fails every third Count
    # (a quarter of the calls too): the same error rate service-wide, none on stable's Ping.
    stable = EchoServer("stable", UNAVAILABLE, methods={"Count"}, every=3)
    canary = EchoServer("canary", UNAVAILABLE, methods={"Ping"})
    codes: dict[str, list[grpc.StatusCode]] = {"Ping": [], "Count": []}
    async with _servers(stable, canary), running_proxy(_config(stable, canary)) as runtime:
        status = await _until_rolled_back(runtime, lambda i: i % 4 == 0, codes)
    assert status["status"] == "rolled_back", status
    verdict = status["verdict"]
    assert (verdict["verdict"], verdict["check"]) == ("degraded", f"route:{PING}"), verdict
    route = _check(verdict, f"route:{PING}")
    assert route["canary"]["events"] == route["canary"]["requests"] > 0  # every canary Ping
    assert route["baseline"]["events"] == 0  # stable's Pings never failed
    errors = _check(verdict, "errors")
    assert not errors["crossed"]  # the service-wide rate does not tell the arms apart
    assert errors["baseline"]["events"] > 0
    assert UNAVAILABLE in codes["Ping"]
    assert UNAVAILABLE in codes["Count"]  # stable's own failures reached their callers


async def test_a_failing_method_outside_every_route_is_left_to_the_service_wide_check() -> None:
    stable = EchoServer("stable")
    canary = EchoServer("canary", UNAVAILABLE, methods={"Count"})
    codes: dict[str, list[grpc.StatusCode]] = {"Ping": [], "Count": []}
    async with _servers(stable, canary), running_proxy(_config(stable, canary)) as runtime:
        # Three in four calls are Pings (healthy everywhere); the Counts fail on the canary.
        status = await _until_rolled_back(runtime, lambda i: i % 4 != 0, codes)
    assert status["status"] == "rolled_back", status
    verdict = status["verdict"]
    assert (verdict["verdict"], verdict["check"]) == ("degraded", "errors"), verdict
    route = _check(verdict, f"route:{PING}")
    assert route["canary"]["requests"] > 0
    assert route["canary"]["events"] == 0  # the route's calls are clean on the canary
    assert not route["crossed"]
    assert set(codes["Ping"]) == {grpc.StatusCode.OK}
    assert UNAVAILABLE in codes["Count"]


async def test_a_release_names_a_method_in_its_change_routes() -> None:
    stable = EchoServer("stable", UNAVAILABLE, methods={"Count"}, every=3)
    canary = EchoServer("canary", UNAVAILABLE, methods={"Ping"})
    data = _config(stable, canary)
    svc = data["services"][0]
    svc["upstreams"]["canary"] = []
    svc["rollout"]["steps"] = [{"percent": 0}]
    del svc["rollout"]["analysis"]["routes"]  # the release brings the route check
    data["admin"]["token_env"] = "ADMIN_TOKEN"
    codes: dict[str, list[grpc.StatusCode]] = {"Ping": [], "Count": []}
    steps = [{"percent": 50}, {"percent": 100}]
    release = {
        "version": "2.0",
        "canary": [canary.url],
        "steps": steps,
        "change": {"routes": [PING]},
    }
    async with (
        _servers(stable, canary),
        running_proxy(data, {"ADMIN_TOKEN": "token"}) as runtime,
        aiohttp.ClientSession() as client,
    ):
        url = f"{runtime.admin_url}/api/v1/services/echo/releases"
        headers = {"Authorization": "Bearer token"}
        async with client.post(url, json=release, headers=headers) as reply:
            assert reply.status == 201, await reply.text()
            started = await reply.json()
        shown = await _until_rolled_back(
            runtime,
            lambda i: i % 4 == 0,
            codes,
            watch=f"/api/v1/services/echo/releases/{started['id']}",
            done=lambda shown: shown["ended"] is not None,  # the record is written
        )
    assert shown["status"] == "rolled_back", shown
    name = f"route:{PING} [release 2.0]"
    degraded = [v for v in shown["verdicts"] if v["action"] == "degraded"]
    assert degraded, (shown["outcome"], [v["action"] for v in shown["verdicts"]])
    assert degraded[0]["evidence"]["check"] == name, degraded[0]
    assert name in shown["outcome"]
