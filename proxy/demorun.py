"""`rollout-proxy demo`: demo upstreams, the real proxy between them, traffic, a report.

Everything runs on loopback in this process: the stable and canary demo upstreams on free ports,
the proxy on the demo config (its upstream addresses rewritten to those ports), and bursts of
traffic from many tenants across tiers, one burst per rollout step, each followed by the split
the proxy made per tier. Steps are moved here the way the controller moves them: by swapping the
router's routing snapshot.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from importlib import resources
from pathlib import Path

from proxy.config import Config, Step, Upstream, UpstreamsConfig, load_config
from proxy.core.routing import RoutingPlan
from proxy.demo import DemoUpstreams, start_demo_upstreams
from proxy.demotraffic import drive_traffic, render_report
from proxy.errors import ConfigError
from proxy.runtime import Runtime

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
    requests: int,
    concurrency: int,
    canary_error_rate: float,
) -> int:
    """Run the demo; the exit status of `rollout-proxy demo`."""
    try:
        base = _demo_config(config_path)
    except ConfigError as exc:
        print(f"rollout-proxy demo: invalid config: {exc}", file=sys.stderr)
        return 2
    upstreams = await start_demo_upstreams(canary_error_rate)
    runtime = Runtime(_with_upstreams(base, upstreams))
    try:
        await runtime.start()
        assert runtime.router is not None
        print(f"proxy on {runtime.data_url}, metrics on {runtime.admin_url}/metrics")
        service = runtime.config.services[0]
        tenants = _tenants(runtime.config)
        per_step = max(1, requests // len(service.rollout.steps))
        for index, step in enumerate(service.rollout.steps):
            runtime.router.set_plan(service.name, RoutingPlan.build(service.rollout, index))
            report = await drive_traffic(runtime.data_url, tenants, per_step, concurrency)
            print(f"\nstep {index}: {_describe(step)}")
            print(render_report(report))
    finally:
        await runtime.stop(drain_s=1.0)
        await upstreams.close()
    return 0


def _describe(step: Step) -> str:
    cohort = sorted(step.tiers) + sorted(step.tenants)
    return f"{step.percent:g}% of {', '.join(cohort) if cohort else 'everyone'}"
