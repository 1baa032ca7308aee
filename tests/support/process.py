"""The proxy as a separate process, the way users run it (`python -m proxy run -c FILE`)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
_READY = re.compile(r"data plane on (https?://\S+), admin on (https?://\S+)")


async def ready_line(
    stream: asyncio.StreamReader,
    pattern: re.Pattern[str],
    within: float = 15.0,
    before: list[str] | None = None,
) -> re.Match[str]:
    """The first line of a starting process's `stream` that matches `pattern`; the lines before
    it (a warning) go to `before`. Fails with what the process said when it ends first or does
    not get there within `within`."""
    seen = before if before is not None else []
    try:
        async with asyncio.timeout(within):
            while line := (await stream.readline()).decode():
                match = pattern.search(line)
                if match is not None:
                    return match
                seen.append(line)
    except TimeoutError:
        pass
    said = "".join(seen)
    raise AssertionError(f"no line matching {pattern.pattern!r} within {within:g} s:\n{said}")


class ProxyProcess:
    """A started `rollout-proxy run`; `data_url` and `admin_url` once it is serving."""

    def __init__(
        self,
        config: Mapping[str, Any],
        workdir: Path,
        env: Mapping[str, str],
        args: tuple[str, ...] = (),
        cwd: Path = ROOT,
    ) -> None:
        # More `run` options. One process unless a test asks for workers: the drills measure
        # per-connection behaviour, the same in every worker (tests/workers covers them).
        self.args = args if "--workers" in args else ("--workers", "1", *args)
        self.path = workdir / "proxy.yaml"
        self.path.write_text(yaml.safe_dump(dict(config)))
        self.env = {**os.environ, **env}
        self.cwd = cwd  # where `python -m proxy` finds the package first
        self.proc: asyncio.subprocess.Process | None = None
        self.data_url = ""
        self.admin_url = ""
        self.before_ready: list[str] = []
        self.ready = ""  # the line that said it serves

    async def start(self) -> ProxyProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "run",
            "-c",
            str(self.path),
            *self.args,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
        )
        assert self.proc.stderr is not None
        match = await ready_line(self.proc.stderr, _READY, before=self.before_ready)
        self.data_url, self.admin_url = match.group(1), match.group(2)
        self.ready = match.string
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, as a crash."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def cli(self, *args: str) -> tuple[int, str]:
        """Run `rollout-proxy ARGS --admin <this proxy>`; (exit status, stdout + stderr)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            *args,
            "--admin",
            self.admin_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()
