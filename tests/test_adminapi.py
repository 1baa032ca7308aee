"""The rollout API on a running proxy: status, steering, the journal, and who may steer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.runtime import Runtime
from tests.support.proxy import config_dict, running_proxy, service

TOKEN = "s3cret-token-for-tests"
STEPS: list[dict[str, Any]] = [
    {"percent": 5, "observe": "1h"},
    {"percent": 50, "observe": "1h"},
    {"percent": 100},
]


def _config(token_env: str | None = "ADMIN_TOKEN") -> dict[str, Any]:
    data = config_dict(
        service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"], name="shop", steps=STEPS)
    )
    if token_env:
        data["admin"]["token_env"] = token_env
    return data


@pytest.fixture
async def proxy() -> AsyncIterator[Runtime]:
    async with running_proxy(_config(), env={"ADMIN_TOKEN": TOKEN}) as runtime:
        yield runtime


async def _call(
    runtime: Runtime, method: str, path: str, token: str | None = TOKEN
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, runtime.admin_url + path, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_status_lists_the_rollout(proxy: Runtime) -> None:
    status, body = await _call(proxy, "GET", "/api/v1/services")
    assert status == 200
    (shop,) = body["services"]
    assert shop["service"] == "shop"
    assert (shop["status"], shop["step"], shop["steps"]) == ("progressing", 0, 3)
    assert shop["step_definition"]["percent"] == 5
    assert shop["canary_percent"] == 5
    status, one = await _call(proxy, "GET", "/api/v1/services/shop")
    assert status == 200
    assert one["spec_hash"] == shop["spec_hash"]


async def test_promote_pause_resume_abort_restart(proxy: Runtime) -> None:
    status, body = await _call(proxy, "POST", "/api/v1/services/shop/promote")
    assert (status, body["step"], body["canary_percent"]) == (200, 1, 50)
    status, body = await _call(proxy, "POST", "/api/v1/services/shop/pause")
    assert (status, body["status"]) == (200, "paused")
    status, body = await _call(proxy, "POST", "/api/v1/services/shop/resume")
    assert (status, body["status"]) == (200, "progressing")
    status, body = await _call(proxy, "POST", "/api/v1/services/shop/abort")
    assert (status, body["status"], body["canary_percent"]) == (200, "rolled_back", 0)
    status, body = await _call(proxy, "POST", "/api/v1/services/shop/restart")
    assert (status, body["status"], body["step"]) == (200, "progressing", 0)
    status, body = await _call(proxy, "GET", "/api/v1/services/shop/decisions")
    actions = [entry["action"] for entry in body["decisions"]]
    assert actions == ["restart", "abort", "resume", "pause", "promote", "start"]
    assert body["decisions"][0]["actor"] == "admin:127.0.0.1"
    assert TOKEN not in str(body)


@pytest.mark.parametrize(
    ("token", "status"),
    [(None, 401), ("wrong", 403)],
)
async def test_mutations_need_the_token(proxy: Runtime, token: str | None, status: int) -> None:
    got, body = await _call(proxy, "POST", "/api/v1/services/shop/promote", token)
    assert got == status
    assert "error" in body
    _, shop = await _call(proxy, "GET", "/api/v1/services/shop")
    assert shop["step"] == 0


async def test_without_a_configured_token_mutations_say_how_to_enable_them() -> None:
    async with running_proxy(_config(token_env=None)) as runtime:
        status, body = await _call(runtime, "POST", "/api/v1/services/shop/abort")
    assert status == 403
    assert "token_env" in body["error"]


async def test_errors_are_json_with_the_right_status(proxy: Runtime) -> None:
    assert (await _call(proxy, "GET", "/api/v1/services/nope"))[0] == 404
    assert (await _call(proxy, "POST", "/api/v1/services/nope/promote"))[0] == 404
    assert (await _call(proxy, "POST", "/api/v1/services/shop/explode"))[0] == 404
    status, body = await _call(proxy, "POST", "/api/v1/services/shop/resume")
    assert status == 409
    assert "not paused" in body["error"]


async def test_metrics_show_status_and_decisions(proxy: Runtime) -> None:
    await _call(proxy, "POST", "/api/v1/services/shop/promote")
    async with aiohttp.ClientSession() as session, session.get(proxy.admin_url + "/metrics") as r:
        text = await r.text()
    assert 'rollout_status{service="shop",status="progressing"} 1.0' in text
    assert 'rollout_status{service="shop",status="rolled_back"} 0.0' in text
    assert 'rollout_decisions_total{action="promote",service="shop"} 1.0' in text
    assert 'rollout_step{service="shop"} 1.0' in text
    assert 'rollout_canary_percent{service="shop"} 50.0' in text
