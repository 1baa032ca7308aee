"""The admin page shows a shadow step in a real headless Chromium: the step in the timeline,
the sample, the compared answers, and each route's mismatch rate and differing fields."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.support.browser import Browser, chromium
from tests.support.proxy import running_proxy
from tests.test_shadow_live import apps, canary_item, drive, shadow_config, stable_item

CARD = '[data-service="svc"]'


@pytest.fixture
def browser() -> Iterator[Browser]:
    with chromium() as found:
        yield found
        found.open("about:blank")


async def test_page_shows_the_shadow_step_per_route(browser: Browser) -> None:
    async with (
        apps(stable_item, canary_item) as (stable, canary),
        running_proxy(shadow_config([stable], canary, 0.5, observe="1h")) as runtime,
    ):
        paths = [f"/{'items' if i % 2 else 'users'}/{i}" for i in range(1, 401)]
        await drive(runtime, paths, lambda: False)
        await asyncio.to_thread(browser.open, runtime.admin_url + "/")
        where = f"{CARD} [data-field=where]"
        await asyncio.to_thread(browser.wait_text, where, "shadow, 100% of stable's requests")
        timeline = await asyncio.to_thread(browser.text, f"{CARD} [aria-current=step]")
        rows, words_at = f"{CARD} [data-field=shadow-routes]", f"{CARD} [data-field=shadow-words]"
        mismatched = sum(1 for i in range(1, 401, 2) if i % 50 == 7)
        await asyncio.to_thread(browser.wait_text, words_at, "400 compared")
        await asyncio.to_thread(browser.wait_text, rows, f"$.price ({mismatched})")
        table = await asyncio.to_thread(browser.text, rows)
        words = await asyncio.to_thread(browser.text, words_at)
        console = await asyncio.to_thread(browser.severe_console_entries)
    assert "shadow 100%" in timeline
    assert "mirrored, nobody exposed" in timeline
    assert "100% of stable's requests mirrored to the canary" in words
    assert "400 compared" in words
    assert f"$.price ({mismatched})" in table
    assert f"{mismatched / 200 * 100:.2f}%" in table
    assert "/users/{id}" in table
    assert console == []
