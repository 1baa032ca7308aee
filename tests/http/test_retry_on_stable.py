"""A failed canary attempt sent again to stable: only when that is safe, only within the retry
budget, and never hiding the failure from the metrics or the rollout analysis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from proxy.runtime import Runtime
from tests.support.client import Samples, closed_port, exchange, get, scrape, series, value
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.servers import ScriptedUpstream, content_length, read_head, reset
from tests.support.upstream import RecordingUpstream

TO_CANARY = {"X-Tenant-ID": "beta-corp"}  # pinned to canary below
LABELS = {"service": "svc", "tier": "free"}


@asynccontextmanager
async def proxy_for(stable: str, canary: str, **limits: Any) -> AsyncIterator[tuple[Runtime, int]]:
    rollout = {"salt": "s", "pins": {"beta-corp": "canary"}, "steps": [{"percent": 0}]}
    config = config_dict(service([stable], [canary], rollout=rollout), limits=limits)
    async with running_proxy(config) as proxy:
        yield proxy, proxy.data_address[1]


def retries(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["outcome"]: v
        for labels, v in series(samples, "rollout_retries_total").items()
        if dict(labels)["variant"] == "canary"
    }


def canary_evidence(proxy: Runtime) -> tuple[int, int]:
    """(canary requests, canary errors) the rollout analysis has seen."""
    assert proxy.controller is not None
    analysis = proxy.controller.rollouts["svc"].analysis
    counts = analysis.errors.evidence(1.5).canary
    return counts.requests, counts.events


def post(body: bytes) -> bytes:
    head = b"POST /order HTTP/1.1\r\nHost: app\r\nX-Tenant-ID: beta-corp\r\n"
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_a_canary_connect_failure_is_answered_by_stable_and_counted_against_canary() -> None:
    stable = await RecordingUpstream("stable").start()
    async with proxy_for(stable.url, f"http://127.0.0.1:{closed_port()}") as (proxy, port):
        got = await exchange(port, get("/", TO_CANARY))
        posted = await exchange(port, post(b"x" * 3000))  # nothing was sent: any method
        samples = await scrape(proxy)
        evidence = canary_evidence(proxy)
    await stable.close()
    assert (got.status, got.body, posted.status) == (200, b"stable\n", 200)
    assert [r.header("x-rollout-variant") for r in stable.requests] == ["stable", "stable"]
    assert stable.requests[1].body == b"x" * 3000
    assert retries(samples) == {"retried": 2}
    canary_5xx = value(
        samples, "rollout_requests_total", **LABELS, variant="canary", status_class="5xx"
    )
    stable_2xx = value(
        samples, "rollout_requests_total", **LABELS, variant="stable", status_class="2xx"
    )
    assert (canary_5xx, stable_2xx) == (2, 2)
    assert evidence == (2, 2), "the analysis must see both failed canary attempts"


async def reset_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await read_head(reader)
    await reader.readexactly(content_length(head))
    reset(writer)


async def test_an_idempotent_request_reset_before_any_response_byte_is_retried() -> None:
    stable = await RecordingUpstream("stable").start()
    canary = await ScriptedUpstream(reset_after_head).start()
    async with proxy_for(stable.url, canary.url) as (proxy, port):
        got = await exchange(port, get("/item", TO_CANARY))
        samples = await scrape(proxy)
        evidence = canary_evidence(proxy)
    await stable.close()
    await canary.close()
    assert (got.status, got.body) == (200, b"stable\n")
    assert canary.connections >= 1
    assert retries(samples) == {"retried": 1}
    assert evidence == (1, 1)


async def test_a_post_the_canary_received_is_never_sent_again() -> None:
    stable = await RecordingUpstream("stable").start()
    canary = await ScriptedUpstream(reset_after_head).start()
    async with proxy_for(stable.url, canary.url) as (proxy, port):
        got = await exchange(port, post(b"pay once"))
        samples = await scrape(proxy)
    await stable.close()
    await canary.close()
    assert got.status == 502
    assert stable.requests == [], "a non-idempotent request reached a second upstream"
    assert retries(samples) == {}


async def test_the_retry_budget_bounds_retries_and_counts_refusals() -> None:
    stable = await RecordingUpstream("stable").start()
    dead = f"http://127.0.0.1:{closed_port()}"
    # 1% of requests, at most 2 at once: 2 retries, then the budget is empty.
    async with proxy_for(stable.url, dead, retry_budget_percent=1, retry_burst=2) as (proxy, port):
        statuses = [(await exchange(port, get("/", TO_CANARY))).status for _ in range(4)]
        samples = await scrape(proxy)
        evidence = canary_evidence(proxy)
    await stable.close()
    assert statuses == [200, 200, 502, 502]
    assert retries(samples) == {"retried": 2, "budget_exhausted": 2}
    assert evidence == (4, 4)


async def test_a_budget_of_zero_turns_retries_off() -> None:
    stable = await RecordingUpstream("stable").start()
    dead = f"http://127.0.0.1:{closed_port()}"
    async with proxy_for(stable.url, dead, retry_budget_percent=0) as (proxy, port):
        got = await exchange(port, get("/", TO_CANARY))
        samples = await scrape(proxy)
    await stable.close()
    assert got.status == 502
    assert stable.requests == []
    assert retries(samples) == {"budget_exhausted": 1}
