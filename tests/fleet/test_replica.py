"""Replicas in one process sharing a real redis-server: convergence, the decider lease, fleet
evidence, races, and Redis going away. (tests/test_fleet_process.py does the same with real
processes; these are quicker and look inside.)"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from proxy.controller import Controller
from proxy.core.machine import Status
from proxy.dataplane import Router
from proxy.fleet.replica import backoff
from proxy.runtime import Runtime
from proxy.store.redis_store import RedisStore
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.redis import RedisServer
from tests.support.servers import NameUpstream

TOKEN = "fleet-token"
STEPS: list[dict[str, Any]] = [
    {"percent": 10, "observe": "1h"},
    {"percent": 50, "observe": "1h"},
    {"percent": 100},
]


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(3)
    for failures in range(1, 12):
        ceiling = min(1.0, 0.05 * 2 ** (failures - 1))
        for _ in range(50):
            delay = backoff(failures, 1.0, rng.random)
            assert ceiling / 2 <= delay <= ceiling
    assert backoff(1, 1.0, lambda: 0.0) == 0.025
    assert backoff(40, 2.0, lambda: 1.0) == 2.0


def fleet_data(redis_url_env: str, stable: str, canary: str, **analysis: Any) -> dict[str, Any]:
    svc = service([stable], [canary], name="shop", steps=STEPS)
    if analysis:
        svc["rollout"]["analysis"] = analysis
    data = config_dict(svc)
    data["state"] = {
        "backend": "redis",
        "url_env": redis_url_env,
        "reconcile": "300ms",
        "lease": "1s",
        "timeout": "200ms",
    }
    data["admin"]["token_env"] = "ADMIN_TOKEN"
    return data


def router(runtime: Runtime) -> Router:
    assert runtime.router is not None, "the runtime has not started"
    return runtime.router


def controller(runtime: Runtime) -> Controller:
    assert runtime.controller is not None, "the runtime has not started"
    return runtime.controller


class Fleet:
    def __init__(self, runtimes: list[Runtime]) -> None:
        self.runtimes = runtimes

    def steps(self) -> list[int]:
        return [router(r).services[0].plan.step_index for r in self.runtimes]

    def statuses(self) -> list[Status]:
        return [controller(r).rollouts["shop"].state.status for r in self.runtimes]

    def deciders(self) -> list[int]:
        return [i for i, r in enumerate(self.runtimes) if r.controller and r.controller.deciding]

    async def act(
        self, i: int, action: str, version: int | None = None
    ) -> tuple[int, dict[str, Any]]:
        url = f"{self.runtimes[i].admin_url}/api/v1/services/shop/{action}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if version is not None:
            headers["If-Match"] = f'"{version}"'
        async with aiohttp.ClientSession() as s, s.post(url, headers=headers) as reply:
            return reply.status, await reply.json()


async def until(condition: Any, within: float, poll: float = 0.005) -> float:
    """Seconds until `condition()` holds; fails after `within`."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - watching state owned by other tasks
            await asyncio.sleep(poll)
    return time.monotonic() - started


@pytest.fixture
async def fleet(
    redis_server: RedisServer, upstreams: tuple[NameUpstream, NameUpstream]
) -> AsyncIterator[Fleet]:
    stable, canary = upstreams
    env = {"ROLLOUT_REDIS_URL": redis_server.url, "ADMIN_TOKEN": TOKEN}
    data = fleet_data("ROLLOUT_REDIS_URL", stable.url, canary.url)
    async with AsyncExitStack() as stack:
        runtimes = [await stack.enter_async_context(running_proxy(data, env)) for _ in range(3)]
        yield Fleet(runtimes)


async def test_a_promote_anywhere_is_served_everywhere_at_once(fleet: Fleet) -> None:
    assert fleet.steps() == [0, 0, 0]
    status, body = await fleet.act(1, "promote")
    assert status == 200, body
    took = await until(lambda: fleet.steps() == [1, 1, 1], within=1.0)
    assert took < 0.5  # pushed, not waiting for the reconcile


async def test_one_decider_and_a_takeover_when_it_leaves(fleet: Fleet) -> None:
    await until(lambda: len(fleet.deciders()) == 1, within=2.0)
    (first,) = fleet.deciders()
    await fleet.runtimes[first].stop()  # releases the lease on the way out
    fleet.runtimes.pop(first)
    took = await until(lambda: len(fleet.deciders()) == 1, within=2.0)
    assert took < 1.0  # the next lease round (lease / 3), not the lease's expiry


async def test_racing_promotes_give_exactly_one_transition(fleet: Fleet) -> None:
    controller = fleet.runtimes[0].controller
    assert controller is not None
    for round_ in range(2):
        version = controller.rollouts["shop"].state.version
        # Fifty people press promote on what they all saw (version `version`), on 3 replicas.
        replies = await asyncio.gather(*(fleet.act(i % 3, "promote", version) for i in range(50)))
        codes = sorted(code for code, _ in replies)
        assert codes.count(200) == 1, codes
        assert set(codes) <= {200, 409, 412}
        await until(lambda n=round_ + 1: fleet.steps() == [n] * 3, within=1.0)
        journal = await controller.history("shop")
        assert [e.version for e in journal[:2]] == [version + 1, version]


async def test_abort_wins_over_a_concurrent_promote(fleet: Fleet) -> None:
    replies = await asyncio.gather(
        *(fleet.act(i % 3, "promote" if i % 2 else "abort") for i in range(20))
    )
    aborts = [code for i, (code, _) in enumerate(replies) if i % 2 == 0]
    assert 200 in aborts  # one abort applied, the others found it already rolled back
    await until(lambda: fleet.statuses() == [Status.ROLLED_BACK] * 3, within=1.0)


async def test_the_decider_judges_the_whole_fleets_traffic(
    redis_server: RedisServer, upstreams: tuple[NameUpstream, NameUpstream]
) -> None:
    stable, canary = upstreams
    env = {"ROLLOUT_REDIS_URL": redis_server.url, "ADMIN_TOKEN": TOKEN}
    data = fleet_data("ROLLOUT_REDIS_URL", stable.url, canary.url, min_requests=10)
    async with running_proxy(data, env) as one, running_proxy(data, env) as two:
        fleet = Fleet([one, two])
        await until(lambda: len(fleet.deciders()) == 1, within=2.0)
        (decider,) = fleet.deciders()
        other = fleet.runtimes[1 - decider]
        port = other.data_address[1]
        # Traffic only through the replica that does not decide.
        requests = [
            f"GET / HTTP/1.1\r\nHost: a\r\nX-Tenant-ID: t{i}\r\n\r\n".encode() for i in range(400)
        ]
        from tests.support.client import bodies_for

        await bodies_for(port, requests)
        errors = controller(fleet.runtimes[decider]).rollouts["shop"].analysis.errors

        def judged() -> int:
            return errors.canary_requests() + errors.baseline_requests()

        # Batches arrive every flush (250 ms), so the 400 can come in more than one.
        await until(lambda: judged() >= 400, within=2.0)
        await asyncio.sleep(0.6)  # two flushes more: nothing is counted twice
        assert judged() == 400
        assert errors.baseline_requests() >= 300


async def readyz(runtime: Runtime) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(runtime.admin_url + "/readyz") as reply,
    ):
        assert reply.status == 200  # serving the last known state is ready
        body: dict[str, Any] = await reply.json()
        return body


async def test_redis_down_serves_the_last_state_and_an_abort_is_written_back(
    fleet: Fleet, redis_server: RedisServer
) -> None:
    status, _ = await fleet.act(0, "promote")
    assert status == 200
    await until(lambda: fleet.steps() == [1, 1, 1], within=1.0)
    await redis_server.stop()
    await asyncio.sleep(0.5)
    state = (await readyz(fleet.runtimes[1]))["state"]
    assert state["stale_s"] > 0
    assert "unreachable" in state["error"]
    status, body = await fleet.act(1, "promote")
    assert status == 503, body
    status, body = await fleet.act(2, "abort")
    assert status == 200, body
    assert body["pending_write"] is True
    assert fleet.statuses()[2] is Status.ROLLED_BACK  # at once, on this replica
    assert fleet.statuses()[:2] == [Status.PROGRESSING] * 2
    # Redis comes back empty (no persistence): the replicas write their state back, the
    # abort included, and every replica converges on it.
    await redis_server.start()
    took = await until(lambda: fleet.statuses() == [Status.ROLLED_BACK] * 3, within=2.0)
    assert took < 2 * 0.3 + 0.5
    for runtime in fleet.runtimes:
        await until(lambda r=runtime: r.replica is not None and r.replica.error is None, 1.0)
    journal = await controller(fleet.runtimes[0]).history("shop")
    # The abort is journaled as the person's, on top of the record written back (by this
    # replica with the abort, or by another just before).
    assert (journal[0].action, journal[0].actor) == ("abort", "admin:127.0.0.1")
    assert any("lost this rollout's record" in e.reason for e in journal[:2])


async def test_a_hung_redis_costs_no_request(
    fleet: Fleet, redis_server: RedisServer, upstreams: tuple[NameUpstream, NameUpstream]
) -> None:
    from tests.support.client import bodies_for

    port = fleet.runtimes[0].data_address[1]
    requests = [
        f"GET / HTTP/1.1\r\nHost: a\r\nX-Tenant-ID: t{i}\r\n\r\n".encode() for i in range(200)
    ]
    before = await bodies_for(port, requests)
    redis_server.pause()
    try:
        started = time.monotonic()
        during = await bodies_for(port, requests)
        assert time.monotonic() - started < 2.0  # no request waited on Redis
        assert during == before
        status, body = await fleet.act(0, "promote")
        assert status == 503
        assert "may still apply" in body["error"]  # the write is queued in the hung Redis
    finally:
        redis_server.resume()

    # Whatever the hung Redis did with that write, every replica converges on it.
    store = RedisStore(redis_server.url, "rollout-proxy", timeout_s=1.0)
    try:
        await asyncio.sleep(0.2)  # the commands queued in the hung Redis run first
        stored = (await store.load())["shop"].version
    finally:
        await store.close()

    def versions() -> set[int]:
        return {controller(r).rollouts["shop"].state.version for r in fleet.runtimes}

    await until(lambda: versions() == {stored}, within=1.0)
    step = fleet.steps()[0]
    (version,) = versions()
    status, body = await fleet.act(1, "promote", version)
    assert status == 200, body
    await until(lambda: fleet.steps() == [step + 1] * 3, within=1.0)
