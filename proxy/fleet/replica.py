"""One replica of a fleet: the loops that keep it in step with the shared rollout state.

- *Changes*: a pub/sub subscription wakes the reconcile at once when any replica commits a
  transition (the fast path: a change is served fleet-wide within milliseconds).
- *Reconcile*: every `state.reconcile` (and on every wake) the replica writes back what it
  applied alone while Redis was away (and any record a restarted Redis lost), then reads every
  record and adopts the newer ones. It is also what measures staleness: the time since the
  last read that worked.
- *Lease*: every lease/3 the replica renews or takes the decider lease. The holder judges the
  rollouts (the controller's `deciding`); a replica that cannot renew stops judging at once,
  and another takes over when the lease expires. Commits are compare-and-set on the version,
  so even two deciders could not apply the same step twice.
- *Evidence*: every replica ships what its data plane served in batches (`flush`); the decider
  reads every replica's batches from the stream and feeds its analysis (`consume`). A replica
  that stops sending only stops adding requests: nothing waits for it.

Nothing here is on the request path: the data plane reads the router's snapshot and appends to
the evidence buffer, never awaiting Redis. Failed calls are retried with jittered exponential
backoff, capped at the reconcile period so that a returning Redis is seen within one period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from proxy.config import StateConfig
from proxy.controller import Clock, Controller
from proxy.errors import StateError
from proxy.fleet.batch import EvidenceBuffer, decode
from proxy.store.redis_store import Lease, RedisStore
from proxy.tasks import stop_tasks

FLUSH_S = 0.25  # evidence batches per replica per second: 4
CONSUME_S = 0.25
STOP_S = 2.0  # how long closing waits for the loops to end


def backoff(failures: int, cap_s: float, draw: Callable[[], float]) -> float:
    """Seconds before retry `failures` (1, 2, ...): 50 ms doubling, at most `cap_s`, with
    jitter over its upper half so that replicas do not retry in step."""
    ceiling = min(cap_s, 0.05 * 2.0 ** min(failures - 1, 16))
    return ceiling * (0.5 + 0.5 * draw())


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Replica:
    """Keeps one controller in step with the fleet through a RedisStore."""

    def __init__(
        self,
        controller: Controller,
        store: RedisStore,
        buffer: EvidenceBuffer,
        config: StateConfig,
        *,
        clock: Clock | None = None,
        name: str | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.controller = controller
        self.store = store
        self.buffer = buffer
        self.config = config
        self.clock = clock or Clock()
        self.name = name or replica_name()
        self.draw = draw
        self.confirmed = self.clock.monotonic()
        self.error: str | None = "not yet synchronised"
        self.failures = 0
        self.evidence_after = "0-0"
        self.batches_lost = 0
        self.batches_malformed = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """One reconcile and one lease round now, then the loops."""
        await self.reconcile()
        await self.hold_lease()
        for loop in (self._reconcile_loop, self._watch_loop, self._lease_loop):
            self._spawn(loop())
        self._spawn(self._every(FLUSH_S, self.flush))
        self._spawn(self._every(CONSUME_S, self.consume))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(work))

    # --- state --------------------------------------------------------------------------------

    async def reconcile(self) -> bool:
        """Write back local changes, then adopt every newer record; False if Redis is away."""
        controller = self.controller
        try:
            if not controller.resumed:
                await controller.resume()
            await controller.write_back(await self.store.load())
            for record in (await self.store.load()).values():
                controller.adopt(record)
            # A release started or ended elsewhere changes what each service is (its salt,
            # its pools): served here within a reconcile, or at once on the change's push.
            await controller.follow_releases()
        except StateError as exc:
            self.error = str(exc)
            self.failures += 1
            return False
        self.error = None
        self.failures = 0
        self.confirmed = self.clock.monotonic()
        return True

    def staleness(self) -> float:
        """Seconds since the state was last confirmed (0 while the last reconcile worked)."""
        if self.error is None:
            return 0.0
        return max(0.0, self.clock.monotonic() - self.confirmed)

    def details(self) -> dict[str, Any]:
        """What /readyz says about the shared state."""
        return {
            "backend": "redis",
            "replica": self.name,
            "decider": self.controller.deciding,
            "stale_s": round(self.staleness(), 3),
            "error": self.error,
            "pending_writes": sorted(self.controller.pending),
        }

    async def _reconcile_loop(self) -> None:
        while True:
            if self.error is None:
                delay = self.config.reconcile_s
            else:
                delay = backoff(self.failures, self.config.reconcile_s, self.draw)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            await self.reconcile()

    async def _watch_loop(self) -> None:
        failures = 0
        while True:
            try:
                await self.store.watch(self._changed)
            except StateError:
                failures += 1
            await asyncio.sleep(backoff(max(failures, 1), self.config.reconcile_s, self.draw))

    def _changed(self, service: str) -> None:
        self._wake.set()

    # --- the decider lease ---------------------------------------------------------------------

    async def hold_lease(self) -> None:
        controller = self.controller
        try:
            lease = await self.store.hold_lease(self.name, self.config.lease_s)
            if lease is Lease.TAKEN:
                # Judge from now on: what was served before belongs to the previous decider.
                self.evidence_after = await self.store.evidence_tail()
        except StateError:
            lease = Lease.LOST  # cannot renew: stop judging now, before the lease can lapse
        if lease is Lease.TAKEN or (lease is Lease.RENEWED and not controller.deciding):
            if lease is Lease.TAKEN:
                controller.begin_deciding()
            controller.deciding = True
        elif lease is Lease.LOST:
            controller.deciding = False

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            await self.hold_lease()

    # --- evidence --------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Ship what the data plane served since the last flush (lost if Redis is away)."""
        batch = self.buffer.drain(self.controller.tags())
        if batch is None:
            return
        try:
            await self.store.add_evidence(batch)
        except StateError:
            self.batches_lost += 1

    async def consume(self) -> None:
        """Feed the fleet's new batches to the analysis (the decider only)."""
        if not self.controller.deciding:
            return
        with contextlib.suppress(StateError):
            for ident, batch in await self.store.read_evidence(self.evidence_after):
                self.evidence_after = ident
                try:
                    parts = decode(batch)
                except StateError:
                    self.batches_malformed += 1
                    continue
                self.controller.observe_evidence(parts)

    @staticmethod
    async def _every(period_s: float, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while True:
            await asyncio.sleep(period_s)
            await work()

    async def close(self) -> None:
        """Stop the loops, ship the last evidence, and hand the lease over at once."""
        await stop_tasks(self._tasks, STOP_S)
        self._tasks.clear()
        with contextlib.suppress(StateError):
            await self.flush()
            if self.controller.deciding:
                self.controller.deciding = False
                await self.store.release_lease(self.name)
        await self.store.close()
