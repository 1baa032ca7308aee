"""The `rollout.analysis` section: how the controller judges a canary (see core/analysis.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from proxy.config import reader as read
from proxy.config.prometheus import prometheus_checks
from proxy.config.servertiming import server_timing
from proxy.core import grpc
from proxy.core.analysis import AnalysisConfig, RouteCheck
from proxy.errors import ConfigError

_KEYS = (
    "interval",
    "min_requests",
    "errors",
    "latency",
    "guardrail",
    "routes",
    "server_timing",
    "error_statuses",
    "false_rollback_rate",
    "prometheus",
)
_STATUS_WORDS = "a status class like 5xx, a code like 429, or a gRPC outcome like grpc:UNAVAILABLE"
_STATUS = re.compile(r"[1-5](?:xx|[0-9]{2})|grpc:(?:" + "|".join(grpc.CODES) + ")")


def analysis(
    value: object, path: str, env: Mapping[str, str] = MappingProxyType({})
) -> AnalysisConfig:
    data = read.mapping(value, path, _KEYS)
    default = AnalysisConfig()
    errors = read.mapping(
        data.get("errors", {}), read.key(path, "errors"), ("max_increase", "min_rate")
    )
    latency = read.mapping(
        data.get("latency", {}), read.key(path, "latency"), ("quantile", "max_increase")
    )
    guard = read.mapping(
        data.get("guardrail", {}), read.key(path, "guardrail"), ("max_error_rate", "min_requests")
    )
    return AnalysisConfig(
        interval_s=read.duration(
            data.get("interval", default.interval_s), read.key(path, "interval")
        ),
        min_requests=read.integer(
            data.get("min_requests", default.min_requests), read.key(path, "min_requests"), 1
        ),
        error_max_increase=increase(errors, read.key(path, "errors"), default.error_max_increase),
        error_min_rate=read.number(
            errors.get("min_rate", default.error_min_rate),
            read.key(read.key(path, "errors"), "min_rate"),
            0.0,
            0.5,
        ),
        latency_quantile=read.number(
            latency.get("quantile", default.latency_quantile),
            read.key(read.key(path, "latency"), "quantile"),
            0.5,
            0.999,
        ),
        latency_max_increase=increase(
            latency, read.key(path, "latency"), default.latency_max_increase
        ),
        guardrail_max_error_rate=read.number(
            guard.get("max_error_rate", default.guardrail_max_error_rate),
            read.key(read.key(path, "guardrail"), "max_error_rate"),
            0.01,
            1.0,
        ),
        guardrail_min_requests=read.integer(
            guard.get("min_requests", default.guardrail_min_requests),
            read.key(read.key(path, "guardrail"), "min_requests"),
            1,
        ),
        routes=_routes(data.get("routes", []), read.key(path, "routes")),
        server_timing=server_timing(data.get("server_timing", []), read.key(path, "server_timing")),
        error_statuses=_statuses(data.get("error_statuses"), read.key(path, "error_statuses")),
        false_rollback_rate=read.number(
            data.get("false_rollback_rate", default.false_rollback_rate),
            read.key(path, "false_rollback_rate"),
            1e-6,
            0.2,
        ),
        prometheus=prometheus_checks(data.get("prometheus", []), read.key(path, "prometheus"), env),
    )


def increase(section: Mapping[str, object], path: str, default: float) -> float:
    return read.number(
        section.get("max_increase", default), read.key(path, "max_increase"), 0.0, 10.0
    )


def _routes(value: object, path: str) -> tuple[RouteCheck, ...]:
    items = enumerate(read.sequence(value, path))
    return tuple(route_check(item, read.index(path, i)) for i, item in items)


def route_check(value: object, path: str, default: float = 0.5, origin: str = "") -> RouteCheck:
    """`{path_prefix: /login, errors: {max_increase: 0.2}}`: the error rate of one route."""
    data = read.mapping(value, path, ("path_prefix", "errors"), required=("path_prefix",))
    prefix = read.string(data["path_prefix"], read.key(path, "path_prefix"))
    if not prefix.startswith("/"):
        raise ConfigError(read.key(path, "path_prefix"), "must start with /")
    errors_path = read.key(path, "errors")
    errors = read.mapping(data.get("errors", {}), errors_path, ("max_increase",))
    return RouteCheck(prefix, increase(errors, errors_path, default), origin)


def _statuses(value: object, path: str) -> frozenset[str]:
    if value is None:
        return AnalysisConfig().error_statuses
    items = read.sequence(value, path, min_items=1)
    statuses: set[str] = set()
    for i, item in enumerate(items):
        text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        statuses.add(
            read.string(
                text,
                read.index(path, i),
                _STATUS,
                "a status class like 5xx, a code like 429, or a gRPC outcome like grpc:UNAVAILABLE",
            )
        )
    return frozenset(statuses)
