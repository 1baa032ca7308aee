"""The process runtime: event loop (uvloop, chosen here only), listeners, signals, drain.

`Runtime` starts the data plane and the admin listener on one event loop and stops them in
order: readiness fails first, the data plane stops accepting and lets in-flight exchanges finish
for up to `limits.drain_s`, then everything closes. `run` is the blocking entry point of
`rollout-proxy run`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy import adminapi, adminpage, build
from proxy.accesslog import AccessLog
from proxy.admin import REFRESH, Readiness, build_admin_app
from proxy.config import Config, ConfigError
from proxy.controller import CLOSE_WAIT_S, Clock, Controller
from proxy.core.identity import header_rule_names, relevant_headers
from proxy.dataplane import Evidence, Router
from proxy.fleet.batch import EvidenceBuffer, ServiceEvidence, replay
from proxy.http.exchange import Exchanges
from proxy.http.server import Engine
from proxy.logexchange import AccessLines, LoggedExchanges, path_id_patterns
from proxy.metrics import Metrics
from proxy.notify.delivery import Notifier, reload_notice
from proxy.reload import Reloader, ReloadResult
from proxy.shadowing import Shadowing
from proxy.store.opener import open_store
from proxy.tasks import finish
from proxy.tls import ListenerTls
from proxy.workers.supervisor import Supervisor

if TYPE_CHECKING:
    from proxy.fleet.replica import Replica


class Runtime:
    """A running proxy: data plane + admin listener, sharing one registry."""

    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
        config_path: str | None = None,
        source: str | None = None,
    ) -> None:
        """`config_path`: the file `config` was read from (`source`: its text), read again
        by a reload. `workers` > 1: the data plane runs in that many worker processes, given
        that text (proxy/workers/); this process keeps the admin listener and the state."""
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
        self.supervisor: Supervisor | None = None
        if workers > 1 and config_path is None:
            raise ValueError("worker processes read the config from a file: give config_path")
        if workers > 1:
            refuse_shadow_steps(config)
        self.workers = workers
        self.config_path = config_path
        if workers > 1 and source is None:
            source = Path(config_path or "").read_text(encoding="utf-8")
        self.source = source
        self.reloader = Reloader(
            config_path,
            lambda: self.config,
            self._swap,
            self.registry,
            env=self.env,
            wall=self.clock.wall,
        )
        self.notifier = Notifier(config.notifications, self.registry, wall=self.clock.wall)
        self.reloader.on_failure = lambda result: self.notifier.notify(reload_notice(result))
        self._buffer: EvidenceBuffer | None = None
        self._reloads: set[asyncio.Task[ReloadResult]] = set()
        self._engine: Engine | None = None
        self.access_log: AccessLog | None = None
        self._admin: web.AppRunner | None = None
        self.sampler: adminpage.Sampler | None = None  # the admin page's history
        self.shadowing: Shadowing | None = None  # the shadow steps' mirror

    @property
    def data_url(self) -> str:
        host, port = self.data_address
        return f"{'https' if self.config.tls else 'http'}://{host}:{port}"

    @property
    def admin_url(self) -> str:
        host, port = self.admin_address
        return f"{'https' if self.config.admin.tls else 'http'}://{host}:{port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        store = open_store(config.state)
        fleet = config.state.backend == "redis"
        plans: Router | Supervisor
        if self.workers > 1:
            assert self.source is not None
            plans = self.supervisor = Supervisor(config, self.source, self.metrics, self.workers)
        else:
            # Shadow steps mirror in this process only (worker processes do not mirror).
            self.shadowing = Shadowing(self.metrics)
            plans = self.router = Router(config, self.metrics, loop, shadow=self.shadowing)
        await self.notifier.start()
        self.controller = Controller(
            config,
            plans,
            store,
            self.metrics,
            clock=self.clock,
            deciding=not fleet,
            notices=self.notifier,
        )
        if self.shadowing is not None:
            self.shadowing.evidence = self.controller.feed.compared
            self.shadowing.start()
        evidence: Evidence = self.controller.feed
        if fleet:
            evidence = buffer = self._buffer = EvidenceBuffer(config)
            self.replica = _replica(self.controller, store, buffer, config, self.clock)
            self.metrics.watch_state(self.replica.staleness)
            self.readiness.details = self.replica.details
        await self.controller.start()
        if self.replica is not None:
            await self.replica.start()
        listen = config.listen
        if self.supervisor is not None:
            self.supervisor.tags = self.controller.tags
            controller = self.controller
            self.supervisor.books = lambda: controller.books
            self.supervisor.evidence = partial(observe_all, evidence)
            self.data_address = await self.supervisor.start(listen.host, listen.port)
        else:
            assert self.router is not None
            self.router.recorder.evidence = evidence
            self._engine, self.access_log = data_engine(config, self.router, self.metrics, loop)
            tls = None
            if config.tls is not None:
                tls = ListenerTls(config.tls, h2=config.http2.enabled)
            self.data_address = await self._engine.start(listen.host, listen.port, tls=tls)
        app = build_admin_app(self.registry, self.readiness)
        if self.supervisor is not None:
            app[REFRESH] = self.supervisor.refresh
        token_env = config.admin.token_env or ""
        adminapi.install(
            app,
            self.controller,
            self.env.get(token_env, ""),
            token_env,
            self.reloader,
            notifier=self.notifier,
        )
        self.sampler = adminpage.install(app, self.controller, self.metrics)
        self._admin = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._admin.setup()
        admin = config.admin.listen
        sock = socket.create_server((admin.host, admin.port), reuse_port=False)
        tls_config = config.admin.tls
        admin_tls = ListenerTls(tls_config, "admin.tls").context if tls_config else None
        await web.SockSite(self._admin, sock, ssl_context=admin_tls).start()
        sockname = sock.getsockname()
        self.admin_address = (str(sockname[0]), int(sockname[1]))
        error = self.controller.state_error
        self.readiness.set_ready(f"serving; {error}" if error and not self.replica else "serving")

    def reload_soon(self, trigger: str) -> None:
        """Reload the config file in the background (a signal handler cannot await)."""
        task = asyncio.get_running_loop().create_task(self.reloader.reload(trigger))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _swap(self, config: Config, source: str) -> list[str]:
        """Swap a validated config in (the reloader's `apply`): the controller and the
        routing first, in one step, then the engine's limits and header kinds."""
        assert self.controller is not None, "reloaded before start"
        if self._engine is not None:
            reload_tls(self._engine, config)  # first: a certificate that fails changes nothing
        if self.supervisor is not None:
            refuse_shadow_steps(config)
            self.supervisor.staged = source
        notes = await self.controller.reconfigure(config)
        if self._engine is not None:
            reconfigure_engine(self._engine, config)
        if self._buffer is not None:
            self._buffer.reconfigure(config)
        self.notifier.reconfigure(config.notifications)
        self.config = config
        if self.supervisor is not None:
            notes += await self.supervisor.reloaded()
        return notes

    async def stop(self, drain_s: float | None = None, notice_s: float | None = None) -> int:
        """Drain and close; return the number of connections cut at the deadline."""
        self.readiness.set_not_ready("draining")
        notice = self.config.limits.drain_notice_s if notice_s is None else notice_s
        if notice > 0 and (self._engine is not None or self.supervisor is not None):
            # Readiness fails first; the listener stays open while readiness watchers react.
            if self._engine is not None:
                self._engine.announce_drain()
            if self.supervisor is not None:
                self.supervisor.announce_drain()
            await asyncio.sleep(notice)
        cut = 0
        if self.replica is not None:
            await self.replica.close()
            self.replica = None
        if self.sampler is not None:
            await self.sampler.close()
            self.sampler = None
        await finish(self._reloads, CLOSE_WAIT_S)
        if self.controller is not None:
            await self.controller.close()
        await self.notifier.close()
        drain = self.config.limits.drain_s if drain_s is None else drain_s
        if self._engine is not None:
            cut = await self._engine.drain(drain)
            await self._engine.close()
            self._engine = None
        if self.shadowing is not None:
            await self.shadowing.close()
            self.shadowing = None
        if self.supervisor is not None:
            await self.supervisor.stop(drain)
        if self.access_log is not None:
            await self.access_log.close()
            self.access_log = None
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        return cut


def refuse_shadow_steps(config: Config) -> None:
    """Worker processes do not mirror: a shadow step there would never be judged."""
    for i, service in enumerate(config.services):
        for j, step in enumerate(service.rollout.steps):
            if step.shadow:
                raise ConfigError(
                    f"services[{i}].rollout.steps[{j}].shadow",
                    "shadow steps need the single-process data plane: run with --workers 1",
                )


def _replica(
    controller: Controller, store: object, buffer: EvidenceBuffer, config: Config, clock: Clock
) -> Replica:
    # Imported here: Redis is an optional extra, needed only in fleet mode.
    from proxy.fleet.replica import Replica
    from proxy.store.redis_store import RedisStore

    if not isinstance(store, RedisStore):
        raise TypeError("fleet mode needs the Redis store")
    return Replica(controller, store, buffer, config.state, clock=clock)


def data_engine(
    config: Config, router: Router, metrics: Metrics, loop: asyncio.AbstractEventLoop
) -> tuple[Engine, AccessLog | None]:
    """The HTTP engine of the data plane (in this process, or in a worker process), and its
    access log when the config turns it on (started; the caller closes it)."""
    exchanges = Exchanges()
    access_log = None
    if config.access_log.enabled:
        access_log = AccessLog(config.access_log.path, loop)
        access_log.start()
        exchanges = LoggedExchanges(AccessLines(access_log, path_id_patterns(config)))
    policies = [service.identity_policy for service in config.services]
    engine = Engine(
        config,
        router,
        loop,
        identity_headers=header_rule_names(policies),
        relevant_headers=relevant_headers(policies),
        on_reject=lambda error: metrics.rejected(error.status),
        exchanges=exchanges,
    )
    return engine, access_log


def reload_tls(engine: Engine, config: Config) -> None:
    """Read the listener's certificates again (raises ConfigError, keeping the old ones, when
    one does not load)."""
    if engine.tls is not None and config.tls is not None:
        engine.tls.reload(config.tls, h2=config.http2.enabled)


def reconfigure_engine(engine: Engine, config: Config) -> None:
    """A reloaded `config` into a running data-plane engine (the router is reconfigured by
    the controller, with the routing plans)."""
    policies = [service.identity_policy for service in config.services]
    engine.reconfigure(config, header_rule_names(policies), relevant_headers(policies))
    exchanges = engine.exchanges
    if isinstance(exchanges, LoggedExchanges):
        exchanges.lines.patterns = path_id_patterns(config)


def observe_all(evidence: Evidence, parts: list[ServiceEvidence]) -> None:
    """Requests a worker served, into this process's evidence sink."""
    for part in parts:
        replay(part, evidence)


async def serve(
    config: Config,
    *,
    workers: int = 1,
    config_path: str | None = None,
    source: str | None = None,
) -> int:
    """Run until SIGTERM or SIGINT, then drain; SIGHUP reloads the config file. The exit
    status of `rollout-proxy run`."""
    runtime = Runtime(config, workers=workers, config_path=config_path, source=source)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)  # before anything can be asked to stop
    started = asyncio.Event()
    # Until the proxy serves, a SIGHUP only says it came too early (its default would end
    # the process).
    loop.add_signal_handler(
        signal.SIGHUP,
        lambda: (
            runtime.reload_soon("SIGHUP")
            if started.is_set()
            else print("rollout-proxy: SIGHUP while starting: ignored", file=sys.stderr)
        ),
    )
    await runtime.start()
    started.set()
    processes = f", {workers} worker processes" if workers > 1 else ""
    print(
        f"rollout-proxy: data plane on {runtime.data_url}, admin on {runtime.admin_url} "
        f"({build.describe()}{processes})",
        file=sys.stderr,
        flush=True,
    )
    if not build.compiled():
        print(f"rollout-proxy: note: {build.INTERPRETED_NOTE}", file=sys.stderr, flush=True)
    await stop.wait()
    print("rollout-proxy: draining", file=sys.stderr, flush=True)
    cut = await runtime.stop()
    if cut:
        print(f"rollout-proxy: {cut} connection(s) cut at the drain deadline", file=sys.stderr)
    return 0


# The cycle collector's first threshold (CPython's default: 700 allocations). At 700, the
# objects of requests in flight (an HTTP/2 connection holds a hundred streams, each a dozen
# objects) outlive two young collections and are promoted, and full collections of the whole
# heap follow: an eighth of the CPU on the HTTP/2 benchmark. At 20,000 most die young,
# freed by reference counting before any collection sees them.
GC_YOUNG_THRESHOLD: Final = 20_000


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run a coroutine on uvloop where available (the one place the loop is chosen), with the
    cycle collector tuned for a server (`GC_YOUNG_THRESHOLD`)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(main)
    result: int = uvloop.run(main)
    return result
