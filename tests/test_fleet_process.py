"""Fleet mode as users run it: three `rollout-proxy run` processes sharing one redis-server.

Convergence of a change made on any replica, the same users on the same side everywhere, the
decider lease failing over after `kill -9`, and racing promotes. (tests/faults/test_redis_outage
stops and hangs Redis under load; tests/fleet looks inside replicas in one process.)"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import yaml

from tests.faults.harness import report
from tests.support.client import bodies_for, get
from tests.support.fleet import (
    act,
    fleet_config,
    get_json,
    start_fleet,
    state,
    status,
    wait_for,
)
from tests.support.process import ProxyProcess
from tests.support.redis import RedisServer
from tests.support.servers import NameUpstream

STEPS = [{"percent": p, "observe": "1h"} for p in (5, 20, 40, 60, 80)] + [{"percent": 100}]
LEASE_S = 1.5


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[list[ProxyProcess]]:
    redis = await RedisServer(tmp_path).start()
    stable, canary = await NameUpstream("stable").start(), await NameUpstream("canary").start()
    proxies = await start_fleet(fleet_config(stable.url, canary.url, STEPS), redis.url, tmp_path)
    try:
        yield proxies
    finally:
        for proxy in proxies:
            await proxy.kill()
        await stable.close()
        await canary.close()
        await redis.kill()


def port(proxy: ProxyProcess) -> int:
    return int(proxy.data_url.rsplit(":", 1)[1])


async def served_step(proxy: ProxyProcess) -> int:
    """The step the data plane stamps on a request (X-Rollout-Step, echoed by the upstream)."""
    (body,) = await bodies_for(port(proxy), [get("/", {"X-Tenant-ID": "probe"})], connections=1)
    return int(body.split()[2])


async def deciders(proxies: list[ProxyProcess]) -> list[int]:
    states = await asyncio.gather(*(state(p) for p in proxies))
    return [i for i, s in enumerate(states) if s["decider"]]


async def test_a_change_on_any_replica_is_served_by_all_within_a_second(
    fleet: list[ProxyProcess],
) -> None:
    took = []
    for step in range(1, 5):
        actor = fleet[step % 3]
        version = (await status(actor))["version"]
        started = time.monotonic()
        code, body = await act(actor, "promote", version)
        assert code == 200, body

        async def everywhere(step: int = step) -> bool:
            steps = await asyncio.gather(*(served_step(p) for p in fleet))
            return steps == [step] * 3

        await wait_for(everywhere, within=2.0, poll=0.002)
        took.append(time.monotonic() - started)
    report("fleet convergence", p50_s=round(statistics.median(took), 4), max_s=round(max(took), 4))
    assert max(took) < 1.0, took


async def test_every_replica_sends_the_same_ids_to_the_same_side(
    fleet: list[ProxyProcess],
) -> None:
    code, body = await act(fleet[0], "promote")  # 20%
    assert code == 200, body
    await wait_for(lambda: _all_at(fleet, 1), within=2.0)
    requests = [get("/", {"X-Tenant-ID": f"user-{i}"}) for i in range(10_000)]
    sides = await asyncio.gather(*(bodies_for(port(p), requests) for p in fleet))
    variants = [[b.split()[0] for b in side] for side in sides]
    assert variants[0] == variants[1] == variants[2]
    share = variants[0].count(b"canary") / len(requests)
    assert 0.18 < share < 0.22, share


async def _all_at(fleet: list[ProxyProcess], step: int) -> bool:
    steps = [s["step"] for s in await asyncio.gather(*(status(p) for p in fleet))]
    return steps == [step] * len(fleet)


async def test_the_decider_fails_over_after_kill_9_without_a_double_transition(
    fleet: list[ProxyProcess],
) -> None:
    await wait_for(lambda: _one_decider(fleet), within=3.0)
    (first,) = await deciders(fleet)
    killed = time.monotonic()
    await fleet[first].kill()
    survivors = [p for i, p in enumerate(fleet) if i != first]
    await wait_for(lambda: _one_decider(survivors), within=LEASE_S * 3)
    failover = time.monotonic() - killed
    report("fleet decider failover", lease_s=LEASE_S, failover_s=round(failover, 3))
    assert failover < LEASE_S + LEASE_S / 3 + 0.5  # expiry + one renewal round + slack
    # The survivors still act as one: a promote is served by both, once.
    version = (await status(survivors[0]))["version"]
    code, body = await act(survivors[1], "promote", version)
    assert code == 200, body
    await wait_for(lambda: _all_at(survivors, 1), within=1.0)
    journal = await _journal(survivors[0])
    versions = [cast(int, e["version"]) for e in journal]  # ints, as the API gives them
    assert versions == sorted(set(versions), reverse=True)  # one entry per transition


async def _one_decider(proxies: list[ProxyProcess]) -> bool:
    return len(await deciders(proxies)) == 1


async def _journal(proxy: ProxyProcess) -> list[dict[str, object]]:
    from tests.support.fleet import get_json

    body = await get_json(f"{proxy.admin_url}/api/v1/services/shop/decisions")
    decisions: list[dict[str, object]] = body["decisions"]
    return decisions


async def test_fifty_racing_promotes_give_exactly_one_transition_each_time(
    fleet: list[ProxyProcess],
) -> None:
    for round_ in range(1, 4):
        version = (await status(fleet[0]))["version"]
        replies = await asyncio.gather(*(act(fleet[i % 3], "promote", version) for i in range(50)))
        codes = [code for code, _ in replies]
        assert codes.count(200) == 1, sorted(codes)
        assert set(codes) <= {200, 409, 412}, sorted(codes)
        await wait_for(functools.partial(_all_at, fleet, round_), within=1.0)
        journal = await _journal(fleet[2])
        assert [e["version"] for e in journal[:2]] == [version + 1, version]
        assert journal[0]["action"] == "promote"


async def test_a_reload_on_every_replica_keeps_the_shared_rollout(
    fleet: list[ProxyProcess],
) -> None:
    """SIGHUP on each replica with a new stable pool: the rollout (the same spec) carries on
    at its version everywhere, the new pool serves, and a promote still reaches every one."""
    version = (await status(fleet[0]))["version"]
    other = await NameUpstream("stable2").start()
    try:
        for proxy in fleet:
            data = yaml.safe_load(proxy.path.read_text())
            data["services"][0]["upstreams"]["stable"] = [other.url]
            proxy.path.write_text(yaml.safe_dump(data))
            os.kill(proxy.pid, signal.SIGHUP)

        async def reloaded() -> bool:
            lasts = await asyncio.gather(*(get_json(f"{p.admin_url}/api/v1/reload") for p in fleet))
            return all((last["last_reload"] or {}).get("result") == "applied" for last in lasts)

        await wait_for(reloaded, within=5.0)
        assert [(await status(p))["version"] for p in fleet] == [version] * 3
        names = set()
        for proxy in fleet:
            probes = [get("/", {"X-Tenant-ID": f"t{i}"}) for i in range(40)]
            bodies = await bodies_for(port(proxy), probes, connections=4)
            names |= {body.split()[0] for body in bodies}
        assert names == {b"stable2", b"canary"}
        code, body = await act(fleet[1], "promote", version)
        assert code == 200, body

        async def everywhere() -> bool:
            return await asyncio.gather(*(served_step(p) for p in fleet)) == [1, 1, 1]

        await wait_for(everywhere, within=2.0)
    finally:
        await other.close()
