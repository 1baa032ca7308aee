"""The controller with a real router, real metrics and a real state file; time is injected."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from proxy.config import Config, parse_config
from proxy.controller import Clock, Controller
from proxy.core.analysis import StepAnalysis
from proxy.core.machine import Event, Status
from proxy.dataplane import Router
from proxy.errors import StateError
from proxy.metrics import Metrics
from proxy.store.file import FileStore
from tests.support.proxy import config_dict, service

STEPS: list[dict[str, Any]] = [
    {"percent": 25, "observe": "10s"},
    {"percent": 50, "observe": "10s"},
    {"percent": 100},
]


class FakeClock:
    """Monotonic and wall time that only move when told to."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall_time = 1_800_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_time += seconds

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.mono, wall=lambda: self.wall_time)


def make_config(
    tmp_path: Path, steps: list[dict[str, Any]] | None = None, **analysis: Any
) -> Config:
    svc = service(
        ["http://127.0.0.1:9"], ["http://127.0.0.1:10"], name="shop", steps=steps or STEPS
    )
    svc["rollout"]["analysis"] = {"min_requests": 50, "guardrail": {"min_requests": 10}, **analysis}
    data = config_dict(svc)
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    return parse_config(data, {})


class Harness:
    def __init__(self, config: Config, clock: FakeClock) -> None:
        loop = asyncio.get_running_loop()
        self.rng = random.Random(7)
        self.metrics = Metrics(CollectorRegistry())
        self.router = Router(config, self.metrics, loop)
        self.store = FileStore(config.state.path or "")
        self.controller = Controller(
            config, self.router, self.store, self.metrics, clock=clock.clock()
        )

    def plan(self) -> Any:
        return self.router.services[0].plan


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def started(config: Config, clock: FakeClock) -> Harness:
    harness = Harness(config, clock)
    await harness.controller.start()
    return harness


@pytest.fixture
async def harness(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Harness]:
    h = await started(make_config(tmp_path), clock)
    yield h
    await h.controller.close()


async def test_a_new_rollout_starts_at_step_0_and_is_recorded(harness: Harness) -> None:
    record = harness.store.read()["shop"]
    assert (record.status, record.step, record.version) == (Status.PROGRESSING, 0, 1)
    assert harness.plan().step_index == 0
    (entry,) = harness.store.entries("shop")
    assert (entry.action, entry.actor) == ("start", "controller")


async def test_promote_moves_the_router_and_journals_the_actor(harness: Harness) -> None:
    result = await harness.controller.apply("shop", Event.PROMOTE, "admin:127.0.0.1")
    assert result.applied
    assert harness.plan().step_index == 1
    record = harness.store.read()["shop"]
    assert (record.step, record.version) == (1, 2)
    newest = harness.store.entries("shop")[0]
    assert (newest.action, newest.actor, newest.from_step, newest.to_step) == (
        "promote",
        "admin:127.0.0.1",
        0,
        1,
    )


async def test_abort_routes_everything_to_stable(harness: Harness) -> None:
    await harness.controller.apply("shop", Event.ABORT, "admin:x")
    assert not harness.plan().active
    assert harness.store.read()["shop"].status is Status.ROLLED_BACK


async def test_a_refused_event_changes_nothing(harness: Harness) -> None:
    result = await harness.controller.apply("shop", Event.RESUME, "admin:x")
    assert result.refused
    assert harness.store.read()["shop"].version == 1
    assert len(harness.store.entries("shop")) == 1


async def test_restart_resumes_the_same_step(tmp_path: Path, clock: FakeClock) -> None:
    config = make_config(tmp_path)
    first = await started(config, clock)
    await first.controller.apply("shop", Event.PROMOTE, "admin:x")
    await first.controller.apply("shop", Event.PAUSE, "admin:x")
    await first.controller.close()
    clock.advance(4)
    second = await started(config, clock)
    rollout = second.controller.rollouts["shop"]
    assert (rollout.state.status, rollout.state.step, rollout.state.version) == (
        Status.PAUSED,
        1,
        3,
    )
    assert clock.mono - rollout.step_started == pytest.approx(4)
    assert second.plan().step_index == 1
    await second.controller.close()


@pytest.mark.parametrize(("jump", "elapsed"), [(-3600.0, 0.0), (86400.0 * 30, 10.0)])
async def test_a_wall_clock_jump_is_clamped_to_the_step(
    tmp_path: Path, clock: FakeClock, jump: float, elapsed: float
) -> None:
    config = make_config(tmp_path)
    await (await started(config, clock)).controller.close()
    clock.wall_time += jump
    again = await started(config, clock)
    rollout = again.controller.rollouts["shop"]
    assert rollout.state.step == 0
    assert clock.mono - rollout.step_started == pytest.approx(elapsed)
    await again.controller.close()


async def test_a_changed_spec_starts_a_new_rollout(tmp_path: Path, clock: FakeClock) -> None:
    first = await started(make_config(tmp_path), clock)
    await first.controller.apply("shop", Event.PROMOTE, "admin:x")
    await first.controller.close()
    steps: list[dict[str, Any]] = [{"percent": 5, "observe": "10s"}, {"percent": 100}]
    second = await started(make_config(tmp_path, steps), clock)
    state = second.controller.rollouts["shop"].state
    assert (state.status, state.step, state.version) == (Status.PROGRESSING, 0, 3)
    assert second.store.entries("shop")[0].action == "start"
    await second.controller.close()


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"schema_version": 99, "rollouts": {}}', b'{"schema_version": 1}', b""],
)
async def test_an_untrustworthy_state_file_routes_everything_to_stable(
    tmp_path: Path, clock: FakeClock, content: bytes
) -> None:
    config = make_config(tmp_path)
    (tmp_path / "state.json").write_bytes(content)
    harness = await started(config, clock)
    assert not harness.plan().active
    assert harness.controller.state_error
    with pytest.raises(StateError):
        await harness.controller.apply("shop", Event.PROMOTE, "admin:x")
    assert (tmp_path / "state.json").read_bytes() == content
    await harness.controller.close()


def feed(h: Harness, clock: FakeClock, seconds: float, canary_error: float, rate: int) -> None:
    """`rate` requests per second for `seconds` from 5,000 users: stable fails 1% of the time,
    the canary at `canary_error`."""
    rng = h.rng
    share = h.plan().everyone / 10_000
    for _ in range(int(seconds * rate)):
        clock.advance(1 / rate)
        canary = rng.random() < share
        failing = rng.random() < (canary_error if canary else 0.01)
        latency = rng.lognormvariate(-4.0, 0.5)
        user = rng.randrange(5000)
        h.controller.feed.observe(
            "shop", "free", canary, 500 if failing else 200, latency, "/", user, False
        )


async def test_a_healthy_canary_advances_after_its_observe_time(
    harness: Harness, clock: FakeClock
) -> None:
    for _ in range(120):
        feed(harness, clock, 1.0, 0.01, 1000)
        await harness.controller.tick()
        if harness.controller.rollouts["shop"].state.step == 1:
            break
    rollout = harness.controller.rollouts["shop"]
    assert rollout.state.step == 1
    assert harness.store.entries("shop")[0].action == "advance"
    assert harness.store.entries("shop")[0].evidence["verdict"] == "healthy"


async def test_a_failing_canary_is_rolled_back_by_the_guardrail(
    harness: Harness, clock: FakeClock
) -> None:
    feed(harness, clock, 3.0, 1.0, 1000)
    await asyncio.sleep(0.05)  # the guardrail's transition runs as its own task
    rollout = harness.controller.rollouts["shop"]
    assert rollout.state.status is Status.ROLLED_BACK
    entry = harness.store.entries("shop")[0]
    assert (entry.action, entry.actor) == ("guardrail", "controller")
    assert entry.evidence["verdict"] == "degraded"
    assert not harness.plan().active


async def test_each_step_tells_the_analysis_what_share_of_each_tier_it_exposes(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Machine step 0 is the baseline period (the first step exposes a whole tier)."""
    svc = service(
        ["http://127.0.0.1:9"],
        ["http://127.0.0.1:10"],
        name="shop",
        steps=[
            {"tiers": ["internal"], "observe": "10s"},
            {"percent": 25, "observe": "10s"},
            {"percent": 100},
        ],
        tiers={"tenants": {"staff": "internal"}, "default": "free"},
    )
    data = config_dict(svc)
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    harness = await started(parse_config(data, {}), clock)
    rollout = harness.controller.rollouts["shop"]
    seen = [dict(rollout.analysis.expected_shares)]
    for _ in range(3):
        await harness.controller.apply("shop", Event.PROMOTE, "admin:x")
        seen.append(dict(rollout.analysis.expected_shares))
    assert seen == [
        {"internal": 0.0, "free": 0.0},
        {"internal": 1.0, "free": 0.0},
        {"internal": 1.0, "free": 0.25},
        {"internal": 1.0, "free": 1.0},
    ]
    await harness.controller.close()


async def test_a_resumed_rollout_judges_the_step_it_serves(
    tmp_path: Path, clock: FakeClock
) -> None:
    config = make_config(tmp_path)
    first = await started(config, clock)
    await first.controller.apply("shop", Event.PROMOTE, "admin:x")
    await first.controller.close()
    second = await started(config, clock)
    rollout = second.controller.rollouts["shop"]
    assert rollout.state.step == 1

    def levels(step: int) -> object:
        analysis = config.services[0].rollout.analysis
        built = StepAnalysis(analysis, started=0.0, step=step, steps=rollout.machine_steps)
        return built.errors.levels

    assert levels(0) != levels(1)  # each step has its own share of the false-rollback budget
    assert rollout.analysis.errors.levels == levels(1)
    await second.controller.close()
