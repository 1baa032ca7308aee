"""The live page on the admin listener, and the history behind its charts.

    GET /                                   the page (its script and style under /page/)
    GET /api/v1/services/{name}/series      traffic per tier and arm, one sample per 2 s, 30 min
    GET /api/v1/services/{name}/plan        every configured step, and each tier's split now

`Sampler` reads the Metrics counters and the rollouts every SAMPLE_INTERVAL_S into one
`ServiceHistory` per service (proxy/history.py does the arithmetic; this module only reads and
serves). The page is static, shipped in the package (proxy/page/) and loads nothing from
elsewhere (its Content-Security-Policy says so): it polls the rollout API and these endpoints
and sends mutations with the token a person types, kept in the tab's sessionStorage only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from proxy.controller import Controller
from proxy.core.bucketing import BUCKETS
from proxy.history import Position, ServiceHistory, pre_exposure_of
from proxy.metrics import Metrics
from proxy.rollout import Rollout

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SAMPLE_INTERVAL_S = 2.0
WINDOW_S = 1800.0

# path -> (file in proxy/page/, content type); nothing else is served from there.
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/page/style.css": ("style.css", "text/css; charset=utf-8"),
}
# The page talks to this listener only; inline scripts and other origins are refused.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def position_of(rollout: Rollout) -> Position:
    plan = rollout.plan()
    last = rollout.last
    return Position(
        status=rollout.state.status.value,
        step=rollout.step_index,
        canary_percent=plan.canary_percent() if plan.active else 0.0,
        verdict=last.verdict.value if last is not None else None,
    )


class Sampler:
    """Takes a sample of every service every `interval_s` while started."""

    def __init__(
        self,
        controller: Controller,
        metrics: Metrics,
        *,
        interval_s: float = SAMPLE_INTERVAL_S,
        window_s: float = WINDOW_S,
    ) -> None:
        self.controller = controller
        self.metrics = metrics
        self.interval_s = interval_s
        self.window_s = window_s
        self.histories: dict[str, ServiceHistory] = {}
        self._task: asyncio.Task[None] | None = None

    def history(self, rollout: Rollout) -> ServiceHistory:
        name = rollout.config.name
        found = self.histories.get(name)
        if found is None:
            capacity = max(1, round(self.window_s / self.interval_s))
            errors = rollout.config.rollout.analysis.error_statuses
            found = self.histories[name] = ServiceHistory(capacity, errors)
        return found

    def sample(self) -> None:
        """Read every service's counters and position now."""
        at = self.controller.clock.wall()
        counts = self.metrics.arm_counts()
        for name, rollout in self.controller.rollouts.items():
            last = rollout.last
            pre = pre_exposure_of(last, rollout.analysis.tier_baselines()) if last else {}
            self.history(rollout).record(at, counts.get(name, {}), position_of(rollout), pre)

    def start(self) -> None:
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.sample()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


SAMPLER = web.AppKey("sampler", Sampler)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _found(request: web.Request) -> Rollout | web.Response:
    name = request.match_info["name"]
    rollout = request.app[SAMPLER].controller.rollouts.get(name)
    return rollout if rollout is not None else _error(404, f"no service named {name!r}")


async def series(request: web.Request) -> web.Response:
    rollout = _found(request)
    if isinstance(rollout, web.Response):
        return rollout
    try:
        since = float(request.query.get("since", "0"))
    except ValueError:
        return _error(400, "since: expected seconds since the epoch")
    sampler = request.app[SAMPLER]
    analysis = rollout.config.rollout.analysis
    samples = sampler.history(rollout).since(since)
    return web.json_response(
        {
            "service": rollout.config.name,
            "interval_s": sampler.interval_s,
            "window_s": sampler.window_s,
            "error_statuses": sorted(analysis.error_statuses),
            "latency_quantile": analysis.latency_quantile,
            "samples": [s.to_json() for s in samples],
        }
    )


def plan_json(rollout: Rollout) -> dict[str, Any]:
    """Every configured step, and the share of each tier the current step sends to the canary
    (by the plan: pins and tenant cohorts are not in it)."""
    config = rollout.config
    plan = rollout.plan()
    return {
        "service": config.name,
        "status": rollout.state.status.value,
        "step": rollout.step_index,
        "baseline_s": config.rollout.baseline_s,
        "steps": [
            {
                "percent": s.percent,
                "tiers": sorted(s.tiers),
                "tenants": sorted(s.tenants),
                "observe_s": s.observe_s,
                "shadow": s.shadow,
            }
            for s in config.rollout.steps
        ],
        "tiers": {
            tier: max(plan.everyone, plan.by_tier.get(tier, 0)) * 100 / BUCKETS
            if plan.active
            else 0.0
            for tier in sorted(config.tiers.names)
        },
        "pinned_tenants": len(config.rollout.pins),
    }


async def plan(request: web.Request) -> web.Response:
    rollout = _found(request)
    if isinstance(rollout, web.Response):
        return rollout
    return web.json_response(plan_json(rollout))


def shadow_json(rollout: Rollout, metrics: Metrics, paths: int = 5) -> dict[str, Any]:
    """The shadow step's comparison: its sample, what became of the sampled answers, and per
    route the compared answers, the mismatch rate and the top differing field paths (paths and
    counts, never values). `sample` is 0 outside a shadow step."""
    plan = rollout.plan()
    checks = rollout.analysis.shadow.evidence() if plan.shadow > 0 else ()
    return {
        "service": rollout.config.name,
        "sample": plan.shadow,
        "tolerance": rollout.config.rollout.shadow.tolerance,
        "results": metrics.shadow_counts(rollout.config.name),
        "routes": [
            {
                "route": check.check.removeprefix("shadow:"),
                "compared": check.canary.requests,
                "mismatched": check.canary.events,
                "mismatch_rate": check.canary.rate,
                "shown_within": check.non_inferior,
                "shown_over": check.crossed,
                "paths": [list(p) for p in check.paths[:paths]],
            }
            for check in checks
        ],
    }


async def shadow(request: web.Request) -> web.Response:
    rollout = _found(request)
    if isinstance(rollout, web.Response):
        return rollout
    return web.json_response(shadow_json(rollout, request.app[SAMPLER].metrics))


def _serve(body: bytes, content_type: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=body,
            headers={
                "Content-Type": content_type,
                "Content-Security-Policy": CSP,
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
            },
        )

    return handler


def asset_routes() -> list[web.RouteDef]:
    """One route per asset, each read once from the package."""
    folder = resources.files("proxy").joinpath("page")
    return [
        web.get(path, _serve(folder.joinpath(name).read_bytes(), content_type))
        for path, (name, content_type) in ASSETS.items()
    ]


def install(app: web.Application, controller: Controller, metrics: Metrics) -> Sampler:
    """Add the page and its endpoints to the admin application (before it starts) and start
    sampling; the caller closes the returned sampler."""
    sampler = Sampler(controller, metrics)
    app[SAMPLER] = sampler
    app.add_routes(
        [
            *asset_routes(),
            web.get("/api/v1/services/{name}/series", series),
            web.get("/api/v1/services/{name}/plan", plan),
            web.get("/api/v1/services/{name}/shadow", shadow),
        ]
    )
    sampler.start()
    return sampler
