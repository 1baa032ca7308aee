"""`rollout-proxy run --workers 2` as users run it: one port, two data-plane processes, one
rollout. The same users on the same side as one process, /metrics and the analysis see the sum,
a promote reaches every worker, and a killed worker is replaced while the other serves on."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.faults.harness import load, metric, report, tally
from tests.support.client import bodies_for, get
from tests.support.fleet import TOKEN, act, get_json, wait_for
from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.servers import NameUpstream

STEPS: list[dict[str, Any]] = [
    {"percent": 20, "observe": "1h"},
    {"percent": 60, "observe": "1h"},
    {"percent": 100},
]
IDS = [f"user-{i}" for i in range(2_000)]


def _config(tmp_path: Path, stable: str, canary: str) -> dict[str, Any]:
    data = config_dict(service([stable], [canary], name="shop", steps=STEPS))
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    data["admin"]["token_env"] = "ADMIN_TOKEN"
    return data


@pytest.fixture
async def workers(
    tmp_path: Path, upstreams: tuple[NameUpstream, NameUpstream]
) -> AsyncIterator[ProxyProcess]:
    stable, canary = upstreams
    env = {"ADMIN_TOKEN": TOKEN}
    proxy = ProxyProcess(
        _config(tmp_path, stable.url, canary.url), tmp_path, env, ("--workers", "2")
    )
    await proxy.start()
    yield proxy
    await proxy.kill()
    for pid in worker_pids(proxy):
        os.kill(pid, signal.SIGKILL)


def worker_pids(proxy: ProxyProcess) -> list[int]:
    """The supervisor's live children (its workers)."""
    children = Path(f"/proc/{proxy.pid}/task/{proxy.pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def port(proxy: ProxyProcess) -> int:
    return int(proxy.data_url.rsplit(":", 1)[1])


async def test_workers_route_like_one_process_and_report_the_sum(
    tmp_path: Path, workers: ProxyProcess, upstreams: tuple[NameUpstream, NameUpstream]
) -> None:
    assert len(worker_pids(workers)) == 2
    requests = [get("/", {"X-Tenant-ID": i}) for i in IDS]
    # Many connections: the kernel spreads them over both workers.
    sides = await bodies_for(port(workers), requests, connections=32, depth=4)
    stable, canary = upstreams
    async with running_proxy(_config(tmp_path / "one", stable.url, canary.url)) as one:
        expected = await bodies_for(one.data_address[1], requests)
    assert sides == expected

    async def counted() -> bool:
        return await metric(workers.admin_url, "rollout_requests_total") == len(IDS)

    await wait_for(counted, within=2.0)

    # The analysis saw every request too (its next verdict counts both arms).
    async def judged() -> bool:
        verdict = (await get_json(f"{workers.admin_url}/api/v1/services/shop"))["verdict"]
        if verdict is None:
            return False
        errors = verdict["checks"][0]
        return int(errors["canary"]["requests"] + errors["baseline"]["requests"]) == len(IDS)

    await wait_for(judged, within=3.0)


async def test_a_promote_reaches_every_worker(workers: ProxyProcess) -> None:
    code, body = await act(workers, "promote")
    assert code == 200, body

    async def served() -> bool:
        probes = [get("/", {"X-Tenant-ID": "probe"})] * 16
        bodies = await bodies_for(port(workers), probes, connections=16, depth=1)
        return {b.split()[2] for b in bodies} == {b"1"}

    took = await wait_for(served, within=2.0)
    assert took < 1.0


async def test_a_killed_worker_is_replaced_and_the_other_serves_on(
    tmp_path: Path, workers: ProxyProcess
) -> None:
    traffic = await load(
        workers.data_url, tmp_path / "load.json", "--concurrency", "8", "--duration", "4"
    )
    await traffic.started()
    await asyncio.sleep(1.0)
    victim, survivor = worker_pids(workers)
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:
        pids = worker_pids(workers)
        return len(pids) == 2 and victim not in pids

    await wait_for(replaced, within=10.0)
    restart_s = time.monotonic() - killed
    outcomes = await traffic.finished()
    counts = tally(outcomes)
    failed = len(outcomes) - counts.get("200", 0)
    report("worker killed", requests=len(outcomes), failed=failed, replaced_after_s=restart_s)
    assert survivor in worker_pids(workers)
    # Only the dead worker's connections can fail: the ones it held (a request each), and a
    # reconnect the kernel queued on its listener as it died (each worker has its own queue
    # with SO_REUSEPORT, reset when the process is gone). So at most two per client connection.
    assert failed <= 2 * 8, counts

    # /metrics keeps what the dead worker reported; only its last report interval (0.5 s of
    # its share of the traffic) is lost with it.
    await asyncio.sleep(0.6)
    total = await metric(workers.admin_url, "rollout_requests_total")
    assert 0.8 * counts["200"] <= total <= len(outcomes), (total, counts)


async def test_every_worker_writes_the_access_log(
    tmp_path: Path, upstreams: tuple[NameUpstream, NameUpstream]
) -> None:
    stable, canary = upstreams
    data = _config(tmp_path, stable.url, canary.url)
    log = tmp_path / "access.jsonl"
    data["access_log"] = {"enabled": True, "path": str(log)}
    proxy = await ProxyProcess(data, tmp_path, {"ADMIN_TOKEN": TOKEN}, ("--workers", "2")).start()
    try:
        requests = [get("/", {"X-Tenant-ID": i}) for i in IDS[:500]]
        await bodies_for(port(proxy), requests, connections=32, depth=2)
    finally:
        assert proxy.proc is not None
        proxy.proc.terminate()  # a drain flushes each worker's log
        await proxy.proc.wait()
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert len(lines) == 500
    assert len({line["request_id"] for line in lines}) == 500
