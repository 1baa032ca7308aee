"""Fleet mode with Redis gone: stopped (every connection refused), then hung (SIGSTOP: connected
and silent), under load on three `rollout-proxy run` processes.

While Redis is away every replica serves its last state: no request fails because of it, each
reports the staleness in /readyz, promotes are refused (503), and an abort applies at once on
the replica that got it. When Redis returns (empty, without persistence, after the stop) the
replicas write their state back, the abort included, and converge within two reconcile periods.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from proxy.core.machine import Status
from tests.faults.harness import load, report, tally
from tests.support.fleet import act, fleet_config, start_fleet, state, status, wait_for
from tests.support.process import ProxyProcess
from tests.support.redis import RedisServer
from tests.support.servers import NameUpstream

STEPS: list[dict[str, Any]] = [
    {"percent": 20, "observe": "1h"},
    {"percent": 60, "observe": "1h"},
    {"percent": 100},
]
RECONCILE_S = 0.5
OUTAGE_S = 1.5


async def _converged(fleet: list[ProxyProcess], status_: Status) -> bool:
    states = await asyncio.gather(*(state(p) for p in fleet))
    statuses = await asyncio.gather(*(status(p) for p in fleet))
    return all(s["stale_s"] == 0 for s in states) and all(
        s["status"] == status_.value and not s["pending_write"] for s in statuses
    )


async def test_redis_stopped_then_hung_under_load_fails_no_request(tmp_path: Path) -> None:
    redis = await RedisServer(tmp_path).start()
    stable, canary = await NameUpstream("stable").start(), await NameUpstream("canary").start()
    fleet = await start_fleet(fleet_config(stable.url, canary.url, STEPS), redis.url, tmp_path)
    loads = []
    try:
        loads = [
            await load(
                p.data_url, tmp_path / f"load{i}.json", "--concurrency", "4", "--duration", "8"
            )
            for i, p in enumerate(fleet)
        ]
        await asyncio.gather(*(traffic.started() for traffic in loads))

        # 1. Redis stopped: connections refused.
        await redis.stop()
        await asyncio.sleep(OUTAGE_S)
        stale = [s["stale_s"] for s in await asyncio.gather(*(state(p) for p in fleet))]
        refused, _ = await act(fleet[0], "promote")
        aborted, body = await act(fleet[1], "abort")
        assert body.get("pending_write") is True, body
        await redis.start()  # empty: nothing persisted
        back = time.monotonic()
        await wait_for(lambda: _converged(fleet, Status.ROLLED_BACK), within=4 * RECONCILE_S)
        after_stop = time.monotonic() - back

        # 2. Redis hung: connected, never answering.
        code, body = await act(fleet[2], "restart")
        assert code == 200, body
        await wait_for(lambda: _converged(fleet, Status.PROGRESSING), within=1.0)
        redis.pause()
        try:
            await asyncio.sleep(OUTAGE_S)
            hung_started = time.monotonic()
            hung, _ = await act(fleet[0], "promote")
            hung_answer_s = time.monotonic() - hung_started
        finally:
            redis.resume()
        back = time.monotonic()
        await wait_for(lambda: _same_version(fleet), within=4 * RECONCILE_S)
        after_hang = time.monotonic() - back
        outcomes = [o for traffic in loads for o in await traffic.finished()]
    finally:
        for traffic in loads:
            await traffic.kill()
        for proxy in fleet:
            await proxy.kill()
        await stable.close()
        await canary.close()
        redis.resume()
        await redis.kill()
    counts = tally(outcomes)
    report(
        "fleet Redis outage",
        requests=len(outcomes),
        failed=len(outcomes) - counts.get("200", 0),
        stale_reported_s=min(stale),
        promote_while_stopped=refused,
        abort_while_stopped=aborted,
        converged_after_stop_s=round(after_stop, 3),
        promote_while_hung=hung,
        hung_promote_answered_s=round(hung_answer_s, 3),
        converged_after_hang_s=round(after_hang, 3),
    )
    assert counts == {"200": len(outcomes)}, counts
    assert min(stale) > 1.0
    assert (refused, aborted, hung) == (503, 200, 503)
    assert hung_answer_s < 1.0  # bounded by state.timeout, not by the outage
    assert after_stop < 2 * RECONCILE_S + 0.5
    assert after_hang < 2 * RECONCILE_S + 0.5


async def _same_version(fleet: list[ProxyProcess]) -> bool:
    states = await asyncio.gather(*(state(p) for p in fleet))
    statuses = await asyncio.gather(*(status(p) for p in fleet))
    versions = {s["version"] for s in statuses}
    return len(versions) == 1 and all(s["stale_s"] == 0 for s in states)
