"""The admin listener's aiohttp application: /metrics, /healthz, /readyz.

Owns the admin HTTP surface and `Readiness`, the flag the runtime flips (ready once config is
loaded and listeners are up, not ready while draining). It must not touch the data plane: it
only reads the registry it is given and the readiness holder. Later APIs (the rollout API)
join through `routes=` of `build_admin_app`, or `add_routes` before the app starts; their
handlers reach the shared objects through `REGISTRY` and `READINESS` (`request.app[READINESS]`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

REGISTRY = web.AppKey("registry", CollectorRegistry)


@dataclass(slots=True)
class Readiness:
    """Whether the proxy should receive traffic, and why (shown by /readyz); `details` adds
    live facts read at request time (the shared state's staleness in fleet mode)."""

    ready: bool = False
    reason: str = "starting"
    details: Callable[[], Mapping[str, Any]] | None = None

    def set_ready(self, reason: str = "serving") -> None:
        self.ready, self.reason = True, reason

    def set_not_ready(self, reason: str) -> None:
        self.ready, self.reason = False, reason


READINESS = web.AppKey("readiness", Readiness)
# Awaited before each scrape when counters live in other processes (worker mode).
Refresh = Callable[[], Awaitable[None]]
REFRESH: web.AppKey[Refresh] = web.AppKey("refresh")


async def _metrics(request: web.Request) -> web.Response:
    refresh = request.app.get(REFRESH)
    if refresh is not None:
        await refresh()
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    readiness = request.app[READINESS]
    body: dict[str, Any] = {"ready": readiness.ready, "reason": readiness.reason}
    if readiness.details is not None:
        body["state"] = dict(readiness.details())
    return web.json_response(body, status=200 if readiness.ready else 503)


def add_routes(app: web.Application, routes: Iterable[web.AbstractRouteDef]) -> None:
    """Mount more admin endpoints (e.g. the rollout API); only before the app starts."""
    app.router.add_routes(routes)


def build_admin_app(
    registry: CollectorRegistry,
    readiness: Readiness,
    *,
    routes: Iterable[web.AbstractRouteDef] = (),
) -> web.Application:
    """The admin application; `routes` adds endpoints beside the built-in ones."""
    app = web.Application()
    app[REGISTRY] = registry
    app[READINESS] = readiness
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    add_routes(app, routes)
    return app
