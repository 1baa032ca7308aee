"""proxy/http/exchange.py in the real `rollout-proxy run` process (uvloop): what an exchange
records about its request."""

from __future__ import annotations

from pathlib import Path

from tests.support.client import bodies_for, get, scrape, series
from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, service
from tests.support.servers import NameUpstream


async def test_durations_are_finer_than_the_event_loops_milliseconds(tmp_path: Path) -> None:
    """uvloop's loop.time() counts whole milliseconds: request durations timed with it would
    all be multiples of 1 ms (and a latency check comparing 1.25x a quantile with the quantile
    would compare the same millisecond twice)."""
    stable = await NameUpstream("stable").start()
    canary = await NameUpstream("canary").start()
    proxy = await ProxyProcess(
        config_dict(service([stable.url], [canary.url])), tmp_path, {}
    ).start()
    try:
        port = int(proxy.data_url.rsplit(":", 1)[1])
        requests = [get("/", {"X-Tenant-ID": f"t-{i}"}) for i in range(200)]
        bodies = await bodies_for(port, requests)
        samples = await scrape(proxy)
    finally:
        await proxy.kill()
        await stable.close()
        await canary.close()
    assert len(bodies) == len(requests)
    count = sum(series(samples, "rollout_request_duration_seconds_count").values())
    total = sum(series(samples, "rollout_request_duration_seconds_sum").values())
    assert count == len(requests)
    assert total > 0
    in_ms = total * 1000
    assert abs(in_ms - round(in_ms)) > 1e-6, f"every duration a whole millisecond: {total}"
