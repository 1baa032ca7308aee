"""The control loop: counts -> analysis -> state machine -> store -> new routing snapshot.

One `Controller` owns every service's rollout. Requests feed the current step's analysis as
they finish (`observe`, a few microseconds, never awaiting); a guardrail breach schedules a
rollback at once. Every `analysis.interval` the controller takes a verdict per service and
advances a step whose `observe` time has passed with evidence of non-inferiority, or rolls back
a degraded one. People act through `apply` (the admin API). Every transition goes through the
state machine and is committed to the store (compare-and-set on the version, with its journal
entry and evidence) before it is acknowledged, and only then swapped into the router.

With a shared store (fleet mode, proxy/fleet/) several controllers see one rollout: only the
one `deciding` judges it (the others serve, and steer through the admin API); each `adopt`s the
records the others write. Of two transitions from the same version exactly one commits. A
transition toward stable (abort, pause, a rollback) wins a race: it is retried on the newer
state; when the store cannot be reached it applies here at once and is written back
(`write_back`) when the store returns. Anything else is refused while the store is away.

Durations use the monotonic clock. The wall clock is recorded for people and used to place a
step's start when resuming or adopting (clamped to [0, observe], so a clock jump cannot move a
rollout by more than one step, and only with evidence). When the state store cannot be read the
controller routes every service to stable, says why in its status, and refuses mutations.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import orjson

from proxy.config import Config, ServiceConfig
from proxy.core.analysis import Assessment, TierBaseline, Verdict
from proxy.core.machine import Event, RolloutState, Status, Transition, initial, step
from proxy.core.notices import Notice, NoticeKind
from proxy.core.releases import (
    Known,
    ReleaseStatus,
    StartKind,
    keep_newest,
    on_start,
    outcome_of,
    release_id,
)
from proxy.core.routing import RoutingPlan
from proxy.errors import StaleVersion, StateError, StoreUnavailable
from proxy.feed import AnalysisFeed
from proxy.fleet.batch import ServiceEvidence, replay
from proxy.promquery import PromReader
from proxy.releases import (
    StartRequest,
    ended,
    release_salt,
    served,
    served_config,
    stable_of,
    target,
)
from proxy.rollout import Rollout, record_after
from proxy.store.records import JournalEntry, ReleaseBook, ReleaseRecord, RolloutRecord
from proxy.tasks import finish, stop_tasks

# Events that move toward stable or hold still: they win a race with a concurrent change
# (retried on the newer state) and apply locally first when the shared store is away.
SAFE_EVENTS = frozenset({Event.ABORT, Event.PAUSE, Event.DEGRADED, Event.GUARDRAIL})
CLOSE_WAIT_S = 5.0  # how long closing waits for transitions under way
_ATTEMPTS = 5  # commits of a safe event before giving up on a store that keeps changing


@dataclass(frozen=True, slots=True)
class Clock:
    """Time as a dependency: tests move it instead of sleeping."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time


class Store(Protocol):
    async def load(self) -> dict[str, RolloutRecord]: ...
    async def commit(
        self, record: RolloutRecord, expected_version: int | None, entry: JournalEntry
    ) -> bool: ...
    async def history(self, service: str, limit: int = 100) -> list[JournalEntry]: ...
    async def load_books(self) -> dict[str, ReleaseBook]: ...
    async def commit_book(self, book: ReleaseBook, expected_version: int | None) -> bool: ...


class PlanSink(Protocol):
    """Where routing snapshots go (the router, or the supervisor of worker processes)."""

    def set_plan(self, name: str, plan: RoutingPlan) -> None: ...

    def reconfigure(self, config: Config, plans: Mapping[str, RoutingPlan]) -> None:
        """A reloaded config, with the plan of each of its services, swapped in at once."""


class StatusSink(Protocol):
    """Where rollout gauges and decision counters go (the metrics)."""

    def set_status(self, service: str, status: str) -> None: ...

    def decision(self, service: str, action: str) -> None: ...


class NoticeSink(Protocol):
    """Where the team is told what happened (proxy/notify/): a plain call that never waits.
    Only the controller that commits a transition announces it, not those that adopt it."""

    def notify(self, notice: Notice) -> None: ...


@dataclass(frozen=True, slots=True)
class Pending:
    """A transition applied here while the shared store was away, to be written back."""

    event: Event
    actor: str
    reason: str


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
        deciding: bool = True,
        notices: NoticeSink | None = None,
    ) -> None:
        # The config file's; `config` is what is served: the file's, with each service that has
        # releases as its release book has it served (proxy/releases.py).
        self.file_config = config
        self.books: dict[str, ReleaseBook] = {}
        self.config = config
        self.router = router
        self.store = store
        self.sink = sink
        self.clock = clock or Clock()
        self.notices = notices
        self.rollouts: dict[str, Rollout] = {}
        # What the data plane feeds each finished request to.
        self.feed = AnalysisFeed(
            self.rollouts, self.clock.monotonic, self._guardrail_tripped, deciding=deciding
        )
        self.pending: dict[str, Pending] = {}
        self.state_error: str | None = None
        self.resumed = False
        self._task: asyncio.Task[None] | None = None
        self._pending_tasks: set[asyncio.Task[Transition]] = set()
        self._books_lock = asyncio.Lock()  # one release write at a time
        self.prometheus = PromReader()  # the prometheus checks' counters, read every tick

    # --- start and resume -----------------------------------------------------------------

    async def start(self) -> None:
        """Resume every rollout from the store (or serve stable when it cannot be read; with a
        shared store that is only away, `resume` is tried again until it works)."""
        with contextlib.suppress(StateError):
            await self.resume()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def resume(self) -> None:
        try:
            records = await self.store.load()
            books = await self.store.load_books()
            if books or self.books:
                await self._serve_books(books, records)
            else:
                for service in self.config.services:
                    await self._resume(service, records.get(service.name))
        except StateError as exc:
            self._fail_safe(str(exc), unreachable=isinstance(exc, StoreUnavailable))
            raise
        self.state_error = None
        self.resumed = True

    def _fail_safe(self, reason: str, *, unreachable: bool) -> None:
        """No trustworthy state: everything to stable, and say so."""
        what = "unreachable" if unreachable else "unreadable"
        self.state_error = f"state store {what}, all traffic on stable: {reason}"
        now = self.clock.monotonic()
        for service in self.config.services:
            rollout = self.rollouts[service.name] = _stable_only(service, now)
            self._publish(rollout)

    async def _resume(self, service: ServiceConfig, record: RolloutRecord | None) -> None:
        rollout = await self._started(service, record)
        self.rollouts[service.name] = rollout
        self._publish(rollout)

    async def _serve_books(
        self, books: Mapping[str, ReleaseBook], records: Mapping[str, RolloutRecord]
    ) -> None:
        """Serve every service as the release `books` have it (read from the store), each
        rollout resumed from `records` or started; routing swapped in at once."""
        self.books = dict(books)
        config = served_config(self.file_config, self.books)
        rollouts = {}
        for service in config.services:
            rollouts[service.name] = await self._made(service, records.get(service.name))
        self.config = config
        self.rollouts.clear()
        self.rollouts.update(rollouts)
        self.router.reconfigure(config, {n: r.plan() for n, r in rollouts.items()})
        for rollout in rollouts.values():
            self.sink.set_status(rollout.config.name, rollout.state.status.value)

    async def _made(
        self, service: ServiceConfig, record: RolloutRecord | None, why: str = "new spec"
    ) -> Rollout:
        """The rollout `service` is served by: idle once its releases are over (nothing
        written), else resumed from `record` or started."""
        _, release, idle = served(service, self.books.get(service.name))
        if idle:
            rollout = Rollout(service, initial(1), self.clock.monotonic(), idle=True)
            if record is not None:
                rollout.state = RolloutState(record.status, 0, 1, record.version)
            return rollout
        return await self._started(service, record, why, release)

    async def _started(
        self,
        service: ServiceConfig,
        record: RolloutRecord | None,
        why: str = "new spec",
        release: str = "",
    ) -> Rollout:
        """The rollout of `service` that the store's `record` describes, or a new one
        (committed) when the record is of another spec."""
        now, wall = self.clock.monotonic(), self.clock.wall()
        rollout = Rollout(service, initial(1), now, release)
        for _ in range(_ATTEMPTS):
            if (
                record
                and record.spec_hash == rollout.spec_hash
                and record.step < rollout.machine_steps
            ):
                break
            version = 1 if record is None else record.version + 1
            rollout.state = RolloutState(Status.PROGRESSING, 0, rollout.machine_steps, version)
            rollout.step_started_wall = wall
            expected = None if record is None else record.version
            entry = self._entry(rollout, "start", "controller", None, why)
            if await self.store.commit(rollout.record(wall), expected, entry):
                record = rollout.record(wall)
                self._announce(rollout, NoticeKind.RELEASE_STARTED, entry)
                break
            record = (await self.store.load()).get(service.name)  # another replica started it
        else:
            raise StateError(f"{service.name}: the state keeps changing while starting")
        rollout.state = rollout.state_of(record)
        rollout.step_started = now - rollout.elapsed_at(record, wall)
        rollout.step_started_wall = record.step_started
        # The analysis is built for the step actually served (its alpha share and the plan's
        # shares). Pre-exposure baselines are not persisted: after a restart, a tier wholly on
        # the canary gathers evidence again only from the next step's own traffic.
        rollout.analysis = rollout.new_analysis(rollout.step_started, {})
        return rollout

    # --- reload -------------------------------------------------------------------------------

    async def reconfigure(self, config: Config) -> list[str]:
        """Serve a reloaded `config`; what happened to each rollout, one line each.

        A rollout whose spec (salt, strategy, steps, canary upstreams, baseline period) is
        unchanged carries on: same state, same step timer, same evidence and baselines (its
        analysis is rebuilt, keeping the baselines, only when its analysis settings changed: a
        sequential test's guarantee does not survive new thresholds half-way). A changed spec
        starts a new rollout, by the same rule as at start. Nothing changes here when the
        store refuses (StateError); then the caller keeps the old config everywhere."""
        async with contextlib.AsyncExitStack() as held:
            for rollout in self.rollouts.values():  # no transition runs during the swap
                await held.enter_async_context(rollout.lock)
            self.file_config = config
            config = served_config(config, self.books)
            notes, rollouts = await self._reconfigured(config)
            for rollout, service in rollouts.values():
                if rollout.config is not service:
                    rollout.reconfigure(service)
            self.config = config
            self.rollouts.clear()
            self.rollouts.update({name: rollout for name, (rollout, _) in rollouts.items()})
            self.pending = {n: p for n, p in self.pending.items() if n in self.rollouts}
            self.router.reconfigure(config, {n: r.plan() for n, r in self.rollouts.items()})
            for rollout in self.rollouts.values():
                self.sink.set_status(rollout.config.name, rollout.state.status.value)
        return notes

    async def _reconfigured(
        self, config: Config
    ) -> tuple[list[str], dict[str, tuple[Rollout, ServiceConfig]]]:
        """The rollout of each service of `config` (carried, or started), without serving it."""
        names = {s.name for s in config.services}
        notes = [f"service {n}: removed" for n in self.rollouts if n not in names]
        rollouts: dict[str, tuple[Rollout, ServiceConfig]] = {}
        records: dict[str, RolloutRecord] | None = None
        for service in config.services:
            old = self.rollouts.get(service.name)
            idle = served(service, self.books.get(service.name))[2]
            if old is not None and old.idle and idle:
                rollouts[service.name] = (old, service)
                continue
            if old is not None and not old.idle and not idle and old.carries(service):
                rollouts[service.name] = (old, service)
                if old.config.rollout.analysis != service.rollout.analysis:
                    notes.append(
                        f"service {service.name}: analysis settings changed: the step's "
                        "evidence is gathered again under them, baselines kept"
                    )
                continue
            if self.state_error:
                rollout = _stable_only(service, self.clock.monotonic())
            else:
                records = await self.store.load() if records is None else records
                why = "new spec (reload)" if old is not None else "new service (reload)"
                rollout = await self._made(service, records.get(service.name), why)
            what = "added"
            if old is not None:
                same = old.spec_hash == rollout.spec_hash
                what = "baseline period changed: resumed" if same else "rollout spec changed"
            notes.append(f"service {service.name}: {what}: at version {rollout.state.version}")
            rollouts[service.name] = (rollout, service)
        return notes, rollouts

    def _publish(self, rollout: Rollout) -> None:
        self.router.set_plan(rollout.config.name, rollout.plan())
        self.sink.set_status(rollout.config.name, rollout.state.status.value)

    # --- what other replicas wrote ----------------------------------------------------------

    def adopt(self, record: RolloutRecord) -> bool:
        """Serve a newer record written elsewhere; True when something changed here."""
        rollout = self.rollouts.get(record.service)
        if rollout is None or not self.resumed or record.service in self.pending:
            return False
        if record.spec_hash != rollout.spec_hash:
            changed = rollout.foreign_spec != record.spec_hash
            rollout.foreign_spec = record.spec_hash
        else:
            changed = rollout.foreign_spec is not None or record.version > rollout.state.version
            rollout.foreign_spec = None
            if record.version > rollout.state.version:
                self._take(rollout, record)
        if changed:
            self._publish(rollout)
        return changed

    def _take(self, rollout: Rollout, record: RolloutRecord) -> None:
        moved = record.step != rollout.state.step or record.step_started != (
            rollout.step_started_wall
        )
        rollout.state = rollout.state_of(record)
        if moved:
            now, wall = self.clock.monotonic(), self.clock.wall()
            rollout.enter_step(
                now - rollout.elapsed_at(record, wall), record.step_started, keep_baselines=True
            )

    def begin_deciding(self) -> None:
        """This replica now judges the rollouts: fresh analyses for the steps served."""
        for rollout in self.rollouts.values():
            rollout.analysis = rollout.new_analysis(rollout.step_started, {})
            rollout.last = None
            rollout.guardrail_pending = False
        self.deciding = True

    async def write_back(self, records: Mapping[str, RolloutRecord]) -> None:
        """Make the store hold what this controller serves where it should: a change applied
        here while the store was away (it wins over what the fleet did meanwhile: each one
        moves toward stable or holds still), and a record the store lost (a Redis restarted
        without persistence) is written again from this replica's state."""
        for name, rollout in self.rollouts.items():
            record = records.get(name)
            if record is None:
                await self._restore(rollout)
            elif name in self.pending:
                await self._write_pending(rollout, record)

    async def _restore(self, rollout: Rollout) -> None:
        name = rollout.config.name
        async with rollout.lock:
            pending = self.pending.get(name)
            action, actor = (pending.event.value, pending.actor) if pending else ("restore", "")
            why = "the state store had lost this rollout's record; written again from here"
            reason = f"{pending.reason}; {why}" if pending and pending.reason else why
            entry = self._entry(rollout, action, actor or "controller", None, reason)
            if await self.store.commit(rollout.record(self.clock.wall()), None, entry):
                self.pending.pop(name, None)
            # else another replica restored it first: a pending change is applied on top of
            # that record by the next reconcile

    async def _write_pending(self, rollout: Rollout, record: RolloutRecord) -> None:
        name = rollout.config.name
        pending = self.pending[name]
        async with rollout.lock:
            if record.spec_hash != rollout.spec_hash:
                del self.pending[name]  # another rollout now: nothing to apply it to
                return
            transition = step(rollout.state_of(record), pending.event)
            if transition.applied:
                after = self._record(rollout, transition, pending.event)
                entry = self._entry(
                    rollout, pending.event.value, pending.actor, None, pending.reason, transition
                )
                if not await self.store.commit(after, record.version, entry):
                    return  # changed under us: the next reconcile tries again
                record = after
            del self.pending[name]
            self._take(rollout, record)
            self._publish(rollout)

    # --- evidence from the data plane -------------------------------------------------------

    @property
    def deciding(self) -> bool:
        """Whether this process judges the rollouts (one replica of a fleet does)."""
        return self.feed.deciding

    @deciding.setter
    def deciding(self, value: bool) -> None:
        self.feed.deciding = value

    def _guardrail_tripped(self, service: str, tripped: Assessment) -> None:
        self._schedule(service, Event.GUARDRAIL, tripped)

    def observe_evidence(self, parts: Iterable[ServiceEvidence]) -> int:
        """Requests other replicas served (fleet mode); only those served under the rollout
        state this controller holds count. Returns how many counted."""
        counted = 0
        for part in parts:
            rollout = self.rollouts.get(part.service)
            if rollout is None or (part.spec_hash, part.version) != (
                rollout.spec_hash,
                rollout.state.version,
            ):
                continue
            replay(part, self.feed)
            counted += len(part.records)
        return counted

    def tags(self) -> dict[str, tuple[str, int]]:
        """Each rollout's (spec hash, version): what evidence served now belongs to."""
        return {name: (r.spec_hash, r.state.version) for name, r in self.rollouts.items()}

    def _schedule(self, service: str, event: Event, evidence: Assessment) -> None:
        task = asyncio.get_running_loop().create_task(
            self.apply(service, event, "controller", evidence)
        )
        self._pending_tasks.add(task)
        task.add_done_callback(self._pending_tasks.discard)

    # --- the loop ---------------------------------------------------------------------------

    def interval(self) -> float:
        return min(s.rollout.analysis.interval_s for s in self.config.services)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval())
            try:
                if self.pending:  # applied here while the store could not be written
                    await self.write_back(await self.store.load())
                await self.tick()
                await self.follow_releases()
            except StateError:
                # The store refused or could not be written (a full disk): nothing changed,
                # and the verdict is acted on again next interval. The loop must outlive it.
                continue

    async def tick(self) -> None:
        """Take a verdict for every progressing rollout and act on it."""
        if not self.deciding or self.state_error:
            return
        await self.prometheus.read(self.rollouts.values())  # bounded by each check's timeout
        now = self.clock.monotonic()
        for name, rollout in self.rollouts.items():
            if rollout.state.status is not Status.PROGRESSING or name in self.pending:
                continue
            if rollout.idle:
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
        *,
        expected_version: int | None = None,
    ) -> Transition:
        """Apply `event`: machine, then store (compare-and-set with the journal entry), then
        routing. Raises StateError when the store refuses or cannot be written (nothing
        changes then), StoreUnavailable when a shared store is away (except for SAFE_EVENTS,
        which then apply here and are written back later), StaleVersion when
        `expected_version` (the version the person acting saw) is not the current one. A
        release whose rollout it ends is ended too (completion promotes its pool)."""
        transition = await self._transition(
            service, event, actor, evidence, reason, expected_version=expected_version
        )
        if transition.applied and transition.after.status in _OVER:
            async with self._books_lock:
                await self._conclude(service)
        return transition

    async def _transition(
        self,
        service: str,
        event: Event,
        actor: str,
        evidence: Assessment | None = None,
        reason: str = "",
        *,
        expected_version: int | None = None,
    ) -> Transition:
        rollout = self.rollouts[service]
        if self.state_error:
            raise StateError(self.state_error)
        if rollout.idle:
            raise StateError(
                f"{service}: no release in progress; start one (rollout-proxy release start)"
            )
        async with rollout.lock:
            current = rollout.state.version
            if expected_version is not None and expected_version != current:
                raise StaleVersion(
                    f"{service} is at version {current}, not {expected_version}: it changed "
                    "since you looked; look again and retry"
                )
            for _ in range(_ATTEMPTS):
                transition = step(rollout.state, event)
                if not transition.applied or service in self.pending:
                    if transition.applied:  # already ahead of the store: stays local too
                        self._enter(rollout, transition, event)
                        entry = self._entry(
                            rollout, event.value, actor, evidence, reason, transition
                        )
                        self._announce_transition(rollout, transition, event, entry)
                    return transition
                record = self._record(rollout, transition, event)
                entry = self._entry(rollout, event.value, actor, evidence, reason, transition)
                try:
                    written = await self.store.commit(record, transition.before.version, entry)
                except StoreUnavailable:
                    if event not in SAFE_EVENTS:
                        raise
                    why = reason or (evidence.summary if evidence else "")
                    self.pending[service] = Pending(event, actor, why)
                    written = True
                if written:
                    self._enter(rollout, transition, event)
                    self._announce_transition(rollout, transition, event, entry)
                    return transition
                if event not in SAFE_EVENTS:
                    raise StateError(f"{service}: the rollout changed elsewhere; try again")
                await self._refresh(rollout)
        raise StateError(f"{service}: the rollout keeps changing elsewhere; try again")

    def _enter(self, rollout: Rollout, transition: Transition, event: Event) -> None:
        """Serve a committed (or pending) transition."""
        rollout.state = transition.after
        if _moves(transition, event):
            now, wall = self.clock.monotonic(), self.clock.wall()
            rollout.enter_step(now, wall, keep_baselines=event is not Event.RESTART)
        self._publish(rollout)
        self.sink.decision(rollout.config.name, event.value)

    def _announce_transition(
        self, rollout: Rollout, transition: Transition, event: Event, entry: JournalEntry
    ) -> None:
        kind = notice_kind(transition, event)
        if kind is not None:
            self._announce(rollout, kind, entry)

    def _announce(self, rollout: Rollout, kind: NoticeKind, entry: JournalEntry) -> None:
        """Tell the team about a transition this controller committed (or applied)."""
        if self.notices is None:
            return
        book = self.books.get(rollout.config.name)
        release = book.find(rollout.release) if book and rollout.release else None
        steps = len(rollout.config.rollout.steps)
        percent = None
        if entry.to_step >= 0 and entry.to_step < steps:
            percent = rollout.config.rollout.steps[entry.to_step].percent
        self.notices.notify(
            Notice(
                kind=kind,
                time=entry.time,
                service=entry.service,
                release=release.version if release else "",
                release_id=release.id if release else "",
                change=dict(release.change) if release else {},
                step=entry.to_step,
                steps=steps,
                percent=percent,
                status=entry.to_status,
                actor=entry.actor,
                verdict=entry.reason,
            )
        )

    def _record(self, rollout: Rollout, transition: Transition, event: Event) -> RolloutRecord:
        wall = self.clock.wall()
        started = wall if _moves(transition, event) else rollout.step_started_wall
        return record_after(rollout, transition.after, started, wall)

    async def _refresh(self, rollout: Rollout) -> None:
        """Take the store's newer record of `rollout` (the lock is held by the caller)."""
        record = (await self.store.load()).get(rollout.config.name)
        if (
            record
            and record.spec_hash == rollout.spec_hash
            and record.version > rollout.state.version
        ):
            self._take(rollout, record)
            self._publish(rollout)

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

    # --- releases -------------------------------------------------------------------------------

    def file_service(self, name: str) -> ServiceConfig | None:
        """The config file's section of service `name`."""
        return next((s for s in self.file_config.services if s.name == name), None)

    async def start_release(
        self, name: str, request: StartRequest, actor: str
    ) -> tuple[ReleaseRecord, bool]:
        """Start the release `request` describes (its service must exist): (the release,
        True) once it is recorded and served; (the release of that version already there,
        False). Raises ReleaseConflict when another one is in progress and the request does
        not supersede it (superseding rolls it back first, journaled as such), StateError
        when the store cannot be trusted or written."""
        service = self.file_service(name)
        assert service is not None, f"no service {name}"
        if self.state_error:
            raise StateError(self.state_error)
        async with self._books_lock:
            for _ in range(_ATTEMPTS):
                started = await self._start_release(service, request, actor)
                if started is not None:
                    return started
                # Another replica wrote the book first (maybe this very release, retried by
                # CI on another replica): serve the store's book and decide again on it.
                book = (await self.store.load_books()).get(name)
                if book is not None:
                    await self._follow_book(name, book)
        raise StateError(f"{name}: the releases keep changing elsewhere; try again")

    async def _start_release(
        self, service: ServiceConfig, request: StartRequest, actor: str
    ) -> tuple[ReleaseRecord, bool] | None:
        """`start_release` on the book this replica holds (the books lock is held); None when
        the store's book has moved on since it was read."""
        name = service.name
        book = self.books.get(name)
        known = [Known(r.id, r.version, ReleaseStatus(r.status)) for r in _releases(book)]
        decision = on_start(known, request.version, request.supersede)
        if decision.kind is StartKind.EXISTING:
            found = book.find(decision.release or "") if book else None
            assert found is not None
            return found, False
        if decision.kind is StartKind.CONFLICT:
            active = book.current() if book else None
            raise ReleaseConflict(
                f"{name}: release {active.version if active else '?'} is in progress; "
                'wait for it, or send "supersede": true to roll it back and start this one'
            )
        if decision.supersedes is not None:
            await self._supersede(name, actor, request.version)
            book = self.books.get(name)
        wall = self.clock.wall()
        canary, color = target(request, service, book)
        record = ReleaseRecord(
            id=release_id(name, request.version, wall),
            service=name,
            version=request.version,
            status=ReleaseStatus.PROGRESSING.value,
            actor=actor,
            started=wall,
            canary=canary,
            color=color,
            salt=release_salt(request, name),
            steps=request.steps,
            change=request.change,
            checks=request.checks,
            stable_before=stable_of(service, book),
            rollout_version=self.rollouts[name].state.version + 1,
        )
        base = book or ReleaseBook(name, 0)
        keep = self.file_config.releases.keep
        written = dataclasses.replace(
            base,
            version=base.version + 1,
            active=record.id,
            releases=tuple(keep_newest((record, *base.releases), keep)),
        )
        if not await self.store.commit_book(written, None if book is None else book.version):
            return None
        self.books[name] = written
        await self._serve_service(name, f"release {request.version}")
        return record, True

    async def _supersede(self, name: str, actor: str, version: str) -> None:
        """Roll the release in progress back, to start `version` (the books lock is held)."""
        rollout = self.rollouts[name]
        if rollout.state.status not in _OVER:
            why = f"superseded by release {version}"
            transition = await self._transition(name, Event.ABORT, actor, None, why)
            if not transition.applied:
                raise ReleaseConflict(f"{name}: cannot roll back the release: {transition.reason}")
        if not await self._conclude(name, superseded=True):
            raise StateError(f"{name}: the releases changed elsewhere; try again")

    async def _conclude(self, name: str, *, superseded: bool = False) -> bool:
        """End the release in progress of `name` when its rollout is over (the books lock
        is held): completion makes its upstreams the stable pool. True when it ended."""
        rollout, book = self.rollouts.get(name), self.books.get(name)
        release = book.current() if book else None
        if rollout is None or book is None or release is None or rollout.release != release.id:
            return False
        if rollout.state.status not in _OVER:
            return False
        entries = await self.store.history(name, 1000)
        mine = [e for e in reversed(entries) if e.version >= release.rollout_version]
        last = mine[-1] if mine else None
        status = outcome_of(rollout.state.status.value, last.action if last else "", superseded)
        outcome = _outcome_words(status, release, last, stable_of(rollout.config, book))
        verdicts = tuple(_verdict(e) for e in mine)
        written = ended(book, status, outcome, self.clock.wall(), verdicts)
        if not await self.store.commit_book(written, book.version):
            return False  # written elsewhere: followed on the next interval
        self.books[name] = written
        await self._serve_service(name, f"release {release.version} {status.value}")
        return True

    async def _serve_service(self, name: str, why: str) -> None:
        """Serve service `name` as its release book now says (its rollout resumed from the
        store's record or started), the others as they are; routing swapped at once."""
        config = served_config(self.file_config, self.books)
        service = next(s for s in config.services if s.name == name)
        old = self.rollouts[name]
        async with old.lock:
            record = (await self.store.load()).get(name)
            rollout = await self._made(service, record, why)
            self.config = config
            self.rollouts[name] = rollout
            self.pending.pop(name, None)
            self.router.reconfigure(config, {n: r.plan() for n, r in self.rollouts.items()})
            self.sink.set_status(name, rollout.state.status.value)

    async def follow_releases(self) -> None:
        """Serve what the store's release books say: books written by another replica, and a
        release whose rollout ended without its book being written (a crash in between)."""
        if self.state_error:
            return
        books = await self.store.load_books()
        async with self._books_lock:
            for name, book in books.items():
                if name not in self.rollouts:
                    continue
                await self._follow_book(name, book)
                if self.deciding:
                    await self._conclude(name)

    async def _follow_book(self, name: str, book: ReleaseBook) -> None:
        """Serve the store's `book` of `name` when it is newer than this replica's (the books
        lock is held)."""
        mine = self.books.get(name)
        if mine is None or book.version > mine.version:
            self.books[name] = book
            await self._serve_service(name, "release (followed)")

    def release_status(self, name: str, release: ReleaseRecord) -> str:
        """A release's status now (one in progress may be paused)."""
        rollout = self.rollouts.get(name)
        book = self.books.get(name)
        if rollout is None or book is None or book.active != release.id:
            return release.status
        if rollout.release != release.id:
            return release.status
        return outcome_of(rollout.state.status.value, "").value

    async def close(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task], CLOSE_WAIT_S)
            self._task = None
        await finish(self._pending_tasks, CLOSE_WAIT_S)
        await self.prometheus.close()


_OVER = frozenset({Status.COMPLETED, Status.ROLLED_BACK})


class ReleaseConflict(StateError):
    """Another release is in progress (the API answers 409)."""


def _releases(book: ReleaseBook | None) -> tuple[ReleaseRecord, ...]:
    return book.releases if book else ()


def _verdict(entry: JournalEntry) -> dict[str, Any]:
    """One transition of a release's rollout, as its record keeps it."""
    return {
        "time": entry.time,
        "action": entry.action,
        "actor": entry.actor,
        "from": {"status": entry.from_status, "step": entry.from_step},
        "to": {"status": entry.to_status, "step": entry.to_step},
        "reason": entry.reason,
        "evidence": dict(entry.evidence),
    }


def _outcome_words(
    status: ReleaseStatus,
    release: ReleaseRecord,
    last: JournalEntry | None,
    stable: tuple[str, ...],
) -> str:
    reason = f": {last.reason}" if last and last.reason else ""
    if status is ReleaseStatus.COMPLETED:
        freed = ", ".join(release.stable_before) or "nothing"
        return (
            f"completed: {', '.join(release.canary)} is stable now; the previous stable "
            f"pool ({freed}) is released"
        )
    if status is ReleaseStatus.SUPERSEDED:
        return f"rolled back{reason}; stable stays {', '.join(stable)}"
    if status is ReleaseStatus.ABORTED:
        who = last.actor if last else "someone"
        return f"aborted by {who}{reason}; stable stays {', '.join(stable)}"
    step = f" at step {last.from_step + 1}" if last else ""
    return f"rolled back{step}{reason}; stable stays {', '.join(stable)}"


def notice_kind(transition: Transition, event: Event) -> NoticeKind | None:
    """What the team is told about an applied transition (None: nothing)."""
    before, after = transition.before, transition.after
    if after.status is Status.ROLLED_BACK and before.status is not Status.ROLLED_BACK:
        return NoticeKind.ROLLED_BACK
    if after.status is Status.COMPLETED and before.status is not Status.COMPLETED:
        return NoticeKind.COMPLETED
    if after.status is Status.PAUSED and before.status is not Status.PAUSED:
        return NoticeKind.PAUSED
    if event in (Event.ADVANCE, Event.PROMOTE) and after.step > before.step:
        return NoticeKind.STEP_ADVANCED
    return None


def _stable_only(service: ServiceConfig, now: float) -> Rollout:
    """A rollout that serves stable only (the state store cannot be trusted)."""
    rollout = Rollout(service, initial(1), now)
    rollout.state = RolloutState(Status.ROLLED_BACK, 0, rollout.machine_steps)
    return rollout


def _moves(transition: Transition, event: Event) -> bool:
    """Does the transition start a step (a new analysis, a new step start time)?"""
    return transition.after.step != transition.before.step or event is Event.RESTART


def _baseline_summary(baselines: Mapping[str, TierBaseline]) -> str:
    measured = ", ".join(
        f"{tier} {b.errors.requests:,} requests at {100 * b.errors.rate:.2f}% errors"
        for tier, b in sorted(baselines.items())
    )
    return f"baseline period over: {measured or 'no traffic measured'}"


def assessment_json(assessment: Assessment) -> dict[str, Any]:
    """An assessment as plain JSON (journal and API). Its dataclasses are made dicts first:
    orjson reads a dataclass's fields from its memory layout, which a compiled build's
    (mypyc) evidence classes do not share (it crashes the process)."""
    data = orjson.loads(orjson.dumps(asdict(assessment), default=_finite))
    return data if isinstance(data, dict) else {}


def _finite(value: object) -> object:
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError
