"""F1: the canary's host dies (SIGKILL) in the middle of a 20% step under load.

Expected: the guardrail rolls the rollout back (every user on stable) within about a second; the
canary requests that fail meanwhile are sent again to stable within the retry budget, so a
client sending idempotent requests sees no error at all, while the failed attempts still count
against the canary; a client sending POSTs sees at most the requests that were in flight on the
canary when it died, counting those sent while its sockets were being torn down. Figures:
kill -> 100% stable (p50, max), client-visible errors, retries used and refused.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from proxy.core.machine import Status
from proxy.store.file import FileStore
from tests.faults.harness import (
    Outcome,
    load,
    median,
    metric,
    origin,
    report,
    status,
    tally,
    trials,
)
from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, service

CONCURRENCY = 8
STEPS: list[dict[str, Any]] = [{"percent": 20, "observe": "1h"}, {"percent": 100}]


def _config(directory: Path, stable: str, canary: str) -> dict[str, Any]:
    directory.mkdir(exist_ok=True)
    data = config_dict(service([stable], [canary], name="shop", steps=STEPS))
    data["state"] = {"backend": "file", "path": str(directory / "state.json")}
    return data


async def _trial(directory: Path, *load_options: str) -> dict[str, Any]:
    stable, canary = await origin("stable"), await origin("canary")
    proxy = await ProxyProcess(_config(directory, stable.url, canary.url), directory, {}).start()
    traffic = await load(
        proxy.data_url, directory / "load.json", "--concurrency", str(CONCURRENCY), *load_options
    )
    try:
        await traffic.started()
        await asyncio.sleep(0.8)
        killed = time.monotonic()
        await canary.kill()
        while (await status(proxy.admin_url, "shop"))["status"] != "rolled_back":
            assert time.monotonic() - killed < 10, "not rolled back within 10 s"
            await asyncio.sleep(0.01)
        stable_at = time.monotonic()
        await asyncio.sleep(0.5)
        outcomes = await traffic.results()
        retried = await metric(proxy.admin_url, "rollout_retries_total", outcome="retried")
        refused = await metric(proxy.admin_url, "rollout_retries_total", outcome="budget_exhausted")
        canary_failed = await metric(
            proxy.admin_url, "rollout_requests_total", variant="canary", status_class="5xx"
        )
    finally:
        await traffic.kill()
        await proxy.kill()
        await stable.kill()
        await canary.kill()
    record = FileStore(directory / "state.json").read()["shop"]
    assert record.status is Status.ROLLED_BACK, "the rollback was not persisted"
    return _figures(outcomes, killed, stable_at, retried, refused, canary_failed)


def _figures(
    outcomes: list[Outcome],
    killed: float,
    stable_at: float,
    retried: float,
    refused: float,
    canary_failed: float,
) -> dict[str, Any]:
    before = [o for o in outcomes if o.start < killed]
    assert {o.served_by for o in before if o.ok} == {"stable", "canary"}, "both arms served"
    late = [o for o in outcomes if o.start > stable_at + 0.1]
    assert late, "no traffic after the rollback"
    assert {o.served_by for o in late if o.ok} == {"stable"}, "canary served after rollback"
    errors = [o for o in outcomes if not o.ok]
    return {
        "time_to_stable_s": round(stable_at - killed, 3),
        "requests": len(outcomes),
        "client_errors": len(errors),
        "errors": tally(errors),
        "retries_used": int(retried),
        "retries_refused": int(refused),
        "canary_failures_counted": int(canary_failed),
    }


async def test_canary_killed_mid_rollout_idempotent_clients_see_no_error(tmp_path: Path) -> None:
    results = [await _trial(tmp_path / f"trial{i}") for i in range(trials(3, 20))]
    times = [r["time_to_stable_s"] for r in results]
    report(
        "F1 canary killed (GET)",
        trials=len(results),
        time_to_stable_p50_s=median(times),
        time_to_stable_max_s=max(times),
        client_errors=sum(r["client_errors"] for r in results),
        requests=sum(r["requests"] for r in results),
        retries_used=sum(r["retries_used"] for r in results),
        retries_refused=sum(r["retries_refused"] for r in results),
        canary_failures_counted=sum(r["canary_failures_counted"] for r in results),
    )
    for r in results:
        assert r["client_errors"] == 0, sorted(r.items())
        # The retried attempts were counted against the canary, not hidden by the retry.
        assert r["canary_failures_counted"] >= r["retries_used"] > 0, r
    assert max(times) <= 2.0, times


async def test_canary_killed_mid_rollout_post_errors_at_most_in_flight(tmp_path: Path) -> None:
    result = await _trial(tmp_path / "post", "--method", "POST", "--body-bytes", "512")
    report("F1 canary killed (POST)", concurrency=CONCURRENCY, **result)
    # A POST the canary may have received cannot be sent again: those in flight at the kill
    # fail, the rest (connect failures: nothing sent) are retried. "In flight" includes a
    # client's next POST when it went out while the dying host's sockets were still being
    # torn down (written into a pooled connection whose FIN was not read yet, or accepted into
    # the listen backlog before its close); the bound allows one such POST per client.
    assert result["client_errors"] <= 2 * CONCURRENCY, result
    assert set(result["errors"]) <= {"502"}, result
    assert result["time_to_stable_s"] <= 2.0, result
