"""The supervisor of the data-plane workers (in the process that owns the rollout).

It is the controller's `PlanSink`: every routing snapshot goes to every worker (and to a
worker that starts later). Workers get their config from it too, as the YAML text this process
validated (first at start, then on each reload, with the routing plans in the same message), so
every worker serves the same config whatever the file holds by then; `reloaded` waits until
each worker has confirmed the newest one. It reserves the data port (bound with SO_REUSEPORT, never
listening, so connections only reach the workers' listeners), starts the workers, feeds their
evidence to the analysis and their counters to /metrics, and restarts a worker that dies
(the others keep serving: a connection lives in one worker only). The metric counters of a
dead worker stay counted: `Metrics.absorb` only adds what grew.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.config import Config
from proxy.core.routing import RoutingPlan
from proxy.errors import StateError
from proxy.fleet.batch import ServiceEvidence, decode
from proxy.metrics import Metrics
from proxy.store.records import ReleaseBook
from proxy.workers.channel import (
    CONFIG,
    DRAIN,
    EVIDENCE,
    FLUSH,
    METRICS,
    PLAN,
    READY,
    RELOADED,
    frame,
    receive,
)

START_TIMEOUT_S = 20.0
REFRESH_TIMEOUT_S = 0.5  # a worker too busy to answer a scrape sooner is read next time
RESTART_DELAY_S = 0.5  # between a worker's death and its replacement (no tight crash loop)

EvidenceSink = Callable[[list[ServiceEvidence]], object]


@dataclass
class WorkerProcess:
    slot: int
    proc: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    seen: dict[str, Any] = field(default_factory=dict)  # its last metric counters
    reported: asyncio.Event = field(default_factory=asyncio.Event)  # set by each report
    generation: int = 0  # of the newest config it confirmed
    refused: str | None = None  # why it could not apply that generation's config
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)  # set by each RELOADED


class Supervisor:
    """Starts, feeds and restarts `count` data-plane workers serving one port."""

    def __init__(self, config: Config, source: str, metrics: Metrics, count: int) -> None:
        """`source`: the YAML text `config` was read from (what the workers are given)."""
        self.config = config
        self.source = source
        self.staged = source  # the text of the config a reload is about to swap in
        self.generation = 1
        self.metrics = metrics
        self.count = count
        self.plans: dict[str, tuple[int, bool]] = {}
        self.tags: Callable[[], dict[str, tuple[str, int]]] = dict
        # The release books (proxy/releases.py) the workers serve the services by.
        self.books: Callable[[], Mapping[str, ReleaseBook]] = dict
        self.evidence: EvidenceSink = lambda parts: None
        self.workers: dict[int, WorkerProcess] = {}
        self.restarts = 0
        self.port = 0
        self._reserved: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    # --- PlanSink ------------------------------------------------------------------------------

    def set_plan(self, name: str, plan: RoutingPlan) -> None:
        self.plans[name] = (plan.step_index, plan.active)
        self.metrics.set_step(name, plan.step_index, plan.canary_percent())
        message = frame(PLAN, self._snapshot())
        for worker in self.workers.values():
            worker.writer.write(message)

    def reconfigure(self, config: Config, plans: Mapping[str, RoutingPlan]) -> None:
        """A reloaded config (its text `staged` before) and its plans, to every worker."""
        self.config, self.source = config, self.staged
        self.generation += 1
        self.plans = {name: (plan.step_index, plan.active) for name, plan in plans.items()}
        for name, plan in plans.items():
            self.metrics.set_step(name, plan.step_index, plan.canary_percent())
        message = self._config_message()
        for worker in self.workers.values():
            worker.confirmed.clear()
            worker.writer.write(message)

    async def reloaded(self, within: float = START_TIMEOUT_S) -> list[str]:
        """Wait until every live worker has confirmed the newest config; what went wrong
        (a worker that refused it or did not answer in time), one line per worker."""
        problems = []
        for worker in list(self.workers.values()):
            if worker.proc.returncode is not None:
                continue  # its replacement starts with the newest config
            try:
                async with asyncio.timeout(within):
                    while worker.generation < self.generation:
                        await worker.confirmed.wait()
                        worker.confirmed.clear()
            except TimeoutError:
                problems.append(f"worker {worker.slot} did not confirm the config in time")
                continue
            if worker.refused:
                problems.append(f"worker {worker.slot} refused the config: {worker.refused}")
        return problems

    def _config_message(self) -> bytes:
        snapshot = orjson.loads(self._snapshot())
        books = {name: book.to_json() for name, book in self.books().items()}
        payload = {
            "generation": self.generation,
            "text": self.source,
            "plans": snapshot,
            "books": books,
        }
        return frame(CONFIG, orjson.dumps(payload))

    def _snapshot(self) -> bytes:
        tags = self.tags()
        return orjson.dumps(
            {
                name: [*tags.get(name, ("", 0)), step_index, active]
                for name, (step_index, active) in self.plans.items()
            }
        )

    # --- workers --------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Reserve the port, start every worker, return once all of them listen."""
        reserved = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind((host, port))
        self._reserved = reserved
        self.port = int(reserved.getsockname()[1])
        for slot in range(self.count):
            await self._spawn(slot)
        async with asyncio.timeout(START_TIMEOUT_S):
            for worker in list(self.workers.values()):
                await worker.ready.wait()
        return host, self.port

    async def _spawn(self, slot: int) -> None:
        mine, theirs = socket.socketpair()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "proxy", "worker"),
            *("--port", str(self.port), "--channel-fd", str(theirs.fileno())),
            pass_fds=(theirs.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
            # Its own process group: a Ctrl-C or a signal to this group reaches the
            # supervisor only, which stops the workers in order.
            start_new_session=True,
        )
        theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=mine)
        worker = WorkerProcess(slot, proc, writer)
        self.workers[slot] = worker
        writer.write(self._config_message())
        task = asyncio.get_running_loop().create_task(self._serve(worker, reader))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, worker: WorkerProcess, reader: asyncio.StreamReader) -> None:
        while (message := await receive(reader)) is not None:
            kind, payload = message
            if kind == EVIDENCE:
                with contextlib.suppress(StateError):  # a batch we cannot read is dropped
                    self.evidence(decode(payload))
            elif kind == METRICS:
                self.metrics.absorb(worker.seen, orjson.loads(payload))
                worker.reported.set()
            elif kind == READY:
                worker.ready.set()
            elif kind == RELOADED:
                answer = orjson.loads(payload)
                worker.generation, worker.refused = int(answer["generation"]), answer["error"]
                worker.confirmed.set()
        code = await worker.proc.wait()
        worker.writer.close()
        if self._stopping or self.workers.get(worker.slot) is not worker:
            return
        print(
            f"rollout-proxy: worker {worker.slot} (pid {worker.proc.pid}) exited with {code}; "
            "starting another",
            file=sys.stderr,
            flush=True,
        )
        self.restarts += 1
        await asyncio.sleep(RESTART_DELAY_S)
        if not self._stopping:
            await self._spawn(worker.slot)

    async def refresh(self) -> None:
        """Ask every worker for its counters now and wait for them (briefly): a scrape of
        /metrics then sees every request answered before it."""
        waiting = []
        for worker in self.workers.values():
            if worker.proc.returncode is None and worker.ready.is_set():
                worker.reported.clear()
                worker.writer.write(frame(FLUSH, b""))
                waiting.append(worker.reported.wait())
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_TIMEOUT_S):
                    await asyncio.gather(*waiting)

    def announce_drain(self) -> None:
        """Draining is coming: workers end each connection after its current response."""
        for worker in self.workers.values():
            worker.writer.write(frame(DRAIN, b""))

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers.values() if w.proc.returncode is None]

    async def stop(self, drain_s: float) -> None:
        """SIGTERM every worker (each drains for `drain_s`), and wait for them."""
        self._stopping = True
        for worker in self.workers.values():
            if worker.proc.returncode is None:
                worker.proc.terminate()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_s + 5.0):
                for task in list(self._tasks):
                    await task
        for worker in self.workers.values():
            if worker.proc.returncode is None:
                worker.proc.kill()
                await worker.proc.wait()
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
