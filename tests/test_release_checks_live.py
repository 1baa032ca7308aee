"""Issue 18's end to end: a release started through the API with a Server-Timing check and a
Prometheus check, against running services and a real prometheus: rolled back when either
signal regresses on the canary alone (every client still got 200s), advanced when both are
healthy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.core.machine import Status
from tests.support.prometheus import PaymentsApp, PrometheusServer
from tests.support.proxy import config_dict, running_proxy, service
from tests.test_promcheck_live import BY_VARIANT, traffic
from tests.test_shadow_live import wait_for

TOKEN = "release-checks-token"


class TimedPayments(PaymentsApp):
    """The payments service, also telling its database time in `Server-Timing`."""

    def __init__(self, version: str, fail_every: int, db_ms: float) -> None:
        super().__init__(version, fail_every)
        self.db_ms = db_ms

    async def pay(self, request: web.Request) -> web.Response:
        response = await super().pay(request)
        jitter = (self.attempts % 7) / 10  # a spread, so that quantiles mean something
        response.headers["Server-Timing"] = f"db;dur={self.db_ms * (1 + jitter):.2f}"
        return response


def _release(canary: PaymentsApp, stable: PaymentsApp) -> dict[str, Any]:
    payments = {
        "name": "payments",
        "url_env": "ROLLOUT_TEST_PROM_URL",
        "timeout": "1s",
        "bad": BY_VARIANT.format("failures"),
        "total": BY_VARIANT.format("attempts"),
        "variants": {"stable": stable.version, "canary": canary.version},
        "max_increase": 0.2,
        "min_rate": 0.1,
        "min_total": 20,
    }
    return {
        "version": canary.version,
        "canary": [canary.url],
        "steps": [{"percent": 50, "observe": "1s"}, {"percent": 100}],
        "checks": [
            {"server_timing": {"metric": "db", "judge": "duration", "max_increase": 0.2}},
            {"prometheus": payments},
        ],
    }


@pytest.mark.parametrize(
    ("canary_fails", "canary_db_ms", "outcome"),
    [
        (100, 20.0, "server_timing:db [release v2]"),  # the database time doubles
        (4, 10.0, "prometheus:payments [release v2]"),  # payments fail 25x more
        (100, 10.0, None),  # both healthy: advances
    ],
    ids=["server-timing", "prometheus", "healthy"],
)
async def test_a_release_with_its_own_checks_is_judged_on_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    canary_fails: int,
    canary_db_ms: float,
    outcome: str | None,
) -> None:
    stable = await TimedPayments("v1", 100, 10.0).start()
    canary = await TimedPayments("v2", canary_fails, canary_db_ms).start()
    prometheus = PrometheusServer(tmp_path, [stable.instance, canary.instance])
    svc = service([stable.url], [], name="svc", steps=[{"percent": 0}])
    svc["rollout"]["analysis"] = {
        "interval": "250ms",
        "min_requests": 20,
        "errors": {"min_rate": 0.05},
        "latency": {"quantile": 0.5, "max_increase": 5.0},
    }
    data = config_dict(svc)
    data["admin"]["token_env"] = "ADMIN_TOKEN"
    try:
        await prometheus.start()
        await prometheus.scraped()
        monkeypatch.setenv("ROLLOUT_TEST_PROM_URL", prometheus.url)
        async with running_proxy(data, {"ADMIN_TOKEN": TOKEN}) as runtime:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            url = f"{runtime.admin_url}/api/v1/services/svc/releases"
            async with (
                aiohttp.ClientSession() as session,
                session.post(url, json=_release(canary, stable), headers=headers) as reply,
            ):
                assert reply.status == 201, await reply.text()
            assert runtime.controller is not None
            controller = runtime.controller

            def decided() -> bool:
                state = controller.rollouts["svc"].state
                return state.status is Status.ROLLED_BACK or state.step >= 1

            async with traffic(runtime) as statuses:
                assert await wait_for(decided, 40), controller.rollouts["svc"].last
            assert set(statuses) == {200}  # the proxy itself saw nothing wrong
            await asyncio.sleep(0.3)
            journal = await controller.history("svc")
            if outcome is None:
                assert controller.rollouts["svc"].state.status is not Status.ROLLED_BACK
                assert "degraded" not in {e.action for e in journal}
                (advance,) = [e for e in journal if e.action == "advance"]
                names = {c["check"]: c for c in advance.evidence["checks"]}
                for name in ("server_timing:db [release v2]", "prometheus:payments [release v2]"):
                    assert names[name]["non_inferior"], names[name]
            else:
                (degraded,) = [e for e in journal if e.action == "degraded"]
                assert degraded.evidence["check"] == outcome, degraded.reason
    finally:
        await prometheus.stop()
        await stable.close()
        await canary.close()
