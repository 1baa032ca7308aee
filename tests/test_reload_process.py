"""Reload as users do it: `kill -HUP`, `POST /api/v1/reload` and `rollout-proxy reload` on a
running `rollout-proxy run`, with one and with two worker processes, under load from a
process of its own.

Every valid reload is swapped in with no failed request, keep-alive connections stay open and
serve their next request under the new config, and a rollout whose spec is unchanged carries
on (same version, same step). An invalid config, or one that changes `listen`, is refused with
the key and the reason, and the old config keeps serving. Figures: failed requests and p99
during 50 mixed reloads against the same load without reloads.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.faults.harness import Origin, Outcome, load, metric, origin, percentile, report, tally
from tests.support.client import RawConnection
from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, service

TOKEN = "reload-token"
ENV = {"ROLLOUT_ADMIN_TOKEN": TOKEN}
_STATUS = {"applied": 200, "invalid": 422, "refused": 409}
PROBE = b"GET /probe HTTP/1.1\r\nHost: app\r\nX-Tenant-ID: t1\r\n\r\n"


def _config(tmp_path: Path, stable: str, canary: str) -> dict[str, Any]:
    svc = service([stable], [canary], name="shop", steps=[{"percent": 50, "observe": "1h"}])
    data = config_dict(svc, admin={"listen": "127.0.0.1:0", "token_env": "ROLLOUT_ADMIN_TOKEN"})
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    return data


class Setup:
    def __init__(self, proxy: ProxyProcess, origins: dict[str, Origin], data: dict[str, Any]):
        self.proxy = proxy
        self.origins = origins
        self.data = data

    @property
    def port(self) -> int:
        return int(self.proxy.data_url.rsplit(":", 1)[1])

    def write(self, data: dict[str, Any] | str) -> None:
        text = data if isinstance(data, str) else yaml.safe_dump(data)
        self.proxy.path.write_text(text)

    def with_stable(self, name: str) -> dict[str, Any]:
        data = copy.deepcopy(self.data)
        data["services"][0]["upstreams"]["stable"] = [self.origins[name].url]
        return data

    async def last_reload(self) -> dict[str, Any] | None:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.proxy.admin_url}/api/v1/reload") as reply,
        ):
            body: dict[str, Any] = await reply.json()
        last: dict[str, Any] | None = body["last_reload"]
        return last

    async def reload(self, trigger: str) -> dict[str, Any]:
        """Reload by `trigger` and wait until it has been answered; the result."""
        before = await self.last_reload()
        if trigger == "sighup":
            os.kill(self.proxy.pid, signal.SIGHUP)
        elif trigger == "api":
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{self.proxy.admin_url}/api/v1/reload",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as reply,
            ):
                body: dict[str, Any] = await reply.json()
            assert reply.status == _STATUS[body["result"]], body
            return body
        else:
            code, out = await self.proxy.cli("reload")
            assert (code == 0) == out.startswith("reload applied"), out
        for _ in range(500):  # a SIGHUP is answered in the background: poll its result
            last = await self.last_reload()
            if last != before:
                assert last is not None
                return last
            await asyncio.sleep(0.02)
        raise AssertionError(f"no answer to the reload ({trigger}) within 10 s")

    async def version(self) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.proxy.admin_url}/api/v1/services/shop") as reply,
        ):
            body = await reply.json()
        return int(body["version"])


@pytest.fixture(params=["1", "2"], ids=["one-process", "two-workers"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    origins = {name: await origin(name, "--delay", "0.01") for name in ("A", "B", "C")}
    data = _config(tmp_path, origins["A"].url, origins["C"].url)
    proxy = await ProxyProcess(data, tmp_path, ENV, ("--workers", request.param)).start()
    try:
        yield Setup(proxy, origins, data)
    finally:
        await proxy.kill()
        for child in origins.values():
            await child.kill()


async def _probes(port: int, count: int) -> list[RawConnection]:
    """Keep-alive connections, each having served one request (several, so that with two
    workers both hold some)."""
    probes = [await RawConnection.open(port) for _ in range(count)]
    for probe in probes:
        await probe.send(PROBE)
        assert (await probe.response()).status == 200
    return probes


async def _served_by(probes: list[RawConnection]) -> set[str]:
    """Who serves the next request of each probe connection (which must still be open)."""
    names = set()
    for probe in probes:
        assert probe.reusable
        await probe.send(PROBE)
        response = await probe.response()
        assert response.status == 200
        names.add(response.body.split(b" ", 1)[0].decode())
    return names


@pytest.mark.parametrize("trigger", ["sighup", "api", "cli"])
async def test_a_valid_config_applies_under_load_with_no_failed_request(
    setup: Setup, tmp_path: Path, trigger: str
) -> None:
    traffic = await load(
        setup.proxy.data_url, tmp_path / "load.json", "--concurrency", "8", "--duration", "30"
    )
    await traffic.started()
    probes = await _probes(setup.port, 8)
    assert await _served_by(probes) <= {"A", "C"}
    version = await setup.version()
    setup.write(setup.with_stable("B"))
    result = await setup.reload(trigger)
    assert result["result"] == "applied", result
    assert "service shop: stable upstreams" in result["changes"]
    # The same connections, open across the reload, are served under the new config.
    assert await _served_by(probes) <= {"B", "C"}
    assert "B" in await _served_by(probes * 4)
    await asyncio.sleep(0.3)
    outcomes = await traffic.results()
    assert await setup.version() == version  # the rollout carried on: a reload is no restart
    failed = [o for o in outcomes if not o.ok]
    assert failed == [], tally(failed)
    assert {o.served_by for o in outcomes} == {"A", "B", "C"}
    for probe in probes:
        await probe.close()


async def test_an_invalid_config_is_refused_and_the_old_one_keeps_serving(
    setup: Setup, tmp_path: Path
) -> None:
    probes = await _probes(setup.port, 4)
    bad = setup.with_stable("B")
    bad["services"][0]["rollout"]["steps"][0]["percent"] = 250
    setup.write(bad)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{setup.proxy.admin_url}/api/v1/reload", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as reply,
    ):
        body = await reply.json()
    assert reply.status == 422
    assert body["result"] == "invalid"
    assert body["key"] == "services[0].rollout.steps[0].percent"
    assert body["reason"]
    assert (await setup.reload("sighup"))["result"] == "invalid"
    code, out = await setup.proxy.cli("reload")
    assert code == 1
    assert "services[0].rollout.steps[0].percent" in out
    assert "nothing changed" in out
    code, out = await setup.proxy.cli("status")
    assert code == 0
    assert "warning: the last reload of" in out
    assert "was invalid" in out
    assert await metric(setup.proxy.admin_url, "rollout_config_reload_total", result="invalid") == 3
    assert await metric(setup.proxy.admin_url, "rollout_config_last_reload_successful") == 0
    assert await _served_by(probes) <= {"A", "C"}  # the old config serves on
    # A new listen address needs a restart: refused, saying so.
    moved = copy.deepcopy(setup.data)
    moved["listen"] = "127.0.0.1:1"
    setup.write(moved)
    refused = await setup.reload("api")
    assert refused["result"] == "refused"
    assert refused["error"].startswith("listen: changed, and needs a restart")
    assert await _served_by(probes) <= {"A", "C"}
    # Fixed: it applies, and the metrics say when.
    before = time.time()
    setup.write(setup.with_stable("B"))
    assert (await setup.reload("api"))["result"] == "applied"
    assert await _served_by(probes) <= {"B", "C"}
    admin = setup.proxy.admin_url
    assert await metric(admin, "rollout_config_last_reload_successful") == 1
    assert await metric(admin, "rollout_config_last_reload_success_timestamp_seconds") >= before
    for probe in probes:
        await probe.close()


def _window_p99(outcomes: list[Outcome], windows: list[tuple[float, float]]) -> float:
    inside = [o.latency for o in outcomes if any(a <= o.start <= b for a, b in windows)]
    return percentile(inside, 0.99)


async def test_fifty_mixed_reloads_under_load_fail_no_request(setup: Setup, tmp_path: Path) -> None:
    """Valid (stable A or B), invalid YAML, an invalid value, and a listen change, by SIGHUP,
    the API and the CLI in turn, while a separate process sends steady load."""
    traffic = await load(
        setup.proxy.data_url, tmp_path / "load.json", "--concurrency", "8", "--duration", "60"
    )
    await traffic.started()
    quiet_from = time.monotonic()
    await asyncio.sleep(2.0)  # the same load without reloads, for the p99 beside
    quiet = (quiet_from, time.monotonic())
    bad_value = setup.with_stable("B")
    bad_value["limits"] = {"idle_timeout": "-1s"}
    moved = copy.deepcopy(setup.data)
    moved["listen"] = "127.0.0.1:1"
    kinds: list[tuple[str, dict[str, Any] | str]] = [
        ("applied", setup.with_stable("B")),
        ("invalid", "listen: [unclosed\n"),
        ("applied", setup.with_stable("A")),
        ("invalid", bad_value),
        ("refused", moved),
    ]
    triggers = ["sighup", "api", "cli"]
    results: dict[str, int] = {}
    busy: list[tuple[float, float]] = []
    for i in range(50):
        expected, data = kinds[i % len(kinds)]
        setup.write(data)
        start = time.monotonic()
        result = await setup.reload(triggers[i % len(triggers)])
        busy.append((start, time.monotonic()))
        assert result["result"] == expected, (i, result)
        results[expected] = results.get(expected, 0) + 1
    outcomes = await traffic.results()
    failed = [o for o in outcomes if not o.ok]
    admin = setup.proxy.admin_url
    for name, count in results.items():
        assert await metric(admin, "rollout_config_reload_total", result=name) == count
    report(
        "reload: 50 mixed reloads under load",
        workers=setup.proxy.args[1],
        requests=len(outcomes),
        failed=len(failed),
        reloads=results,
        p99_quiet_ms=round(1000 * _window_p99(outcomes, [quiet]), 2),
        p99_during_reloads_ms=round(1000 * _window_p99(outcomes, busy), 2),
    )
    assert failed == [], tally(failed)
    assert {"A", "B", "C"} <= {o.served_by for o in outcomes}
