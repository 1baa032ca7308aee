"""The shadow mirror against real upstreams (aiohttp apps on loopback), without the proxy:
its queue bound, the second stable answer taken from another stable endpoint, the noise learned
before comparing, and the tallies kept bounded whatever the bodies hold."""

from __future__ import annotations

import dataclasses
import json
import uuid
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry

from proxy.config import ServiceConfig, parse_config
from proxy.core.shadow import MAX_ROUTES, OTHER_ROUTE, Answer
from proxy.http.capture import ShadowCopy
from proxy.metrics import Metrics
from proxy.shadowing import MAX_PATHS, OTHER_PATH, Shadowing
from tests.support.proxy import config_dict, service
from tests.test_shadow_live import App, apps, wait_for


def config_of(stable: list[App], canary: App) -> ServiceConfig:
    section = service([a.url for a in stable], [canary.url], steps=[{"shadow": 100}])
    section["rollout"]["shadow"] = {"noise_sample": 0}
    return parse_config(config_dict(section), {}).services[0]


def copy_of(config: ServiceConfig, target: str, stable: dict[str, Any], served: str) -> ShadowCopy:
    body = json.dumps(stable).encode()
    return ShadowCopy(
        service=config,
        method="GET",
        target=target,
        headers=(("x-rollout-shadow", "1"),),
        request_id=uuid.uuid4().hex,
        id_hash=1,
        served_by=served,
        stable=Answer(200, (), body, True),
    )


def reached(items: list[Any], n: int) -> bool:
    return len(items) == n


def endpoint(app: App) -> str:
    return app.url.removeprefix("http://")


async def test_a_full_queue_drops_and_counts() -> None:
    metrics = Metrics(CollectorRegistry())
    mirror = Shadowing(metrics, queue=1)
    async with apps(lambda k, i: {}) as (app,):
        config = config_of([app], app)
        mirror.submit(copy_of(config, "/a/1", {}, ""))
        mirror.submit(copy_of(config, "/a/2", {}, ""))
    assert metrics.shadow_counts("svc") == {"dropped_queue": 1}
    assert mirror.queue.qsize() == 1


async def test_noise_is_learned_from_another_stable_endpoint_before_comparing() -> None:
    def noisy(kind: str, ident: str) -> dict[str, Any]:
        return {"id": ident, "at": uuid.uuid4().hex}

    metrics = Metrics(CollectorRegistry())
    mirror = Shadowing(metrics)
    seen: list[tuple[str, str, tuple[str, ...]]] = []
    mirror.evidence = lambda service, route, differing, id_hash, tier: seen.append(
        (service, route, differing)
    )
    mirror.start()
    try:
        async with apps(noisy, noisy, noisy) as (stable_a, stable_b, canary):
            config = config_of([stable_a, stable_b], canary)
            for i in range(10):
                stable = noisy("x", str(i))
                mirror.submit(copy_of(config, f"/x/{i}?q=1", stable, endpoint(stable_a)))
                await wait_for(partial(reached, seen, i + 1), 5.0)
            second_answers = (len(stable_a.seen), len(stable_b.seen))
    finally:
        await mirror.close()
    # The first 3 copies of the route also went to stable again: to the other endpoint.
    assert second_answers == (0, 3)
    assert seen == [("svc", "/x/{id}", ())] * 10
    assert mirror.tallies["svc"]["/x/{id}"].noise == frozenset({"$.at"})
    assert metrics.shadow_counts("svc") == {"mirrored": 10, "noise": 3, "compared": 10}


async def test_paths_per_route_stay_bounded() -> None:
    def keyed(kind: str, ident: str) -> dict[str, Any]:
        return {f"k{ident}": 1}  # a body keyed by ids: a new path every time

    metrics = Metrics(CollectorRegistry())
    mirror = Shadowing(metrics)
    done: list[tuple[str, ...]] = []
    mirror.evidence = lambda service, route, differing, id_hash, tier: done.append(differing)
    mirror.start()
    n = MAX_PATHS + 40
    try:
        async with apps(lambda k, i: {"base": 1}, keyed) as (stable, canary):
            config = config_of([stable], canary)
            for i in range(n):
                mirror.submit(copy_of(config, f"/k/{i}", {"base": 1}, endpoint(stable)))
                if i % 50 == 49:
                    await wait_for(partial(reached, done, i + 1), 10.0)
            await wait_for(lambda: len(done) == n, 10.0)
    finally:
        await mirror.close()
    tally = mirror.tallies["svc"]["/k/{id}"]
    assert (tally.compared, tally.mismatched) == (n, n)
    assert len(tally.paths) <= MAX_PATHS + 1
    assert dict(tally.paths)[OTHER_PATH] > 0
    assert dict(tally.paths)["$.base"] == n


async def test_routes_per_service_stay_bounded() -> None:
    metrics = Metrics(CollectorRegistry())
    mirror = Shadowing(metrics)
    done: list[str] = []
    mirror.evidence = lambda service, route, differing, id_hash, tier: done.append(route)
    mirror.start()
    n = MAX_ROUTES + 5
    try:
        async with apps(lambda k, i: {"same": 1}, lambda k, i: {"same": 1}) as (stable, canary):
            config = config_of([stable], canary)
            for i in range(n):
                mirror.submit(copy_of(config, f"/r{i}/x", {"same": 1}, endpoint(stable)))
                await wait_for(partial(reached, done, i + 1), 5.0)
    finally:
        await mirror.close()
    routes = mirror.tallies["svc"]
    assert len(routes) == MAX_ROUTES + 1
    assert routes[OTHER_ROUTE].compared == 5
    assert done[-5:] == [OTHER_ROUTE] * 5


async def test_a_copy_carries_its_own_clients_cookies_only() -> None:
    """An answer that sets a cookie must not make the mirror send it with later copies (of
    other users' requests)."""
    from aiohttp import web

    cookies_seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        cookies_seen.append(request.headers.get("Cookie"))
        response = web.json_response({})
        response.set_cookie("session", uuid.uuid4().hex)
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    # By name: a cookie jar keeps no cookies of IP-addressed hosts, so only a name shows it.
    url = f"http://localhost:{port}"
    section = service([url], [url], steps=[{"shadow": 100}])
    section["rollout"]["shadow"] = {"noise_sample": 0}
    config = parse_config(config_dict(section), {}).services[0]
    mirror = Shadowing(Metrics(CollectorRegistry()))
    done: list[str] = []
    mirror.evidence = lambda service, route, differing, id_hash, tier: done.append(route)
    mirror.start()
    try:
        first = copy_of(config, "/a/1", {}, "")
        mine = dataclasses.replace(first, headers=(("cookie", "user=alice"),))
        mirror.submit(mine)
        await wait_for(partial(reached, done, 1), 5.0)
        mirror.submit(copy_of(config, "/a/2", {}, ""))  # another client, no cookie
        await wait_for(partial(reached, done, 2), 5.0)
    finally:
        await mirror.close()
        await runner.cleanup()
    # Each copy went to the canary and (learning the route's noise) to stable again.
    assert cookies_seen == ["user=alice", "user=alice", None, None]
