"""The live page lists a service's releases and shows the current one's change beside its
verdict, in a real headless Chromium against a real proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.browser import Browser, chromium
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.servers import NameUpstream

TOKEN = "page-release-token"
CARD = '[data-service="shop"]'


@pytest.fixture
def browser() -> Iterator[Browser]:
    with chromium() as found:
        yield found


async def _post(url: str, body: dict[str, Any]) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Rollout-Actor": "ci-bot"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as reply,
    ):
        return reply.status


async def test_the_page_lists_releases_and_the_current_change(
    browser: Browser, upstreams: tuple[NameUpstream, NameUpstream]
) -> None:
    stable, canary = upstreams
    section = service([stable.url], [], name="shop", steps=[{"percent": 0}])
    data = config_dict(section)
    data["admin"]["token_env"] = "ADMIN_TOKEN"
    async with running_proxy(data, {"ADMIN_TOKEN": TOKEN}) as runtime:
        base = f"{runtime.admin_url}/api/v1/services/shop"
        first = {"version": "1.0", "canary": [canary.url], "change": {"summary": "First cut"}}
        assert await _post(f"{base}/releases", first) == 201
        assert await _post(f"{base}/promote", {}) == 200
        second = {
            "version": "1.1",
            "canary": [stable.url],
            "steps": [{"percent": 10, "observe": "1h"}],
            "change": {"summary": "Faster checkout", "url": "https://example.test/pr/7"},
        }
        assert await _post(f"{base}/releases", second) == 201
        await asyncio.to_thread(browser.open, runtime.admin_url + "/")
        await asyncio.to_thread(
            browser.wait_text, f"{CARD} [data-field=release]", "release 1.1 (progressing)"
        )
        current = await asyncio.to_thread(browser.text, f"{CARD} [data-field=release]")
        assert "Faster checkout" in current
        assert "ci-bot" in current
        rows = await asyncio.to_thread(
            browser.script,
            f"return [...document.querySelectorAll('{CARD} [data-field=releases] tr')]"
            ".map((tr) => tr.innerText)",
        )
        assert len(rows) == 2
        assert rows[0].startswith("1.1\tFaster checkout")
        assert rows[1].startswith("1.0\tFirst cut")
        assert "completed" in rows[1]
        link = await asyncio.to_thread(
            browser.script,
            f"return document.querySelector('{CARD} [data-field=releases] a').href",
        )
        assert link == "https://example.test/pr/7"
        assert await asyncio.to_thread(browser.severe_console_entries) == []
