"""What every fault drill uses: origin and load-generator processes, the proxy's resource use,
status polling, and the report of a drill's figures.

`report(drill, **figures)` prints the figures (pytest -s shows them) and, when the environment
variable ROLLOUT_FAULT_REPORT names a file, appends them to it as one JSON line; README's
Reliability table is refreshed from that file. ROLLOUT_SOAK=1 makes the drills that have a
soak variant run it (more trials, longer runs).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.support.process import ROOT

SOAK = os.environ.get("ROLLOUT_SOAK") == "1"


def trials(ci: int, soak: int) -> int:
    return soak if SOAK else ci


def report(drill: str, **figures: Any) -> None:
    line = orjson.dumps({"drill": drill, "soak": SOAK, **figures})
    print(f"\n[fault figure] {line.decode()}")
    target = os.environ.get("ROLLOUT_FAULT_REPORT")
    if target:
        with open(target, "ab") as handle:
            handle.write(line + b"\n")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


class Child:
    """A Python helper process of the drills (`-m tests.faults.<module> ARGS`)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, module: str, *args: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"tests.faults.{module}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        return cls(proc)

    async def line(self, within: float = 15.0) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(within):
            return (await self.proc.stdout.readline()).decode().strip()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self, within: float = 20.0) -> None:
        """SIGINT, then wait for it to exit (SIGKILL after `within`)."""
        if self.proc.returncode is None:
            self.proc.send_signal(2)
            try:
                async with asyncio.timeout(within):
                    await self.proc.wait()
            except TimeoutError:
                await self.kill()


class Origin(Child):
    port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def origin(name: str, *options: str) -> Origin:
    child = await Child.start("origin", name, *options)
    started = Origin(child.proc)
    started.port = int(await started.line())
    return started


@dataclass(frozen=True)
class Outcome:
    start: float
    latency: float
    result: int | str
    served_by: str
    body_bytes: int

    @property
    def ok(self) -> bool:
        return self.result == 200


class Load(Child):
    out: Path

    async def started(self) -> None:
        line = await self.line()
        assert line == "started", line

    async def results(self, within: float = 30.0) -> list[Outcome]:
        """Stop the load (SIGINT) and read every request's outcome."""
        await self.stop(within)
        return [Outcome(*row) for row in orjson.loads(self.out.read_bytes())]

    async def finished(self, within: float = 60.0) -> list[Outcome]:
        """Wait for the load to end by itself, then read the outcomes."""
        async with asyncio.timeout(within):
            await self.proc.wait()
        return [Outcome(*row) for row in orjson.loads(self.out.read_bytes())]


async def load(url: str, out: Path, *options: str) -> Load:
    child = await Child.start("loadgen", url, "--out", str(out), *options)
    started = Load(child.proc)
    started.out = out
    return started


def tally(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        key = str(outcome.result)
        counts[key] = counts.get(key, 0) + 1
    return counts


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _tcp_ports_by_inode() -> dict[str, tuple[int, int]]:
    """Socket inode -> (local port, remote port), from /proc/net/tcp{,6}."""
    found: dict[str, tuple[int, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                found[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
    return found


def fd_kinds(pid: int, data_port: int, upstream_port: int) -> dict[str, int]:
    """The process's descriptors by kind: `client` (accepted on the data port), `upstream`
    (connected to the upstream's port) and `other` (listeners, pipes, files, the rest)."""
    ports = _tcp_ports_by_inode()
    kinds = {"client": 0, "upstream": 0, "other": 0}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        local, remote = ports.get(target.removeprefix("socket:[").rstrip("]"), (0, 0))
        if local == data_port and remote != 0:
            kinds["client"] += 1
        elif remote == upstream_port:
            kinds["upstream"] += 1
        else:
            kinds["other"] += 1
    return kinds


async def status(admin_url: str, service: str) -> Mapping[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{admin_url}/api/v1/services/{service}") as reply,
    ):
        data: Mapping[str, Any] = await reply.json()
        return data


async def metric(admin_url: str, name: str, **labels: str) -> float:
    """The sum of the series of `name` whose labels include `labels` (0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as session, session.get(f"{admin_url}/metrics") as reply:
        text = await reply.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
