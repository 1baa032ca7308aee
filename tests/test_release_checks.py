"""Checks carried by a release: added to the service's own for that release only, named after
it, validated when the release starts; and, against the real proxy, a canary broken on one
route only (within the service's own tolerance) rolled back by the route check its release
brought."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import ConfigError, parse_config
from proxy.releases import release_analysis, start_request
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.upstream import Received, RecordingUpstream, Reply

TOKEN = "checks-token"


def _service() -> Any:
    svc = service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"], name="shop",
                  steps=[{"percent": 50}])  # fmt: skip
    svc["rollout"]["analysis"] = {"routes": [{"path_prefix": "/login"}], "latency": {
        "max_increase": 0.5}}  # fmt: skip
    return parse_config(config_dict(svc), {}).services[0]


def test_a_release_adds_its_checks_named_after_it_and_only_for_itself() -> None:
    shop = _service()
    body = {
        "version": "2.0",
        "canary": ["http://127.0.0.1:11"],
        "checks": [
            {"route": {"path_prefix": "/pay", "errors": {"max_increase": 0.05}}},
            {"errors": {"max_increase": 0.1}},
            {"latency": {"max_increase": 0.1, "quantile": 0.9}},
        ],
        "change": {
            "routes": ["/cart", {"path_prefix": "/orders", "errors": {"max_increase": 0.2}}]
        },
    }
    request = start_request(body, shop)
    analysis = release_analysis(shop.rollout.analysis, request.checks, request.change, "2.0")
    names = [(r.name, r.error_max_increase) for r in analysis.routes]
    assert names == [
        ("route:/login", 0.5),  # the service's own, kept
        ("route:/pay [release 2.0]", 0.05),
        ("route:/ [release 2.0]", 0.1),
        ("route:/cart [release 2.0]", 0.5),
        ("route:/orders [release 2.0]", 0.2),
    ]
    assert (analysis.latency_quantile, analysis.latency_max_increase) == (0.9, 0.1)
    assert analysis.latency_origin == "release 2.0"  # its verdicts say `latency [release 2.0]`
    plain = start_request({"version": "3.0", "canary": ["http://127.0.0.1:11"]}, shop)
    again = release_analysis(shop.rollout.analysis, plain.checks, plain.change, "3.0")
    assert again == shop.rollout.analysis  # nothing carried over to the next release


@pytest.mark.parametrize(
    ("checks", "change", "key"),
    [
        ([{"route": {"path_prefix": "pay"}}], {}, "checks[0].route.path_prefix"),
        ([{"errors": {}, "latency": {}}], {}, "checks[0]"),
        ([{"throughput": {}}], {}, "checks[0].throughput"),
        ([{"errors": {"max_increase": -1}}], {}, "checks[0].errors.max_increase"),
        ([], {"routes": ["cart"]}, "change.routes[0].path_prefix"),
        ([{"route": {"path_prefix": f"/r{i}"}} for i in range(21)], {}, "checks"),
    ],
)
def test_a_bad_check_names_its_key(checks: list[Any], change: dict[str, Any], key: str) -> None:
    body = {"version": "2.0", "canary": ["http://127.0.0.1:11"], "checks": checks,
            "change": change}  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        start_request(body, _service())
    assert caught.value.path == key


async def _post(admin: str, path: str, body: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{admin}/api/v1/services/shop{path}", json=body, headers=headers) as r,
    ):
        return r.status, await r.json()


async def _get_json(admin: str, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{admin}/api/v1/services/shop{path}") as r,
    ):
        return await r.json()


async def test_a_route_the_change_touches_rolls_the_release_back_on_its_own_check() -> None:
    def canary(request: Received) -> Reply:
        broken = request.target.startswith("/checkout")
        return Reply(status=500 if broken else 200, body=b"canary\n")

    served = [0]

    def flaky(request: Received) -> Reply:
        # As many errors as the canary has overall (1 in 20), but none on /checkout: the
        # service's own errors check sees the same rate on both sides.
        served[0] += 1
        broken = not request.target.startswith("/checkout") and served[0] % 19 == 0
        return Reply(status=500 if broken else 200, body=b"stable\n")

    stable = await RecordingUpstream("stable", handler=flaky).start()
    bad = await RecordingUpstream("canary", handler=canary).start()
    svc = service([stable.url], [], name="shop", steps=[{"percent": 0}])
    # Only the release's route check can tell the two sides apart.
    svc["rollout"]["analysis"] = {
        "interval": "50ms",
        "min_requests": 20,
        "guardrail": {"max_error_rate": 0.9, "min_requests": 1000},
    }
    data = config_dict(svc)
    data["admin"]["token_env"] = "ADMIN_TOKEN"
    try:
        async with running_proxy(data, {"ADMIN_TOKEN": TOKEN}) as proxy:
            body = {"version": "2.0", "canary": [bad.url], "steps": [{"percent": 50},
                    {"percent": 100}], "change": {"routes": ["/checkout"]}}  # fmt: skip
            status, started = await _post(proxy.admin_url, "/releases", body)
            assert status == 201, started
            async with aiohttp.ClientSession() as client:

                async def hit(path: str, tenant: str) -> int:
                    url = proxy.data_url + path
                    async with client.get(url, headers={"X-Tenant-ID": tenant}) as reply:
                        await reply.read()
                        return reply.status

                for round_ in range(40):
                    paths = ["/checkout" if i % 20 == 0 else "/items" for i in range(200)]
                    await asyncio.gather(*(hit(p, f"t{round_}-{i}") for i, p in enumerate(paths)))
                    shown = await _get_json(proxy.admin_url, f"/releases/{started['id']}")
                    if shown["ended"] is not None:  # the record is written, not only the rollout
                        break
            assert shown["status"] == "rolled_back", shown
            degraded = [v for v in shown["verdicts"] if v["action"] == "degraded"]
            assert degraded, (shown["outcome"], [v["action"] for v in shown["verdicts"]])
            assert degraded[0]["evidence"]["check"] == "route:/checkout [release 2.0]", shown
            assert "route:/checkout [release 2.0]" in shown["outcome"]
    finally:
        await stable.close()
        await bad.close()


async def test_the_cli_starts_a_release_with_its_checks_and_a_pair_without_canary(
    tmp_path: Path,
) -> None:
    from proxy.cli import main

    stable = await RecordingUpstream("blue").start()
    green = await RecordingUpstream("green").start()
    svc = service([stable.url], [], name="shop", steps=[{"percent": 50}])
    del svc["upstreams"]["stable"], svc["upstreams"]["canary"]
    svc["upstreams"].update({"blue": [stable.url], "green": [green.url], "live": "blue"})
    data = config_dict(svc)
    data["admin"]["token_env"] = "ADMIN_TOKEN"
    checks = tmp_path / "checks.yaml"
    checks.write_text("- route: {path_prefix: /pay, errors: {max_increase: 0.1}}\n")
    try:
        async with running_proxy(data, {"ADMIN_TOKEN": TOKEN}) as proxy:
            argv = ["release", "start", "shop", "--version", "2.0", "--checks", str(checks),
                    "--route", "/cart", "--admin", proxy.admin_url]  # fmt: skip
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("ROLLOUT_ADMIN_TOKEN", TOKEN)
                code = await asyncio.to_thread(main, argv)
            assert code == 0
            controller = proxy.controller
            assert controller is not None
            served = next(s for s in controller.config.services if s.name == "shop")
            assert [r.name for r in served.rollout.analysis.routes] == [
                "route:/pay [release 2.0]",
                "route:/cart [release 2.0]",
            ]
            assert [str(u) for u in served.upstreams.canary] == [green.url]  # the idle pool
    finally:
        await stable.close()
        await green.close()


def test_a_release_brings_prometheus_queries_for_the_services_own_server() -> None:
    svc = service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"], name="shop",
                  steps=[{"percent": 50}])  # fmt: skip
    query = 'sum(payment_{}_total{{version="{{{{variant}}}}"}})'
    svc["rollout"]["analysis"] = {"prometheus": [{
        "name": "payments", "url_env": "PROM_URL",
        "bad": query.format("failures"), "total": query.format("attempts"),
    }]}  # fmt: skip
    shop = parse_config(config_dict(svc), {"PROM_URL": "http://127.0.0.1:9090"}).services[0]
    login = {"name": "logins", "bad": query.format("login_failures"),
             "total": query.format("logins"), "max_increase": 0.1}  # fmt: skip
    body = {"version": "2.0", "canary": ["http://127.0.0.1:11"],
            "checks": [{"prometheus": login}]}  # fmt: skip
    request = start_request(body, shop)
    analysis = release_analysis(shop.rollout.analysis, request.checks, request.change, "2.0")
    names = [(c.check, c.url, c.max_increase) for c in analysis.prometheus]
    assert names == [
        ("prometheus:payments", "http://127.0.0.1:9090", 0.2),
        ("prometheus:logins [release 2.0]", "http://127.0.0.1:9090", 0.1),
    ]
    with pytest.raises(ConfigError) as caught:
        start_request(body, _service())  # no server configured, and no url_env given
    assert caught.value.path == "checks[0].prometheus.url_env"
    unset = {"prometheus": {**login, "url_env": "ROLLOUT_TEST_UNSET_PROM_URL"}}
    with pytest.raises(ConfigError) as caught:
        start_request({**body, "checks": [unset]}, shop)
    assert caught.value.path == "checks[0].prometheus.url_env"
    with pytest.MonkeyPatch.context() as patch:  # a server of its own, from the environment
        patch.setenv("ROLLOUT_TEST_UNSET_PROM_URL", "http://127.0.0.1:9091")
        own = start_request({**body, "checks": [unset]}, _service())
        analysis = release_analysis(_service().rollout.analysis, own.checks, own.change, "2.0")
    assert [(c.check, c.url) for c in analysis.prometheus] == [
        ("prometheus:logins [release 2.0]", "http://127.0.0.1:9091")
    ]
