"""loadtests/locustfile.py as users run it (loadtests/README.md): locust headless, bounded, in
front of a real `rollout-proxy run` process with two real upstreams, the proxy configured as that
README says (tenant id from `X-Tenant-ID`, the locustfile's tenants listed in `tiers.tenants`).
The run must end with exit status 0 and no failures, and its requests must reach both sides of
the rollout at the configured step, sticky per tenant, across tenants, tiers and routes."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.core.bucketing import bucket_of
from tests.support.client import Samples, closed_port, scrape, series, value
from tests.support.process import ROOT, ProxyProcess
from tests.support.proxy import config_dict, service
from tests.support.upstream import Received, RecordingUpstream

LOCUSTFILE = "loadtests/locustfile.py"  # relative to the repository root, as in the README
TENANTS, ZIPF_S, SEED = 500, 1.1, 2026  # the locustfile's defaults, passed explicitly
USERS = 40
RUN_S = 3
STEP_PERCENT = 10
STEPS: list[dict[str, Any]] = [
    {"percent": STEP_PERCENT, "observe": "1h"},
    {"percent": 50, "observe": "1h"},
    {"percent": 100},
]
# What the locustfile sends, as (method, locust name) and the path the upstream must receive.
ROUTES = {
    ("POST", "/api/login"): re.compile(r"/api/login"),
    ("GET", "/api/items"): re.compile(r"/api/items\?page=([1-9]|1[0-9]|20)"),
    ("GET", "/api/items/{id}"): re.compile(r"/api/items/[1-9][0-9]{0,3}"),
    ("POST", "/api/orders"): re.compile(r"/api/orders"),
}

# The locustfile's own tenants (its module imports locust, which patches the interpreter with
# gevent, so it is loaded in a process of its own).
_TENANTS_SCRIPT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("locustfile", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["locustfile"] = module
spec.loader.exec_module(module)
tenants = module.build_tenants(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
print(json.dumps([[t.name, t.tier, t.weight] for t in tenants]))
"""


@dataclass(frozen=True)
class Tenant:
    name: str
    tier: str
    weight: float


@dataclass(frozen=True)
class LocustRun:
    code: int
    stats: list[dict[str, Any]]  # what --json prints: one entry per (method, name)
    log: str

    def requests(self, method: str, name: str) -> int:
        return sum(
            int(e["num_requests"]) for e in self.stats if (e["method"], e["name"]) == (method, name)
        )

    @property
    def total(self) -> int:
        return sum(int(e["num_requests"]) for e in self.stats)

    @property
    def failures(self) -> int:
        return sum(int(e["num_failures"]) for e in self.stats)


async def _output(*command: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def _locustfile_tenants() -> list[Tenant]:
    args = (str(ROOT / LOCUSTFILE), str(TENANTS), str(ZIPF_S), str(SEED))
    code, out, err = await _output(sys.executable, "-c", _TENANTS_SCRIPT, *args)
    assert code == 0, err
    return [Tenant(name, tier, weight) for name, tier, weight in json.loads(out)]


def _on_canary(salt: str, tenant: str) -> bool:
    return bucket_of(salt, tenant) < STEP_PERCENT * 100


def _salt(tenants: list[Tenant]) -> str:
    """A salt whose canary tenants carry 30-70% of the load at the first step.

    Routing is per tenant and a few tenants send most of the traffic, so with an arbitrary salt
    the 10% of buckets on the canary may hold only tenants that no simulated user picks. With
    this one, 40 users all landing on one side has a probability below 1e-6.
    """
    total = sum(t.weight for t in tenants)
    for i in range(10_000):
        salt = f"locust-{i}"
        share = sum(t.weight for t in tenants if _on_canary(salt, t.name)) / total
        if 0.3 <= share <= 0.7:
            return salt
    raise AssertionError("no salt splits the tenants' load")


def _config(tenants: list[Tenant], salt: str, stable: str, canary: str) -> dict[str, Any]:
    # As loadtests/README.md says: the locustfile's tenants named in tiers.tenants; the tenant
    # header is honoured from trusted peers only (config_dict trusts 127.0.0.1).
    tiers = {
        "tenants": {t.name: t.tier for t in tenants if t.tier != "free"},
        "default": "free",
    }
    svc = service(
        [stable], [canary], name="shop", tiers=tiers, rollout={"salt": salt, "steps": STEPS}
    )
    return config_dict(svc)


async def _locust(host: str, *args: str) -> LocustRun:
    """`locust -f loadtests/locustfile.py --headless ...`, its final statistics as JSON."""
    code, out, err = await _output(
        *(sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--headless", *args),
        *("--host", host, "--json", "--only-summary", "--loglevel", "WARNING"),
        *("--tenants", str(TENANTS), "--zipf-s", str(ZIPF_S), "--tenant-seed", str(SEED)),
    )
    try:
        stats = json.loads(out)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"locust printed no statistics (exit {code}): {out}{err}") from exc
    return LocustRun(code, stats, err)


def _route(received: Received) -> tuple[str, str]:
    for (method, name), path in ROUTES.items():
        if received.method == method and path.fullmatch(received.target):
            return method, name
    raise AssertionError(f"not a route of the locustfile: {received.method} {received.target}")


def _check_request(received: Received) -> str:
    """The tenant of one request as the upstream got it; its body must agree with its header."""
    tenant = received.header("X-Tenant-ID")
    assert tenant is not None
    method, name = _route(received)
    if method == "POST":
        body = json.loads(received.body)
        assert body["tenant"] == tenant
        assert body["user"].startswith(f"{tenant}-u")
        if name == "/api/orders":
            assert 1 <= len(body["lines"]) <= 4
    return tenant


async def _settled(proxy: ProxyProcess, expected: int) -> Samples:
    """The metrics once they count `expected` requests (the last responses are counted just
    after they are sent)."""
    async with asyncio.timeout(5):
        while True:
            samples = await scrape(proxy)
            if sum(series(samples, "rollout_requests_total").values()) >= expected:
                return samples
            await asyncio.sleep(0.05)


def _by_variant_tier(samples: Samples) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for labels, count in series(samples, "rollout_requests_total").items():
        label = dict(labels)
        assert label["service"] == "shop"
        assert label["status_class"] == "2xx", label
        counts[label["variant"], label["tier"]] += int(count)
    return counts


def _recorded(
    sides: Mapping[str, RecordingUpstream], tiers: Mapping[str, str]
) -> tuple[Counter[tuple[str, str]], dict[str, set[str]], Counter[tuple[str, str]]]:
    """From the upstreams: requests per (variant, tier), the sides of each tenant, routes."""
    per_tier: Counter[tuple[str, str]] = Counter()
    sides_of: dict[str, set[str]] = {}
    routes: Counter[tuple[str, str]] = Counter()
    for variant, upstream in sides.items():
        assert upstream.protocol_errors == []
        for received in upstream.requests:
            tenant = _check_request(received)
            per_tier[variant, tiers[tenant]] += 1
            sides_of.setdefault(tenant, set()).add(variant)
            routes[_route(received)] += 1
    return per_tier, sides_of, routes


async def test_the_locustfile_runs_clean_through_the_proxy_on_both_sides(tmp_path: Path) -> None:
    tenants = await _locustfile_tenants()
    tiers = {t.name: t.tier for t in tenants}
    salt = _salt(tenants)
    stable = await RecordingUpstream("stable").start()
    canary = await RecordingUpstream("canary").start()
    proxy = ProxyProcess(_config(tenants, salt, stable.url, canary.url), tmp_path, {})
    try:
        await proxy.start()
        # The README's run, bounded; users finish the request they are in when time is up, so
        # that every request locust counts completed. Alongside, the same command against a
        # port nothing listens on must fail with the exit status --exit-code-on-error gives.
        load = ("-u", str(USERS), "-r", str(USERS), "-t", f"{RUN_S}s", "--stop-timeout", "2")
        run, refused = await asyncio.gather(
            _locust(proxy.data_url, *load, "--exit-code-on-error", "1"),
            _locust(
                f"http://127.0.0.1:{closed_port()}",
                *("-u", "2", "-r", "2", "-t", f"{RUN_S}s", "--exit-code-on-error", "3"),
            ),
        )
        total = run.total
        samples = await _settled(proxy, total)
    finally:
        await proxy.kill()
        await stable.close()
        await canary.close()

    assert refused.code == 3, refused.log[-3000:]
    assert refused.total > 0
    assert refused.failures == refused.total

    # Exit status 0: no failed request and no exception in the locustfile's tasks.
    assert run.code == 0, run.log[-3000:]
    assert run.failures == 0
    assert total >= 2 * USERS  # each user logs in, then runs tasks for the whole run
    for method, name in ROUTES:
        assert run.requests(method, name) > 0, (method, name)

    # The upstreams got exactly what locust counted, each request whole.
    per_tier, sides_of, routes = _recorded({"stable": stable, "canary": canary}, tiers)
    assert len(stable.requests) + len(canary.requests) == total
    assert set(routes) == set(ROUTES)
    for method, name in ROUTES:
        assert routes[method, name] == run.requests(method, name), name

    # Several tenants and tiers; each tenant on one side only, the side its bucket gives at the
    # first step; and both sides in use.
    assert len(sides_of) >= 5, sides_of
    assert {"enterprise", "free"} <= {tiers[t] for t in sides_of}
    for tenant, sides in sides_of.items():
        assert sides == {"canary" if _on_canary(salt, tenant) else "stable"}, tenant
    assert stable.requests
    assert canary.requests

    # The proxy's own accounting agrees, tier by tier, and the rollout is still at its step.
    assert _by_variant_tier(samples) == per_tier
    assert value(samples, "rollout_step", service="shop") == 0
    assert value(samples, "rollout_canary_percent", service="shop") == STEP_PERCENT
