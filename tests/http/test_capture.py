"""Shadow capture: which requests a shadow step samples, and what of stable's answer is kept."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from proxy.config import ServiceConfig, parse_config
from proxy.core.routing import Variant
from proxy.dataplane import Router
from proxy.http.capture import ShadowCopy, ShadowSink, ShadowTap
from proxy.http.request import Request
from proxy.metrics import Metrics
from tests.support.proxy import config_dict, service


class Sink(ShadowSink):
    def __init__(self) -> None:
        self.copies: list[ShadowCopy] = []

    def submit(self, copy: ShadowCopy) -> None:
        self.copies.append(copy)


def shop(**shadow: object) -> ServiceConfig:
    section = service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"], steps=[{"shadow": 50}])
    section["rollout"]["shadow"] = shadow
    return parse_config(config_dict(section), {}).services[0]


def request(method: bytes = b"GET", request_id: bytes = b"id-1") -> Request:
    r = Request()
    r.method, r.target, r.path = method, b"/items/7?x=1", "/items/7"
    r.host = b"shop.example"
    r.headers = [(b"X-Tenant-ID", b"acme"), (b"X-Rollout-Shadow", b"0")]
    r.request_id = request_id
    r.bucket = 1234
    return r


def test_the_sample_is_by_request_id_and_only_safe_methods_without_a_body() -> None:
    tap = ShadowTap(shop(), 50.0, Sink())
    picked = sum(tap.capture(request(request_id=b"r%d" % i)) is not None for i in range(4000))
    assert 1800 < picked < 2200
    assert all(
        (tap.capture(request(request_id=b"r%d" % i)) is not None)
        == (tap.capture(request(request_id=b"r%d" % i)) is not None)
        for i in range(100)
    )
    assert not any(tap.capture(request(b"POST", b"r%d" % i)) for i in range(200))
    with_body = request()
    with_body.content_length = 3
    assert ShadowTap(shop(), 100.0, Sink()).capture(with_body) is None


def test_a_capture_keeps_status_configured_headers_and_the_body() -> None:
    sink = Sink()
    tap = ShadowTap(shop(headers=["ETag"]), 100.0, sink)
    capture = tap.capture(request())
    assert capture is not None
    headers = [(b"Content-Type", b"application/json"), (b"ETag", b'"v1"'), (b"Date", b"now")]
    capture.head(200, headers)
    capture.add(b'{"a": ')
    capture.add(b"1}")
    capture.hand_over(request(), "127.0.0.1:9")
    (copy,) = sink.copies
    assert copy.stable is not None
    assert (copy.stable.status, copy.stable.headers) == (200, (("etag", '"v1"'),))
    assert (copy.stable.body, copy.stable.is_json) == (b'{"a": 1}', True)
    assert (copy.method, copy.target, copy.id_hash, copy.served_by) == (
        "GET",
        "/items/7?x=1",
        1234,
        "127.0.0.1:9",
    )
    # The client's identity and request id kept; its shadow marker replaced by ours.
    assert ("X-Tenant-ID", "acme") in copy.headers
    assert ("x-request-id", "id-1") in copy.headers
    assert ("host", "shop.example") in copy.headers
    marks = [v for n, v in copy.headers if n.lower() == "x-rollout-shadow"]
    assert marks == ["1"]


def test_a_body_over_the_cap_is_marked_too_large_and_not_kept() -> None:
    sink = Sink()
    capture = ShadowTap(shop(max_body=10), 100.0, sink).capture(request())
    assert capture is not None
    capture.head(200, [])
    capture.add(b"x" * 8)
    capture.add(b"x" * 8)
    assert capture.too_large
    assert capture.body == []
    capture.hand_over(request(), "")
    assert sink.copies[0].stable is None


async def test_only_stable_routes_of_a_shadow_step_carry_the_tap() -> None:
    section = service(
        ["http://127.0.0.1:9"], ["http://127.0.0.1:10"], steps=[{"shadow": 5}, {"percent": 5}]
    )
    config = parse_config(config_dict(section), {})
    sink = Sink()
    router = Router(config, Metrics(CollectorRegistry()), asyncio.get_running_loop(), shadow=sink)
    try:
        routes = router.services[0].routes
        stable, canary = routes[(Variant.STABLE, "free")], routes[(Variant.CANARY, "free")]
        assert stable.shadow is not None
        assert (stable.shadow.sample, stable.shadow.sink) == (5.0, sink)
        assert canary.shadow is None
        router.set_plan("svc", config.services[0].rollout.plan(1))
        assert all(route.shadow is None for route in router.services[0].routes.values())
        quiet = Router(config, Metrics(CollectorRegistry()), asyncio.get_running_loop())
        assert all(route.shadow is None for route in quiet.services[0].routes.values())
        quiet.close()
    finally:
        router.close()
