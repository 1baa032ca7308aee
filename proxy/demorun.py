"""`rollout-proxy demo`: demo upstreams, the real proxy between them, traffic, a report.

Everything runs on loopback in this process: the stable and canary demo upstreams on free ports,
the proxy on the demo config (its upstream addresses rewritten to those ports), and bursts of
traffic from many tenants across tiers, one burst per rollout step, each followed by the split
the proxy made per tier. Steps are moved here the way the controller moves them: by swapping the
router's routing snapshot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from proxy import build
from proxy.adminapi import rollout_status
from proxy.config import Config, StateConfig, Upstream, UpstreamsConfig, load_config
from proxy.core.analysis import Assessment
from proxy.core.machine import Status
from proxy.demo import DemoUpstreams, start_demo_upstreams
from proxy.demolive import SteadyTraffic, render
from proxy.errors import ConfigError
from proxy.runtime import Runtime
from proxy.store.records import JournalEntry

_GENERATED_TENANTS = 60


def _demo_config(path: str | None) -> Config:
    if path is not None:
        return load_config(path, dict(os.environ))
    with resources.as_file(resources.files("proxy") / "demo.yaml") as packaged:
        return load_config(Path(packaged), dict(os.environ))


def _upstream(url: str) -> Upstream:
    host, _, port = url.removeprefix("http://").rpartition(":")
    return Upstream(host=host, port=int(port))


def _with_upstreams(config: Config, upstreams: DemoUpstreams) -> Config:
    """Point every service of the demo config at the demo upstreams."""
    pools = UpstreamsConfig(
        stable=(_upstream(upstreams.stable_url),), canary=(_upstream(upstreams.canary_url),)
    )
    services = tuple(dataclasses.replace(s, upstreams=pools) for s in config.services)
    return dataclasses.replace(config, services=services)


def _tenants(config: Config) -> list[tuple[str, str]]:
    """The mapped tenants of the first service, then many unmapped ones (default tier)."""
    tiers = config.services[0].tiers
    mapped = list(tiers.tenants.items())
    generated = [(f"tenant-{i:03d}", tiers.default) for i in range(_GENERATED_TENANTS)]
    return mapped + generated


async def run_demo(
    *,
    config_path: str | None,
    duration_s: float,
    concurrency: int,
    canary_error_rate: float,
) -> int:
    """Run the demo; the exit status of `rollout-proxy demo`."""
    try:
        base = _demo_config(config_path)
    except ConfigError as exc:
        print(f"rollout-proxy demo: invalid config: {exc}", file=sys.stderr)
        return 2
    upstreams = await start_demo_upstreams(
        canary_error_rate, base_error_rate=BASE_ERROR_RATE, latency_s=LATENCY_S
    )
    with tempfile.TemporaryDirectory(prefix="rollout-demo-") as workdir:
        config = _with_state(_with_upstreams(base, upstreams), Path(workdir) / "state.json")
        runtime = Runtime(config)
        try:
            await runtime.start()
            await _show(runtime, duration_s, concurrency)
        finally:
            await runtime.stop(drain_s=1.0, notice_s=0.0)
            await upstreams.close()
    return 0


async def _show(runtime: Runtime, duration_s: float, concurrency: int) -> None:
    controller = runtime.controller
    assert controller is not None
    service = runtime.config.services[0]
    rollout = controller.rollouts[service.name]
    console = Console()
    console.print(
        f"proxy on {runtime.data_url}, admin and metrics on {runtime.admin_url} "
        f"({build.describe()})"
    )
    if not build.compiled():
        console.print(f"note: {build.INTERPRETED_NOTE}")
    traffic = SteadyTraffic(runtime.data_url + "/", _tenants(runtime.config), concurrency)
    tiers = sorted(service.tiers.names)
    await traffic.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s

    def frame() -> Panel:
        now = controller.clock.monotonic()
        return render(rollout_status(rollout, now, controller.state_error), traffic, tiers)

    try:
        with Live(frame(), console=console, refresh_per_second=4) as live:
            while rollout.state.status in _RUNNING and loop.time() < deadline:
                await asyncio.sleep(0.25)
                live.update(frame())
    finally:
        await traffic.stop()
    console.print(_outcome(rollout.state.status.value, rollout.last))
    console.print(_journal(await controller.history(service.name)))


_RUNNING = (Status.PROGRESSING, Status.PAUSED)
BASE_ERROR_RATE = 0.01  # both demo upstreams fail this often: real services do
LATENCY_S = 0.004


def _with_state(config: Config, path: Path) -> Config:
    return dataclasses.replace(config, state=StateConfig(backend="file", path=str(path)))


def _outcome(status: str, last: Assessment | None) -> str:
    why = f": {last.summary}" if last is not None else ""
    if status == "completed":
        return f"[bold green]completed[/]: every step held with evidence{why}"
    if status == "rolled_back":
        return f"[bold red]rolled back[/]{why}"
    return f"[bold]still {status}[/] when the demo ended{why}"


def _journal(entries: list[JournalEntry]) -> Table:
    table = Table(title="decision journal (oldest first)")
    for column in ("time", "actor", "action", "from", "to", "why"):
        table.add_column(column)
    first = entries[-1].time if entries else 0.0
    for entry in reversed(entries):
        table.add_row(
            f"+{entry.time - first:.1f}s",
            entry.actor,
            entry.action,
            f"{entry.from_status} {_step_name(entry.from_step)}",
            f"{entry.to_status} {_step_name(entry.to_step)}",
            entry.reason,
        )
    return table


def _step_name(index: int) -> str:
    return "baseline" if index < 0 else f"step {index + 1}"
