"""Prometheus checks on the real proxy, against a real `prometheus` server scraping a real
service: two aiohttp instances (v1 stable, v2 canary) that answer every payment with 200 and
export per-version attempt and failure counters. The proxy's own checks see only 200s, so
whatever the canary's failures do is seen through Prometheus alone.

(a) The canary fails 1 payment in 4, stable 1 in 100: rolled back, the journal naming the
check. (b) Both fail 1 in 50: never rolled back, and the step advances on the check's evidence.
(c) Prometheus stopped mid-step: "no data from prometheus", no advance and no rollback.
(d) Prometheus hung: each read times out (bounded), requests through the proxy never wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.core.machine import Status
from proxy.core.verdict import Verdict
from proxy.rollout import Rollout
from proxy.runtime import Runtime
from tests.support.prometheus import PaymentsApp, PrometheusServer
from tests.support.proxy import config_dict, running_proxy, service
from tests.test_shadow_live import wait_for

BY_VARIANT = 'sum(payment_{}_total{{version="{{{{variant}}}}"}})'
BY_INSTANCES = 'sum(payment_{}_total{{instance=~"{{{{instances}}}}"}})'


def _check(stable: PaymentsApp, canary: PaymentsApp, form: str) -> dict[str, Any]:
    """The payments check, in the `{{variant}}` form (a label map) or the `{{instances}}` one."""
    check: dict[str, Any] = {
        "name": "payments",
        "url_env": "PROM_URL",
        "timeout": "1s",
        "bad": form.format("failures"),
        "total": form.format("attempts"),
        "max_increase": 0.2,
        "min_rate": 0.1,
        "min_total": 20,
    }
    if form == BY_VARIANT:
        check["variants"] = {"stable": stable.version, "canary": canary.version}
    return check


def _config(stable: PaymentsApp, canary: PaymentsApp, observe: str, form: str) -> dict[str, Any]:
    section = service(
        [stable.url], [canary.url], steps=[{"percent": 50, "observe": observe}, {"percent": 100}]
    )
    section["rollout"]["analysis"] = {
        "interval": "250ms",
        "min_requests": 20,
        "errors": {"min_rate": 0.05},
        "latency": {"quantile": 0.5, "max_increase": 1.0},
        "prometheus": [_check(stable, canary, form)],
    }
    return config_dict(section)


@asynccontextmanager
async def deployed(
    tmp_path: Path,
    stable_fails: int,
    canary_fails: int,
    observe: str = "1s",
    form: str = BY_VARIANT,
) -> AsyncIterator[tuple[Runtime, Rollout, PrometheusServer]]:
    """Both instances, a prometheus scraping them, and the proxy in front of them."""
    stable = await PaymentsApp("v1", stable_fails).start()
    canary = await PaymentsApp("v2", canary_fails).start()
    prometheus = PrometheusServer(tmp_path, [stable.instance, canary.instance])
    try:
        await prometheus.start()
        await prometheus.scraped()
        config = _config(stable, canary, observe, form)
        async with running_proxy(config, {"PROM_URL": prometheus.url}) as runtime:
            assert runtime.controller is not None
            yield runtime, runtime.controller.rollouts["svc"], prometheus
    finally:
        await prometheus.stop()
        await stable.close()
        await canary.close()


@asynccontextmanager
async def traffic(
    runtime: Runtime, latencies: list[float] | None = None
) -> AsyncIterator[list[int]]:
    """Payments through the proxy (8 clients, one tenant id per request) until the block
    ends; the statuses the clients got (and each request's latency, when asked)."""
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            headers = {"X-Tenant-ID": f"tenant-{n}-{i}"}
            started = time.monotonic()
            async with session.get(f"{runtime.data_url}/pay", headers=headers) as response:
                await response.read()
                statuses.append(response.status)
            if latencies is not None:
                latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(client(session, n)) for n in range(8)]
        try:
            yield statuses
        finally:
            stop.set()
            await asyncio.gather(*clients)


@pytest.mark.parametrize("form", [BY_VARIANT, BY_INSTANCES], ids=["variant", "instances"])
async def test_a_canary_failing_more_payments_is_rolled_back_naming_the_check(
    tmp_path: Path, form: str
) -> None:
    deployment = deployed(tmp_path, stable_fails=100, canary_fails=4, form=form)
    async with deployment as (runtime, rollout, _):
        async with traffic(runtime) as statuses:
            rolled_back = await wait_for(lambda: rollout.state.status is Status.ROLLED_BACK, 30)
        assert rolled_back, rollout.last
        assert set(statuses) == {200}  # the proxy itself saw nothing wrong
        assert runtime.controller is not None
        newest = (await runtime.controller.history("svc"))[0]
        assert (newest.action, newest.actor) == ("degraded", "controller")
        assert newest.evidence["check"] == "prometheus:payments"
        assert newest.reason.startswith("prometheus:payments: canary ")
        (check,) = [c for c in newest.evidence["checks"] if c["check"] == "prometheus:payments"]
        assert check["crossed"]
        assert check["canary"]["events"] > check["baseline"]["events"]


async def test_equal_failure_rates_never_roll_back_and_advance(tmp_path: Path) -> None:
    async with deployed(tmp_path, stable_fails=50, canary_fails=50) as (runtime, rollout, _):
        async with traffic(runtime):
            advanced = await wait_for(
                lambda: rollout.state.step >= 1 or rollout.state.status is Status.ROLLED_BACK, 40
            )
        assert rollout.state.status is not Status.ROLLED_BACK, rollout.last
        assert advanced, rollout.last
        assert runtime.controller is not None
        entries = await runtime.controller.history("svc")
        assert "degraded" not in {e.action for e in entries}
        (advance,) = [e for e in entries if e.action == "advance"]
        (check,) = [c for c in advance.evidence["checks"] if c["check"] == "prometheus:payments"]
        assert check["non_inferior"]
        assert not check["crossed"]
        assert check["canary"]["requests"] >= 20
        assert check["baseline"]["requests"] >= 20


async def test_prometheus_stopped_holds_the_step_without_rolling_back(tmp_path: Path) -> None:
    deployment = deployed(tmp_path, stable_fails=50, canary_fails=50, observe="4s")
    async with deployment as (runtime, rollout, prometheus):
        check = rollout.analysis.prometheus.checks["payments"]
        async with traffic(runtime):
            assert await wait_for(lambda: not check.missing and check.seen.canary.requests > 0, 20)
            await prometheus.stop()
            await asyncio.sleep(8.0)  # twice the step's observe time, with traffic
            last = rollout.last
        assert (rollout.state.status, rollout.state.step) == (Status.PROGRESSING, 0)
        assert last is not None
        assert last.verdict is Verdict.INCONCLUSIVE
        assert last.check == "prometheus:payments"
        assert last.summary.startswith("no data from prometheus (prometheus:payments: stable bad:")
        assert "ClientConnectorError" in last.summary
        # Only the missing data holds it: the proxy's own checks have shown the canary fine.
        own = [c for c in last.checks if not c.check.startswith("prometheus:")]
        assert own
        assert all(c.non_inferior for c in own)
        assert runtime.controller is not None
        actions = {e.action for e in await runtime.controller.history("svc")}
        assert actions == {"start"}
        # The status the API (and the CLI and the page) show says so too.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{runtime.admin_url}/api/v1/services/svc") as response,
        ):
            status = await response.json()
        assert status["status"] == "progressing"
        assert status["verdict"]["summary"].startswith("no data from prometheus (prometheus:")


async def test_a_hung_prometheus_times_out_and_never_delays_requests(tmp_path: Path) -> None:
    deployment = deployed(tmp_path, stable_fails=50, canary_fails=50, observe="1s")
    async with deployment as (runtime, rollout, prometheus):
        check = rollout.analysis.prometheus.checks["payments"]
        latencies: list[float] = []
        async with traffic(runtime, latencies) as statuses:
            assert await wait_for(lambda: not check.missing, 20)
            prometheus.pause()
            assert await wait_for(lambda: "timed out after 1s" in check.missing, 10)
            latencies.clear()
            await asyncio.sleep(3.0)  # three reads in a row hang for their whole timeout
            last = rollout.last
        # Requests kept flowing at their usual pace while the controller's reads hung.
        assert len(latencies) > 100
        assert max(latencies) < 0.5
        assert set(statuses) == {200}
        # Held where it was, with the reason (its step would advance after 1 s on evidence).
        assert rollout.state.status is Status.PROGRESSING
        assert rollout.state.step == 0
        assert last is not None
        assert last.verdict is Verdict.INCONCLUSIVE
        assert "no data from prometheus (prometheus:payments: stable bad: timed out" in (
            last.summary
        )
