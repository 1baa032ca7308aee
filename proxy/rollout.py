"""One service's live rollout: its persisted state, the step's analysis, its routing plan.

`Rollout` is what the controller moves and what the admin API shows. The persisted part is the
state (status, step, version) and when the step started; the analysis lives only in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping

import orjson

from proxy.config import ServiceConfig, Step
from proxy.core.analysis import Assessment, StepAnalysis, TierBaseline
from proxy.core.bucketing import BUCKETS
from proxy.core.machine import RolloutState, Status
from proxy.core.routing import RoutingPlan
from proxy.store.records import RolloutRecord


def spec_hash(service: ServiceConfig, release: str = "") -> str:
    """Identity of a rollout: salt, strategy, steps and canary upstreams (not the analysis),
    and the id of the release it judges (proxy/releases.py), if any."""
    rollout = service.rollout
    spec: dict[str, object] = {
        "salt": rollout.salt,
        "strategy": rollout.strategy,
        "steps": [_step_spec(s) for s in rollout.steps],
        "canary": [str(u) for u in service.upstreams.canary],
    }
    if release:
        spec["release"] = release
    return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _step_spec(step: Step) -> list[object]:
    """A step in the spec hash; a shadow step adds its sample (other steps hash as before)."""
    spec: list[object] = [step.percent, sorted(step.tiers), sorted(step.tenants), step.observe_s]
    if step.shadow:
        spec.append({"shadow": step.shadow})
    return spec


class Rollout:
    """The live rollout of one service (the persisted part is `state` plus times)."""

    def __init__(
        self,
        config: ServiceConfig,
        state: RolloutState,
        started: float,
        release: str = "",
        *,
        idle: bool = False,
    ) -> None:
        self.config = config
        # The release this rollout judges (its id), if any; an idle rollout is a service
        # whose releases are all over: everything on stable, nothing to judge.
        self.release = release
        self.idle = idle
        # With a baseline period, machine step 0 is the baseline (nothing exposed) and
        # configured step i is machine step i + 1.
        self.offset = 1 if config.rollout.baseline_s > 0 else 0
        self.machine_steps = len(config.rollout.steps) + self.offset
        self.spec_hash = spec_hash(config, release)
        self.state = state
        self.step_started = started  # monotonic
        self.step_started_wall = 0.0
        # The spec hash of a shared record written by a replica with another configuration of
        # this service: its steps mean nothing here, so this replica serves stable meanwhile.
        self.foreign_spec: str | None = None
        self.analysis = self.new_analysis(started, {})
        self.last: Assessment | None = None
        self.lock = asyncio.Lock()
        self.guardrail_pending = False

    def new_analysis(self, now: float, baselines: Mapping[str, TierBaseline]) -> StepAnalysis:
        rollout = self.config.rollout
        plan = self.plan()
        # The share of each tier the plan exposes; pins and tenant cohorts make it approximate,
        # so the analysis only uses it until it has measured the share.
        expected = {
            tier: max(plan.everyone, plan.by_tier.get(tier, 0)) / BUCKETS if plan.active else 0.0
            for tier in self.config.tiers.names
        }
        return StepAnalysis(
            rollout.analysis,
            baselines=baselines,
            started=now,
            step=self.state.step,
            steps=self.machine_steps,
            expected_shares=expected,
            shadow_tolerance=rollout.shadow.tolerance if plan.shadow > 0 else 0.0,
        )

    def enter_step(self, now: float, wall: float, *, keep_baselines: bool) -> None:
        baselines = self.analysis.tier_baselines() if keep_baselines else {}
        self.step_started = now
        self.step_started_wall = wall
        self.analysis = self.new_analysis(now, baselines)
        self.last = None
        self.guardrail_pending = False

    def carries(self, config: ServiceConfig) -> bool:
        """Whether a reloaded `config` of this service continues this rollout (same spec,
        same baseline period: the machine's steps mean the same)."""
        offset = 1 if config.rollout.baseline_s > 0 else 0
        return spec_hash(config, self.release) == self.spec_hash and offset == self.offset

    def reconfigure(self, config: ServiceConfig) -> None:
        """Continue under a reloaded `config` that `carries` this rollout. Its evidence is
        kept unless the analysis settings (or the tiers it is counted by) changed: then the
        step's analysis starts again under them, with the baselines kept."""
        before = self.config
        self.config = config
        if (
            before.rollout.analysis != config.rollout.analysis
            or before.rollout.shadow != config.rollout.shadow
            or before.tiers != config.tiers
        ):
            self.analysis = self.new_analysis(self.step_started, self.analysis.tier_baselines())
            self.last = None

    @property
    def step_index(self) -> int:
        """The configured step served (-1 during the baseline period)."""
        return self.state.step - self.offset

    @property
    def in_baseline(self) -> bool:
        return self.step_index < 0

    def plan(self) -> RoutingPlan:
        rollout = self.config.rollout
        active = (
            self.state.status is not Status.ROLLED_BACK
            and self.foreign_spec is None
            and not self.idle
        )
        return rollout.plan(self.step_index, active=active)

    def observe_s(self) -> float:
        if self.in_baseline:
            return self.config.rollout.baseline_s
        return self.config.rollout.steps[self.step_index].observe_s or 0.0

    def state_of(self, record: RolloutRecord) -> RolloutState:
        """The machine state a stored record of this rollout describes."""
        return RolloutState(record.status, record.step, self.machine_steps, record.version)

    def elapsed_at(self, record: RolloutRecord, wall: float) -> float:
        """Time already spent in the record's step, by the wall clock, clamped to [0, observe]
        so that a clock jump cannot move the rollout by more than one step."""
        return min(max(wall - record.step_started, 0.0), self.observe_s())

    def record(self, wall: float) -> RolloutRecord:
        return record_after(self, self.state, self.step_started_wall, wall)


def record_after(
    rollout: Rollout, state: RolloutState, step_started: float, wall: float
) -> RolloutRecord:
    return RolloutRecord(
        service=rollout.config.name,
        spec_hash=rollout.spec_hash,
        status=state.status,
        step=state.step,
        version=state.version,
        step_started=step_started,
        updated=wall,
    )
