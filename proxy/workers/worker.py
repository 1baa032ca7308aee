"""A data-plane worker process: `rollout-proxy worker` (started by the supervisor, not people).

It serves the configured port beside the other workers (SO_REUSEPORT), with the config and
the routing snapshots the supervisor sends (a reloaded config swaps in at once, and is
confirmed), and sends back what it served: evidence batches every 100 ms
and its metric counters every 500 ms. It stops (draining) on SIGTERM, or when the supervisor
goes away (the channel closes), so a killed supervisor leaves no workers behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from proxy.config import Config, parse_text
from proxy.core.routing import RoutingPlan
from proxy.dataplane import Router
from proxy.errors import ConfigError
from proxy.fleet.batch import EvidenceBuffer
from proxy.http.server import Engine
from proxy.metrics import Metrics
from proxy.releases import served_config
from proxy.runtime import data_engine, reconfigure_engine, reload_tls
from proxy.store.records import ReleaseBook
from proxy.tls import ListenerTls
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
        for name, plan in self.plans_for(self.config, orjson.loads(payload)).items():
            self.router.set_plan(name, plan)

    def plans_for(self, config: Config, snapshot: dict[str, list[Any]]) -> dict[str, RoutingPlan]:
        """The plan of each service of `config` in `snapshot` (and its tag, kept); a service
        the snapshot does not name serves stable until one does."""
        plans = {}
        for service in config.services:
            spec, version, step_index, active = snapshot.get(service.name, ("", 0, 0, False))
            plans[service.name] = service.rollout.plan(step_index, active)
            self.tags[service.name] = (spec, version)
        return plans

    def reconfigure(self, payload: bytes, writer: asyncio.StreamWriter) -> None:
        """A reloaded config from the supervisor: swapped in whole, then confirmed."""
        message = orjson.loads(payload)
        error = None
        try:
            config = served_config(
                parse_text(message["text"], "the reloaded config"), _books(message)
            )
            if self.engine is not None:
                reload_tls(self.engine, config)
        except ConfigError as exc:
            error = str(exc)  # the supervisor validated it: only a changed environment
        else:
            self.tags = {}
            self.router.reconfigure(config, self.plans_for(config, message["plans"]))
            self.buffer.reconfigure(config)
            if self.engine is not None:
                reconfigure_engine(self.engine, config)
            self.config = config
        answer = {"generation": message["generation"], "error": error}
        writer.write(frame(RELOADED, orjson.dumps(answer)))

    async def listen(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (message := await receive(reader)) is not None:
            kind, payload = message
            if kind == FLUSH:
                self.report(writer, metrics=True)
            elif kind == PLAN:
                self.apply(payload)
            elif kind == CONFIG:
                self.reconfigure(payload, writer)
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


async def serve_worker(port: int, channel_fd: int) -> int:
    loop = asyncio.get_running_loop()
    channel = socket.socket(fileno=channel_fd)
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    # The config and the routing snapshot come first: nothing is served before them.
    first = await receive(reader)
    if first is None or first[0] != CONFIG:
        return 1
    message = orjson.loads(first[1])
    try:
        config = parse_text(message["text"], "the config from the supervisor")
        config = served_config(config, _books(message))
    except ConfigError as exc:
        print(f"rollout-proxy worker: {exc}", file=sys.stderr, flush=True)
        return 2
    worker = Worker(config, loop)
    worker.router.reconfigure(config, worker.plans_for(config, message["plans"]))
    answer = {"generation": message["generation"], "error": None}
    writer.write(frame(RELOADED, orjson.dumps(answer)))
    engine, access_log = data_engine(config, worker.router, worker.metrics, loop)
    worker.engine = engine
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop.set)
    # Reloads come from the supervisor; a SIGHUP sent to every process must not end this one.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    tls = ListenerTls(config.tls, h2=config.http2.enabled) if config.tls is not None else None
    await engine.start(config.listen.host, port, reuse_port=True, tls=tls)
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


def _books(message: Mapping[str, Any]) -> dict[str, ReleaseBook]:
    """The release books a config message carries (what the services are served by)."""
    books = message.get("books") or {}
    return {name: ReleaseBook.from_json(book) for name, book in books.items()}
