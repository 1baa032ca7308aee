"""F17: the state file's disk is full.

The state directory is a 256 KiB tmpfs (mounted here as root; where mounting is not allowed the
drill limits the proxy's file size with RLIMIT_FSIZE instead, which fails writes with EFBIG).
Once full, a mutation must fail closed: 503, the state file unchanged and intact, the data
plane serving on as before. The canary then dies: the rollback the controller decides cannot be
written either, so it applies at once in this process (everyone on stable) and is written
when space returns, within a few intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from proxy.core.machine import Status
from proxy.store.file import FileStore
from tests.faults.harness import report, status
from tests.support.client import bodies_for, get
from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, service
from tests.support.servers import NameUpstream

TOKEN = "disk-token"
IDS = [f"user-{i}" for i in range(200)]
STEPS: list[dict[str, Any]] = [
    {"percent": 20, "observe": "1h"},
    {"percent": 60, "observe": "1h"},
    {"percent": 100},
]


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[bool]:
    """A 256 KiB tmpfs at `path`; yields False when it cannot be mounted here."""
    path.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False)


def fill(path: Path) -> Path:
    filler = path / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as handle:
        while True:
            handle.write(b"\0" * 4096)
            handle.flush()
    return filler


async def _post(proxy: ProxyProcess, action: str) -> int:
    url = f"{proxy.admin_url}/api/v1/services/shop/{action}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, headers={"Authorization": f"Bearer {TOKEN}"}, json={}) as reply,
    ):
        return reply.status


async def test_a_full_disk_fails_mutations_closed_and_the_data_plane_serves_on(
    tmp_path: Path,
) -> None:
    stable, canary = await NameUpstream("stable").start(), await NameUpstream("canary").start()
    with small_disk(tmp_path / "state") as mounted:
        data = config_dict(service([stable.url], [canary.url], name="shop", steps=STEPS))
        data["state"] = {"backend": "file", "path": str(tmp_path / "state" / "state.json")}
        data["admin"]["token_env"] = "ADMIN_TOKEN"
        proxy = await ProxyProcess(data, tmp_path, {"ADMIN_TOKEN": TOKEN}).start()
        store = FileStore(tmp_path / "state" / "state.json")
        port = int(proxy.data_url.rsplit(":", 1)[1])
        try:
            before = store.read()["shop"]
            sides = await bodies_for(port, [get("/", {"X-Tenant-ID": i}) for i in IDS])
            if mounted:
                filler = fill(tmp_path / "state")
            else:
                resource.prlimit(proxy.pid, resource.RLIMIT_FSIZE, (1, 1))
            refused = await _post(proxy, "promote")
            after = store.read()["shop"]
            sides_after = await bodies_for(port, [get("/", {"X-Tenant-ID": i}) for i in IDS])
            await canary.close()  # a rollback is now due, and cannot be written
            for _ in range(3):
                await bodies_for(port, [get("/", {"X-Tenant-ID": i}) for i in IDS])
            await asyncio.sleep(1.5)
            while_full = store.read()["shop"]
            # The rollback could not be written, and applies anyway: stable at once.
            served = await status(proxy.admin_url, "shop")
            if mounted:
                filler.unlink()
            else:
                limit = resource.RLIM_INFINITY
                resource.prlimit(proxy.pid, resource.RLIMIT_FSIZE, (limit, limit))
            freed = time.monotonic()
            while store.read()["shop"].status is not Status.ROLLED_BACK:
                assert time.monotonic() - freed < 5, "the rollback was never written"
                await asyncio.sleep(0.05)
            recovered_s = time.monotonic() - freed
            final = store.read()["shop"]
        finally:
            await proxy.kill()
            await stable.close()
            await canary.close()
    report(
        "F17 disk full",
        method="tmpfs" if mounted else "RLIMIT_FSIZE",
        mutation_status=refused,
        state_unchanged=after == before == while_full,
        data_plane_unchanged=sides_after == sides,
        rollback_written_after_space_returned_s=round(recovered_s, 3),
    )
    assert refused == 503, refused
    assert (served["status"], served["pending_write"]) == ("rolled_back", True)
    assert after == before == while_full, "a failed write changed the state"
    assert sides_after == sides, "the data plane changed or stopped"
    assert final.status is Status.ROLLED_BACK
