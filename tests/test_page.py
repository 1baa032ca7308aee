"""The admin page in a real headless Chromium, against a real proxy with real upstreams.

The page must show what the API reports (status, step, split, request counts and error rates
per tier and arm, the verdict and its evidence), steer the rollout with the token a person
types, and show the API's refusals. A screenshot of the page with traffic flowing and a
verdict present is saved to $ROLLOUT_SCREENSHOT_DIR (else pytest's tmp dir).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.runtime import Runtime
from tests.support.browser import Browser, chromium
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.upstream import Received, RecordingUpstream, Reply

TOKEN = "page-test-token-0123456789"
ENTERPRISE = {f"corp-{i}": "enterprise" for i in range(40)}
INTERNAL = {f"staff-{i}": "internal" for i in range(6)}
# Tenants per tier, and each tier's share of the requests.
TENANTS = {
    "free": [f"user-{i}" for i in range(400)],
    "enterprise": list(ENTERPRISE),
    "internal": list(INTERNAL),
}
WEIGHTS = {"free": 0.5, "enterprise": 0.2, "internal": 0.3}
STEPS: list[dict[str, Any]] = [
    {"tiers": ["internal"], "observe": "1h"},
    {"percent": 25, "observe": "1h"},
    {"percent": 100},
]
CARD = '[data-service="checkout"]'


class Pool:
    """An upstream that fails one request in `every` (0: none), naming itself in X-Pool."""

    def __init__(self, name: str, every: int) -> None:
        self.name = name
        self.every = every
        self._seen = itertools.count(1)
        self.server = RecordingUpstream(name, self.reply)

    def reply(self, received: Received) -> Reply:
        failed = self.every and next(self._seen) % self.every == 0
        return Reply(500 if failed else 200, [("X-Pool", self.name)], b"ok\n")


class Traffic:
    """Workers sending GETs as random tenants; counts what came back per (tier, arm)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.requests: Counter[tuple[str, str]] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self._rng = random.Random(7)

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            (tier,) = self._rng.choices(list(WEIGHTS), list(WEIGHTS.values()))
            tenant = self._rng.choice(TENANTS[tier])
            async with session.get(self.url, headers={"X-Tenant-ID": tenant}) as response:
                await response.read()
                arm = response.headers.get("X-Pool", "")
                self.requests[(tier, arm)] += 1
                self.errors[(tier, arm)] += response.status >= 500
            await asyncio.sleep(0.01)

    @contextlib.asynccontextmanager
    async def flowing(self, workers: int = 6) -> AsyncIterator[None]:
        """Traffic while inside; on exit every request sent has been answered and counted."""
        stop = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(self.run(session, stop)) for _ in range(workers)]
            try:
                yield
            finally:
                stop.set()
                await asyncio.gather(*tasks)


def _config(stable: str, canary: str) -> dict[str, Any]:
    section = service(
        [stable],
        [canary],
        name="checkout",
        steps=STEPS,
        tiers={"tenants": {**ENTERPRISE, **INTERNAL}, "default": "free"},
    )
    section["rollout"]["baseline"] = "4s"
    section["rollout"]["analysis"] = {"interval": "250ms", "min_requests": 50}
    data = config_dict(section)
    data["admin"]["token_env"] = "ADMIN_TOKEN"
    return data


@pytest.fixture(scope="module")
def chromium_window() -> Iterator[Browser]:
    with chromium() as found:
        yield found


@pytest.fixture
def browser(chromium_window: Browser) -> Iterator[Browser]:
    """The shared window, on a blank page with an empty console before and after a test (a
    page left open would go on polling a proxy that is gone)."""
    chromium_window.open("about:blank")
    chromium_window.severe_console_entries()
    yield chromium_window
    chromium_window.open("about:blank")
    chromium_window.severe_console_entries()


@contextlib.asynccontextmanager
async def _setup(stable_every: int, canary_every: int) -> AsyncIterator[tuple[Runtime, Pool]]:
    stable, canary = Pool("stable", stable_every), Pool("canary", canary_every)
    await stable.server.start()
    await canary.server.start()
    try:
        config = _config(stable.server.url, canary.server.url)
        async with running_proxy(config, env={"ADMIN_TOKEN": TOKEN}) as runtime:
            yield runtime, canary
    finally:
        await stable.server.close()
        await canary.server.close()


async def _api(runtime: Runtime, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(runtime.admin_url + path) as r:
        assert r.status == 200
        return await r.json()


async def _until(runtime: Runtime, what: str, check: Any, within_s: float = 15.0) -> None:
    """Wait until `check(status)` holds for the API's status of the service."""
    status: dict[str, Any] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            while True:
                status = await _api(runtime, "/api/v1/services/checkout")
                if check(status):
                    return
                await asyncio.sleep(0.1)
    raise AssertionError(f"never saw {what}; last status: {status}")


def _tier_rows(browser: Browser) -> dict[str, dict[str, str]]:
    """The split table as shown: {tier: {field: text, field + ':title': title}}."""
    rows: dict[str, dict[str, str]] = browser.script(
        """
        const out = {};
        for (const tr of document.querySelectorAll(arguments[0] + ' [data-field=tiers] tr')) {
          const row = {};
          for (const cell of tr.querySelectorAll('[data-field]')) {
            row[cell.dataset.field] = cell.textContent;
            if (cell.title) row[cell.dataset.field + ':title'] = cell.title;
          }
          out[tr.dataset.tier] = row;
        }
        return out;
        """,
        CARD,
    )
    return rows


def _pct(rate: float) -> str:
    """As the page writes a rate (two significant digits, like proxy/core/summary.py)."""
    return "0%" if rate == 0 else f"{float(f'{rate * 100:.2g}'):g}%"


def _shows_counts(browser: Browser, traffic: Traffic) -> bool:
    rows = _tier_rows(browser)
    for tier in ("free", "enterprise", "internal"):
        for arm in ("stable", "canary"):
            requests = traffic.requests[(tier, arm)]
            errors = traffic.errors[(tier, arm)]
            row = rows.get(tier, {})
            if row.get(f"{arm}-requests") != f"{requests:,}":
                return False
            if requests and row.get(f"{arm}-errors:title") != f"{errors:,} errors":
                return False
    return True


def _act(browser: Browser, action: str, token: str | None) -> None:
    """Press an action button and confirm the dialog (typing `token` unless None)."""
    browser.find(f'{CARD} [data-action="{action}"]').click()
    browser.wait("the token dialog", lambda: browser.find("#act-dialog").is_displayed())
    field = browser.find("#act-token")
    if token is not None:
        field.clear()
        field.send_keys(token)
    browser.find("#act-go").click()


def _screenshot_path(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ROLLOUT_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "admin-page.png"


async def test_page_follows_the_rollout_and_steers_it(browser: Browser, tmp_path: Path) -> None:
    async with _setup(stable_every=200, canary_every=200) as (runtime, canary):
        traffic = Traffic(runtime.data_url + "/cart")
        # The baseline period (4 s, all stable: it measures the internal tier's pre-exposure
        # baseline) and then step 1 (the internal tier only).
        async with traffic.flowing():
            await asyncio.to_thread(browser.open, runtime.admin_url + "/")
            await _until(runtime, "step 1", lambda status: status["step"] == 0)
            await asyncio.sleep(3.0)
        status = await _api(runtime, "/api/v1/services/checkout")
        assert (status["status"], status["step"]) == ("progressing", 0)
        assert traffic.requests[("internal", "canary")] > 0
        assert traffic.requests[("free", "canary")] == 0

        # What the API says, the page says; the counts are the ones the client saw.
        await asyncio.to_thread(browser.wait_text, f"{CARD} [data-field=status]", "PROGRESSING")
        await asyncio.to_thread(
            browser.wait_text, f"{CARD} [data-field=where]", "step 1 of 3: 100% of internal"
        )
        await asyncio.to_thread(browser.wait_text, f"{CARD} [data-field=canary-percent]", "0%")
        await asyncio.to_thread(
            browser.wait, "the request counts", lambda: _shows_counts(browser, traffic)
        )
        rows = await asyncio.to_thread(_tier_rows, browser)
        assert rows["internal"]["planned"] == "100%"
        assert rows["free"]["planned"] == "0%"
        assert rows["internal"]["compared"].startswith("pre-exposure: ")
        assert rows["free"]["compared"] == "stable, same time"
        stable_free = traffic.requests[("free", "stable")]
        errors_free = traffic.errors[("free", "stable")]
        assert rows["free"]["stable-errors"] == _pct(errors_free / stable_free)
        timeline = await asyncio.to_thread(browser.text, f"{CARD} [aria-current=step]")
        assert timeline.startswith("1. 100%")

        # Pause through the page: the token is asked for, sent, and kept for this tab only.
        await asyncio.to_thread(_act, browser, "pause", TOKEN)
        await asyncio.to_thread(browser.wait_text, f"{CARD} [data-field=status]", "PAUSED")
        assert (await _api(runtime, "/api/v1/services/checkout"))["status"] == "paused"
        stored = await asyncio.to_thread(
            browser.script,
            "return [sessionStorage.getItem('rollout-proxy.admin-token'),"
            " localStorage.length, document.cookie]",
        )
        assert stored == [TOKEN, 0, ""]
        journal = await asyncio.to_thread(browser.text, f"{CARD} [data-field=journal] tr")
        assert "admin:127.0.0.1" in journal
        assert "pause" in journal

        # Resume and promote with the kept token (the dialog comes pre-filled), then the canary
        # turns bad at the 25% step and the controller rolls it back on evidence.
        await asyncio.to_thread(_act, browser, "resume", None)
        await asyncio.to_thread(browser.wait_text, f"{CARD} [data-field=status]", "PROGRESSING")
        await asyncio.to_thread(_act, browser, "promote", None)
        await asyncio.to_thread(
            browser.wait_text, f"{CARD} [data-field=where]", "step 2 of 3: 25% of everyone"
        )
        canary.every = 8
        async with traffic.flowing():
            await _until(
                runtime, "the rollback", lambda s: s["status"] == "rolled_back", within_s=20
            )
            status = await _api(runtime, "/api/v1/services/checkout")
            verdict = status["verdict"]
            assert verdict["verdict"] == "degraded"
            errors = next(c for c in verdict["checks"] if c["check"] == verdict["check"])
            expected = (
                f"canary {_pct(errors['canary']['events'] / errors['canary']['requests'])} "
                f"errors vs {_pct(errors['baseline']['events'] / errors['baseline']['requests'])}"
                f" baseline over {errors['canary']['requests']:,} requests: rolled back"
            )
            await asyncio.to_thread(
                browser.wait_text, f"{CARD} [data-field=verdict-words]", expected
            )
            await asyncio.to_thread(browser.wait_text, f"{CARD} [data-field=status]", "ROLLED BACK")
            # Traffic goes on (all stable now) while the charts fill in.
            await asyncio.sleep(5.0)
            await asyncio.to_thread(browser.wait_text, f"{CARD} [data-field=charts]", "tier free")
            shot = _screenshot_path(tmp_path)
            await asyncio.to_thread(browser.screenshot, shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not await asyncio.to_thread(browser.find("#problem").is_displayed)
        assert await asyncio.to_thread(browser.severe_console_entries) == []


async def test_a_wrong_token_is_shown_and_changes_nothing(browser: Browser) -> None:
    async with _setup(stable_every=0, canary_every=0) as (runtime, _):
        await asyncio.to_thread(browser.open, runtime.admin_url + "/")
        await asyncio.to_thread(browser.wait_text, f"{CARD} [data-field=status]", "PROGRESSING")
        await asyncio.to_thread(browser.script, "sessionStorage.clear()")
        await asyncio.to_thread(_act, browser, "abort", "not-the-token")
        await asyncio.to_thread(browser.wait_text, "#act-error", "403 Forbidden: wrong token")
        await asyncio.to_thread(
            browser.wait_text, f"{CARD} [data-field=action-result]", "Abort refused: 403"
        )
        assert (await _api(runtime, "/api/v1/services/checkout"))["status"] == "progressing"
        kept = await asyncio.to_thread(
            browser.script, "return sessionStorage.getItem('rollout-proxy.admin-token')"
        )
        assert kept is None
        # Without a token the page says what it needs and sends nothing.
        await asyncio.to_thread(browser.find("#act-token").clear)
        await asyncio.to_thread(lambda: browser.find("#act-go").click())
        await asyncio.to_thread(browser.wait_text, "#act-error", "Enter the admin token")
        await asyncio.to_thread(lambda: browser.find("#act-cancel").click())
        journal = await _api(runtime, "/api/v1/services/checkout/decisions")
        assert [entry["action"] for entry in journal["decisions"]] == ["start"]
    # The refused POST is the only thing the console reports.
    logged = await asyncio.to_thread(browser.severe_console_entries)
    assert len(logged) == 1
    assert "403" in logged[0]
