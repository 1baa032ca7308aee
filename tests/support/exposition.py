"""What a real running proxy exposes on its admin listener, for checking monitoring files.

`exposition()` starts the proxy in-process with a healthy stable upstream and a canary whose
port nothing listens on, pins one tenant to the canary so that upstream failures are counted,
sends a few requests, one request the proxy refuses itself and one the client abandons, pauses
the rollout through the admin API (so a decision is counted) and scrapes `/metrics`, so that
every family has samples. It returns every sample name (`rollout_requests_total`,
`rollout_request_duration_seconds_bucket`, ...) with the label names seen on it: what
Prometheus would ingest, so a rule or panel naming a family without its `_total` or `_bucket`
suffix finds nothing.

`unexposed()` lists what expressions select that the proxy does not expose.
`probe_statuses()` answers the admin paths a deployment file points probes or scrapes at.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import closed_port, exchange, get
from tests.support.promql import selectors
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.upstream import Received, RecordingUpstream, Reply

_TOKEN_ENV = "EXPOSITION_ADMIN_TOKEN"
_TOKEN = "exposition-test-token"
_SLOW_S = 2.0  # how long the upstream holds /slow
_NOWHERE = "http://127.0.0.1:9"


@dataclass(frozen=True)
class Exposition:
    """Sample name -> label names seen on its samples; the families' names and types."""

    samples: dict[str, frozenset[str]]
    families: dict[str, str]


def _config(stable: str, canary: str) -> dict[str, object]:
    svc = service([stable], [canary], name="shop", rollout={
        "salt": "exposition",
        "pins": {"canary-tenant": "canary"},
        "steps": [{"percent": 10, "observe": "1h"}],
    })  # fmt: skip
    return config_dict(svc, admin={"listen": "127.0.0.1:0", "token_env": _TOKEN_ENV})


async def _slow(received: Received) -> Reply:
    if received.target == "/slow":
        await asyncio.sleep(_SLOW_S)
    return Reply()


async def _traffic(session: aiohttp.ClientSession, data_url: str, port: int) -> None:
    for tenant in ("acme", "globex", "canary-tenant", "canary-tenant"):
        async with session.get(data_url + "/", headers={"X-Tenant-ID": tenant}) as reply:
            await reply.read()
    refused = await exchange(port, b"GET /a/../b HTTP/1.1\r\nHost: app\r\n\r\n")
    assert refused.status == 400
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/slow", {"X-Tenant-ID": "acme"}))
    await asyncio.sleep(0.1)  # the request is with the upstream; hang up before its answer
    writer.close()


async def _metrics(session: aiohttp.ClientSession, admin_url: str) -> str:
    """The exposition once the abandoned exchange is counted (within the slow answer)."""
    async with asyncio.timeout(_SLOW_S):
        while True:
            async with session.get(admin_url + "/metrics") as reply:
                assert reply.status == 200
                text = await reply.text()
            if "rollout_client_aborts_total{" in text:
                return text
            await asyncio.sleep(0.02)


async def _collect() -> Exposition:
    upstream = await RecordingUpstream("stable", _slow).start()
    try:
        data = _config(upstream.url, f"http://127.0.0.1:{closed_port()}")
        async with (
            running_proxy(data, {_TOKEN_ENV: _TOKEN}) as runtime,
            aiohttp.ClientSession() as session,
        ):
            await _traffic(session, runtime.data_url, runtime.data_address[1])
            auth = {"Authorization": f"Bearer {_TOKEN}"}
            url = runtime.admin_url + "/api/v1/services/shop/pause"
            async with session.post(url, headers=auth) as reply:
                assert reply.status == 200, await reply.text()
            text = await _metrics(session, runtime.admin_url)
    finally:
        await upstream.close()
        await asyncio.sleep(0.01)  # let the upstream's connection handlers see EOF and end
    samples: dict[str, set[str]] = {}
    families: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return Exposition({name: frozenset(labels) for name, labels in samples.items()}, families)


def exposition() -> Exposition:
    """Start a real proxy, drive it as described above, return what it exposes."""
    return asyncio.run(_collect())


async def _statuses(paths: Iterable[str]) -> dict[str, int]:
    # no request goes to the data plane: the upstreams are never contacted
    async with running_proxy(config_dict(service([_NOWHERE], [_NOWHERE]))) as runtime:
        statuses: dict[str, int] = {}
        async with aiohttp.ClientSession() as session:
            for path in paths:
                async with session.get(runtime.admin_url + path) as reply:
                    statuses[path] = reply.status
    return statuses


def probe_statuses(paths: Iterable[str]) -> dict[str, int]:
    """The status a real proxy's admin listener answers to GET of each path."""
    return asyncio.run(_statuses(list(paths)))


def unexposed(exprs: Iterable[str], exposed: Exposition) -> list[str]:
    """Each metric name (or label name on it) selected in `exprs` that `exposed` lacks."""
    problems: list[str] = []
    for expr in exprs:
        for selector in selectors(expr):
            labels = exposed.samples.get(selector.name)
            if labels is None:
                problems.append(f"{selector.name} is not exposed (in {expr!r})")
            elif not selector.labels <= labels:
                missing = sorted(selector.labels - labels)
                problems.append(f"{selector.name} has no label {missing} (in {expr!r})")
    return problems
