"""F4: kill -9 of the proxy at random moments, including in the middle of state writes.

The rollout moves all the time: ten steps of 150 ms with an analysis tuned to judge within a
few dozen requests, load from another process all along, and, in every other round, a promote
or restart sent just before the kill so that it lands while the state is being written. After
each kill: the state file parses (never torn: old or new document, checksum intact) and the
journal reads; the restarted proxy serves the recorded step and status (no reset to step 0, no
jump beyond the one transition the controller may legitimately make at once), and every user
is on the side the recorded step implies. Rounds: 10 (ROLLOUT_SOAK=1: 100).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp

from proxy.config import parse_config
from proxy.core.machine import Status
from proxy.core.routing import Subject, Variant, decide
from proxy.store.file import FileStore
from proxy.store.records import RolloutRecord
from tests.faults.harness import load, origin, report, trials
from tests.support.client import bodies_for, get
from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, service

TOKEN = "kill9-token"
IDS = [f"user-{i}" for i in range(300)]
STEPS = [{"percent": p, "observe": "150ms"} for p in range(10, 100, 10)] + [{"percent": 100}]
ANALYSIS = {
    "interval": "50ms",
    "min_requests": 5,
    "errors": {"min_rate": 0.5},
    "latency": {"quantile": 0.5, "max_increase": 10},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(tmp_path: Path, stable: str, canary: str) -> dict[str, Any]:
    section = service([stable], [canary], name="shop", steps=STEPS)
    section["rollout"]["analysis"] = ANALYSIS
    data = config_dict(section, listen=f"127.0.0.1:{_free_port()}")
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    data["admin"]["token_env"] = "ADMIN_TOKEN"
    return data


def _offset(data: dict[str, Any]) -> int:
    """Machine steps before the first configured one (a baseline period)."""
    rollout = parse_config(data, {"ADMIN_TOKEN": TOKEN}).services[0].rollout
    return 1 if rollout.baseline_s > 0 else 0


def _expected_sides(data: dict[str, Any], record: RolloutRecord) -> list[str]:
    rollout = parse_config(data, {"ADMIN_TOKEN": TOKEN}).services[0].rollout
    plan = rollout.plan(record.step, active=record.status is not Status.ROLLED_BACK)
    sides = [decide(plan, Subject(i, i, "free")).variant for i in IDS]
    return ["canary" if side is Variant.CANARY else "stable" for side in sides]


async def _post(session: aiohttp.ClientSession, proxy: ProxyProcess, action: str) -> int:
    url = f"{proxy.admin_url}/api/v1/services/shop/{action}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with session.post(url, headers=headers, json={}) as reply:
        return reply.status


async def _status(session: aiohttp.ClientSession, proxy: ProxyProcess) -> dict[str, Any]:
    async with session.get(f"{proxy.admin_url}/api/v1/services/shop") as reply:
        data: dict[str, Any] = await reply.json()
        return data


async def _check_restart(
    session: aiohttp.ClientSession, proxy: ProxyProcess, data: dict[str, Any], before: Any
) -> int:
    """The restarted proxy against the record the killed one left; how many users are not
    on the side the recorded step implies."""
    now = await _status(session, proxy)
    assert now["state_error"] is None
    if before is not None:
        assert now["version"] >= before.version
        if now["version"] == before.version:
            assert (now["status"], now["step"]) == (before.status.value, before.step)
        else:
            # The rollout went on from where it was: every transition since the record the
            # killed proxy left starts where the previous one ended, one step at a time.
            journal = FileStore(Path(data["state"]["path"])).entries("shop", 1000)
            since = sorted((e for e in journal if e.version > before.version),
                           key=lambda e: e.version)  # fmt: skip
            assert since, (now, before)
            assert since[0].from_step == before.step - _offset(data), (since[0], before)
            for earlier, later in itertools.pairwise(since):
                assert later.from_step == earlier.to_step, (earlier, later)
            assert all(e.to_step - e.from_step <= 1 for e in since), since
    # Freeze it, then compare every user's side with what the recorded step implies.
    await _post(session, proxy, "pause")
    frozen = FileStore(Path(data["state"]["path"])).read()["shop"]
    port = int(proxy.data_url.rsplit(":", 1)[1])
    bodies = await bodies_for(port, [get("/", {"X-Tenant-ID": i}) for i in IDS])
    sides = [body.split()[0].decode() for body in bodies]
    expected = _expected_sides(data, frozen)
    await _post(session, proxy, "resume")
    return sum(got != want for got, want in zip(sides, expected, strict=True))


async def test_kill_9_at_random_moments_never_tears_or_moves_the_rollout(tmp_path: Path) -> None:
    rng = random.Random(7)
    stable, canary = await origin("stable"), await origin("canary")
    data = _config(tmp_path, stable.url, canary.url)
    env = {"ADMIN_TOKEN": TOKEN}
    store = FileStore(tmp_path / "state.json")
    rounds = trials(10, 100)
    traffic = None
    restarts: list[float] = []
    steps_seen: set[int] = set()
    mid_write_kills = 0
    moved = 0
    before: RolloutRecord | None = None
    async with aiohttp.ClientSession() as session:
        try:
            for n in range(rounds):
                started = time.monotonic()
                proxy = await ProxyProcess(data, tmp_path, env).start()
                restarts.append(time.monotonic() - started)
                try:
                    if traffic is None:
                        traffic = await load(
                            proxy.data_url, tmp_path / "load.json", "--concurrency", "4",
                            "--duration", "600", "--ids", "1000",
                        )  # fmt: skip
                        await traffic.started()
                    moved += await _check_restart(session, proxy, data, before)
                    await asyncio.sleep(rng.uniform(0.0, 0.5))
                    status = await _status(session, proxy)
                    steps_seen.add(status["step"])
                    if status["status"] in ("completed", "rolled_back"):
                        await _post(session, proxy, "restart")
                    if n % 2:
                        action = rng.choice(["promote", "restart", "pause", "abort"])
                        mutation = asyncio.ensure_future(_post(session, proxy, action))
                        await asyncio.sleep(rng.uniform(0.0, 0.015))
                        mid_write_kills += not mutation.done()
                finally:
                    await proxy.kill()
                before = store.read()["shop"]  # raises if torn or corrupt
                store.entries("shop")  # the journal reads
        finally:
            if traffic is not None:
                await traffic.kill()
            await stable.kill()
            await canary.kill()
    report(
        "F4 kill -9 loop",
        rounds=rounds,
        kills_during_a_mutation=mid_write_kills,
        torn_state_files=0,  # store.read() above raises on a torn or corrupt file
        users_moved=moved,
        steps_seen=sorted(steps_seen),
        restart_to_ready_p50_s=round(sorted(restarts)[len(restarts) // 2], 3),
        restart_to_ready_max_s=round(max(restarts), 3),
    )
    assert moved == 0, "users were not on the side their recorded step implies"
    assert len(steps_seen) >= 3, "the rollout hardly moved: the drill tested little"
