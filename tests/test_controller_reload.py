"""Controller.reconfigure: a reload is not a restart. Real router, metrics and state file;
time is injected."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

from proxy.config import Config, parse_config
from proxy.core.machine import Event, Status
from proxy.core.routing import Variant
from tests.support.proxy import config_dict, service
from tests.test_controller import STEPS, FakeClock, Harness, feed, started
from tests.test_controller import clock as clock  # the fixture


def _data(tmp_path: Path, **analysis: Any) -> dict[str, Any]:
    svc = service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"], name="shop", steps=STEPS)
    svc["rollout"]["analysis"] = {"min_requests": 50, "guardrail": {"min_requests": 10}, **analysis}
    data = config_dict(svc)
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    return data


def _config(data: dict[str, Any]) -> Config:
    return parse_config(copy.deepcopy(data), {})


async def _with_evidence(tmp_path: Path, clock: FakeClock) -> tuple[Harness, dict[str, Any]]:
    data = _data(tmp_path)
    harness = await started(_config(data), clock)
    await harness.controller.apply("shop", Event.PROMOTE, "admin:x")
    feed(harness, clock, 3.0, 0.01, 500)
    return harness, data


async def test_an_unchanged_spec_carries_state_timer_and_evidence(
    tmp_path: Path, clock: FakeClock
) -> None:
    harness, data = await _with_evidence(tmp_path, clock)
    rollout = harness.controller.rollouts["shop"]
    analysis, started_at, journal = rollout.analysis, rollout.step_started, harness.store.entries
    before = analysis.assess(clock.mono).checks[0]
    assert before.canary.requests > 0
    assert before.baseline.requests > 0
    data["limits"] = {"idle_timeout": "30s"}  # something else changes
    data["services"][0]["upstreams"]["stable"].append("http://127.0.0.1:11")
    notes = await harness.controller.reconfigure(_config(data))
    assert notes == []
    after = harness.controller.rollouts["shop"]
    assert after is rollout
    assert (after.state.status, after.state.step, after.state.version) == (
        Status.PROGRESSING,
        1,
        2,
    )
    assert after.analysis is analysis  # the step's evidence, kept
    assert after.analysis.assess(clock.mono).checks[0] == before
    assert after.step_started == started_at
    assert len(journal("shop")) == 2  # start, promote: a reload writes no transition
    assert harness.plan().step_index == 1
    await harness.controller.close()


async def test_new_analysis_settings_restart_the_steps_analysis_with_the_baselines(
    tmp_path: Path, clock: FakeClock
) -> None:
    harness, data = await _with_evidence(tmp_path, clock)
    rollout = harness.controller.rollouts["shop"]
    before, baselines = rollout.analysis, rollout.analysis.tier_baselines()
    data["services"][0]["rollout"]["analysis"]["min_requests"] = 80
    notes = await harness.controller.reconfigure(_config(data))
    assert notes == [
        "service shop: analysis settings changed: the step's evidence is gathered again "
        "under them, baselines kept"
    ]
    assert rollout.analysis is not before
    assert rollout.analysis.config.min_requests == 80
    assert rollout.analysis.tier_baselines() == baselines
    assert rollout.analysis.started == rollout.step_started  # the step's timer runs on
    assert rollout.state.step == 1
    await harness.controller.close()


async def test_a_changed_spec_starts_a_new_rollout_as_a_restart_would(
    tmp_path: Path, clock: FakeClock
) -> None:
    harness, data = await _with_evidence(tmp_path, clock)
    data["services"][0]["rollout"]["steps"] = [{"percent": 5, "observe": "10s"}, {"percent": 100}]
    notes = await harness.controller.reconfigure(_config(data))
    assert notes == ["service shop: rollout spec changed: at version 3"]
    rollout = harness.controller.rollouts["shop"]
    assert (rollout.state.status, rollout.state.step, rollout.state.version) == (
        Status.PROGRESSING,
        0,
        3,
    )
    newest = harness.store.entries("shop")[0]
    assert (newest.action, newest.reason) == ("start", "new spec (reload)")
    assert harness.plan().canary_percent() == 5.0
    await harness.controller.close()


async def test_services_added_and_removed(tmp_path: Path, clock: FakeClock) -> None:
    harness, data = await _with_evidence(tmp_path, clock)
    cart = service(
        ["http://127.0.0.1:12"], [], name="cart", match={"path_prefix": "/cart"}, steps=[]
    )
    cart["rollout"]["steps"] = [{"percent": 0}]
    data["services"] = [cart]
    notes = await harness.controller.reconfigure(_config(data))
    assert notes == ["service shop: removed", "service cart: added: at version 1"]
    assert list(harness.controller.rollouts) == ["cart"]
    assert [s.config.name for s in harness.router.services] == ["cart"]
    assert harness.store.read()["cart"].version == 1
    assert harness.store.read()["shop"].step == 1  # its record stays, for a later return
    await harness.controller.close()


async def test_a_transition_waits_for_the_swap_and_applies_after_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    harness, data = await _with_evidence(tmp_path, clock)
    data["limits"] = {"idle_timeout": "30s"}
    reload = asyncio.create_task(harness.controller.reconfigure(_config(data)))
    await asyncio.sleep(0)  # the reload holds the rollout's lock
    pause = asyncio.create_task(harness.controller.apply("shop", Event.PAUSE, "admin:x"))
    await reload
    assert (await pause).applied
    assert harness.controller.rollouts["shop"].state.status is Status.PAUSED
    assert harness.store.read()["shop"].status is Status.PAUSED
    await harness.controller.close()


async def test_unchanged_pools_are_kept_and_changed_ones_retired(
    tmp_path: Path, clock: FakeClock
) -> None:
    harness, data = await _with_evidence(tmp_path, clock)
    pools = harness.router.pools["shop"]
    stable, canary = pools[Variant.STABLE], pools[Variant.CANARY]
    data["services"][0]["upstreams"]["canary"] = ["http://127.0.0.1:13"]
    data["services"][0]["rollout"]["salt"] = "another"  # a new canary is a new spec anyway
    await harness.controller.reconfigure(_config(data))
    now = harness.router.pools["shop"]
    assert now[Variant.STABLE] is stable
    assert now[Variant.CANARY] is not canary
    # Retired: what is in flight finishes there, then no connection is kept idle.
    assert canary.limits.pool_idle_per_endpoint == 0
    assert stable.limits.pool_idle_per_endpoint > 0
    route = harness.router.services[0].routes[(Variant.CANARY, "free")]
    assert route.pool is now[Variant.CANARY]
    await harness.controller.close()
