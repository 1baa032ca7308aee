"""Configuration of one entry of `services:`: match, upstreams, rollout, and their cross-checks.

Cross-checks catch configurations that load but silently do nothing: a step naming a tier that
no tenant or default can have, pins or tenant cohorts with no `kind: tenant` identity rule, a
canary that some step exposes but no canary upstream serves.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from proxy.config import reader as read
from proxy.config.analysis import analysis
from proxy.config.force import force
from proxy.config.identity import identity_rules, tenant_id, tier_name, tiers
from proxy.config.model import (
    Match,
    RolloutConfig,
    ServiceConfig,
    ShadowConfig,
    Upstream,
    UpstreamsConfig,
    UpstreamTls,
)
from proxy.config.tls import upstream_tls
from proxy.core.bucketing import BUCKETS
from proxy.core.identity import IdentityRule, IdKind, TierConfig, Unidentified
from proxy.core.releases import other_color
from proxy.core.routing import Step, Variant
from proxy.errors import ConfigError

_NAME = re.compile(r"[a-z0-9_-]{1,64}")
_PATH_PREFIX = re.compile(r"/[^\s?#]*")
_SERVICE_KEYS = (
    "name",
    "match",
    "identity",
    "unidentified",
    "tiers",
    "upstreams",
    "upstream_tls",
    "rollout",
    "force",
    "strip_server_timing",
)
_STRATEGIES = ("canary", "blue-green")


def service(value: object, path: str, env: Mapping[str, str]) -> ServiceConfig:
    """One service; errors are reported in the order the keys are documented."""
    data = read.mapping(value, path, _SERVICE_KEYS, required=("name", "upstreams", "rollout"))
    name = read.string(data["name"], read.key(path, "name"), _NAME, "[a-z0-9_-]{1,64}")
    match = _match(data.get("match", {}), read.key(path, "match"))
    rules = identity_rules(data.get("identity", []), read.key(path, "identity"), env)
    unidentified = read.choice(
        data.get("unidentified", "stable"),
        read.key(path, "unidentified"),
        [u.value for u in Unidentified],
    )
    tier_config = tiers(data.get("tiers", {}), read.key(path, "tiers"))
    upstreams = _upstreams(data["upstreams"], read.key(path, "upstreams"))
    tls = _upstream_tls(data, upstreams, path)
    rollout = _rollout(data["rollout"], read.key(path, "rollout"), name, tier_config, env)
    _check_tenants(rules, tier_config, rollout, path)
    _check_canary(upstreams, rollout, path)
    return ServiceConfig(
        name=name,
        match=match,
        identity=rules,
        unidentified=Unidentified(unidentified),
        tiers=tier_config,
        upstreams=upstreams,
        rollout=rollout,
        upstream_tls=tls,
        force=force(data.get("force", {}), read.key(path, "force"), env),
        strip_server_timing=read.boolean(
            data.get("strip_server_timing", bool(rollout.analysis.server_timing)),
            read.key(path, "strip_server_timing"),
        ),
    )


def _upstream_tls(data: Mapping[str, object], pools: UpstreamsConfig, path: str) -> UpstreamTls:
    if "upstream_tls" not in data:
        return UpstreamTls()
    tls_path = read.key(path, "upstream_tls")
    every = (*pools.stable, *pools.canary, *pools.blue, *pools.green)
    if not any(u.scheme == "https" for u in every):
        raise ConfigError(tls_path, "is set, but no upstream of this service is https://")
    return upstream_tls(data["upstream_tls"], tls_path)


def _match(value: object, path: str) -> Match:
    data = read.mapping(value, path, ("host", "path_prefix"))
    host_path, prefix_path = read.key(path, "host"), read.key(path, "path_prefix")
    host = data.get("host")
    prefix = data.get("path_prefix")
    if prefix is not None:
        prefix = read.string(prefix, prefix_path, _PATH_PREFIX, "a path starting with /")
    return Match(
        host=None if host is None else read.host(read.string(host, host_path), host_path),
        path_prefix=prefix,
    )


def _endpoints(value: object, path: str, min_items: int) -> tuple[Upstream, ...]:
    found: dict[Upstream, int] = {}
    for i, item in enumerate(read.sequence(value, path, min_items=min_items)):
        endpoint = read.upstream(item, read.index(path, i))
        if endpoint in found:
            raise ConfigError(
                read.index(path, i), f"duplicate of {read.index(path, found[endpoint])}"
            )
        found[endpoint] = i
    return tuple(found)


PROTOCOLS = ("http1", "h2", "h2c")
# The scheme each protocol needs of every upstream: h2 is negotiated by TLS (ALPN), h2c is
# spoken in clear from the first byte (prior knowledge, RFC 9113 3.3).
_PROTOCOL_SCHEME = {"h2": "https", "h2c": "http"}


def _upstreams(value: object, path: str) -> UpstreamsConfig:
    keys = ("stable", "canary", "blue", "green", "live", "protocol")
    data = read.mapping(value, path, keys)
    if "blue" in data or "green" in data or "live" in data:
        pools = _pair(data, path)
    elif "stable" not in data:
        raise ConfigError(read.key(path, "stable"), "is required")
    else:
        pools = UpstreamsConfig(
            stable=_endpoints(data["stable"], read.key(path, "stable"), 1),
            canary=_endpoints(data.get("canary", []), read.key(path, "canary"), 0),
        )
    if "protocol" not in data:
        return pools
    protocol_path = read.key(path, "protocol")
    protocol = read.choice(data["protocol"], protocol_path, PROTOCOLS)
    every = (*pools.stable, *pools.canary, *pools.blue, *pools.green)
    check_protocol(protocol, every, protocol_path)
    return dataclasses.replace(pools, protocol=protocol)


def check_protocol(protocol: str, upstreams: Iterable[Upstream], path: str) -> None:
    """Every upstream's scheme suits `protocol` (h2: https://, h2c: http://); else a
    ConfigError at `path`."""
    scheme = _PROTOCOL_SCHEME.get(protocol)
    for upstream in upstreams:
        if scheme is not None and upstream.scheme != scheme:
            raise ConfigError(
                path, f"upstreams.protocol {protocol} needs {scheme}:// upstreams, not {upstream}"
            )


def _pair(data: Mapping[str, object], path: str) -> UpstreamsConfig:
    """A blue/green pair of pools: `live` is stable, the other one the canary."""
    for key in ("stable", "canary"):
        if key in data:
            raise ConfigError(read.key(path, key), "cannot be given with a blue/green pair")
    for key in ("blue", "green", "live"):
        if key not in data:
            raise ConfigError(read.key(path, key), "is required with a blue/green pair")
    blue = _endpoints(data["blue"], read.key(path, "blue"), 1)
    green = _endpoints(data["green"], read.key(path, "green"), 1)
    live = read.choice(data["live"], read.key(path, "live"), ("blue", "green"))
    pair = UpstreamsConfig(stable=(), canary=(), blue=blue, green=green, live=live)
    return dataclasses.replace(pair, stable=pair.pool(live), canary=pair.pool(other_color(live)))


def _percent(value: object, path: str) -> float:
    percent = read.number(value, path, 0, 100)
    scaled = percent * BUCKETS / 100
    if not math.isclose(scaled, round(scaled), abs_tol=1e-6):
        raise ConfigError(path, "must have at most two decimals (resolution 0.01)")
    return round(scaled) * 100 / BUCKETS


def _names(
    data: Mapping[str, object], name: str, path: str, item: Callable[[object, str], str]
) -> frozenset[str]:
    if name not in data:
        return frozenset()
    list_path = read.key(path, name)
    items = read.sequence(data[name], list_path, min_items=1)
    return frozenset(item(value, read.index(list_path, i)) for i, value in enumerate(items))


def _step(value: object, path: str, strategy: str, known_tiers: frozenset[str]) -> Step:
    data = read.mapping(value, path, ("percent", "tiers", "tenants", "observe", "shadow"))
    if "shadow" in data:
        return _shadow_step(data, path)
    percent_path = read.key(path, "percent")
    percent = _percent(data.get("percent", 100), percent_path)
    if strategy == "blue-green" and percent not in (0, 100):
        raise ConfigError(percent_path, "must be 0 or 100 with strategy blue-green")

    def known_tier(item: object, item_path: str) -> str:
        tier = tier_name(item, item_path)
        if tier not in known_tiers:
            known = ", ".join(sorted(known_tiers))
            raise ConfigError(item_path, f"unknown tier {tier!r}; known tiers: {known}")
        return tier

    observe = data.get("observe")
    observe_path = read.key(path, "observe")
    return Step(
        percent=percent,
        tiers=_names(data, "tiers", path, known_tier),
        tenants=_names(data, "tenants", path, tenant_id),
        observe_s=None
        if observe is None
        else read.duration(observe, observe_path, allow_zero=True),
    )


def _shadow_step(data: Mapping[str, object], path: str) -> Step:
    """`{shadow: 10, observe: 5m}`: mirror 10% of stable's requests to the canary; exposes
    nobody, so it takes no percent, tiers or tenants."""
    for key in ("percent", "tiers", "tenants"):
        if key in data:
            raise ConfigError(read.key(path, key), "cannot be given in a shadow step")
    shadow_path = read.key(path, "shadow")
    sample = _percent(data["shadow"], shadow_path)
    if sample <= 0:
        raise ConfigError(shadow_path, "must be a percent above 0 (up to 100)")
    observe = data.get("observe")
    return Step(
        percent=0.0,
        shadow=sample,
        observe_s=None
        if observe is None
        else read.duration(observe, read.key(path, "observe"), allow_zero=True),
    )


_SHADOW_KEYS = ("methods", "headers", "max_body", "max_concurrency", "noise_sample", "tolerance")
_REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS"})  # safe methods (RFC 9110 9.2.1)
_METHOD = re.compile(r"[A-Za-z]{1,16}")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")


def shadow(value: object, path: str) -> ShadowConfig:
    """`rollout.shadow`: only methods whose replay cannot write may be mirrored."""
    data = read.mapping(value, path, _SHADOW_KEYS)
    default = ShadowConfig()
    methods_path = read.key(path, "methods")
    methods = default.methods
    if "methods" in data:
        items = read.sequence(data["methods"], methods_path, min_items=1)
        methods = frozenset(
            _method(item, read.index(methods_path, i)) for i, item in enumerate(items)
        )
    headers_path = read.key(path, "headers")
    headers = tuple(
        read.string(item, read.index(headers_path, i), _HEADER, "a header name").lower()
        for i, item in enumerate(read.sequence(data.get("headers", []), headers_path))
    )
    return ShadowConfig(
        methods=methods,
        headers=tuple(dict.fromkeys(headers)),
        max_body=read.integer(
            data.get("max_body", default.max_body), read.key(path, "max_body"), 0, 64 * 2**20
        ),
        max_concurrency=read.integer(
            data.get("max_concurrency", default.max_concurrency),
            read.key(path, "max_concurrency"),
            1,
            10_000,
        ),
        noise_sample=read.number(
            data.get("noise_sample", default.noise_sample), read.key(path, "noise_sample"), 0, 100
        ),
        tolerance=read.number(
            data.get("tolerance", default.tolerance), read.key(path, "tolerance"), 0.0001, 0.5
        ),
    )


def _method(value: object, path: str) -> str:
    method = read.string(value, path, _METHOD, "an HTTP method, like GET").upper()
    if method not in _REPLAYABLE:
        allowed = ", ".join(sorted(_REPLAYABLE))
        reason = f"{method} is not safe to replay (a mirrored copy could write); allowed: {allowed}"
        raise ConfigError(path, reason)
    return method


def _rollout(
    value: object,
    path: str,
    service_name: str,
    tier_config: TierConfig,
    env: Mapping[str, str],
) -> RolloutConfig:
    keys = ("strategy", "salt", "pins", "steps", "analysis", "baseline", "shadow")
    data = read.mapping(value, path, keys, required=("steps",))
    strategy = read.choice(data.get("strategy", "canary"), read.key(path, "strategy"), _STRATEGIES)
    pins_path = read.key(path, "pins")
    variants = [v.value for v in Variant]
    pins = {
        tenant_id(t, read.key(pins_path, t)): Variant(
            read.choice(v, read.key(pins_path, t), variants)
        )
        for t, v in read.string_keys(data.get("pins", {}), pins_path).items()
    }
    steps_path = read.key(path, "steps")
    items = read.sequence(data["steps"], steps_path, min_items=1)
    steps = tuple(
        _step(item, read.index(steps_path, i), strategy, tier_config.names)
        for i, item in enumerate(items)
    )
    baseline = data.get("baseline")
    return RolloutConfig(
        strategy=strategy,
        salt=read.string(data.get("salt", service_name), read.key(path, "salt")),
        pins=MappingProxyType(pins),
        steps=steps,
        analysis=analysis(data.get("analysis", {}), read.key(path, "analysis"), env),
        baseline_s=_default_baseline(steps)
        if baseline is None
        else read.duration(baseline, read.key(path, "baseline"), allow_zero=True),
        shadow=shadow(data.get("shadow", {}), read.key(path, "shadow")),
    )


def _default_baseline(steps: tuple[Step, ...]) -> float:
    """A first step that sends a whole tier or tenant list to the canary leaves those
    requests no concurrent stable baseline: measure them first, for the step's observe time
    (1 minute when it has none). Any other first step needs no baseline period."""
    first = steps[0]
    if first.percent < 100 or not (first.tiers or first.tenants):
        return 0.0
    return first.observe_s or 60.0


def _check_tenants(
    rules: tuple[IdentityRule, ...], tier_config: TierConfig, rollout: RolloutConfig, path: str
) -> None:
    if any(rule.kind is IdKind.TENANT for rule in rules):
        return
    uses = [("tiers.tenants", bool(tier_config.tenants)), ("rollout.pins", bool(rollout.pins))]
    uses += [(f"rollout.steps[{i}].tenants", bool(s.tenants)) for i, s in enumerate(rollout.steps)]
    for where, used in uses:
        if used:
            reason = "names tenants, but no identity rule has kind: tenant"
            raise ConfigError(read.key(path, where), reason)


def _check_canary(upstreams: UpstreamsConfig, rollout: RolloutConfig, path: str) -> None:
    if upstreams.canary:
        return
    reason = "must list at least one upstream: {} sends traffic to the canary"
    for i, step in enumerate(rollout.steps):
        if step.percent > 0 or step.shadow > 0:
            raise ConfigError(
                read.key(path, "upstreams.canary"), reason.format(f"rollout.steps[{i}]")
            )
    for tenant, variant in rollout.pins.items():
        if variant is Variant.CANARY:
            where = f"the pin of {tenant!r}"
            raise ConfigError(read.key(path, "upstreams.canary"), reason.format(where))
