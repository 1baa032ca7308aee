"""The README's five-minute guide works as written: its config passes `rollout-proxy check` with
the output the guide quotes, every `rollout-proxy` command in it parses, and the walk-through
(run, a request, status, promote, abort, SIGTERM) works against real upstreams."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

from proxy import cli
from tests.support.client import exchange, get
from tests.support.process import ProxyProcess
from tests.support.upstream import RecordingUpstream

ROOT = Path(__file__).resolve().parents[1]
TITLE = "## Put it in front of your service in five minutes"
TOKEN = "quickstart-token-0123456789abcdef"


def _guide() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(TITLE)
    end = readme.index("\n## ", start + len(TITLE))
    return readme[start:end]


def _config_text() -> str:
    guide = _guide()
    after = guide.index("<!-- quickstart-config")
    match = re.search(r"```yaml\n(.*?)```", guide[after:], re.S)
    assert match is not None
    return match.group(1)


def _commands() -> list[str]:
    """The `rollout-proxy ...` lines of the guide's shell blocks, without their comments."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", _guide(), re.S):
        for line in block.splitlines():
            if line.startswith("rollout-proxy "):
                lines.append(line.split("#", 1)[0].strip())
    return lines


def test_the_guides_config_passes_check_with_the_output_it_quotes(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(_config_text())
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "-c", "proxy.yaml"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**os.environ, "ROLLOUT_ADMIN_TOKEN": TOKEN},
    )
    assert result.returncode == 0, result.stderr
    (quoted,) = re.findall(r'rollout-proxy check -c proxy.yaml +# "([^"]+)"', _guide())
    assert result.stdout.startswith(quoted), result.stdout


def test_every_command_in_the_guide_parses() -> None:
    commands = _commands()
    assert {shlex.split(c)[1] for c in commands} >= {"check", "run", "status", "promote", "abort"}
    parser = cli.build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command)[1:])  # exits 2 on an unknown option


def _runnable(config: dict[str, Any], tmp_path: Path, stable: str, canary: str) -> dict[str, Any]:
    """The guide's config on free loopback ports, against these upstreams."""
    config["listen"] = "127.0.0.1:0"
    config["admin"]["listen"] = "127.0.0.1:0"
    config["state"]["path"] = str(tmp_path / "state" / "rollouts.json")
    config["access_log"]["path"] = str(tmp_path / "access.log")
    config["limits"] = {"drain_notice": 0}  # nothing watches readiness here
    (svc,) = config["services"]
    svc["upstreams"] = {"stable": [stable], "canary": [canary]}
    return config


async def test_the_walk_through(tmp_path: Path) -> None:
    stable = await RecordingUpstream("stable").start()
    canary = await RecordingUpstream("canary").start()
    config = _runnable(yaml.safe_load(_config_text()), tmp_path, stable.url, canary.url)
    proxy = await ProxyProcess(config, tmp_path, {"ROLLOUT_ADMIN_TOKEN": TOKEN}).start()
    try:
        port = int(proxy.data_url.rsplit(":", 1)[1])
        response = await exchange(port, get("/", {"X-Tenant-ID": "acme"}))
        assert response.status == 200
        request_id = response.header("x-request-id")
        assert request_id
        (received,) = stable.requests + canary.requests
        assert received.header("x-request-id") == request_id
        assert received.header("x-rollout-variant") in ("stable", "canary")
        code, out = await proxy.cli("status")
        assert code == 0, out
        assert "checkout" in out
        assert "progressing" in out
        code, out = await proxy.cli("promote", "checkout")
        assert code == 0, out
        code, out = await proxy.cli("abort", "checkout")
        assert code == 0, out
        assert "rolled_back" in out
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await proxy.proc.wait() == 0
    finally:
        await proxy.kill()
        await stable.close()
        await canary.close()
    (line,) = [orjson.loads(x) for x in (tmp_path / "access.log").read_bytes().splitlines()]
    assert (line["request_id"], line["service"], line["status"]) == (request_id, "checkout", 200)
