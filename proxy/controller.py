"""The control loop: counts -> analysis -> state machine -> store -> new routing snapshot.

One `Controller` owns every service's rollout. Requests feed the current step's analysis as
they finish (`observe`, a few microseconds, never awaiting); a guardrail breach schedules a
rollback at once. Every `analysis.interval` the controller takes a verdict per service and
advances a step whose `observe` time has passed with evidence of non-inferiority, or rolls back
a degraded one. People act through `apply` (the admin API). Every transition goes through the
state machine, is written to the store with compare-and-set on the version and journaled with
its evidence before it is acknowledged, and only then swapped into the router.

Durations use the monotonic clock. The wall clock is recorded for people and used once, on
start, to resume a step's elapsed time (clamped to [0, observe], so a clock jump cannot move a
rollout by more than one step, and only with evidence). When the state store cannot be read the
controller routes every service to stable, says why in its status, and refuses mutations.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from proxy.config import Config, ServiceConfig
from proxy.core.analysis import Assessment, StepAnalysis, TierBaseline, Verdict, classify_status
from proxy.core.bucketing import BUCKETS
from proxy.core.machine import Event, RolloutState, Status, Transition, initial, step
from proxy.core.routing import RoutingPlan
from proxy.errors import StateError
from proxy.store.records import JournalEntry, RolloutRecord


@dataclass(frozen=True, slots=True)
class Clock:
    """Time as a dependency: tests move it instead of sleeping."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time


class Store(Protocol):
    async def load(self) -> dict[str, RolloutRecord]: ...
    async def cas(self, record: RolloutRecord, expected_version: int | None) -> bool: ...
    async def journal(self, entry: JournalEntry) -> None: ...
    async def history(self, service: str, limit: int = 100) -> list[JournalEntry]: ...


class PlanSink(Protocol):
    """Where routing snapshots go (the router)."""

    def set_plan(self, name: str, plan: RoutingPlan) -> None: ...


class StatusSink(Protocol):
    """Where rollout gauges and decision counters go (the metrics)."""

    def set_status(self, service: str, status: str) -> None: ...

    def decision(self, service: str, action: str) -> None: ...


def spec_hash(service: ServiceConfig) -> str:
    """Identity of a rollout: salt, strategy, steps and canary upstreams (not the analysis)."""
    rollout = service.rollout
    spec = {
        "salt": rollout.salt,
        "strategy": rollout.strategy,
        "steps": [
            [s.percent, sorted(s.tiers), sorted(s.tenants), s.observe_s] for s in rollout.steps
        ],
        "canary": [str(u) for u in service.upstreams.canary],
    }
    return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class Rollout:
    """The live rollout of one service (the persisted part is `state` plus times)."""

    def __init__(self, config: ServiceConfig, state: RolloutState, started: float) -> None:
        self.config = config
        # With a baseline period, machine step 0 is the baseline (nothing exposed) and
        # configured step i is machine step i + 1.
        self.offset = 1 if config.rollout.baseline_s > 0 else 0
        self.machine_steps = len(config.rollout.steps) + self.offset
        self.spec_hash = spec_hash(config)
        self.state = state
        self.step_started = started  # monotonic
        self.step_started_wall = 0.0
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
        )

    def enter_step(self, now: float, wall: float, *, keep_baselines: bool) -> None:
        baselines = self.analysis.tier_baselines() if keep_baselines else {}
        self.step_started = now
        self.step_started_wall = wall
        self.analysis = self.new_analysis(now, baselines)
        self.last = None
        self.guardrail_pending = False

    @property
    def step_index(self) -> int:
        """The configured step served (-1 during the baseline period)."""
        return self.state.step - self.offset

    @property
    def in_baseline(self) -> bool:
        return self.step_index < 0

    def plan(self) -> RoutingPlan:
        rollout = self.config.rollout
        active = self.state.status is not Status.ROLLED_BACK
        return RoutingPlan.build(rollout, self.step_index, active=active)

    def observe_s(self) -> float:
        if self.in_baseline:
            return self.config.rollout.baseline_s
        return self.config.rollout.steps[self.step_index].observe_s or 0.0

    def record(self, wall: float) -> RolloutRecord:
        return _record_after(self, self.state, self.step_started_wall, wall)


class Controller:
    """Owns the rollouts: resumes them, judges them, moves them, records why."""

    def __init__(
        self,
        config: Config,
        router: PlanSink,
        store: Store,
        sink: StatusSink,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.store = store
        self.sink = sink
        self.clock = clock or Clock()
        self.rollouts: dict[str, Rollout] = {}
        self.state_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Transition]] = set()

    # --- start and resume -----------------------------------------------------------------

    async def start(self) -> None:
        try:
            records = await self.store.load()
        except StateError as exc:
            self._fail_safe(str(exc))
            return
        for service in self.config.services:
            await self._resume(service, records.get(service.name))
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def _fail_safe(self, reason: str) -> None:
        """No trustworthy state: everything to stable, and say so."""
        self.state_error = f"state store unreadable, all traffic on stable: {reason}"
        now = self.clock.monotonic()
        for service in self.config.services:
            rollout = Rollout(service, initial(1), now)
            rollout.state = RolloutState(Status.ROLLED_BACK, 0, rollout.machine_steps)
            self.rollouts[service.name] = rollout
            self._publish(rollout)

    async def _resume(self, service: ServiceConfig, record: RolloutRecord | None) -> None:
        now, wall = self.clock.monotonic(), self.clock.wall()
        rollout = Rollout(service, initial(1), now)
        steps = rollout.machine_steps
        if record is not None and record.spec_hash == rollout.spec_hash and record.step < steps:
            rollout.state = RolloutState(record.status, record.step, steps, record.version)
            elapsed = min(max(wall - record.step_started, 0.0), rollout.observe_s())
            rollout.step_started = now - elapsed
            rollout.step_started_wall = record.step_started
        else:
            version = 1 if record is None else record.version + 1
            rollout.state = RolloutState(Status.PROGRESSING, 0, steps, version)
            rollout.step_started_wall = wall
            written = await self.store.cas(
                rollout.record(wall), None if record is None else record.version
            )
            if not written:
                raise StateError(f"{service.name}: the state changed while starting")
            await self.store.journal(self._entry(rollout, "start", "controller", None, "new spec"))
        # The analysis is built for the step actually served (its alpha share and the plan's
        # shares). Pre-exposure baselines are not persisted: after a restart, a tier wholly on
        # the canary gathers evidence again only from the next step's own traffic.
        rollout.analysis = rollout.new_analysis(rollout.step_started, {})
        self.rollouts[service.name] = rollout
        self._publish(rollout)

    def _publish(self, rollout: Rollout) -> None:
        self.router.set_plan(rollout.config.name, rollout.plan())
        self.sink.set_status(rollout.config.name, rollout.state.status.value)

    # --- evidence from the data plane -------------------------------------------------------

    def observe(
        self,
        service: str,
        tier: str,
        canary: bool,
        status: int,
        latency_s: float,
        path: str,
        id_hash: int,
        proxy_generated: bool,
    ) -> None:
        """One finished request (called by the data plane; never awaits)."""
        rollout = self.rollouts.get(service)
        if rollout is None or rollout.state.status not in (Status.PROGRESSING, Status.PAUSED):
            return
        analysis = rollout.analysis
        error = classify_status(
            status, analysis.config.error_statuses, proxy_generated=proxy_generated
        )
        tripped = analysis.observe(
            tier=tier,
            canary=canary,
            error=error,
            latency_s=latency_s,
            path=path,
            id_hash=id_hash,
            now=self.clock.monotonic(),
            timed=not proxy_generated,
        )
        if tripped is not None and not rollout.guardrail_pending:
            rollout.guardrail_pending = True
            rollout.last = tripped
            self._schedule(service, Event.GUARDRAIL, tripped)

    def _schedule(self, service: str, event: Event, evidence: Assessment) -> None:
        task = asyncio.get_running_loop().create_task(
            self.apply(service, event, "controller", evidence)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # --- the loop ---------------------------------------------------------------------------

    def interval(self) -> float:
        return min(s.rollout.analysis.interval_s for s in self.config.services)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval())
            try:
                await self.tick()
            except StateError:
                # The store refused or could not be written (a full disk): nothing changed,
                # and the verdict is acted on again next interval. The loop must outlive it.
                continue

    async def tick(self) -> None:
        """Take a verdict for every progressing rollout and act on it."""
        now = self.clock.monotonic()
        for name, rollout in self.rollouts.items():
            if rollout.state.status is not Status.PROGRESSING or self.state_error:
                continue
            verdict = rollout.analysis.assess(now)
            rollout.last = verdict
            held = now - rollout.step_started >= rollout.observe_s()
            if rollout.in_baseline:
                if held:  # the baseline only measures: nothing to judge yet
                    why = _baseline_summary(rollout.analysis.tier_baselines())
                    await self.apply(name, Event.ADVANCE, "controller", None, why)
            elif verdict.verdict is Verdict.DEGRADED:
                await self.apply(name, Event.DEGRADED, "controller", verdict)
            elif verdict.verdict is Verdict.HEALTHY and held:
                await self.apply(name, Event.ADVANCE, "controller", verdict)

    # --- transitions --------------------------------------------------------------------------

    async def apply(
        self,
        service: str,
        event: Event,
        actor: str,
        evidence: Assessment | None = None,
        reason: str = "",
    ) -> Transition:
        """Apply `event`: machine, then store (CAS), journal, routing. Raises StateError when
        the store refuses or cannot be written (nothing changes then)."""
        rollout = self.rollouts[service]
        if self.state_error:
            raise StateError(self.state_error)
        async with rollout.lock:
            transition = step(rollout.state, event)
            if not transition.applied:
                return transition
            wall = self.clock.wall()
            moved = transition.after.step != transition.before.step or event is Event.RESTART
            started = wall if moved else rollout.step_started_wall
            record = _record_after(rollout, transition.after, started, wall)
            if not await self.store.cas(record, transition.before.version):
                raise StateError(f"{service}: the rollout changed elsewhere; try again")
            rollout.state = transition.after
            entry = self._entry(rollout, event.value, actor, evidence, reason, transition)
            try:
                await self.store.journal(entry)
            finally:
                # The state is written: routing follows it even when the journal cannot be.
                if moved:
                    now = self.clock.monotonic()
                    rollout.enter_step(now, wall, keep_baselines=event is not Event.RESTART)
                self._publish(rollout)
                self.sink.decision(service, event.value)
            return transition

    def _entry(
        self,
        rollout: Rollout,
        action: str,
        actor: str,
        evidence: Assessment | None,
        reason: str,
        transition: Transition | None = None,
    ) -> JournalEntry:
        before = transition.before if transition else rollout.state
        after = transition.after if transition else rollout.state
        return JournalEntry(
            time=self.clock.wall(),
            service=rollout.config.name,
            actor=actor,
            action=action,
            from_status=before.status.value,
            from_step=before.step - rollout.offset,
            to_status=after.status.value,
            to_step=after.step - rollout.offset,
            version=after.version,
            reason=reason or (evidence.summary if evidence else ""),
            evidence=assessment_json(evidence) if evidence else {},
        )

    async def history(self, service: str, limit: int = 100) -> list[JournalEntry]:
        return await self.store.history(service, limit)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._pending):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task


def _record_after(
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


def _baseline_summary(baselines: Mapping[str, TierBaseline]) -> str:
    measured = ", ".join(
        f"{tier} {b.errors.requests:,} requests at {100 * b.errors.rate:.2f}% errors"
        for tier, b in sorted(baselines.items())
    )
    return f"baseline period over: {measured or 'no traffic measured'}"


def assessment_json(assessment: Assessment) -> dict[str, Any]:
    """An assessment as plain JSON (journal and API): orjson handles the dataclasses."""
    data = orjson.loads(orjson.dumps(assessment, default=_finite))
    return data if isinstance(data, dict) else {}


def _finite(value: object) -> object:
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError
