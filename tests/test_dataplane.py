"""End to end: the real proxy on loopback routes tenants and users to stable or canary.

Split ratios, stickiness, monotone growth, pins, tier and tenant rings, every identity source,
trusted-peer stripping and service matching, checked on what real upstream servers receive; and
the router's caches, checked against the identity and routing rules request by request.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from prometheus_client import CollectorRegistry

from proxy.config import parse_config
from proxy.core.bucketing import BUCKETS, bucket_of
from proxy.core.identity import RequestView, subject_for
from proxy.core.routing import decide
from proxy.dataplane import Router
from proxy.http.downstream import DownstreamProtocol
from proxy.http.request import Request
from proxy.http.server import Engine
from proxy.metrics import Metrics
from proxy.runtime import Runtime
from tests.support.client import bodies_for, exchange, get, scrape, value
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.servers import NameUpstream
from tests.support.upstream import RecordingUpstream

SALT = "test-salt"
JWT_KEY = "k" * 48  # HS256 needs at least 32 bytes


@asynccontextmanager
async def upstreams() -> AsyncIterator[tuple[NameUpstream, NameUpstream]]:
    stable = await NameUpstream("stable").start()
    canary = await NameUpstream("canary").start()
    try:
        yield stable, canary
    finally:
        await stable.close()
        await canary.close()


def tenant_requests(ids: Iterable[str], header: str = "X-Tenant-ID", **extra: str) -> list[bytes]:
    return [get("/", {header: ident, **extra}) for ident in ids]


async def variants_of(
    runtime: Runtime, requests: Sequence[bytes], step: int | None = None
) -> list[str]:
    """The pool that answered each request; also checks the upstream was told the same
    variant (and `step`, when given) in X-Rollout-Variant and X-Rollout-Step."""
    out = []
    for body in await bodies_for(runtime.data_address[1], requests):
        pool, variant, told_step = body.decode().split(" ")
        assert pool == variant, f"{pool} upstream received X-Rollout-Variant: {variant}"
        assert step is None or told_step == str(step), f"X-Rollout-Step: {told_step}"
        out.append(pool)
    return out


async def canary_set(runtime: Runtime, ids: Sequence[str], step: int | None = None) -> set[str]:
    variants = await variants_of(runtime, tenant_requests(ids), step)
    return {ident for ident, variant in zip(ids, variants, strict=True) if variant == "canary"}


def set_step(runtime: Runtime, step: int, name: str = "svc") -> None:
    assert runtime.router is not None
    (svc,) = [s for s in runtime.config.services if s.name == name]
    runtime.router.set_plan(name, svc.rollout.plan(step))


def within_binomial(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def expected_canary(ids: Iterable[str], percent: float, salt: str = SALT) -> set[str]:
    threshold = round(percent * BUCKETS / 100)
    return {ident for ident in ids if bucket_of(salt, ident) < threshold}


def ids_by_side(prefix: str, percent: float, count: int) -> tuple[list[str], list[str]]:
    """`count` ids the bucket rule puts on canary at `percent`, and `count` it keeps stable."""
    canary: list[str] = []
    stable: list[str] = []
    i = 0
    threshold = round(percent * BUCKETS / 100)
    while len(canary) < count or len(stable) < count:
        ident = f"{prefix}{i}"
        side = canary if bucket_of(SALT, ident) < threshold else stable
        if len(side) < count:
            side.append(ident)
        i += 1
    return canary, stable


# --- split, stickiness, growth ------------------------------------------------------------


async def test_split_ratio_at_10_and_50_percent_and_growth_between() -> None:
    ids = [f"tenant-{i}" for i in range(3000)]
    steps = [{"percent": 10}, {"percent": 50}]
    async with upstreams() as (stable, canary):
        config = config_dict(service([stable.url], [canary.url], steps=steps))
        async with running_proxy(config) as proxy:
            at_10 = await canary_set(proxy, ids, step=0)
            set_step(proxy, 1)
            at_50 = await canary_set(proxy, ids, step=1)
            samples = await scrape(proxy)
    assert within_binomial(len(at_10), len(ids), 0.10), len(at_10)
    assert within_binomial(len(at_50), len(ids), 0.50), len(at_50)
    # Exactly the documented bucket rule, not merely the right proportion.
    assert at_10 == expected_canary(ids, 10)
    assert at_50 == expected_canary(ids, 50)
    assert at_10 <= at_50, "a tenant moved back from canary to stable"
    assert stable.requests + canary.requests == 2 * len(ids)
    assert value(samples, "rollout_step", service="svc") == 1
    assert value(samples, "rollout_canary_percent", service="svc") == 50


async def test_every_step_only_moves_tenants_to_canary() -> None:
    ids = [f"grow-{i}" for i in range(600)]
    percents = [1, 5, 10, 25, 50, 75, 100]
    async with upstreams() as (stable, canary):
        steps = [{"percent": p} for p in percents]
        async with running_proxy(
            config_dict(service([stable.url], [canary.url], steps=steps))
        ) as proxy:
            previous: set[str] = set()
            for i, percent in enumerate(percents):
                set_step(proxy, i)
                current = await canary_set(proxy, ids, step=i)
                assert previous <= current, f"step {i}: {sorted(previous - current)} went back"
                assert current == expected_canary(ids, percent)
                previous = current
    assert previous == set(ids)


async def test_same_id_same_variant_across_requests_and_processes() -> None:
    ids = [f"sticky-{i}" for i in range(400)]
    steps = [{"percent": 30}]
    async with upstreams() as (stable, canary):
        config = config_dict(service([stable.url], [canary.url], steps=steps))
        async with running_proxy(config) as first:
            rounds = [await variants_of(first, tenant_requests(ids)) for _ in range(3)]
        async with running_proxy(config) as second:
            again = await variants_of(second, tenant_requests(ids))
    assert rounds[0] == rounds[1] == rounds[2], "a tenant changed variant between requests"
    assert again == rounds[0], "a restarted proxy routed a tenant differently"
    assert 0 < rounds[0].count("canary") < len(ids)


# --- pins, tiers, rings -------------------------------------------------------------------


async def test_pins_win_at_0_and_100_percent() -> None:
    others = [f"other-{i}" for i in range(50)]
    pinned = ["beta-corp", "bigbank"]
    rollout = {
        "salt": SALT,
        "pins": {"beta-corp": "canary", "bigbank": "stable"},
        "steps": [{"percent": 0}, {"percent": 100}],
    }
    async with upstreams() as (stable, canary):
        svc = service([stable.url], [canary.url], rollout=rollout)
        async with running_proxy(config_dict(svc)) as proxy:
            at_0 = await variants_of(proxy, tenant_requests(pinned + others))
            set_step(proxy, 1)
            at_100 = await variants_of(proxy, tenant_requests(pinned + others))
    assert at_0 == ["canary", "stable"] + ["stable"] * len(others)
    assert at_100 == ["canary", "stable"] + ["canary"] * len(others)


def ringed_service(stable: str, canary: str) -> dict[str, Any]:
    """Rings served from the start: no baseline period before the whole-tier first step."""
    section = service(
        [stable],
        [canary],
        tiers={
            "tenants": {
                "staff": "internal",
                "qa-team": "internal",
                "acme": "enterprise",
                "initech": "enterprise",
            },
            "header": "X-Tenant-Tier",
            "default": "free",
        },
        steps=[
            {"tiers": ["internal"]},
            {"tenants": ["acme", "globex"]},
            {"percent": 50, "tiers": ["free"]},
        ],
    )
    section["rollout"]["baseline"] = 0
    return section


async def test_tier_ring_then_tenant_ring_then_percent_of_a_tier() -> None:
    free = [f"free-{i}" for i in range(300)]
    named = ["staff", "qa-team", "acme", "globex", "initech", "Staff", "ACME"]
    async with upstreams() as (stable, canary):
        config = config_dict(ringed_service(stable.url, canary.url))
        async with running_proxy(config) as proxy:
            step0 = await canary_set(proxy, named + free)
            # An unknown tenant whose trusted edge says it is internal joins ring 0.
            by_header = await variants_of(
                proxy, tenant_requests(["newhire", "contractor"], **{"X-Tenant-Tier": "internal"})
            )
            set_step(proxy, 1)
            step1 = await canary_set(proxy, named + free)
            set_step(proxy, 2)
            step2 = await canary_set(proxy, named + free)
            # Enterprise is not in the 50% cohort, whatever the bucket.
            enterprise = await variants_of(
                proxy, tenant_requests(free, **{"X-Tenant-Tier": "enterprise"})
            )
    assert step0 == {"staff", "qa-team"}
    assert by_header == ["canary", "canary"]
    # Tenant matching is exact: "ACME" and "Staff" are other tenants, of the default tier.
    assert step1 == {"staff", "qa-team", "acme", "globex"}
    free_canary = expected_canary(free, 50)
    assert step2 == step1 | free_canary | expected_canary(["Staff", "ACME"], 50)
    assert "initech" not in step2
    assert within_binomial(len(free_canary), len(free), 0.5)
    assert enterprise == ["stable"] * len(free)


# --- identity sources ---------------------------------------------------------------------


def identity_service(stable: str, canary: str) -> dict[str, Any]:
    return service(
        [stable],
        [canary],
        identity=[
            {"header": "X-Tenant-ID", "kind": "tenant"},
            {"cookie": "uid", "kind": "user"},
            {"query": "user", "kind": "user"},
            {"path": "^/t/(?P<id>[^/]+)/", "kind": "tenant"},
            {"jwt_claim": "sub", "kind": "user", "algorithms": ["HS256"], "key_env": "JWT_KEY"},
        ],
        steps=[{"percent": 50}],
    )


def token(sub: str, key: str = JWT_KEY, **claims: Any) -> str:
    return jwt.encode({"sub": sub, **claims}, key, algorithm="HS256")


def by_source(ident: str) -> dict[str, bytes]:
    return {
        "header": get("/", {"X-Tenant-ID": ident}),
        "cookie": get("/", {"Cookie": f"theme=dark; uid={ident}"}),
        "query": get(f"/search?q=x&user={quote(ident)}"),
        "path": get(f"/t/{quote(ident)}/orders"),
        "jwt": get("/", {"Authorization": f"Bearer {token(ident)}"}),
    }


async def test_every_identity_source_routes_by_its_id() -> None:
    canary_ids, stable_ids = ids_by_side("who-", 50, 4)
    cases: list[tuple[str, str, bytes]] = []
    for expected, ids in (("canary", canary_ids), ("stable", stable_ids)):
        for ident in ids:
            cases += [(f"{src} {ident}", expected, req) for src, req in by_source(ident).items()]
    async with upstreams() as (stable, canary):
        config = config_dict(identity_service(stable.url, canary.url))
        async with running_proxy(config, env={"JWT_KEY": JWT_KEY}) as proxy:
            got = await variants_of(proxy, [request for _, _, request in cases])
    wrong = [name for (name, expected, _), v in zip(cases, got, strict=True) if v != expected]
    assert not wrong, f"routed to the wrong side: {wrong}"


async def test_identity_rules_apply_in_order_and_refuse_bad_values() -> None:
    (on_canary, *_), (on_stable, *_) = ids_by_side("order-", 50, 1)
    expired = token(on_canary, exp=int(time.time()) - 60)
    unsigned = jwt.encode({"sub": on_canary}, "", algorithm="none")
    cases = {
        # The first rule that yields a value wins.
        "header before cookie": (
            get("/", {"X-Tenant-ID": on_stable, "Cookie": f"uid={on_canary}"}),
            "stable",
        ),
        "cookie before jwt": (
            get("/", {"Cookie": f"uid={on_canary}", "Authorization": f"Bearer {token(on_stable)}"}),
            "canary",
        ),
        # A rule that yields nothing falls through to the next one, then to unidentified.
        "duplicate cookie": (get("/", {"Cookie": f"uid={on_stable}; uid={on_canary}"}), "stable"),
        "duplicate query": (get(f"/?user={on_canary}&user={on_canary}"), "stable"),
        "jwt with another key": (
            get("/", {"Authorization": f"Bearer {token(on_canary, 'x' * 48)}"}),
            "stable",
        ),
        "expired jwt": (get("/", {"Authorization": f"Bearer {expired}"}), "stable"),
        "alg none jwt": (get("/", {"Authorization": f"Bearer {unsigned}"}), "stable"),
        "bad cookie, good query": (
            get(f"/?user={on_canary}", {"Cookie": f"uid={on_stable}; uid=x"}),
            "canary",
        ),
        "nothing": (get("/"), "stable"),
    }
    async with upstreams() as (stable, canary):
        config = config_dict(identity_service(stable.url, canary.url))
        async with running_proxy(config, env={"JWT_KEY": JWT_KEY}) as proxy:
            got = await variants_of(proxy, [request for request, _ in cases.values()])
    assert dict(zip(cases, got, strict=True)) == {name: want for name, (_, want) in cases.items()}


# --- trusted peers ------------------------------------------------------------------------

SPOOFED = {
    "X-Tenant-ID": "spoofed-tenant",
    "X-Tenant-Tier": "internal",
    "X-Rollout-Variant": "canary",
    "X-Rollout-Step": "7",
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "Forwarded": "for=6.6.6.6",
    "X-Real-IP": "6.6.6.6",
}


def trust_service(stable: str, canary: str) -> dict[str, Any]:
    return service(
        [stable],
        [canary],
        identity=[{"header": "X-Tenant-ID", "kind": "tenant"}, {"cookie": "uid", "kind": "user"}],
        tiers={"tenants": {}, "header": "X-Tenant-Tier", "default": "free", "names": ["internal"]},
        steps=[{"percent": 100}],
    )


async def test_untrusted_peer_cannot_choose_identity_tier_variant_or_forwarding() -> None:
    stable = await RecordingUpstream("stable").start()
    canary = await RecordingUpstream("canary").start()
    config = config_dict(trust_service(stable.url, canary.url), trusted_peers=["10.9.9.9/32"])
    async with running_proxy(config) as proxy:
        port = proxy.data_address[1]
        spoofed = await exchange(port, get("/x", SPOOFED, host="app.example"))
        # Cookies are honoured from every peer: at 100% an identified user is on canary.
        by_cookie = await exchange(port, get("/y", {"Cookie": "uid=u1", **SPOOFED}))
        samples = await scrape(proxy)
    await stable.close()
    await canary.close()
    assert spoofed.status == 200
    assert spoofed.body == b"stable\n"
    assert by_cookie.status == 200
    assert by_cookie.body == b"canary\n"
    (seen,) = stable.requests
    assert seen.header("x-tenant-id") is None
    assert seen.header("x-tenant-tier") is None
    assert seen.header("forwarded") is None
    assert seen.header("x-real-ip") is None
    assert seen.header("x-rollout-variant") == "stable"
    assert seen.header("x-rollout-step") == "0"
    assert seen.header("x-forwarded-for") == "127.0.0.1"
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-forwarded-host") == "app.example"
    (seen_canary,) = canary.requests
    assert seen_canary.header("x-rollout-variant") == "canary"
    assert seen_canary.header("x-tenant-id") is None
    # The spoofed tier header did not make the request "internal".
    assert (
        value(
            samples,
            "rollout_requests_total",
            service="svc",
            variant="stable",
            tier="free",
            status_class="2xx",
        )
        == 1
    )
    assert (
        value(
            samples,
            "rollout_requests_total",
            service="svc",
            variant="stable",
            tier="internal",
            status_class="2xx",
        )
        == 0
    )


async def test_trusted_peer_sets_identity_tier_and_forwarding_but_not_the_variant() -> None:
    stable = await RecordingUpstream("stable").start()
    canary = await RecordingUpstream("canary").start()
    config = config_dict(trust_service(stable.url, canary.url))  # trusts 127.0.0.1/32
    async with running_proxy(config) as proxy:
        headers = {**SPOOFED, "X-Rollout-Variant": "stable"}
        response = await exchange(proxy.data_address[1], get("/x", headers, host="app.example"))
        samples = await scrape(proxy)
    await stable.close()
    await canary.close()
    assert response.status == 200
    assert response.body == b"canary\n"
    assert stable.requests == []
    (seen,) = canary.requests
    assert seen.header("x-tenant-id") == "spoofed-tenant"
    assert seen.header("x-rollout-variant") == "canary"
    assert seen.header("x-rollout-step") == "0"
    assert seen.header("x-forwarded-for") == "6.6.6.6, 127.0.0.1"
    assert seen.header("x-forwarded-proto") == "https"
    assert seen.header("x-forwarded-host") == "evil.example"
    assert (
        value(
            samples,
            "rollout_requests_total",
            service="svc",
            variant="canary",
            tier="internal",
            status_class="2xx",
        )
        == 1
    )


# --- service matching ---------------------------------------------------------------------


async def test_services_match_by_host_then_path_prefix_and_404_otherwise() -> None:
    shop = await RecordingUpstream("shop").start()
    api = await RecordingUpstream("api").start()
    config = config_dict(
        service([shop.url], [shop.url], name="shop", match={"host": "shop.example.com"}),
        service([api.url], [api.url], name="api", match={"path_prefix": "/api/"}),
    )
    requests = {
        "host, any path": (get("/x", host="shop.example.com"), b"shop\n"),
        "host case and port ignored": (get("/x", host="SHOP.Example.com:8080"), b"shop\n"),
        "first match wins": (get("/api/v1", host="shop.example.com"), b"shop\n"),
        "path prefix": (get("/api/v1?x=1", host="other.example"), b"api\n"),
        "absolute form": (
            b"GET http://shop.example.com/a HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
            b"shop\n",
        ),
    }
    async with running_proxy(config) as proxy:
        port = proxy.data_address[1]
        answers = {name: await exchange(port, request) for name, (request, _) in requests.items()}
        before = len(shop.requests) + len(api.requests)
        missing = await exchange(port, get("/web", host="other.example"))
        no_prefix = await exchange(port, get("/apiv2", host="other.example"))
        after = len(shop.requests) + len(api.requests)
    await shop.close()
    await api.close()
    for name, (_, body) in requests.items():
        assert (answers[name].status, answers[name].body) == (200, body), name
    assert missing.status == 404
    assert no_prefix.status == 404
    assert after == before, "a request no service matches reached an upstream"


@pytest.mark.parametrize("percent", [0, 100])
async def test_unidentified_requests_go_to_stable(percent: int) -> None:
    async with upstreams() as (stable, canary):
        config = config_dict(service([stable.url], [canary.url], steps=[{"percent": percent}]))
        async with running_proxy(config) as proxy:
            got = await variants_of(proxy, [get("/")] * 20)
    assert got == ["stable"] * 20


# --- the routing caches -------------------------------------------------------------------


@pytest.mark.parametrize("unidentified", ["stable", "client_ip"])
async def test_cached_routes_and_buckets_match_the_identity_and_routing_rules(
    unidentified: str,
) -> None:
    """The router caches routes by subject and, for header-only identities, by header values
    and trust: every request, first seen or cached, must get what the rules give it, and the
    bucket the analysis weighs it by (a request without an id: its peer's)."""
    rollout = {"salt": SALT, "pins": {"pinned": "canary"}, "steps": [{"percent": 30}]}
    tiers = {"tenants": {"acme": "enterprise"}, "header": "X-Tenant-Tier", "default": "free"}
    svc = service(
        ["http://127.0.0.1:9"],
        ["http://127.0.0.1:9"],
        rollout=rollout,
        tiers=tiers,
        unidentified=unidentified,
    )
    config = parse_config(config_dict(svc), {})
    loop = asyncio.get_running_loop()
    router = Router(config, Metrics(CollectorRegistry()), loop)
    engine = Engine(config, router, loop)
    (service_config,) = config.services
    plan = service_config.rollout.plan(0)
    cases = [
        ({"x-tenant-id": ident, **tier}, peer, trusted)
        for ident in ["acme", "pinned", "t-1", "t-2", "t-3", None]
        for tier in [{}, {"x-tenant-tier": "internal"}]
        for peer, trusted in [("127.0.0.1", True), ("192.0.2.9", False)]
    ]
    for _ in range(2):  # the second pass is served from the caches
        for headers, peer, trusted in cases:
            client = DownstreamProtocol(engine)
            client.peer_ip, client.trusted = peer, trusted
            relevant = {k: v for k, v in headers.items() if v is not None and trusted}
            request = Request()
            request.host, request.path, request.relevant = b"example.test", "/p", relevant
            route = router.route(request, client)
            view = RequestView("/p", "", relevant, peer, trusted)
            subject = subject_for(service_config.identity_policy, view)
            decision = decide(plan, subject)
            assert (route.variant, route.tier) == (decision.variant.value, subject.tier)
            expected = decision.bucket
            if expected < 0:
                expected = bucket_of(SALT, subject.key or peer)
            assert request.bucket == expected, (headers, peer, trusted)
    router.close()
