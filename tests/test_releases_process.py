"""Releases from CI against the real proxy process: examples/ci/release.sh with a healthy and
a bad canary, the stable pool promoted, and kill -9 in the middle of it all."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.faults.harness import Load, Origin, load, origin, report
from tests.support.client import bodies_for, get
from tests.support.process import ROOT, ProxyProcess
from tests.support.proxy import config_dict, service
from tests.support.servers import NameUpstream

TOKEN = "release-token"
SCRIPT = ROOT / "examples" / "ci" / "release.sh"
STEPS = [{"percent": 50, "observe": "400ms"}, {"percent": 100, "observe": "400ms"}]
ANALYSIS = {
    "interval": "50ms",
    "min_requests": 5,
    "errors": {"min_rate": 0.5},
    "latency": {"quantile": 0.5, "max_increase": 10},
}


def _config(tmp_path: Path, stable: str) -> dict[str, Any]:
    section = service([stable], [], name="shop", steps=[{"percent": 0}])
    section["rollout"]["analysis"] = ANALYSIS
    data = config_dict(section)
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    data["admin"]["token_env"] = "ADMIN_TOKEN"
    return data


async def _script(proxy: ProxyProcess, version: str, canary: str, steps: Path) -> tuple[int, str]:
    env = {
        **os.environ,
        "ROLLOUT": f"{sys.executable} -m proxy",
        "ROLLOUT_ADMIN_URL": proxy.admin_url,
        "ROLLOUT_ADMIN_TOKEN": TOKEN,
        "SERVICE": "shop",
        "VERSION": version,
        "CANARY": canary,
        "TIMEOUT": "60s",
        "STEPS_FILE": str(steps),
    }
    proc = await asyncio.create_subprocess_exec(
        "sh", str(SCRIPT), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def _status(proxy: ProxyProcess) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.admin_url}/api/v1/services/shop") as reply,
    ):
        data: dict[str, Any] = await reply.json()
        return data


async def test_releases_from_ci_promote_roll_back_and_survive_kill_9(tmp_path: Path) -> None:
    origins: list[Origin] = [
        await origin("v0"), await origin("v1"), await origin("v2"),
        await origin("bad", "--fail-every", "1"),
    ]  # fmt: skip
    v0, v1, v2, bad = origins
    data = _config(tmp_path, v0.url)
    steps = tmp_path / "steps.yaml"
    steps.write_text(yaml.safe_dump(STEPS))
    env = {"ADMIN_TOKEN": TOKEN, "ROLLOUT_ADMIN_TOKEN": TOKEN}
    proxy = await ProxyProcess(data, tmp_path, env).start()
    traffic: Load | None = None
    try:
        traffic = await load(
            proxy.data_url, tmp_path / "load.json", "--concurrency", "4", "--duration", "120",
            "--ids", "500",
        )  # fmt: skip
        await traffic.started()
        code, out = await _script(proxy, "1.0", v1.url, steps)
        assert code == 0, out
        assert "completed" in out
        status = await _status(proxy)
        assert (status["status"], status["stable"]) == ("idle", [v1.url])
        assert v0.url in status["stable_drift"]
        code, out = await proxy.cli("status")
        assert f"note: shop: stable is {v1.url}" in out, out

        # kill -9 after completion: the restarted proxy keeps v1 as stable.
        await proxy.kill()
        proxy = await ProxyProcess(data, tmp_path, env).start()
        assert (await _status(proxy))["stable"] == [v1.url]

        # The second release starts from v1, and a kill -9 in its middle resumes it.
        code, out = await proxy.cli(
            "release", "start", "shop", "--version", "2.0", "--canary", v2.url,
            "--steps", str(steps),
        )  # fmt: skip
        assert code == 0, out
        await asyncio.sleep(0.3)
        await proxy.kill()
        proxy = await ProxyProcess(data, tmp_path, env).start()
        await traffic.kill()
        traffic = await load(
            proxy.data_url, tmp_path / "load2.json", "--concurrency", "4", "--duration", "120",
            "--ids", "500",
        )  # fmt: skip
        await traffic.started()
        code, out = await proxy.cli(
            "release", "wait", "shop", "--version", "2.0", "--timeout", "60s"
        )
        assert code == 0, out
        code, out = await proxy.cli("release", "show", "shop", "2.0", "--json")
        assert code == 0, out
        assert f'"stable_before": [\n    "{v1.url}"' in out

        # A bad canary is rolled back: the script exits 1, and stable stays v2.
        code, out = await _script(proxy, "3.0", bad.url, steps)
        assert code == 1, out
        assert "rolled back" in out
        await proxy.kill()
        proxy = await ProxyProcess(data, tmp_path, env).start()
        assert (await _status(proxy))["stable"] == [v2.url]
        check = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "check", "-c", str(proxy.path),
            cwd=ROOT, env=proxy.env, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out = (await check.communicate())[0].decode()
        assert f"service shop: stable is {v2.url} (promoted by a release" in out, out
        code, out = await proxy.cli("release", "list", "shop")
        assert code == 0, out
        lines = out.splitlines()
        assert [line.split()[:2] for line in lines[2:]] == [
            ["3.0", "rolled_back"], ["2.0", "completed"], ["1.0", "completed"],
        ]  # fmt: skip
        code, out = await proxy.cli("release", "wait", "shop", "--version", "3.0")
        assert code == 1, out
        report("releases from CI", releases=3, kills=3, wait_exit_codes=[0, 0, 1])
    finally:
        if traffic is not None:
            await traffic.kill()
        await proxy.kill()
        for started in origins:
            await started.kill()


async def test_worker_processes_serve_the_release_pools(
    tmp_path: Path, upstreams: tuple[NameUpstream, NameUpstream]
) -> None:
    old, new = upstreams
    data = _config(tmp_path, old.url)
    env = {"ADMIN_TOKEN": TOKEN, "ROLLOUT_ADMIN_TOKEN": TOKEN}
    steps = tmp_path / "steps.yaml"
    steps.write_text(yaml.safe_dump([{"percent": 100, "observe": "1h"}]))
    proxy = await ProxyProcess(data, tmp_path, env, args=("--workers", "2")).start()
    port = int(proxy.data_url.rsplit(":", 1)[1])
    ids = [get("/", {"X-Tenant-ID": f"t{i}"}) for i in range(60)]
    try:
        assert {b.split()[0] for b in await bodies_for(port, ids)} == {b"stable"}
        code, out = await proxy.cli(
            "release", "start", "shop", "--version", "7", "--canary", new.url,
            "--steps", str(steps),
        )  # fmt: skip
        assert code == 0, out
        await asyncio.sleep(0.5)  # the workers take the new config
        assert {tuple(b.split()[:2]) for b in await bodies_for(port, ids)} == {
            (b"canary", b"canary")
        }
        code, out = await proxy.cli("promote", "shop")
        assert code == 0, out
        await asyncio.sleep(0.5)
        # The release's upstream is the stable pool now.
        assert {tuple(b.split()[:2]) for b in await bodies_for(port, ids)} == {
            (b"canary", b"stable")
        }
    finally:
        await proxy.kill()


def test_the_ci_script_passes_the_checks_and_routes_of_the_change(tmp_path: Path) -> None:
    """What release.sh hands to `rollout-proxy release start` (ROLLOUT=echo prints it)."""
    import subprocess

    env = {
        **os.environ, "ROLLOUT": "echo", "SERVICE": "shop", "VERSION": "2.0",
        "CANARY": "http://10.0.0.7:8080", "CHECKS_FILE": "checks.yaml",
        "ROUTES": "/checkout /cart", "COMMIT": "abc", "SUMMARY": "s", "AUTHOR": "a",
    }  # fmt: skip
    done = subprocess.run(
        ["sh", str(SCRIPT)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    start = next(line for line in done.stdout.splitlines() if line.startswith("release start"))
    assert "--checks checks.yaml" in start
    assert "--route /checkout --route /cart" in start
