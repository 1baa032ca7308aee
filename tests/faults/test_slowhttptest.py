"""F13: slowloris, slow body and slow read with slowhttptest (Debian), short bounded runs.

Each attack opens 200 connections at 100 per second against a proxy whose header and body
timeouts are 1 s; a normal client sends requests all along. Expected: the proxy closes every
attacking connection within its timeout (slowhttptest's per-second socket states: what was
open two samples ago is closed, and never more are open at once than about one timeout's
worth of new ones), while the normal client's p99 latency stays low. Figures: most attacking
connections open at once, still open at the end, the normal client's p99 and errors.
"""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest

from tests.faults.harness import load, origin, percentile, report, tally
from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, service

CONNECTIONS, RATE, LENGTH_S = 200, 100, 5
MODES = {
    "slowloris": ["-H", "-i", "1"],
    "slow body": ["-B", "-i", "1", "-s", "100000"],
    "slow read": ["-X", "-k", "4", "-n", "5", "-w", "16", "-y", "32", "-z", "16"],
}
# Known gaps, each a finding this drill measures (strict: the mark fails once fixed).
GAPS = {
    "slow body": "body_timeout is a per-read gap only: a body dribbled just under it every "
    "time is never cut (no total body deadline, RELIABILITY D3)",
    "slow read": "a response the upstream finished is handed to the socket whole; a client "
    "that never reads it keeps the connection (no write/drain deadline once the exchange "
    "ended, RELIABILITY D4)",
}


def _states(prefix: Path) -> list[dict[str, int]]:
    with open(f"{prefix}.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k.strip().lower(): int(float(v)) for k, v in row.items() if k and v} for row in rows]


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(mode, marks=pytest.mark.xfail(strict=True, reason=GAPS[mode]))
        if mode in GAPS
        else mode
        for mode in MODES
    ],
)
async def test_slow_clients_are_cut_and_a_normal_client_keeps_its_latency(
    tmp_path: Path, mode: str
) -> None:
    upstream = await origin("stable", "--body-bytes", "200000")
    data = config_dict(service([upstream.url], [upstream.url], name="shop"))
    data["limits"] = {"header_timeout": 1, "body_timeout": 1, "idle_timeout": 2}
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    proxy = await ProxyProcess(data, tmp_path, {}).start()
    prefix = tmp_path / "slow"
    traffic = await load(proxy.data_url, tmp_path / "load.json", "--concurrency", "2")
    try:
        await traffic.started()
        attack = await asyncio.create_subprocess_exec(
            "slowhttptest", *MODES[mode], "-c", str(CONNECTIONS), "-r", str(RATE),
            "-l", str(LENGTH_S), "-p", "2", "-g", "-o", str(prefix),
            "-u", proxy.data_url + "/",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(LENGTH_S + 20):
            await attack.wait()
        outcomes = await traffic.results()
    finally:
        await traffic.kill()
        await proxy.kill()
        await upstream.kill()
    states = _states(prefix)
    most_open = max(s["connected"] for s in states)
    normal = [o.latency for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    report(
        f"F13 {mode}",
        attacking_connections=CONNECTIONS,
        most_open_at_once=most_open,
        open_at_end=states[-1]["connected"],
        closed=states[-1]["closed"],
        normal_requests=len(outcomes),
        normal_errors=len(failed),
        normal_p99_s=round(percentile(normal, 0.99), 4),
    )
    # slowhttptest samples once a second and stops as soon as its last connection closes, so
    # the rule is read from its samples: whatever was open 2 s ago is closed now.
    for before, now in zip(states, states[2:], strict=False):
        opened = before["closed"] + before["connected"] + before["pending"]
        assert now["closed"] >= opened - 1, (before, now)
    # Opened at RATE per second, each cut within ~1 s (timeout + the sweeper's tick): far
    # fewer than all of them are ever open together.
    assert most_open <= 2.5 * RATE, most_open
    assert failed == [], tally(failed)
    assert percentile(normal, 0.99) < 0.25
