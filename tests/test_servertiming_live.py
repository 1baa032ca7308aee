"""Server-Timing checks on the real proxy process: upstreams that answer 200 every time and say
in `Server-Timing` where their time went.

Real aiohttp apps on loopback behind `rollout-proxy run`. (a) A canary whose `db;dur=` is twice
stable's is rolled back, the verdict and the journal naming `server_timing:db`. (b) The same
distribution on both arms advances. (c) A canary whose `cache;desc=miss` rate is twice stable's
is rolled back naming that check. (d) With two worker processes, and (e) with two fleet replicas
sharing a real redis-server (all traffic on the one that does not decide), whose evidence batches
carry the entries, (a) holds too. Clients
never see the header, which the checks read (in process, a service without checks relays it, and
`strip_server_timing: true` strips it).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.fleet import fleet_config, state, wait_for
from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.redis import RedisServer

CHECKS = [
    {"metric": "db", "judge": "duration", "max_increase": 0.2},
    {"metric": "cache", "desc": "miss", "judge": "rate", "max_increase": 0.1},
]


class TimingApp:
    """Answers every GET with 200 and `Server-Timing: db;dur=<log-normal around db_ms>,
    cache;desc=<miss at miss_rate, else hit>`, as a service instrumented for it does."""

    def __init__(self, db_ms: float, miss_rate: float, seed: int) -> None:
        self.db_ms = db_ms
        self.miss_rate = miss_rate
        self.rng = random.Random(seed)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        dur = self.db_ms * self.rng.lognormvariate(0.0, 0.3)
        cache = "miss" if self.rng.random() < self.miss_rate else "hit"
        timing = f'db;dur={dur:.3f};desc="orders, by id", cache;desc={cache}'
        return web.Response(text="ok", headers={"Server-Timing": timing})

    async def start(self) -> TimingApp:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@asynccontextmanager
async def pair(stable: TimingApp, canary: TimingApp) -> AsyncIterator[tuple[str, str]]:
    await stable.start()
    await canary.start()
    try:
        yield stable.url, canary.url
    finally:
        await stable.close()
        await canary.close()


def timing_config(tmp_path: Path, stable: str, canary: str) -> dict[str, Any]:
    section = service(
        [stable],
        [canary],
        name="shop",
        steps=[{"percent": 50, "observe": "1s"}, {"percent": 100, "observe": "1h"}],
    )
    section["rollout"]["analysis"] = {
        "interval": "200ms",
        "min_requests": 200,
        "server_timing": CHECKS,
    }
    data = config_dict(section)
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    return data


async def drive(
    proxy: ProxyProcess,
    until: set[str],
    limit_s: float = 60.0,
) -> dict[str, Any]:
    """Traffic from ever new ids until the service's status is in `until` (or its step is
    past the first); returns the last status. Asserts no client saw Server-Timing."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop = asyncio.Event()
    seen_header: list[str] = []
    counter = iter(range(10**9))

    async def client(url: str) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                headers = {"X-Tenant-ID": f"u{next(counter)}"}
                async with session.get(url + "/orders", headers=headers) as reply:
                    await reply.read()
                    assert reply.status == 200
                    if "Server-Timing" in reply.headers:
                        seen_header.append(reply.headers["Server-Timing"])

    clients = [asyncio.create_task(client(proxy.data_url)) for _ in range(8)]
    try:
        async with aiohttp.ClientSession() as session:
            while loop.time() - started < limit_s:
                async with session.get(proxy.admin_url + "/api/v1/services/shop") as reply:
                    status: dict[str, Any] = await reply.json()
                if status["status"] in until or status["step"] > 0:
                    return status
                await asyncio.sleep(0.1)
        raise AssertionError(f"still {status['status']} at step {status['step']}")
    finally:
        stop.set()
        await asyncio.gather(*clients)
        assert seen_header == []


async def journal(proxy: ProxyProcess) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy.admin_url + "/api/v1/services/shop/decisions") as reply,
    ):
        body: dict[str, Any] = await reply.json()
    decisions: list[dict[str, Any]] = body["decisions"]
    return decisions


async def rolled_back_by(
    tmp_path: Path, stable: TimingApp, canary: TimingApp, args: tuple[str, ...] = ()
) -> str:
    """Run the rollout until it is rolled back; the check its verdict and journal name."""
    async with pair(stable, canary) as (stable_url, canary_url):
        config = timing_config(tmp_path, stable_url, canary_url)
        proxy = await ProxyProcess(config, tmp_path, {}, args).start()
        try:
            status = await drive(proxy, {"rolled_back"})
            decisions = await journal(proxy)
        finally:
            await proxy.kill()
    assert status["status"] == "rolled_back", status
    check = str(status["verdict"]["check"])
    rollback = next(d for d in decisions if d["to"]["status"] == "rolled_back")
    assert rollback["evidence"]["check"] == check
    assert rollback["reason"].startswith(f"{check}: "), rollback["reason"]
    return check


async def test_a_canary_whose_db_time_doubles_is_rolled_back_naming_the_check(
    tmp_path: Path,
) -> None:
    check = await rolled_back_by(tmp_path, TimingApp(10.0, 0.2, 1), TimingApp(20.0, 0.2, 2))
    assert check == "server_timing:db"


async def test_worker_processes_ship_server_timing_to_the_analysis(tmp_path: Path) -> None:
    stable, canary = TimingApp(10.0, 0.2, 11), TimingApp(20.0, 0.2, 12)
    check = await rolled_back_by(tmp_path, stable, canary, ("--workers", "2"))
    assert check == "server_timing:db"


async def test_fleet_replicas_ship_server_timing_to_the_decider(tmp_path: Path) -> None:
    """Two replicas sharing a real redis-server, all traffic on the one that does not decide:
    the decider judges only what the other shipped, the Server-Timing entries included."""
    redis = await RedisServer(tmp_path).start()
    try:
        async with pair(TimingApp(10.0, 0.2, 13), TimingApp(20.0, 0.2, 14)) as (stable, canary):
            config = timing_config(tmp_path, stable, canary)
            config["state"] = fleet_config(stable, canary, [])["state"]
            env = {"ROLLOUT_REDIS_URL": redis.url}
            replicas = []
            for i in range(2):
                (tmp_path / f"r{i}").mkdir()
                replicas.append(ProxyProcess(config, tmp_path / f"r{i}", env))
            await asyncio.gather(*(r.start() for r in replicas))
            try:
                await wait_for(lambda: _one_decider(replicas), within=10.0, poll=0.1)
                serving = [r for r in replicas if not (await state(r))["decider"]]
                status = await drive(serving[0], {"rolled_back"})
                decisions = await journal(serving[0])
            finally:
                for replica in replicas:
                    await replica.kill()
    finally:
        await redis.kill()
    assert status["status"] == "rolled_back", status
    rollback = next(d for d in decisions if d["to"]["status"] == "rolled_back")
    assert rollback["evidence"]["check"] == "server_timing:db"
    db = next(c for c in rollback["evidence"]["checks"] if c["check"] == "server_timing:db")
    assert db["canary"]["requests"] > 0


async def _one_decider(replicas: list[ProxyProcess]) -> bool:
    states = await asyncio.gather(*(state(r) for r in replicas))
    return sum(bool(s["decider"]) for s in states) == 1


async def test_a_canary_whose_cache_miss_rate_doubles_is_rolled_back_naming_the_check(
    tmp_path: Path,
) -> None:
    check = await rolled_back_by(tmp_path, TimingApp(10.0, 0.2, 3), TimingApp(10.0, 0.4, 4))
    assert check == "server_timing:cache;desc=miss"


async def test_the_same_distribution_on_both_arms_advances(tmp_path: Path) -> None:
    async with pair(TimingApp(10.0, 0.2, 5), TimingApp(10.0, 0.2, 6)) as (stable, canary):
        proxy = await ProxyProcess(timing_config(tmp_path, stable, canary), tmp_path, {}).start()
        try:
            status = await drive(proxy, {"rolled_back", "completed"})
        finally:
            await proxy.kill()
    assert status["status"] != "rolled_back", status
    assert status["step"] == 1, status


async def test_the_header_is_relayed_without_checks_and_stripped_when_configured() -> None:
    async with pair(TimingApp(10.0, 0.2, 7), TimingApp(10.0, 0.2, 8)) as (stable, canary):
        plain = service([stable], [canary], name="plain", match={"path_prefix": "/plain"})
        stripped = service(
            [stable], [canary], name="hidden", strip_server_timing=True, steps=[{"percent": 0}]
        )
        async with (
            running_proxy(config_dict(plain, stripped)) as proxy,
            aiohttp.ClientSession() as session,
        ):
            host, port = proxy.data_address
            async with session.get(f"http://{host}:{port}/plain/x") as reply:
                relayed = reply.headers.getall("Server-Timing", [])
            async with session.get(f"http://{host}:{port}/other") as reply:
                hidden = reply.headers.getall("Server-Timing", [])
    assert len(relayed) == 1
    assert relayed[0].startswith("db;dur=")
    assert hidden == []
