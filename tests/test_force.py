"""End to end: X-Rollout-Force through the real proxy, against real upstreams that say which
pool answered. Honoured from a trusted peer or with a valid token; stripped and ignored
otherwise; never seen upstream; counted in the metrics and the access log, never judged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from proxy.config import parse_config
from proxy.controller import Controller
from proxy.core.force import mint, signature
from proxy.core.machine import Event, Status
from proxy.core.routing import Variant
from proxy.dataplane import Router
from proxy.fleet.batch import EvidenceBuffer
from proxy.http.downstream import DownstreamProtocol
from proxy.http.request import Request
from proxy.http.server import Engine
from proxy.metrics import Metrics
from proxy.runtime import Runtime
from tests.support.client import RawConnection, Response, closed_port, get, scrape, value
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.upstream import Received, RecordingUpstream, Reply

KEY = "t" * 40
ENV = {"FORCE_KEY": KEY}
UNTRUSTED = ["10.9.9.9/32"]  # the tests' peer, 127.0.0.1, is then untrusted
ON = {"enabled": True}
HOLDING: list[dict[str, Any]] = [{"percent": 0, "observe": "1h"}, {"percent": 100}]


@asynccontextmanager
async def pools(
    canary_handler: Callable[[Received], Reply] | None = None,
) -> AsyncIterator[tuple[RecordingUpstream, RecordingUpstream]]:
    stable = await RecordingUpstream("stable").start()
    canary = await RecordingUpstream("canary", canary_handler).start()
    try:
        yield stable, canary
    finally:
        await stable.close()
        await canary.close()


def forcing(
    stable: RecordingUpstream,
    canary: RecordingUpstream,
    force: dict[str, Any] | None,
    steps: list[dict[str, Any]] | None = None,
    **top: Any,
) -> dict[str, Any]:
    extra = {} if force is None else {"force": force}
    svc = service([stable.url], [canary.url], name="shop", steps=steps or HOLDING, **extra)
    return config_dict(svc, **top)


def token(variant: Variant = Variant.CANARY, ttl: float = 3600.0, service: str = "shop") -> str:
    return mint(KEY.encode(), service, variant, int(time.time() + ttl))


async def send(proxy: Runtime, requests: Sequence[bytes]) -> list[Response]:
    """`requests` one after the other on one keep-alive connection."""
    conn = await RawConnection.open(proxy.data_address[1])
    try:
        out = []
        for request in requests:
            await conn.send(request)
            out.append(await conn.response())
        return out
    finally:
        await conn.close()


def pool_of(response: Response) -> str | None:
    return response.header("x-pool")


def never_forwarded(*upstreams: RecordingUpstream) -> None:
    for upstream in upstreams:
        for seen in upstream.requests:
            assert seen.header("x-rollout-force") is None
            assert all("x-rollout-force" not in name for name, _ in seen.headers)


def forced_count(samples: dict[Any, float], variant: str, status_class: str = "2xx") -> float:
    return value(
        samples,
        "rollout_forced_requests_total",
        service="shop",
        variant=variant,
        status_class=status_class,
    )


def controller(proxy: Runtime) -> Controller:
    assert proxy.controller is not None
    return proxy.controller


def judged(proxy: Runtime) -> tuple[int, int]:
    """The canary and stable requests in the running step's analysis."""
    analysis = controller(proxy).rollouts["shop"].analysis
    return analysis.errors.canary_requests(), analysis.errors.baseline_requests()


async def test_a_trusted_peer_forces_either_variant_without_pinning_the_user() -> None:
    async with pools() as (stable, canary):
        config = forcing(stable, canary, {"enabled": True})
        async with running_proxy(config) as proxy:  # trusts 127.0.0.1
            user = {"X-Tenant-ID": "acme"}
            replies = await send(
                proxy,
                [
                    get("/a", user),
                    get("/b", {**user, "X-Rollout-Force": "canary"}),
                    get("/c", user),  # not pinned: routed as usual again
                    get("/d", {**user, "X-Rollout-Force": "stable"}),
                ],
            )
            samples = await scrape(proxy)
            canary_judged, stable_judged = judged(proxy)
    assert [r.status for r in replies] == [200, 200, 200, 200]
    assert [pool_of(r) for r in replies] == ["stable", "canary", "stable", "stable"]
    (seen,) = canary.requests
    assert seen.target == "/b"
    assert seen.header("x-rollout-variant") == "canary"
    assert seen.header("x-tenant-id") == "acme"
    never_forwarded(stable, canary)
    assert forced_count(samples, "canary") == 1
    assert forced_count(samples, "stable") == 1
    # Only the two unforced requests are in the ordinary series and the analysis.
    ordinary = value(
        samples,
        "rollout_requests_total",
        service="shop",
        variant="stable",
        tier="free",
        status_class="2xx",
    )
    assert ordinary == 2
    assert (canary_judged, stable_judged) == (0, 2)


async def test_a_valid_token_is_honoured_from_an_untrusted_peer() -> None:
    async with pools() as (stable, canary):
        force = {"enabled": True, "key_env": "FORCE_KEY"}
        config = forcing(stable, canary, force, trusted_peers=UNTRUSTED)
        async with running_proxy(config, ENV) as proxy:
            replies = await send(
                proxy,
                [
                    get("/t", {"X-Rollout-Force": token()}),
                    get("/u"),
                    get("/bare", {"X-Rollout-Force": "canary"}),  # untrusted: a token is needed
                ],
            )
            samples = await scrape(proxy)
    assert [pool_of(r) for r in replies] == ["canary", "stable", "stable"]
    assert [r.target for r in canary.requests] == ["/t"]
    never_forwarded(stable, canary)
    assert forced_count(samples, "canary") == 1


def _expired() -> str:
    return token(ttl=-1.0)


def _forged() -> str:
    good = token()
    return good[:-1] + ("0" if good[-1] != "0" else "1")


def _other_service() -> str:
    return token(service="other")


def _other_key() -> str:
    exp = int(time.time() + 3600)
    return f"canary;exp={exp};sig={signature(b'x' * 40, 'shop', 'canary', exp)}"


@pytest.mark.parametrize(
    "make",
    [
        lambda: "canary",  # no token from an untrusted peer
        _expired,
        _forged,
        _other_service,
        _other_key,
        lambda: token() + ";" + "x" * 200,  # longer than the bound
        lambda: "",
    ],
    ids=["no-token", "expired", "forged", "other-service", "other-key", "too-long", "empty"],
)
async def test_a_refused_value_is_stripped_and_the_request_routed_as_usual(
    make: Callable[[], str],
) -> None:
    async with pools() as (stable, canary):
        force = {"enabled": True, "key_env": "FORCE_KEY"}
        config = forcing(stable, canary, force, trusted_peers=UNTRUSTED)
        async with running_proxy(config, ENV) as proxy:
            (reply,) = await send(proxy, [get("/x", {"X-Rollout-Force": make()})])
            samples = await scrape(proxy)
    assert (reply.status, pool_of(reply)) == (200, "stable")
    assert canary.requests == []
    (seen,) = stable.requests
    assert seen.header("x-rollout-variant") == "stable"
    never_forwarded(stable, canary)
    assert forced_count(samples, "canary") == 0
    assert forced_count(samples, "stable") == 0


@pytest.mark.parametrize("force", [None, {"enabled": False, "key_env": "FORCE_KEY"}])
async def test_when_disabled_even_a_trusted_peer_with_a_valid_token_is_ignored(
    force: dict[str, Any] | None,
) -> None:
    async with pools() as (stable, canary):
        config = forcing(stable, canary, force)
        async with running_proxy(config, ENV) as proxy:
            replies = await send(
                proxy,
                [
                    get("/bare", {"X-Rollout-Force": "canary"}),
                    get("/token", {"X-Rollout-Force": token()}),
                ],
            )
            samples = await scrape(proxy)
    assert [pool_of(r) for r in replies] == ["stable", "stable"]
    assert canary.requests == []
    assert len(stable.requests) == 2
    never_forwarded(stable, canary)
    assert forced_count(samples, "canary") + forced_count(samples, "stable") == 0


async def test_a_header_sent_twice_is_not_honoured_and_not_forwarded() -> None:
    request = get("/x", {"X-Rollout-Force": "canary"}).replace(
        b"\r\n\r\n", b"\r\nX-Rollout-Force: canary\r\n\r\n"
    )
    async with pools() as (stable, canary), running_proxy(forcing(stable, canary, ON)) as proxy:
        (reply,) = await send(proxy, [request])
    assert pool_of(reply) == "stable"
    never_forwarded(stable, canary)


async def test_a_forced_canary_goes_to_stable_when_no_rollout_is_active() -> None:
    async with pools() as (stable, canary), running_proxy(forcing(stable, canary, ON)) as proxy:
        await controller(proxy).apply("shop", Event.ABORT, "admin:test")
        (reply,) = await send(proxy, [get("/x", {"X-Rollout-Force": "canary"})])
        samples = await scrape(proxy)
    assert pool_of(reply) == "stable"
    assert canary.requests == []
    assert forced_count(samples, "stable") == 1


async def test_a_forced_canary_goes_to_stable_when_the_service_has_no_canary_pool() -> None:
    stable = await RecordingUpstream("stable").start()
    svc = service([stable.url], [], name="shop", steps=[{"percent": 0}], force=ON)
    try:
        async with running_proxy(config_dict(svc)) as proxy:
            (reply,) = await send(proxy, [get("/x", {"X-Rollout-Force": "canary"})])
            samples = await scrape(proxy)
    finally:
        await stable.close()
    assert (reply.status, pool_of(reply)) == (200, "stable")
    assert forced_count(samples, "stable") == 1
    assert forced_count(samples, "canary") == 0


async def test_a_forced_canary_that_cannot_connect_is_retried_on_stable_unjudged() -> None:
    stable = await RecordingUpstream("stable").start()
    down = f"http://127.0.0.1:{closed_port()}"
    svc = service([stable.url], [down], name="shop", steps=HOLDING, force=ON)
    try:
        async with running_proxy(config_dict(svc)) as proxy:
            (reply,) = await send(proxy, [get("/x", {"X-Rollout-Force": "canary"})])
            samples = await scrape(proxy)
            canary_judged, stable_judged = judged(proxy)
    finally:
        await stable.close()
    assert (reply.status, pool_of(reply)) == (200, "stable")
    # The failed attempt and the stable answer are both the tester's: counted as forced.
    assert forced_count(samples, "canary", "5xx") == 1
    assert forced_count(samples, "stable") == 1
    assert (canary_judged, stable_judged) == (0, 0)


async def test_forced_routes_never_reach_an_evidence_buffer() -> None:
    """What a fleet replica ships to the decider: a forced request's outcome is not in it,
    the same request unforced is."""
    svc = service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"], name="shop", force=ON)
    config = parse_config(config_dict(svc), {})
    loop = asyncio.get_running_loop()
    router = Router(config, Metrics(CollectorRegistry()), loop)
    buffer = EvidenceBuffer(config)
    router.recorder.evidence = buffer
    client = DownstreamProtocol(Engine(config, router, loop))
    client.peer_ip, client.trusted = "127.0.0.1", True
    tags = {"shop": ("spec", 1)}
    try:
        for forced in (True, False):
            request = Request()
            request.host, request.path = b"app", "/"
            request.relevant = {"x-tenant-id": "acme"}
            request.force = b"canary" if forced else None
            route = router.route(request, client)
            assert route.forced is forced
            route.recorder.completed(route, 500, 0.01, request, False)
            batch = buffer.drain(tags)
            assert (batch is None) is forced
    finally:
        router.close()


async def test_forced_requests_are_in_the_access_log(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with pools() as (stable, canary):
        config = forcing(
            stable,
            canary,
            {"enabled": True},
            access_log={"enabled": True, "path": str(log)},
        )
        async with running_proxy(config) as proxy:
            await send(proxy, [get("/f", {"X-Rollout-Force": "canary"}), get("/n")])
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert [(line["path"], line["variant"], line["forced"]) for line in lines] == [
        ("/f", "canary", True),
        ("/n", "stable", False),
    ]


def _fails_testers(received: Received) -> Reply:
    """The canary fails every request of a tester (their ids start with `tester-`)."""
    tenant = received.header("x-tenant-id") or ""
    if tenant.startswith("tester-"):
        return Reply(status=500, headers=[("X-Pool", "canary")], body=b"broken\n")
    return Reply(headers=[("X-Pool", "canary")], body=b"canary\n")


@pytest.mark.parametrize("forced", [True, False], ids=["forced", "unforced-control"])
async def test_a_burst_of_failing_forced_canary_requests_moves_no_verdict(forced: bool) -> None:
    """Users at 50% (all healthy), then 300 testers whose canary requests all fail. Unforced
    (the control), half of them reach the canary and the guardrail rolls it back; forced,
    all of them reach it, are counted in the metrics, and the analysis never sees one."""
    steps: list[dict[str, Any]] = [{"percent": 50, "observe": "1h"}, {"percent": 100}]
    async with pools(_fails_testers) as (stable, canary):
        config = forcing(stable, canary, {"enabled": True}, steps=steps)
        config["services"][0]["rollout"]["analysis"] = {
            "min_requests": 50,
            "guardrail": {"min_requests": 10},
        }
        async with running_proxy(config) as proxy:
            users = await send(proxy, [get("/", {"X-Tenant-ID": f"user-{i}"}) for i in range(200)])
            force = {"X-Rollout-Force": "canary"} if forced else {}
            testers = await send(
                proxy, [get("/", {"X-Tenant-ID": f"tester-{i}", **force}) for i in range(300)]
            )
            await asyncio.sleep(0.2)  # a guardrail's transition runs as its own task
            status = controller(proxy).rollouts["shop"].state.status
            canary_judged, stable_judged = judged(proxy)
            samples = await scrape(proxy)
    users_on_canary = sum(pool_of(r) == "canary" for r in users)
    assert 0 < users_on_canary < 200
    failed = sum(r.status == 500 for r in testers)
    if not forced:
        assert 0 < failed < 300
        assert status is Status.ROLLED_BACK
        return
    assert failed == 300
    assert all(pool_of(r) == "canary" for r in testers)
    assert status is Status.PROGRESSING
    assert (canary_judged, stable_judged) == (users_on_canary, 200 - users_on_canary)
    assert forced_count(samples, "canary", "5xx") == 300
    canary_errors = value(
        samples,
        "rollout_requests_total",
        service="shop",
        variant="canary",
        tier="free",
        status_class="5xx",
    )
    assert canary_errors == 0
