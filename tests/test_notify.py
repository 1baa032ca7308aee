"""Release notifications end to end: the real proxy (releases through the admin API, reloads
from a file), real webhook receivers on loopback, the counts in /metrics and in `status`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy import adminclient
from proxy.adminclient import render
from proxy.config import load_config
from proxy.runtime import Runtime
from tests.support.client import closed_port, scrape, value
from tests.support.promtool import metrics_text, promtool_check
from tests.support.proxy import config_dict, service
from tests.support.servers import NameUpstream
from tests.support.webhooks import Behaviour, Delivery, Webhooks, eventually

TOKEN = "notify-test-token"
STEPS: list[dict[str, Any]] = [{"percent": 10, "observe": "1h"}, {"percent": 100}]
TOTAL = "rollout_notifications_total"


@pytest.fixture
async def hooks() -> AsyncIterator[Webhooks]:
    server = await Webhooks().start()
    yield server
    await server.close()


def _receiver(name: str, fmt: str, env: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "format": fmt, "url_env": env, **extra}


async def _running(
    tmp_path: Path, stable: str, receivers: list[dict[str, Any]], env: Mapping[str, str]
) -> tuple[Runtime, Path, dict[str, Any]]:
    svc = service([stable], ["http://127.0.0.1:9"], name="shop", steps=STEPS)
    svc["rollout"]["analysis"] = {"guardrail": {"min_requests": 10}}
    data = config_dict(svc, notifications=receivers)
    data["admin"]["token_env"] = "ADMIN_TOKEN"
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    environment = {"ADMIN_TOKEN": TOKEN, **env}
    runtime = Runtime(load_config(path, environment), env=environment, config_path=str(path))
    await runtime.start()
    return runtime, path, data


async def _post(runtime: Runtime, path: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(runtime.admin_url + path, json=body, headers=headers) as reply,
    ):
        return reply.status, await reply.json()


async def _status(runtime: Runtime) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(runtime.admin_url + "/api/v1/services") as reply,
    ):
        body: dict[str, Any] = await reply.json()
        return body


def _release_events(deliveries: list[Delivery], fmt: str, version: str) -> list[dict[str, Any]]:
    """The JSON notices of release `version` among `deliveries` (each format unwrapped)."""
    found = []
    for d in deliveries:
        data = d.body["data"] if fmt == "cloudevents" else d.body
        if fmt == "slack":
            if version in data["text"]:
                found.append(data)
        elif data["release"] and data["release"]["version"] == version:
            found.append(data)
    return found


CHANGE = {"commit": "abc1234", "url": "https://git.example/pr/7", "summary": "faster checkout"}


async def test_each_format_tells_a_release_started_advanced_and_completed(
    tmp_path: Path,
    hooks: Webhooks,
    upstreams: tuple[NameUpstream, NameUpstream],
    capsys: pytest.CaptureFixture[str],
) -> None:
    receivers = [
        _receiver("chat", "slack", "CHAT_URL"),
        _receiver("events", "cloudevents", "EVENTS_URL"),
        _receiver("plain", "json", "PLAIN_URL", events=["completed"]),
    ]
    env = {
        "CHAT_URL": hooks.url("chat"),
        "EVENTS_URL": hooks.url("ce"),
        "PLAIN_URL": hooks.url("j"),
    }
    runtime, _, _ = await _running(tmp_path, upstreams[0].url, receivers, env)
    try:
        canary = upstreams[1].url
        body = {"version": "1.4.0", "canary": [canary], "change": CHANGE}
        code, _ = await _post(runtime, "/api/v1/services/shop/releases", body)
        assert code == 201
        code, _ = await _post(runtime, "/api/v1/services/shop/promote")
        assert code == 200
        code, _ = await _post(runtime, "/api/v1/services/shop/promote")
        assert code == 200
        await eventually(lambda: len(_release_events(hooks.got("ce"), "cloudevents", "1.4.0")) == 3)
        await eventually(lambda: len(_release_events(hooks.got("chat"), "slack", "1.4.0")) == 3)
        await eventually(lambda: len(hooks.got("j")) == 1)

        envelopes = [d.body for d in hooks.got("ce") if d.body["data"]["release"]]
        assert [e["type"] for e in envelopes] == [
            "dev.rollout-proxy.release.release_started",
            "dev.rollout-proxy.release.step_advanced",
            "dev.rollout-proxy.release.completed",
        ]
        first = envelopes[0]
        assert (first["specversion"], first["datacontenttype"], first["subject"]) == (
            "1.0",
            "application/json",
            "shop",
        )
        assert first["time"].endswith("Z")
        assert "T" in first["time"]
        assert len({e["id"] for e in envelopes}) == 3
        assert first["source"].startswith("rollout-proxy/")
        assert first["data"]["release"]["change"] == CHANGE
        assert envelopes[1]["data"]["step"] == 1
        assert envelopes[1]["data"]["canary_percent"] == 100
        assert envelopes[1]["data"]["actor"].startswith("admin:")
        assert all(d.content_type == "application/cloudevents+json" for d in hooks.got("ce"))

        texts = [m["text"] for m in _release_events(hooks.got("chat"), "slack", "1.4.0")]
        assert "shop 1.4.0: started" in texts[0]
        assert "faster checkout" in texts[0]
        assert "shop 1.4.0: advanced to step 2/2 (100% canary)" in texts[1]
        assert "shop 1.4.0: completed" in texts[2]
        slack_first = _release_events(hooks.got("chat"), "slack", "1.4.0")[0]
        context = slack_first["blocks"][1]["elements"][0]["text"]
        assert "abc1234" in context
        assert "https://git.example/pr/7" in context

        (plain,) = [d.body for d in hooks.got("j")]
        assert (plain["event"], plain["service"], plain["status"]) == (
            "completed",
            "shop",
            "completed",
        )
        assert plain["release"]["version"] == "1.4.0"

        samples = await scrape(runtime)
        labels = {"receiver": "events", "event": "step_advanced", "result": "sent"}
        assert value(samples, TOTAL, **labels) == 1
        status = await _status(runtime)
        chat = next(r for r in status["notifications"] if r["name"] == "chat")
        assert chat["counts"]["sent"] >= 3
        assert chat["counts"]["failed"] == 0
        assert chat["last_sent"]["event"] == "completed"
        assert chat["last_error"] is None
        line = render(status["services"], status["config"], status["notifications"])
        assert "notify chat (slack): queue 0/100, sent" in line
        # `rollout-proxy status` prints it (the CLI is synchronous: off the loop).
        code = await asyncio.to_thread(
            adminclient.run, "status", None, runtime.admin_url, False, "ADMIN_TOKEN"
        )
        printed = capsys.readouterr().out
        assert code == 0
        assert "notify plain (json): queue 0/100, sent 1, retried 0, failed 0, dropped 0" in printed
        assert "last sent " in printed
        assert "(completed)" in printed
    finally:
        await runtime.stop(drain_s=0.5, notice_s=0.0)


async def _traffic_until(runtime: Runtime, done: Callable[[], bool]) -> None:
    """Requests from ever new tenants until `done()` holds."""
    async with aiohttp.ClientSession() as session:
        for i in range(2000):
            headers = {"X-Tenant-ID": f"t{i}"}
            async with session.get(runtime.data_url + "/", headers=headers) as reply:
                await reply.read()
            if done():
                return
    raise AssertionError("the condition did not come")


async def test_a_rolled_back_release_is_told_with_the_verdict_in_words(
    tmp_path: Path, hooks: Webhooks, upstreams: tuple[NameUpstream, NameUpstream]
) -> None:
    receivers = [_receiver("chat", "slack", "CHAT_URL"), _receiver("j", "json", "J_URL")]
    env = {"CHAT_URL": hooks.url("chat"), "J_URL": hooks.url("j")}
    runtime, _, _ = await _running(tmp_path, upstreams[0].url, receivers, env)
    try:
        dead = f"http://127.0.0.1:{closed_port()}"
        body = {"version": "2.0", "canary": [dead]}
        code, _ = await _post(runtime, "/api/v1/services/shop/releases", body)
        assert code == 201
        await _traffic_until(
            runtime, lambda: any(d.body["event"] == "rolled_back" for d in hooks.got("j"))
        )
        (rolled,) = [d.body for d in hooks.got("j") if d.body["event"] == "rolled_back"]
        assert rolled["release"]["version"] == "2.0"
        assert (rolled["status"], rolled["actor"]) == ("rolled_back", "controller")
        assert "guardrail" in rolled["verdict"].lower() or "error" in rolled["verdict"].lower()
        assert len(rolled["verdict"]) > 20
        await eventually(
            lambda: any("rolled back" in d.body["text"] for d in hooks.got("chat")), 5.0
        )
        (text,) = [d.body["text"] for d in hooks.got("chat") if "rolled back" in d.body["text"]]
        assert text.startswith("shop 2.0: rolled back at step 1/2 (10% canary) by controller: ")
        assert rolled["verdict"] in text
    finally:
        await runtime.stop(drain_s=0.5, notice_s=0.0)


async def test_a_receiver_that_is_down_is_retried_with_backoff_and_slows_nothing(
    tmp_path: Path, hooks: Webhooks, upstreams: tuple[NameUpstream, NameUpstream]
) -> None:
    down = f"http://127.0.0.1:{closed_port()}/hook"
    receivers = [
        _receiver("down", "json", "DOWN_URL", attempts=3, backoff="200ms"),
        _receiver("flaky", "json", "FLAKY_URL", attempts=3, backoff="200ms"),
    ]
    hooks.behaviours["flaky"] = Behaviour(statuses=[503, 503])
    env = {"DOWN_URL": down, "FLAKY_URL": hooks.url("flaky")}
    runtime, _, _ = await _running(tmp_path, upstreams[0].url, receivers, env)
    try:
        loop = asyncio.get_running_loop()
        body = {"version": "3.0", "canary": [upstreams[1].url]}
        code, _ = await _post(runtime, "/api/v1/services/shop/releases", body)
        assert code == 201
        began = loop.time()
        code, _ = await _post(runtime, "/api/v1/services/shop/promote")
        assert code == 200
        assert loop.time() - began < 0.5  # the promote does not wait for any receiver

        async def given_up() -> bool:
            samples = await scrape(runtime)
            labels = {"receiver": "down", "event": "step_advanced", "result": "failed"}
            return value(samples, TOTAL, **labels) == 1

        await eventually(given_up, 5.0)
        samples = await scrape(runtime)
        for event in ("release_started", "step_advanced"):
            labels = {"receiver": "down", "event": event}
            failed = value(samples, TOTAL, **labels, result="failed")
            assert failed >= 1  # the config file's rollout started too, at start
            assert value(samples, TOTAL, **labels, result="retried") == 2 * failed
            assert value(samples, TOTAL, **labels, result="sent") == 0
        errors = value(
            samples, "rollout_notification_errors_total", receiver="down", reason="connect"
        )
        assert errors >= 6
        status = await _status(runtime)
        gone = next(r for r in status["notifications"] if r["name"] == "down")
        assert gone["counts"]["failed"] >= 2
        assert gone["last_sent"] is None
        assert "connect" in gone["last_error"]["error"].lower()
        await promtool_check(await metrics_text(runtime))

        # The flaky one answered 503 twice: the third attempt of the same notice (same id)
        # went through, each retry after at least half of its backoff ceiling (0.2 s, 0.4 s).
        await eventually(lambda: len(hooks.got("flaky")) >= 4)
        first = [d for d in hooks.got("flaky") if d.body["id"] == hooks.got("flaky")[0].body["id"]]
        assert len(first) == 3
        assert first[1].at - first[0].at >= 0.1
        assert first[2].at - first[1].at >= 0.2
        samples = await scrape(runtime)
        assert first[0].body["event"] == "release_started"
        flaky = {"receiver": "flaky", "event": "release_started"}
        assert value(samples, TOTAL, **flaky, result="retried") == 2
        # sent: the config file's rollout (after two 503s), then release 3.0 at once
        assert value(samples, TOTAL, **flaky, result="sent") == 2
    finally:
        await runtime.stop(drain_s=0.5, notice_s=0.0)


async def test_a_slow_receiver_times_out_and_its_queue_stays_bounded(
    tmp_path: Path, hooks: Webhooks, upstreams: tuple[NameUpstream, NameUpstream]
) -> None:
    receivers = [
        _receiver(
            "slow",
            "json",
            "SLOW_URL",
            events=["config_reload_failed"],
            timeout="200ms",
            queue=2,
            attempts=1,
        ),
        _receiver("ops", "json", "OPS_URL", events=["config_reload_failed"]),
    ]
    hooks.behaviours["slow"] = Behaviour(delay_s=2.0)
    env = {"SLOW_URL": hooks.url("slow"), "OPS_URL": hooks.url("ops")}
    runtime, path, _ = await _running(tmp_path, upstreams[0].url, receivers, env)
    try:
        path.write_text("listen: 127.0.0.1:0\n")  # no services
        for _ in range(8):
            code, _body = await _post(runtime, "/api/v1/reload")
            assert code == 422
            depth = (await _status(runtime))["notifications"][0]["queue_depth"]
            assert depth <= 2

        # A failed reload is announced, with the key at fault.
        await eventually(lambda: len(hooks.got("ops")) == 8)
        told = hooks.got("ops")[0].body
        assert (told["event"], told["status"], told["actor"]) == (
            "config_reload_failed",
            "invalid",
            "api",
        )
        assert told["verdict"] == "services: is required"
        assert told["service"] is None

        async def settled() -> bool:
            status = await _status(runtime)
            slow = status["notifications"][0]
            counts = slow["counts"]
            return bool(slow["queue_depth"] == 0 and counts["failed"] + counts["dropped"] == 8)

        await eventually(settled, 10.0)
        samples = await scrape(runtime)
        labels = {"receiver": "slow", "event": "config_reload_failed"}
        dropped = value(samples, TOTAL, **labels, result="dropped")
        failed = value(samples, TOTAL, **labels, result="failed")
        assert dropped >= 4
        assert failed >= 1
        assert dropped + failed == 8
        errors = "rollout_notification_errors_total"
        assert value(samples, errors, receiver="slow", reason="timeout") == failed
        slow = (await _status(runtime))["notifications"][0]
        assert slow["last_error"]["error"] == "no answer within 0.2s"
    finally:
        await runtime.stop(drain_s=0.5, notice_s=0.0)


async def test_a_reload_changes_the_receivers(
    tmp_path: Path, hooks: Webhooks, upstreams: tuple[NameUpstream, NameUpstream]
) -> None:
    env = {"A_URL": hooks.url("a"), "B_URL": hooks.url("b")}
    receivers = [_receiver("a", "json", "A_URL", events=["config_reload_failed"])]
    runtime, path, data = await _running(tmp_path, upstreams[0].url, receivers, env)
    try:
        data["notifications"] = [_receiver("b", "json", "B_URL", events=["config_reload_failed"])]
        path.write_text(yaml.safe_dump(data))
        code, body = await _post(runtime, "/api/v1/reload")
        assert (code, body["result"]) == (200, "applied")
        assert "notifications: changed" in body["changes"]
        assert [r["name"] for r in (await _status(runtime))["notifications"]] == ["b"]
        path.write_text("services: 7\n")
        code, _ = await _post(runtime, "/api/v1/reload")
        assert code == 422
        await eventually(lambda: len(hooks.got("b")) == 1)
        assert hooks.got("a") == []
    finally:
        await runtime.stop(drain_s=0.5, notice_s=0.0)
