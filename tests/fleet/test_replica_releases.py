"""Releases on replicas sharing a real redis-server: a start retried on another replica is the
same release, and every replica serves what a release start or completion made of a service
within a reconcile (or at once, on the change's push)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from proxy.core.routing import Variant
from proxy.runtime import Runtime
from proxy.store.redis_store import RedisStore
from tests.fleet.test_replica import TOKEN, fleet_data, router, until
from tests.support.proxy import running_proxy
from tests.support.redis import RedisServer
from tests.support.servers import NameUpstream

NEXT = "http://127.0.0.1:9"  # the release's hosts (never connected to: nothing is sent)


def pools(runtime: Runtime) -> tuple[str, str]:
    served = router(runtime).pools["shop"]
    return str(served[Variant.STABLE].endpoints[0]), str(served[Variant.CANARY].endpoints[0])


async def call(
    runtime: Runtime, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    url = f"{runtime.admin_url}/api/v1/services/shop/{path}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=headers) as response,
    ):
        reply: dict[str, Any] = await response.json()
        return response.status, reply


class Env:
    def __init__(self, redis: RedisServer, upstreams: tuple[NameUpstream, NameUpstream]) -> None:
        self.env = {"ROLLOUT_REDIS_URL": redis.url, "ADMIN_TOKEN": TOKEN}
        self.data = fleet_data("ROLLOUT_REDIS_URL", upstreams[0].url, upstreams[1].url)


@pytest.fixture
async def fleet(
    redis_server: RedisServer, upstreams: tuple[NameUpstream, NameUpstream]
) -> AsyncIterator[tuple[Env, list[Runtime]]]:
    env = Env(redis_server, upstreams)
    async with AsyncExitStack() as stack:
        runtimes = [
            await stack.enter_async_context(running_proxy(env.data, env.env)) for _ in range(3)
        ]
        yield env, runtimes


async def test_a_release_started_on_one_replica_is_served_and_completed_on_all(
    fleet: tuple[Env, list[Runtime]], upstreams: tuple[NameUpstream, NameUpstream]
) -> None:
    env, runtimes = fleet
    stable = upstreams[0].url
    body = {"version": "2.0", "canary": [NEXT], "steps": [{"percent": 50}]}
    status, first = await call(runtimes[0], "POST", "releases", body)
    assert status == 201, first
    # CI retries the same call on another replica, before that one has followed the book.
    status, again = await call(runtimes[2], "POST", "releases", body)
    assert status == 200, again
    assert again["id"] == first["id"]
    took = await until(lambda: all(pools(r) == (stable, NEXT) for r in runtimes), within=2.0)
    assert took < 1.0  # a reconcile (300 ms) at most, not the analysis interval
    status, listed = await call(runtimes[1], "GET", "releases")
    assert status == 200, listed
    assert [r["version"] for r in listed["releases"]] == ["2.0"]

    # Promote on a third replica until the release completes: its hosts become stable everywhere.
    promoted = 0
    while promoted < 5:
        status, _ = await call(runtimes[1], "POST", "promote")
        if status != 200:
            break  # over: nothing left to promote
        promoted += 1
    assert promoted >= 1
    took = await until(lambda: all(pools(r)[0] == NEXT for r in runtimes), within=2.0)
    assert took < 1.0
    status, shown = await call(runtimes[0], "GET", f"releases/{first['id']}")
    assert status == 200, shown
    assert shown["status"] == "completed"
    assert shown["released"] == [stable]

    # A replica that starts now serves the store's stable pool, not the config file's.
    async with running_proxy(env.data, env.env) as late:
        assert pools(late)[0] == NEXT
    store = RedisStore(env.env["ROLLOUT_REDIS_URL"], "rollout-proxy", timeout_s=1.0)
    try:
        book = (await store.load_books())["shop"]
    finally:
        await store.close()
    assert book.stable == (NEXT,)
    assert book.active is None
