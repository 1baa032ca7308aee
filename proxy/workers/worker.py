"""A data-plane worker process: `rollout-proxy worker` (started by the supervisor, not people).

It serves the configured port beside the other workers (SO_REUSEPORT), routes with the
snapshots the supervisor sends, and sends back what it served: evidence batches every 100 ms
and its metric counters every 500 ms. It stops (draining) on SIGTERM, or when the supervisor
goes away (the channel closes), so a killed supervisor leaves no workers behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket

import orjson
from prometheus_client import CollectorRegistry

from proxy.config import Config
from proxy.core.routing import RoutingPlan
from proxy.dataplane import Router
from proxy.fleet.batch import EvidenceBuffer
from proxy.http.server import Engine
from proxy.metrics import Metrics
from proxy.runtime import data_engine
from proxy.workers.channel import DRAIN, EVIDENCE, FLUSH, METRICS, PLAN, READY, frame, receive

EVIDENCE_S = 0.1
METRICS_S = 0.5


class Worker:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.metrics = Metrics(CollectorRegistry())
        self.router = Router(config, self.metrics, loop)
        self.buffer = EvidenceBuffer(config)
        self.router.recorder.evidence = self.buffer
        self.tags: dict[str, tuple[str, int]] = {}
        self.stop = asyncio.Event()
        self.engine: Engine | None = None

    def apply(self, payload: bytes) -> None:
        """A routing snapshot: {service: [spec hash, version, step index, active]}."""
        rollouts = {s.name: s.rollout for s in self.config.services}
        for name, (spec, version, step_index, active) in orjson.loads(payload).items():
            if name in rollouts:
                self.router.set_plan(name, RoutingPlan.build(rollouts[name], step_index, active))
                self.tags[name] = (spec, version)

    async def listen(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (message := await receive(reader)) is not None:
            kind, payload = message
            if kind == FLUSH:
                self.report(writer, metrics=True)
            elif kind == PLAN:
                self.apply(payload)
            elif kind == DRAIN and self.engine is not None:
                self.engine.announce_drain()
        self.stop.set()  # the supervisor is gone

    def report(self, writer: asyncio.StreamWriter, metrics: bool) -> None:
        batch = self.buffer.drain(self.tags)
        if batch is not None:
            writer.write(frame(EVIDENCE, batch))
        if metrics:
            writer.write(frame(METRICS, orjson.dumps(self.metrics.export())))

    async def reporting(self, writer: asyncio.StreamWriter) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(EVIDENCE_S)
            ticks += 1
            self.report(writer, metrics=ticks % round(METRICS_S / EVIDENCE_S) == 0)
            await writer.drain()


async def serve_worker(config: Config, port: int, channel_fd: int) -> int:
    loop = asyncio.get_running_loop()
    channel = socket.socket(fileno=channel_fd)
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    worker = Worker(config, loop)
    first = await receive(reader)  # the routing snapshot: nothing is served before it
    if first is None or first[0] != PLAN:
        return 1
    worker.apply(first[1])
    engine, access_log = data_engine(config, worker.router, worker.metrics, loop)
    worker.engine = engine
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop.set)
    await engine.start(config.listen.host, port, reuse_port=True)
    writer.write(frame(READY, orjson.dumps({"pid": os.getpid()})))
    tasks = [
        loop.create_task(worker.listen(reader, writer)),
        loop.create_task(worker.reporting(writer)),
    ]
    await worker.stop.wait()
    await engine.drain(config.limits.drain_s)
    await engine.close()
    if access_log is not None:
        await access_log.close()
    worker.router.close()
    for task in tasks:
        task.cancel()
    with contextlib.suppress(ConnectionError):
        worker.report(writer, metrics=True)  # what was served since the last report
        await writer.drain()
        writer.close()
    return 0
