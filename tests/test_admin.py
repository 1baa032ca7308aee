"""proxy/admin.py: /healthz, /readyz, /metrics and extra routes, over a real loopback socket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter

from proxy.admin import READINESS, Readiness, add_routes, build_admin_app
from proxy.metrics import Metrics
from tests.support.promtool import promtool_check


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
async def client(
    registry: CollectorRegistry, readiness: Readiness
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = build_admin_app(registry, readiness)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as test_client:
        yield test_client


async def test_healthz(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_follows_readiness(
    client: TestClient[web.Request, web.Application], readiness: Readiness
) -> None:
    response = await client.get("/readyz")
    assert (response.status, await response.json()) == (503, {"ready": False, "reason": "starting"})
    readiness.set_ready()
    response = await client.get("/readyz")
    assert (response.status, await response.json()) == (200, {"ready": True, "reason": "serving"})
    readiness.set_not_ready("draining")
    response = await client.get("/readyz")
    assert (response.status, await response.json()) == (503, {"ready": False, "reason": "draining"})


async def test_metrics_serves_only_the_injected_registry(
    client: TestClient[web.Request, web.Application], registry: CollectorRegistry
) -> None:
    Metrics(registry).observe("checkout", "stable", "free", 200, 0.003)
    Counter("unrelated_total", "Lives elsewhere.", registry=CollectorRegistry()).inc()
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    body = await response.read()
    line = (
        'rollout_requests_total{service="checkout",status_class="2xx",tier="free",'
        'variant="stable"} 1.0'
    )
    assert line in body.decode().splitlines()
    assert b"unrelated_total" not in body
    await promtool_check(body)


async def test_empty_metrics_pass_promtool(
    client: TestClient[web.Request, web.Application], registry: CollectorRegistry
) -> None:
    Metrics(registry)
    response = await client.get("/metrics")
    body = await response.read()
    assert b"# TYPE rollout_request_duration_seconds histogram" in body
    await promtool_check(body)


async def test_only_get_is_served(client: TestClient[web.Request, web.Application]) -> None:
    assert (await client.post("/metrics")).status == 405
    assert (await client.get("/nope")).status == 404


async def test_extra_routes_see_shared_objects(
    registry: CollectorRegistry, readiness: Readiness
) -> None:
    async def rollouts(request: web.Request) -> web.Response:
        return web.json_response({"ready": request.app[READINESS].ready})

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = build_admin_app(registry, readiness, routes=[web.get("/v1/rollouts", rollouts)])
    add_routes(app, [web.get("/v1/status", status)])
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as test_client:
        assert await (await test_client.get("/v1/rollouts")).json() == {"ready": False}
        assert await (await test_client.get("/v1/status")).json() == {"ok": True}
