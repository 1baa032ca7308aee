"""F3 + F16: the stable upstream turns slow under load, with a small pool.

Stable answers after 0.6 s, the route's response timeout is 0.3 s, the stable pool admits 4
requests and queues 4 more; 32 clients send for 3 s, half the users on the canary (fast).
Expected: stable requests end in 504 at the timeout (plus at most one queue wait), the ones
beyond the queue get an immediate 503 (the queue is bounded), canary users are unaffected, the
rollout is not rolled back (the divergence is on stable, not the canary), and the proxy's
memory stays flat. Figures: 504 count and timing, 503 count and latency, canary p99, RSS.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.faults.harness import load, origin, percentile, report, rss_kib, status, tally
from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, service

TIMEOUT_S = 0.3
LIMITS = {"response_timeout": TIMEOUT_S, "pool_max_concurrency": 4, "pool_queue": 4}


async def test_a_slow_stable_gives_timely_504s_fast_503s_and_no_rollback(tmp_path: Path) -> None:
    stable = await origin("stable", "--delay", "0.6")
    canary = await origin("canary")
    steps: list[dict[str, Any]] = [{"percent": 50, "observe": "1h"}, {"percent": 100}]
    data = config_dict(service([stable.url], [canary.url], name="shop", steps=steps))
    data["limits"] = LIMITS
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    proxy = await ProxyProcess(data, tmp_path, {}).start()
    traffic = await load(
        proxy.data_url, tmp_path / "load.json", "--concurrency", "32", "--duration", "3"
    )
    try:
        await traffic.started()
        await asyncio.sleep(0.5)
        rss_early = rss_kib(proxy.pid)
        outcomes = await traffic.finished(within=20)
        rss_late = rss_kib(proxy.pid)
        rollout = await status(proxy.admin_url, "shop")
    finally:
        await traffic.kill()
        await proxy.kill()
        await stable.kill()
        await canary.kill()
    timeouts = [o.latency for o in outcomes if o.result == 504]
    overflow = [o.latency for o in outcomes if o.result == 503]
    canary_ok = [o.latency for o in outcomes if o.ok and o.served_by == "canary"]
    report(
        "F3/F16 stable slow, small pool",
        requests=len(outcomes),
        outcomes=tally(outcomes),
        timeout_504=len(timeouts),
        latency_504_min_s=round(min(timeouts, default=0), 3),
        latency_504_max_s=round(max(timeouts, default=0), 3),
        overflow_503=len(overflow),
        latency_503_p99_s=round(percentile(overflow, 0.99), 4),
        canary_p99_s=round(percentile(canary_ok, 0.99), 4),
        rss_growth_kib=rss_late - rss_early,
        rollout_status=rollout["status"],
        verdict=rollout["verdict"]["summary"] if rollout.get("verdict") else None,
    )
    assert set(tally(outcomes)) <= {"200", "503", "504"}, tally(outcomes)
    assert {o.served_by for o in outcomes if o.ok} == {"canary"}, "stable never answers in time"
    assert timeouts, "no 504"
    assert overflow, "no 503: the pool queue did not bound anything"
    # On time: the timeout after the request was sent upstream, plus at most one queue wait
    # (a slot frees every timeout) and the sweeper's granularity.
    assert min(timeouts) >= TIMEOUT_S - 0.01
    assert max(timeouts) <= 2 * TIMEOUT_S + 0.25, max(timeouts)
    assert percentile(overflow, 0.99) < 0.05
    assert percentile(canary_ok, 0.99) < 0.1
    assert rollout["status"] == "progressing", "a slow stable rolled the canary back"
    assert rss_late - rss_early < 8 * 1024, (rss_early, rss_late)
