"""Per request: identify -> decide -> pick the pool; per outcome: record.

The `Router` holds, per service, an immutable `ServiceRoutes` snapshot: the routing plan of the
current step, one prebuilt `Route` per (variant, tier), and the routes already decided for the
subjects it has seen. When a service identifies requests by headers only, its routes are also
cached by those header values and the peer's trust (all the subject depends on), so routing a
request known before costs one lookup instead of an identity extraction. A new step (from the
controller) is a new snapshot swapped in whole, never a change of the plan requests are reading.

A request with `X-Rollout-Force` (a tester's) is routed as usual first; then, when its service
has `force.enabled` and proxy/core/force.py honours the value, it goes to the forced route of
the variant instead: the same pool, counted in `rollout_forced_requests_total` and never fed
to the analysis (its recorder has no evidence sink). Nothing is cached for it, so the next
unforced request routes as before. A request without the header pays one attribute check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Final

from proxy.config import Config, Limits, ServiceConfig, Upstream, UpstreamTls
from proxy.core.bucketing import bucket_for
from proxy.core.force import ForcePolicy, forced_variant
from proxy.core.identity import RequestView, subject_for, subject_headers
from proxy.core.retries import RetryBudget
from proxy.core.routing import RoutingPlan, Subject, Variant, decide
from proxy.core.servertiming import TimingEntry
from proxy.errors import NoRoute
from proxy.http.capture import ShadowSink, ShadowTap
from proxy.http.pool import UpstreamPool
from proxy.metrics import ArmSeries, Metrics
from proxy.tls import UpstreamContexts

if TYPE_CHECKING:
    from proxy.http.request import Request
    from proxy.http.sides import ClientSide


_HOST_CACHE_SIZE: Final = 1024
_DECIDED_CACHE_SIZE: Final = 16384


class Evidence:
    """Where finished requests feed the rollout analysis: the controller's analysis feed, or
    a buffer shipping them to where they are judged. A base class rather than a protocol: the
    compiled build then calls the sink's `observe` directly."""

    __slots__ = ()

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
        raise NotImplementedError

    def observe_timed(
        self,
        service: str,
        tier: str,
        canary: bool,
        status: int,
        latency_s: float,
        path: str,
        id_hash: int,
        timing: tuple[TimingEntry, ...],
    ) -> None:
        """`observe` of an upstream's response with the Server-Timing entries its service's
        checks name (the analysis feed judges them; an evidence buffer ships them)."""
        raise NotImplementedError


class Recorder:
    """Where finished exchanges are counted: Prometheus, and the analysis as evidence."""

    __slots__ = ("evidence", "metrics")

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.evidence: Evidence | None = None

    def completed(
        self,
        route: Route,
        status: int,
        duration_s: float,
        request: Request,
        generated: bool,
        *,
        evidence_too: bool = True,
        timing: tuple[TimingEntry, ...] | None = None,
    ) -> None:
        """`evidence_too=False`: metrics only (a retry on stable of a request the routing
        plan gave the canary is no sample of the stable arm). `timing`: the response's
        Server-Timing entries that checks name (None: not read)."""
        route.series.observe(status, duration_s)
        evidence = self.evidence
        if evidence is None or not evidence_too:
            return
        if timing is not None and not generated:
            evidence.observe_timed(
                route.service,
                route.tier,
                route.canary,
                status,
                duration_s,
                request.path,
                request.bucket,
                timing,
            )
        else:
            evidence.observe(
                route.service,
                route.tier,
                route.canary,
                status,
                duration_s,
                request.path,
                request.bucket,
                generated,
            )

    def failed(self, route: Route, reason: str) -> None:
        self.metrics.upstream_failure(route.service, route.variant, reason)

    def aborted(self, route: Route) -> None:
        self.metrics.client_abort(route.service, route.variant)

    def retried(self, route: Route, allowed: bool) -> None:
        """A failed attempt on `route` was sent again to stable (or the budget said no)."""
        self.metrics.retry(route.service, route.variant, allowed)


class ForcedRecorder(Recorder):
    """The recorder of forced routes: metrics only. A tester's request is no sample of either
    arm, so it never reaches the analysis, its guardrail or an evidence buffer."""

    __slots__ = ()

    def completed(
        self,
        route: Route,
        status: int,
        duration_s: float,
        request: Request,
        generated: bool,
        *,
        evidence_too: bool = True,
        timing: tuple[TimingEntry, ...] | None = None,
    ) -> None:
        route.series.observe(status, duration_s)


class Route:
    """Where a request goes and how it is labelled: shared by every request of a segment.
    A canary route has a `fallback` (the stable route of its tier) and the service's retry
    `budget` when the canary has upstreams of its own."""

    __slots__ = (
        "budget",
        "canary",
        "extra",
        "fallback",
        "forced",
        "pool",
        "recorder",
        "series",
        "service",
        "shadow",
        "step",
        "strip_timing",
        "tier",
        "timing",
        "variant",
    )

    def __init__(
        self,
        service: str,
        variant: Variant,
        tier: str,
        step: int,
        pool: UpstreamPool,
        recorder: Recorder,
        budget: RetryBudget,
        shadow: ShadowTap | None = None,
        *,
        forced: bool = False,
    ) -> None:
        self.service = service
        self.variant = variant.value
        self.canary = variant is Variant.CANARY
        self.tier = tier
        self.step = step
        self.pool = pool
        self.recorder = recorder
        # A forced route (a tester's request) counts into its own series, never the arm's.
        self.forced = forced
        metrics = recorder.metrics
        self.series: ArmSeries = (
            metrics.forced(service, self.variant)
            if forced
            else metrics.arm(service, self.variant, tier)
        )
        self.budget = budget
        self.fallback: Route | None = None
        # A shadow step on a stable route: samples requests to mirror to the canary.
        self.shadow = shadow if variant is Variant.STABLE else None
        # Server-Timing: the metrics the service's checks read (None: not read), and whether
        # the header is removed from the response to the client (`_with_timing`).
        self.timing: frozenset[str] | None = None
        self.strip_timing = False
        # Added to the upstream request; the same names are stripped from incoming requests.
        self.extra = b"X-Rollout-Variant: %s\r\nX-Rollout-Step: %d\r\n" % (
            variant.value.encode("ascii"),
            step,
        )


class ServiceRoutes:
    """One service's routing snapshot: its plan and its prebuilt routes."""

    __slots__ = (
        "by_headers",
        "config",
        "decided",
        "force",
        "forced_routes",
        "headers",
        "host",
        "path_prefix",
        "plan",
        "routes",
        "wall",
    )

    def __init__(
        self,
        config: ServiceConfig,
        plan: RoutingPlan,
        pools: Mapping[Variant, UpstreamPool],
        recorder: Recorder,
        budget: RetryBudget,
        forced: ForcedRecorder | None = None,
        wall: Callable[[], float] = time.time,
        sink: ShadowSink | None = None,
    ) -> None:
        self.config = config
        self.plan = plan
        self.host = config.match.host.lower() if config.match.host else None
        self.path_prefix = config.match.path_prefix
        step = plan.step_index
        tap = None
        if (
            sink is not None
            and plan.shadow > 0
            and pools[Variant.CANARY] is not pools[Variant.STABLE]
        ):
            tap = ShadowTap(config, plan.shadow, sink)
        self.routes: dict[tuple[Variant, str], Route] = {
            (variant, tier): Route(config.name, variant, tier, step, pool, recorder, budget, tap)
            for variant, pool in pools.items()
            for tier in config.tiers.names
        }
        if pools[Variant.CANARY] is not pools[Variant.STABLE]:
            for tier in config.tiers.names:
                canary = self.routes[(Variant.CANARY, tier)]
                canary.fallback = self.routes[(Variant.STABLE, tier)]
        # Subject -> (its route, its bucket) under this plan: routing is pure, and the same
        # ids come back request after request. Bounded; emptied when full.
        self.decided: dict[Subject, tuple[Route, int]] = {}
        # The same, keyed by what the subject is made of when that is only headers (see
        # `subject_headers`): (peer trusted, header values...) -> (route, bucket).
        self.headers = subject_headers(config.identity_policy)
        self.by_headers: dict[tuple[bool | str | None, ...], tuple[Route, int]] = {}
        # X-Rollout-Force: None when the service does not honour it (the header is then only
        # stripped); else who may force, and one forced route per (variant, tier).
        self.force: ForcePolicy | None = None
        self.forced_routes: dict[tuple[Variant, str], Route] = {}
        self.wall = wall
        if config.force.enabled and forced is not None:
            self.force = ForcePolicy(trusted=config.force.trusted, key=config.force.key)
            self.forced_routes = _forced_routes(config, plan, pools, forced, budget)
        _with_timing(config, plan, self.routes.values())
        _with_timing(config, plan, self.forced_routes.values())

    def forced(self, route: Route, request: Request, client: ClientSide) -> Route:
        """The route of a request carrying X-Rollout-Force (`route`: where it would go without
        it): the forced route of the variant the value may choose, else `route` unchanged."""
        policy = self.force
        value = request.force
        if policy is None or value is None:
            return route
        variant = forced_variant(policy, self.config.name, value, client.trusted, self.wall())
        if variant is None:
            return route
        return self.forced_routes[(variant, route.tier)]

    def resolve(self, subject: Subject) -> tuple[Route, int]:
        """The route of `subject` under this plan, and the bucket the analysis weighs it by:
        its routing bucket, else the bucket of its key (a pinned tenant); -1 when it has no
        key (the caller then hashes the peer's address)."""
        found = self.decided.get(subject)
        if found is None:
            decision = decide(self.plan, subject)
            bucket = decision.bucket
            if bucket < 0 and subject.key is not None:
                bucket = bucket_for(self.plan.salt_prefix, subject.key)
            found = (self.routes[(decision.variant, subject.tier)], bucket)
            if len(self.decided) >= _DECIDED_CACHE_SIZE:
                self.decided.clear()
            self.decided[subject] = found
        return found

    def resolve_headers(
        self, key: tuple[bool | str | None, ...], request: Request, client: ClientSide
    ) -> tuple[Route, int]:
        """`resolve` for a service whose subject is made of headers only, cached by `key`:
        the peer's trust and the request's values of `self.headers`."""
        found = self.by_headers.get(key)
        if found is None:
            found = self.resolve(subject_for(self.config.identity_policy, _view(request, client)))
            if len(self.by_headers) >= _DECIDED_CACHE_SIZE:
                self.by_headers.clear()
            self.by_headers[key] = found
        return found

    def matches(self, host: str, path: str) -> bool:
        if self.host is not None and self.host != host:
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)


class Router:
    """Maps a parsed request to its Route; owns the upstream pools."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
        wall: Callable[[], float] = time.time,
        shadow: ShadowSink | None = None,
    ) -> None:
        """`shadow`: where shadow steps' captured answers go (None: no mirroring)."""
        self.shadow = shadow
        self.recorder = Recorder(metrics)
        self.forced_recorder = ForcedRecorder(metrics)
        self.wall = wall  # Unix time, for the expiry of force tokens
        self.metrics = metrics
        self.loop = loop
        self.pools: dict[str, dict[Variant, UpstreamPool]] = {}
        self.budgets: dict[str, RetryBudget] = {}
        self.services: list[ServiceRoutes] = []
        self._hosts: dict[bytes | None, str] = {}  # Host value -> _bare_host(value)
        # Each pool by what it is made of: a reload keeps the pools it does not change.
        self._by_upstreams: dict[PoolKey, UpstreamPool] = {}
        self._tls = UpstreamContexts()  # client contexts of the https:// upstreams
        self._limits = config.limits
        self.reconfigure(config, {s.name: s.rollout.plan(0) for s in config.services})

    def reconfigure(self, config: Config, plans: Mapping[str, RoutingPlan]) -> None:
        """Serve `config` from the next request on, with `plans` (one per service). Pools
        whose upstreams and limits are unchanged are kept with their idle connections; the
        others are retired: requests in flight finish on them, then their connections close.
        The snapshot list is swapped whole, so a request is routed by one config or the next."""
        limits = config.limits
        previous = self._by_upstreams
        fresh: dict[PoolKey, UpstreamPool] = {}
        pools: dict[str, dict[Variant, UpstreamPool]] = {}
        budgets: dict[str, RetryBudget] = {}
        for service in config.services:
            upstreams = service.upstreams
            name = service.name
            tls = service.upstream_tls
            key = (name, "stable", upstreams.stable, limits, tls, upstreams.protocol)
            stable = _pool(key, previous, fresh, self.loop, self._tls)
            canary = stable
            if upstreams.canary:
                key = (name, "canary", upstreams.canary, limits, tls, upstreams.protocol)
                canary = _pool(key, previous, fresh, self.loop, self._tls)
            pools[service.name] = {Variant.STABLE: stable, Variant.CANARY: canary}
            budget = self.budgets.get(service.name)
            if budget is None or limits != self._limits:
                budget = RetryBudget(limits.retry_budget_percent, limits.retry_burst)
            budgets[service.name] = budget
        self.pools, self.budgets, self._by_upstreams = pools, budgets, fresh
        self._tls.keep({key[4]: None for key in fresh})
        self._limits = limits
        self.services = [self._snapshot(s, plans[s.name]) for s in config.services]
        for key, pool in previous.items():
            if key not in fresh:
                pool.retire()

    def _snapshot(self, service: ServiceConfig, plan: RoutingPlan) -> ServiceRoutes:
        self.metrics.set_step(service.name, plan.step_index, plan.canary_percent())
        pools, budget = self.pools[service.name], self.budgets[service.name]
        forced = self.forced_recorder
        return ServiceRoutes(
            service, plan, pools, self.recorder, budget, forced, self.wall, self.shadow
        )

    def set_plan(self, name: str, plan: RoutingPlan) -> None:
        """Swap in a new routing snapshot for service `name` (atomic for requests)."""
        services = list(self.services)
        for i, routes in enumerate(services):
            if routes.config.name == name:
                services[i] = self._snapshot(routes.config, plan)
        self.services = services

    def route(self, request: Request, client: ClientSide) -> Route:
        hosts = self._hosts
        host = hosts.get(request.host)
        if host is None:
            if len(hosts) >= _HOST_CACHE_SIZE:
                hosts.clear()
            host = hosts[request.host] = _bare_host(request.host)
        path = request.path
        for service in self.services:
            if service.matches(host, path):
                return self._route_in(service, request, client)
        raise NoRoute("no service matches this request")

    @staticmethod
    def _route_in(service: ServiceRoutes, request: Request, client: ClientSide) -> Route:
        names = service.headers
        if names is not None:
            relevant = request.relevant
            if len(names) == 1:  # the usual case, one identity header: a cheaper key
                key: tuple[bool | str | None, ...] = (client.trusted, relevant.get(names[0]))
            else:
                key = (client.trusted, *[relevant.get(name) for name in names])
            found = service.resolve_headers(key, request, client)
        else:
            found = service.resolve(
                subject_for(service.config.identity_policy, _view(request, client))
            )
        route, bucket = found
        # The analysis caps each id's weight by this number; a request without an id gets the
        # bucket of its peer's address (the peer stands for no id).
        request.bucket = (
            bucket if bucket >= 0 else bucket_for(service.plan.salt_prefix, client.peer_ip)
        )
        if request.force is not None:  # a tester's request: the only check the others pay
            return service.forced(route, request, client)
        return route

    def close(self) -> None:
        for pool in self._by_upstreams.values():
            pool.close()


def _forced_routes(
    config: ServiceConfig,
    plan: RoutingPlan,
    pools: Mapping[Variant, UpstreamPool],
    recorder: ForcedRecorder,
    budget: RetryBudget,
) -> dict[tuple[Variant, str], Route]:
    """One forced route per (variant, tier). A forced canary goes to the canary pool only
    while one serves a rollout (the plan is active and the service has canary upstreams);
    otherwise to stable, as every request then does."""
    stable, canary = pools[Variant.STABLE], pools[Variant.CANARY]
    serving = plan.active and canary is not stable
    step = plan.step_index
    routes: dict[tuple[Variant, str], Route] = {}
    for tier in config.tiers.names:
        to_stable = Route(
            config.name, Variant.STABLE, tier, step, stable, recorder, budget, forced=True
        )
        routes[(Variant.STABLE, tier)] = to_stable
        to_canary = to_stable
        if serving:
            to_canary = Route(
                config.name, Variant.CANARY, tier, step, canary, recorder, budget, forced=True
            )
            to_canary.fallback = to_stable
        routes[(Variant.CANARY, tier)] = to_canary
    return routes


def _with_timing(config: ServiceConfig, plan: RoutingPlan, routes: Iterable[Route]) -> None:
    """Have `routes` read the Server-Timing metrics the service's checks name while its
    rollout is active (nothing judges them otherwise), and strip the header when the service
    says so. A service with neither pays nothing per response."""
    checks = config.rollout.analysis.server_timing
    wanted = frozenset(c.metric for c in checks) if checks and plan.active else None
    for route in routes:
        route.timing = wanted
        route.strip_timing = config.strip_server_timing


# (service, variant, its upstreams, the limits, TLS to them, the protocol): what a pool is
# made of.
PoolKey = tuple[str, str, tuple[Upstream, ...], Limits, UpstreamTls, str]


def _pool(
    key: PoolKey,
    previous: Mapping[PoolKey, UpstreamPool],
    fresh: dict[PoolKey, UpstreamPool],
    loop: asyncio.AbstractEventLoop,
    contexts: UpstreamContexts,
) -> UpstreamPool:
    """The pool of `key`: this config's already, else the previous config's, else a new one."""
    pool = fresh.get(key) or previous.get(key)
    if pool is None:
        upstreams, tls, protocol = key[2], key[4], key[5]
        https = any(u.scheme == "https" for u in upstreams)
        context = contexts.get(tls, protocol) if https else None
        pool = UpstreamPool(upstreams, key[3], loop, context, tls.server_name or "", protocol)
    fresh[key] = pool
    return pool


def _view(request: Request, client: ClientSide) -> RequestView:
    return RequestView(
        path=request.path,
        query=request.query,
        headers=request.relevant,
        peer_ip=client.peer_ip,
        peer_trusted=client.trusted,
        client_cert=client.client_cert,
    )


def _bare_host(host: bytes | None) -> str:
    """Host without port, lower-cased ('' when absent)."""
    if not host:
        return ""
    text = host.decode("latin-1").lower()
    if text.startswith("["):
        return text[: text.find("]") + 1]
    return text.partition(":")[0]
