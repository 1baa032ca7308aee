"""Notifications in a fleet (replicas in one process, one real redis-server): each transition
is announced once, by the replica that committed it, never by those that adopt it."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import aiohttp

from tests.fleet.test_replica import TOKEN, controller, fleet_data, until
from tests.support.proxy import running_proxy
from tests.support.redis import RedisServer
from tests.support.servers import NameUpstream
from tests.support.webhooks import Webhooks, eventually


async def _post(admin: str, path: str, body: Any = None) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(admin + path, json=body, headers=headers) as reply,
    ):
        return reply.status


def _events(hooks: Webhooks, path: str, version: str) -> list[str]:
    return [
        d.body["event"]
        for d in hooks.got(path)
        if d.body["release"] and d.body["release"]["version"] == version
    ]


async def test_each_transition_is_announced_by_the_replica_that_committed_it(
    redis_server: RedisServer, upstreams: tuple[NameUpstream, NameUpstream]
) -> None:
    stable, canary = upstreams
    hooks = await Webhooks().start()
    data = fleet_data("ROLLOUT_REDIS_URL", stable.url, canary.url)
    data["notifications"] = [{"name": "team", "format": "json", "url_env": "HOOK_URL"}]
    try:
        async with AsyncExitStack() as stack:
            replicas = []
            for name in ("r0", "r1"):
                env = {
                    "ROLLOUT_REDIS_URL": redis_server.url,
                    "ADMIN_TOKEN": TOKEN,
                    "HOOK_URL": hooks.url(name),
                }
                replicas.append(await stack.enter_async_context(running_proxy(data, env)))
            first, second = replicas
            # The config file's rollout was started once, by the first replica.
            await eventually(lambda: len(hooks.got("r0")) == 1)
            assert hooks.got("r0")[0].body["event"] == "release_started"
            assert hooks.got("r1") == []

            body = {"version": "5.0", "canary": [canary.url]}
            assert await _post(first.admin_url, "/api/v1/services/shop/releases", body) == 201

            def followed() -> bool:
                book = controller(second).books.get("shop")
                current = book.current() if book else None
                rollout = controller(second).rollouts["shop"]
                return current is not None and rollout.release == current.id

            await until(followed, within=3.0)
            assert await _post(second.admin_url, "/api/v1/services/shop/promote") == 200
            await until(lambda: controller(first).rollouts["shop"].state.step == 1, within=3.0)
            await eventually(lambda: "step_advanced" in _events(hooks, "r1", "5.0"))
            await asyncio.sleep(0.5)  # time for a wrong announcement by the adopter to arrive
            mine, theirs = _events(hooks, "r0", "5.0"), _events(hooks, "r1", "5.0")
            # The release's rollout is started by whichever replica committed it first; the
            # promote only by the replica that applied it (the first one adopted it).
            assert (mine + theirs).count("release_started") == 1
            assert [e for e in mine if e != "release_started"] == []
            assert [e for e in theirs if e != "release_started"] == ["step_advanced"]

            # A pause on the first replica, then an abort on the second: each told once, by
            # the replica that applied it.
            assert await _post(first.admin_url, "/api/v1/services/shop/pause") == 200
            await eventually(lambda: "paused" in _events(hooks, "r0", "5.0"))
            assert await _post(second.admin_url, "/api/v1/services/shop/abort") == 200
            await eventually(lambda: "rolled_back" in _events(hooks, "r1", "5.0"))
            await asyncio.sleep(0.5)
            mine, theirs = _events(hooks, "r0", "5.0"), _events(hooks, "r1", "5.0")
            assert [e for e in mine if e != "release_started"] == ["paused"]
            assert [e for e in theirs if e != "release_started"] == ["step_advanced", "rolled_back"]
    finally:
        await hooks.close()
