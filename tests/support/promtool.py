"""promtool (Debian package `prometheus`): `check metrics` on real exposition output, and any
other promtool command (`check config`, `check rules`, `test rules`) on files."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from proxy.runtime import Runtime


async def metrics_text(runtime: Runtime) -> bytes:
    """The admin listener's /metrics, as served."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(runtime.admin_url + "/metrics") as reply,
    ):
        return await reply.read()


async def promtool_check(exposition: bytes) -> None:
    """Fail unless promtool accepts `exposition` (and fail, not skip, without promtool)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH; install it with `apt-get install prometheus`")
    process = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate(exposition)
    assert process.returncode == 0, out.decode()


def promtool_run(*args: str, cwd: Path | None = None) -> str:
    """Run `promtool ARGS`; fail (not skip) without promtool or on a non-zero exit; the output."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH; install it with `apt-get install prometheus`")
    result = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output
