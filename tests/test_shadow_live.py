"""Shadow steps on the real proxy: the canary answers copies of real traffic in the dark.

Real upstreams (aiohttp apps on loopback) behind the real proxy. (a) A canary that changes one
JSON field in 2% of one route's answers is caught in the shadow step and rolled back, the
journal naming the field path, while every client got stable's answer. (b) A canary identical
to stable but for random timestamps and ids (stable's bodies carry them too) advances past the
shadow step: the noise learned from stable's second answers hides them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from proxy.core.machine import Status
from proxy.runtime import Runtime
from tests.support.promtool import promtool_check
from tests.support.proxy import config_dict, running_proxy, service

Body = Callable[[str, str], dict[str, Any]]  # (route kind, id) -> the JSON answer


class App:
    """An upstream answering GET /{kind}/{id} with `body(kind, id)`; it keeps the headers of
    every request it got."""

    def __init__(self, body: Body) -> None:
        self.body = body
        self.seen: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append({**request.headers, ":path": request.path})
        kind, ident = request.match_info["kind"], request.match_info["id"]
        return web.json_response(self.body(kind, ident))

    async def start(self) -> App:
        app = web.Application()
        app.router.add_get("/{kind}/{id}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@asynccontextmanager
async def apps(*bodies: Body) -> AsyncIterator[list[App]]:
    started = [await App(body).start() for body in bodies]
    try:
        yield started
    finally:
        for app in started:
            await app.close()


def shadow_config(
    stable: list[App], canary: App, tolerance: float, observe: str = "0s"
) -> dict[str, Any]:
    section = service(
        [app.url for app in stable],
        [canary.url],
        steps=[{"shadow": 100, "observe": observe}, {"percent": 10, "observe": "1h"}],
    )
    section["rollout"]["shadow"] = {"tolerance": tolerance, "noise_sample": 10}
    section["rollout"]["analysis"] = {"interval": "100ms", "min_requests": 100}
    return config_dict(section)


async def drive(
    runtime: Runtime, paths: list[str], done: Callable[[], bool]
) -> list[tuple[str, int, dict[str, Any], str]]:
    """GET every path through the proxy (20 at a time) until `done`; what each client got:
    (path, status, JSON body, X-Rollout-Variant header sent upstream is not visible here)."""
    got: list[tuple[str, int, dict[str, Any], str]] = []
    queue = list(reversed(paths))
    async with aiohttp.ClientSession() as session:

        async def worker(n: int) -> None:
            while queue and not done():
                path = queue.pop()
                headers = {"X-Tenant-ID": f"tenant-{n}"}
                async with session.get(runtime.data_url + path, headers=headers) as response:
                    body = await response.json()
                    got.append((path, response.status, body, response.headers["X-Request-ID"]))

        await asyncio.gather(*(worker(n) for n in range(20)))
    return got


async def wait_for(check: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


def stable_item(kind: str, ident: str) -> dict[str, Any]:
    return {"kind": kind, "id": ident, "price": int(ident) % 97, "tags": ["a", "b"]}


def canary_item(kind: str, ident: str) -> dict[str, Any]:
    body = stable_item(kind, ident)
    if kind == "items" and int(ident) % 50 == 7:  # 2% of /items/{id}
        body["price"] += 1
    return body


async def test_a_canary_changing_one_field_in_2_percent_of_one_route_is_rolled_back() -> None:
    async with (
        apps(stable_item, canary_item) as (stable, canary),
        running_proxy(shadow_config([stable], canary, 0.002)) as runtime,
    ):
        assert runtime.controller is not None
        rollout = runtime.controller.rollouts["svc"]
        paths = [
            f"/{'items' if i % 4 else 'users'}/{i}" for i in range(1, 6001)
        ]  # 3 in 4 on /items/{id}

        def rolled_back() -> bool:
            return rollout.state.status is Status.ROLLED_BACK

        got = await drive(runtime, paths, rolled_back)
        assert await wait_for(rolled_back, 10.0), rollout.last
        history = await runtime.controller.history("svc")
        canary_seen = list(canary.seen)
        counts = runtime.metrics.shadow_counts("svc")
    print(f"served {len(got)} requests, shadow {counts}")
    assert len(got) < len(paths)  # caught before the traffic ran out
    # Every client got stable's answer, never the canary's.
    assert got
    assert all(status == 200 for _, status, _, _ in got)
    for path, _, body, _ in got:
        _, kind, ident = path.split("/")
        assert body == stable_item(kind, ident), path
    # The rollback names the route and the field, with counts and no values.
    entry = next(e for e in history if e.action == "degraded")
    assert entry.from_step == 0
    assert entry.to_status == "rolled_back"
    evidence = entry.evidence
    assert evidence["check"] == "shadow:/items/{id}"
    (failing,) = [c for c in evidence["checks"] if c["check"] == "shadow:/items/{id}"]
    assert failing["crossed"]
    assert failing["canary"]["events"] > 0
    assert [path for path, _ in failing["paths"]] == ["$.price"]
    assert failing["paths"][0][1] == failing["canary"]["events"]
    users = [c for c in evidence["checks"] if c["check"] == "shadow:/users/{id}"]
    assert users
    assert users[0]["canary"]["events"] == 0
    assert "$.price" in entry.reason
    # The canary saw copies marked as shadows, with the client's identity and request id.
    assert canary_seen
    assert all(h.get("x-rollout-shadow") == "1" for h in canary_seen)
    assert all(h.get("X-Tenant-ID", "").startswith("tenant-") for h in canary_seen)
    ids = {request_id for _, _, _, request_id in got}
    assert {h["X-Request-ID"] for h in canary_seen} <= ids


def noisy(kind: str, ident: str) -> dict[str, Any]:
    """The same answer every time but for a timestamp and a fresh id (stable's and canary's)."""
    return {
        "kind": kind,
        "id": ident,
        "at": time.time(),
        "trace": uuid.uuid4().hex,
        "items": [{"n": n, "nonce": uuid.uuid4().hex} for n in range(3)],
    }


async def test_an_identical_canary_with_random_timestamps_and_ids_advances() -> None:
    async with apps(noisy, noisy, noisy) as (stable_a, stable_b, canary):
        config = shadow_config([stable_a, stable_b], canary, 0.02)
        async with running_proxy(config) as runtime:
            assert runtime.controller is not None
            rollout = runtime.controller.rollouts["svc"]
            paths = [f"/{'items' if i % 2 else 'users'}/{i}" for i in range(1, 4001)]

            def advanced() -> bool:
                return rollout.step_index >= 1

            got = await drive(runtime, paths, advanced)
            assert await wait_for(advanced, 10.0), rollout.last
            history = await runtime.controller.history("svc")

            def second_answers() -> int:
                return len(stable_a.seen) + len(stable_b.seen) - len(got)

            def settled() -> bool:
                # A second copy is counted as `noise` when it is sent: the ones in flight
                # when the step advanced reach stable a moment later.
                return second_answers() == runtime.metrics.shadow_counts("svc").get("noise")

            await wait_for(settled, 5.0)
            counts = runtime.metrics.shadow_counts("svc")
            answered = second_answers()
    assert rollout.state.status is Status.PROGRESSING
    assert got
    assert all(status == 200 for _, status, _, _ in got)
    entry = next(e for e in history if e.action == "advance")
    assert entry.from_step == 0
    assert entry.to_step == 1
    shadow_checks = [c for c in entry.evidence["checks"] if c["check"].startswith("shadow:")]
    assert {c["check"] for c in shadow_checks} == {"shadow:/items/{id}", "shadow:/users/{id}"}
    assert all(c["canary"]["events"] == 0 and c["non_inferior"] for c in shadow_checks)
    # No false mismatch; the noise was learned from stable's second answers.
    assert counts["compared"] >= 100
    assert counts.get("mismatched", 0) == 0
    assert counts["noise"] >= 6
    assert answered == counts["noise"]


async def test_a_slow_canary_never_delays_stable_and_its_overflow_is_dropped_and_counted() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2.0)
        return web.json_response({"late": True})

    async with apps(stable_item) as (stable,):
        app = web.Application()
        app.router.add_get("/{kind}/{id}", slow)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        canary_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        config = shadow_config([stable], stable, 0.01)
        config["services"][0]["upstreams"]["canary"] = [canary_url]
        config["services"][0]["rollout"]["shadow"]["max_concurrency"] = 4
        try:
            async with running_proxy(config) as runtime, aiohttp.ClientSession() as session:
                took = []
                for i in range(1, 41):
                    started = time.monotonic()
                    async with session.get(f"{runtime.data_url}/items/{i}") as response:
                        assert response.status == 200
                        assert await response.json() == stable_item("items", str(i))
                    took.append(time.monotonic() - started)
                counts = runtime.metrics.shadow_counts("svc")
                async with session.get(runtime.admin_url + "/metrics") as response:
                    exposition = await response.read()
                assert runtime.shadowing is not None
                in_flight = runtime.shadowing.in_flight("svc")
        finally:
            await runner.cleanup()
    assert max(took) < 1.0  # the canary takes 2 s per answer
    assert counts["mirrored"] == 4
    assert in_flight == 4
    assert counts["dropped_concurrency"] == 36
    assert b'rollout_shadow_requests_total{result="mirrored",service="svc"} 4.0' in exposition
    assert b'rollout_shadow_requests_total{result="dropped_concurrency",service="svc"} 36.0' in (
        exposition
    )
    await promtool_check(exposition)


async def test_the_page_api_shows_the_shadow_step() -> None:
    async with (
        apps(stable_item, canary_item) as (stable, canary),
        running_proxy(shadow_config([stable], canary, 0.5, observe="1h")) as runtime,
        aiohttp.ClientSession() as session,
    ):
        paths = [f"/items/{i}" for i in range(1, 201)]
        got = await drive(runtime, paths, lambda: False)
        assert runtime.shadowing is not None
        shadowing = runtime.shadowing
        assert await wait_for(lambda: shadowing.in_flight("svc") == 0, 5.0)
        async with session.get(runtime.admin_url + "/api/v1/services/svc/shadow") as response:
            assert response.status == 200
            shadow = await response.json()
        async with session.get(runtime.admin_url + "/api/v1/services/svc/plan") as response:
            plan = await response.json()
        async with session.get(runtime.admin_url + "/api/v1/services/svc") as response:
            status = await response.json()
    assert len(got) == 200
    assert [s["shadow"] for s in plan["steps"]] == [100.0, 0.0]
    assert status["step_definition"]["shadow"] == 100.0
    assert (shadow["sample"], shadow["tolerance"]) == (100.0, 0.5)
    assert shadow["results"]["compared"] == 200
    (route,) = shadow["routes"]
    mismatched = sum(1 for i in range(1, 201) if i % 50 == 7)
    assert (route["route"], route["compared"], route["mismatched"]) == (
        "/items/{id}",
        200,
        mismatched,
    )
    assert route["mismatch_rate"] == mismatched / 200
    assert route["paths"] == [["$.price", mismatched]]


async def test_an_answer_stable_did_not_give_is_never_mirrored() -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 100
        await response.prepare(request)
        await response.write(b'{"partial": ')
        assert request.transport is not None
        request.transport.close()  # the body ends short: the client sees a truncated answer
        return response

    async def whole(request: web.Request) -> web.Response:
        return web.json_response(stable_item("good", request.match_info["id"]))

    async with apps(stable_item) as (canary,):
        app = web.Application()
        app.router.add_get("/items/{id}", cut)
        app.router.add_get("/good/{id}", whole)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        cutting = f"http://127.0.0.1:{runner.addresses[0][1]}"
        config = shadow_config([canary], canary, 0.01)
        section = config["services"][0]
        section["upstreams"]["stable"] = ["http://127.0.0.1:9", cutting]  # 9: nobody listens
        try:
            async with running_proxy(config) as runtime, aiohttp.ClientSession() as session:
                statuses = []
                for i in range(1, 21):
                    with contextlib.suppress(aiohttp.ClientPayloadError):
                        async with session.get(f"{runtime.data_url}/items/{i}") as response:
                            statuses.append(response.status)
                            await response.read()
                for i in range(1, 6):  # the control: whole answers are mirrored
                    async with session.get(f"{runtime.data_url}/good/{i}") as response:
                        assert response.status == 200
                assert await wait_for(lambda: len(canary.seen) == 5, 5.0)
                counts = runtime.metrics.shadow_counts("svc")
        finally:
            await runner.cleanup()
    assert len(statuses) == 20
    assert set(statuses) <= {200, 502}
    assert counts["mirrored"] == 5
    assert counts["compared"] == 5
    assert sorted(h[":path"] for h in canary.seen) == [f"/good/{i}" for i in range(1, 6)]
