"""The process runtime: event loop (uvloop, chosen here only), listeners, signals, drain.

`Runtime` starts the data plane and the admin listener on one event loop and stops them in
order: readiness fails first, the data plane stops accepting and lets in-flight exchanges finish
for up to `limits.drain_s`, then everything closes. `run` is the blocking entry point of
`rollout-proxy run`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy import adminapi, adminpage
from proxy.accesslog import AccessLog
from proxy.admin import Readiness, build_admin_app
from proxy.config import Config
from proxy.controller import Clock, Controller
from proxy.core.identity import header_rule_names, relevant_headers
from proxy.dataplane import Router
from proxy.fleet.batch import EvidenceBuffer
from proxy.http.exchange import Exchange
from proxy.http.server import Engine
from proxy.logexchange import AccessLines, logged_exchanges, path_id_patterns
from proxy.metrics import Metrics
from proxy.store import open_store

if TYPE_CHECKING:
    from proxy.fleet.replica import Replica
    from proxy.http.server import ExchangeFactory


class Runtime:
    """A running proxy: data plane + admin listener, sharing one registry."""

    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.readiness = Readiness()
        self.clock = clock or Clock()
        self.env = dict(os.environ) if env is None else dict(env)
        self.data_address: tuple[str, int] = ("", 0)
        self.admin_address: tuple[str, int] = ("", 0)
        self.router: Router | None = None
        self.controller: Controller | None = None
        self.replica: Replica | None = None
        self._engine: Engine | None = None
        self.access_log: AccessLog | None = None
        self._admin: web.AppRunner | None = None
        self.sampler: adminpage.Sampler | None = None  # the admin page's history

    @property
    def data_url(self) -> str:
        host, port = self.data_address
        return f"http://{host}:{port}"

    @property
    def admin_url(self) -> str:
        host, port = self.admin_address
        return f"http://{host}:{port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        self.router = Router(config, self.metrics, loop)
        store = open_store(config.state)
        fleet = config.state.backend == "redis"
        self.controller = Controller(
            config, self.router, store, self.metrics, clock=self.clock, deciding=not fleet
        )
        if fleet:
            buffer = EvidenceBuffer(config)
            self.router.recorder.evidence = buffer
            self.replica = _replica(self.controller, store, buffer, config, self.clock)
            self.metrics.watch_state(self.replica.staleness)
            self.readiness.details = self.replica.details
        else:
            self.router.recorder.evidence = self.controller
        await self.controller.start()
        if self.replica is not None:
            await self.replica.start()
        exchange: ExchangeFactory = Exchange
        if config.access_log.enabled:
            self.access_log = AccessLog(config.access_log.path, loop)
            self.access_log.start()
            exchange = logged_exchanges(AccessLines(self.access_log, path_id_patterns(config)))
        self._engine = Engine(
            config,
            self.router,
            loop,
            identity_headers=header_rule_names(config),
            relevant_headers=relevant_headers(config),
            on_reject=lambda error: self.metrics.rejected(error.status),
            exchange=exchange,
        )
        self.data_address = await self._engine.start(config.listen.host, config.listen.port)
        app = build_admin_app(self.registry, self.readiness)
        token_env = config.admin.token_env or ""
        adminapi.install(app, self.controller, self.env.get(token_env, ""), token_env)
        self.sampler = adminpage.install(app, self.controller, self.metrics)
        self._admin = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._admin.setup()
        listen = config.admin.listen
        sock = socket.create_server((listen.host, listen.port), reuse_port=False)
        await web.SockSite(self._admin, sock).start()
        sockname = sock.getsockname()
        self.admin_address = (str(sockname[0]), int(sockname[1]))
        error = self.controller.state_error
        self.readiness.set_ready(f"serving; {error}" if error and not self.replica else "serving")

    async def stop(self, drain_s: float | None = None, notice_s: float | None = None) -> int:
        """Drain and close; return the number of connections cut at the deadline."""
        self.readiness.set_not_ready("draining")
        notice = self.config.limits.drain_notice_s if notice_s is None else notice_s
        if self._engine is not None and notice > 0:
            # Readiness fails first; the listener stays open while readiness watchers react.
            self._engine.announce_drain()
            await asyncio.sleep(notice)
        cut = 0
        if self.replica is not None:
            await self.replica.close()
            self.replica = None
        if self.sampler is not None:
            await self.sampler.close()
            self.sampler = None
        if self.controller is not None:
            await self.controller.close()
        if self._engine is not None:
            drain = self.config.limits.drain_s if drain_s is None else drain_s
            cut = await self._engine.drain(drain)
            await self._engine.close()
            self._engine = None
        if self.access_log is not None:
            await self.access_log.close()
            self.access_log = None
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        return cut


def _replica(
    controller: Controller, store: object, buffer: EvidenceBuffer, config: Config, clock: Clock
) -> Replica:
    # Imported here: Redis is an optional extra, needed only in fleet mode.
    from proxy.fleet.replica import Replica
    from proxy.store.redis_store import RedisStore

    if not isinstance(store, RedisStore):
        raise TypeError("fleet mode needs the Redis store")
    return Replica(controller, store, buffer, config.state, clock=clock)


async def serve(config: Config) -> int:
    """Run until SIGTERM or SIGINT, then drain; the exit status of `rollout-proxy run`."""
    runtime = Runtime(config)
    await runtime.start()
    print(
        f"rollout-proxy: data plane on {runtime.data_url}, admin on {runtime.admin_url}",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    print("rollout-proxy: draining", file=sys.stderr, flush=True)
    cut = await runtime.stop()
    if cut:
        print(f"rollout-proxy: {cut} connection(s) cut at the drain deadline", file=sys.stderr)
    return 0


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run a coroutine on uvloop where available (the one place the loop is chosen)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(main)
    result: int = uvloop.run(main)
    return result
