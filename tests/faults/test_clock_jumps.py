"""F11: the wall clock jumps (+24 h, -1 h) under a running proxy, and across a restart.

libfaketime (Debian `faketime`) moves the proxy process's wall clock only (its monotonic clock
and the event loop's are left alone). Durations (observe time, windows, timeouts) must run on
the monotonic clock, so a jump causes no transition: the step under load stays the step. After
a restart under a clock 24 h ahead, the persisted step start looks a day old; the rollout must
not jump ahead on that alone (advancing needs evidence, and none has come in yet).
Figures: unexpected transitions after each jump (target 0).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from proxy.store.file import FileStore
from tests.faults.harness import load, origin, report, status
from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, service

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
STEPS: list[dict[str, Any]] = [
    {"percent": 20, "observe": "30s"},
    {"percent": 60, "observe": "30s"},
    {"percent": 100},
]


async def _wall_offset(env: dict[str, str]) -> float:
    """How far the wall clock of a process started with `env` is from ours, in seconds."""
    script = "import time; print(time.time())"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, env={**os.environ, **env}
    )
    out, _ = await proc.communicate()
    return float(out) - time.time()


async def test_wall_clock_jumps_cause_no_transition(tmp_path: Path) -> None:
    offset = tmp_path / "faketime"
    env = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    offset.write_text("+86400s")
    assert await _wall_offset(env) > 86000, "libfaketime not working (faketime in .ci/run)"
    offset.write_text("+0s")
    stable, canary = await origin("stable"), await origin("canary")
    data = config_dict(service([stable.url], [canary.url], name="shop", steps=STEPS))
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    store = FileStore(tmp_path / "state.json")
    seen: dict[str, tuple[int, str, float]] = {}
    proxy = await ProxyProcess(data, tmp_path, env).start()
    traffic = await load(proxy.data_url, tmp_path / "load.json", "--concurrency", "4")
    try:
        await traffic.started()
        start = await status(proxy.admin_url, "shop")
        for jump in ("+86400s", "-3600s"):
            offset.write_text(jump)
            await asyncio.sleep(1.5)  # more than one evaluation interval, under load
            now = await status(proxy.admin_url, "shop")
            seen[jump] = (now["step"], now["status"], now["time_in_step_s"])
        await traffic.stop()
        await proxy.kill()
        offset.write_text("+86400s")
        restarted = await ProxyProcess(data, tmp_path, env).start()
        try:
            await asyncio.sleep(1.5)
            after = await status(restarted.admin_url, "shop")
            seen["restart at +24h"] = (after["step"], after["status"], after["time_in_step_s"])
        finally:
            await restarted.kill()
    finally:
        await traffic.kill()
        await proxy.kill()
        await stable.kill()
        await canary.kill()
    record = store.read()["shop"]
    # Steps only: an advance is what a jump could wrongly cause (the version may also move by
    # a pause or an evidence-based decision taken meanwhile, which is no clock effect).
    unexpected = sum(v[0] != start["step"] for v in seen.values())
    report(
        "F11 wall-clock jumps",
        jumps=list(seen),
        statuses=[v[1] for v in seen.values()],
        unexpected_transitions=unexpected,
        time_in_step_s={k: round(v[2], 3) for k, v in seen.items()},
    )
    assert unexpected == 0, seen
    assert record.step == start["step"]
    assert all(v[2] >= 0 for v in seen.values()), seen
