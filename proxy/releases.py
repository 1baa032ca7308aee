"""Releases as the controller serves them: a start request read into a record, and the
config a service is served by once it has releases.

A service that has never had a release is served by its config file's `rollout:` block, as
before. Once it has one, its release book (proxy/store/records.py) decides what it serves:

- a release in progress: stable is the book's stable pool (else the file's), canary is the
  release's upstreams, and the rollout runs the release's steps (else the file's) under the
  release's salt;
- no release in progress: the service is idle, everything on the stable pool.

The rules themselves (same version, conflicts, salts, which pool is stable) are the pure
functions of proxy/core/releases.py.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from proxy.config import Config, ServiceConfig, Upstream, UpstreamsConfig
from proxy.config import reader as read
from proxy.config.analysis import increase, route_check
from proxy.config.prometheus import release_check
from proxy.config.servertiming import timing_check
from proxy.config.services import _default_baseline, _step, check_protocol
from proxy.core.analysis import AnalysisConfig, RouteCheck
from proxy.core.releases import (
    ReleaseStatus,
    derive_salt,
    drift,
    idle_color,
    live_color,
    stable_pool,
)
from proxy.errors import ConfigError
from proxy.store.records import ReleaseBook, ReleaseRecord

_CHANGE_KEYS = ("commit", "url", "summary", "author", "routes")
_STEP_KEYS = ("percent", "tiers", "tenants", "observe")
_BODY_KEYS = ("version", "canary", "steps", "change", "checks", "salt", "supersede")
_CHECK_KINDS = ("errors", "latency", "route", "server_timing", "prometheus")
MAX_RELEASE_ROUTES = 20  # route checks a release may add (each takes a share of the budget)


@dataclasses.dataclass(frozen=True, slots=True)
class StartRequest:
    """A validated `POST .../releases` body."""

    version: str
    canary: tuple[str, ...]
    steps: tuple[Mapping[str, Any], ...]
    change: Mapping[str, Any]
    salt: str | None
    supersede: bool
    checks: tuple[Mapping[str, Any], ...] = ()


def start_request(body: object, service: ServiceConfig) -> StartRequest:
    """The body of a release start, validated against `service` (ConfigError names the key)."""
    data = read.mapping(body, "", _BODY_KEYS, required=("version",))
    version = read.string(data["version"], "version")
    if not version or len(version) > 128 or not version.isprintable():
        raise ConfigError("version", "must be 1 to 128 printable characters")
    urls = read.sequence(data.get("canary", []), "canary")
    canary = tuple(str(read.upstream(u, read.index("canary", i))) for i, u in enumerate(urls))
    paired = service.upstreams.live is not None
    if paired and canary:
        raise ConfigError(
            "canary",
            "must be left out: this service is a blue/green pair, its releases run "
            "on the pool that is not stable",
        )
    if not canary and not paired:
        raise ConfigError("canary", "must list the release's upstreams (http://host:port)")
    if len(set(canary)) != len(canary):
        raise ConfigError("canary", "lists an upstream twice")
    check_protocol(service.upstreams.protocol, upstreams(canary, "canary"), "canary")
    items = read.sequence(data.get("steps", []), "steps")
    steps = tuple(read.mapping(s, read.index("steps", i), _STEP_KEYS) for i, s in enumerate(items))
    parse_steps(steps, service)  # validated now, parsed again where served
    change = read.mapping(data.get("change", {}), "change", _CHANGE_KEYS)
    for key in ("commit", "url", "summary", "author"):
        if key in change:
            read.string(change[key], read.key("change", key))
    items = read.sequence(data.get("checks", []), "checks")
    checks = tuple(
        read.mapping(c, read.index("checks", i), _CHECK_KINDS) for i, c in enumerate(items)
    )
    release_analysis(service.rollout.analysis, checks, change, version)  # validated now
    salt = data.get("salt")
    return StartRequest(
        version=version,
        canary=canary,
        steps=steps,
        change=dict(change),
        salt=None if salt is None else read.string(salt, "salt"),
        supersede=read.boolean(data.get("supersede", False), "supersede"),
        checks=tuple(dict(c) for c in checks),
    )


def release_analysis(
    base: AnalysisConfig,
    checks: tuple[Mapping[str, Any], ...],
    change: Mapping[str, Any],
    version: str,
) -> AnalysisConfig:
    """The service's analysis with a release's own checks added, for that release only:
    `errors` (every request's error rate at the release's tolerance, beside the service's own
    errors check), `route` (one route's error rate), `latency` (the service's latency check,
    held to the tighter of the two tolerances), and a route check for each of the change's
    `routes` (a path prefix, or `{path_prefix, errors: {max_increase}}` for a tighter one).
    The checks a release brings are named after it (`route:/login [release 1.4.2]`)."""
    origin = f"release {version}"
    routes = list(base.routes)
    prometheus = list(base.prometheus)
    timing = list(base.server_timing)
    quantile, latency = base.latency_quantile, base.latency_max_increase
    latency_origin = base.latency_origin
    for i, item in enumerate(checks):
        path = read.index("checks", i)
        if len(item) != 1:
            raise ConfigError(path, f"must have exactly one of: {', '.join(_CHECK_KINDS)}")
        kind, value = next(iter(item.items()))
        kind_path = read.key(path, kind)
        if kind == "errors":
            section = read.mapping(value, kind_path, ("max_increase",))
            tolerance = increase(section, kind_path, base.error_max_increase)
            routes.append(RouteCheck("/", tolerance, origin))
        elif kind == "route":
            routes.append(route_check(value, kind_path, base.error_max_increase, origin))
        elif kind == "server_timing":
            check = timing_check(value, kind_path)
            timing.append(dataclasses.replace(check, origin=origin))
        elif kind == "prometheus":
            server = base.prometheus[0] if base.prometheus else None
            prometheus.append(release_check(value, kind_path, server, os.environ, origin))
        else:
            section = read.mapping(value, kind_path, ("quantile", "max_increase"))
            latency = min(latency, increase(section, kind_path, latency))
            latency_origin = origin
            if "quantile" in section:
                quantile = read.number(section["quantile"], read.key(kind_path, "quantile"),
                                       0.5, 0.999)  # fmt: skip
    for i, route in enumerate(read.sequence(change.get("routes", []), "change.routes")):
        path = read.index("change.routes", i)
        given: object = {"path_prefix": route} if isinstance(route, str) else route
        routes.append(route_check(given, path, base.error_max_increase, origin))
    if len(routes) - len(base.routes) > MAX_RELEASE_ROUTES:
        raise ConfigError("checks", f"a release may add at most {MAX_RELEASE_ROUTES} route checks")
    return dataclasses.replace(
        base,
        routes=tuple(routes),
        latency_quantile=quantile,
        latency_max_increase=latency,
        latency_origin=latency_origin,
        prometheus=tuple(prometheus),
        server_timing=tuple(timing),
    )


def parse_steps(steps: tuple[Mapping[str, Any], ...], service: ServiceConfig) -> tuple[Any, ...]:
    """A release's steps as the config's (its own, else the service's configured ones)."""
    if not steps:
        return service.rollout.steps
    strategy = service.rollout.strategy
    names = service.tiers.names
    return tuple(
        _step(dict(s), read.index("steps", i), strategy, names) for i, s in enumerate(steps)
    )


def target(
    request: StartRequest, service: ServiceConfig, book: ReleaseBook | None
) -> tuple[tuple[str, ...], str | None]:
    """The upstreams a release runs on, and its pool's color: its own; else, for a blue/green
    pair, the pool that is not stable now."""
    upstreams = service.upstreams
    if upstreams.live is None:
        return request.canary, None
    color = idle_color(upstreams.live, book.live if book else None)
    return _colored(upstreams, color), color


def _colored(upstreams: UpstreamsConfig, color: str) -> tuple[str, ...]:
    return tuple(str(u) for u in upstreams.pool(color))


def release_salt(request: StartRequest, service: str) -> str:
    return request.salt if request.salt is not None else derive_salt(service, request.version)


def upstreams(urls: tuple[str, ...], path: str) -> tuple[Upstream, ...]:
    return tuple(read.upstream(u, read.index(path, i)) for i, u in enumerate(urls))


def configured_stable(service: ServiceConfig) -> tuple[str, ...]:
    return tuple(str(u) for u in service.upstreams.stable)


def stable_of(service: ServiceConfig, book: ReleaseBook | None) -> tuple[str, ...]:
    """The stable pool served (the store's, once a release completed; else the file's)."""
    upstreams = service.upstreams
    if upstreams.live is not None:
        return _colored(upstreams, live_color(upstreams.live, book.live if book else None))
    return stable_pool(configured_stable(service), book.stable if book else None)


def drift_of(service: ServiceConfig, book: ReleaseBook | None) -> str | None:
    upstreams = service.upstreams
    if upstreams.live is not None and book is not None and book.live is not None:
        live = live_color(upstreams.live, book.live)
        if live == upstreams.live:
            return None
        return (
            f"the {live} pool is stable (flipped by a release, kept in the state store), "
            f"not the config file's upstreams.live {upstreams.live}"
        )
    return drift(configured_stable(service), book.stable if book else None)


def served(service: ServiceConfig, book: ReleaseBook | None) -> tuple[ServiceConfig, str, bool]:
    """What `service` is served by, given its release book: (config, release id, idle)."""
    if book is None or not book.releases:
        return service, "", False
    stable = upstreams(stable_of(service, book), "stable")
    release = book.current()
    if release is None:
        pools = UpstreamsConfig(stable, (), protocol=service.upstreams.protocol)
        idle = dataclasses.replace(service, upstreams=pools)
        return idle, "", True
    steps = parse_steps(release.steps, service)
    baseline = _default_baseline(steps) if release.steps else service.rollout.baseline_s
    try:
        analysis = release_analysis(
            service.rollout.analysis, release.checks, release.change, release.version
        )
    except ConfigError:
        # Valid when the release started; no longer buildable (its Prometheus variable is
        # gone from this process's environment): the service's own checks judge it.
        analysis = service.rollout.analysis
    rollout = dataclasses.replace(
        service.rollout, salt=release.salt, steps=steps, baseline_s=baseline, analysis=analysis
    )
    canary = upstreams(release.canary, "canary")
    pools = UpstreamsConfig(stable, canary, protocol=service.upstreams.protocol)
    return dataclasses.replace(service, upstreams=pools, rollout=rollout), release.id, False


def served_config(config: Config, books: Mapping[str, ReleaseBook]) -> Config:
    """`config` with every service as its release book has it served."""
    services = tuple(served(s, books.get(s.name))[0] for s in config.services)
    return dataclasses.replace(config, services=services)


def ended(
    book: ReleaseBook, status: ReleaseStatus, outcome: str, wall: float, verdicts: tuple[Any, ...]
) -> ReleaseBook:
    """`book` with its active release ended as `status` (completion promotes its pool)."""
    release = book.current()
    assert release is not None, "no release in progress"
    completed = status is ReleaseStatus.COMPLETED
    finished = dataclasses.replace(
        release,
        status=status.value,
        ended=wall,
        outcome=outcome,
        verdicts=verdicts,
        released=release.stable_before if completed else (),
    )
    return dataclasses.replace(
        book,
        version=book.version + 1,
        active=None,
        stable=release.canary if completed else book.stable,
        live=release.color if completed and release.color else book.live,
        releases=tuple(finished if r.id == release.id else r for r in book.releases),
    )


def release_json(release: ReleaseRecord, live: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the API shows of a release (`live`: the rollout's status, while it runs)."""
    data = release.to_json()
    end = release.ended
    data["duration_s"] = None if end is None else round(end - release.started, 3)
    data["rollout"] = live
    return data
