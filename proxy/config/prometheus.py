"""The `rollout.analysis.prometheus` list: checks on the service's own counters in Prometheus.

    prometheus:
      - name: payments
        url_env: PROM_URL        # the server's URL, read from this environment variable
        timeout: 2s
        bad: 'sum(payment_failures_total{version="{{variant}}"})'
        total: 'sum(payment_attempts_total{version="{{variant}}"})'
        variants: {stable: v1, canary: v2}   # optional; default: stable / canary
        max_increase: 0.2

or, by the instances of each pool, `instance=~"{{instances}}"` in both queries. The URL is read
when the config is loaded; an unset or empty variable is a ConfigError naming `url_env`, and
the URL itself is never echoed (it may carry credentials). See docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from proxy.config import reader as read
from proxy.core.promql import INSTANCES, VARIANT, PromCheck
from proxy.errors import ConfigError

_KEYS = (
    "name",
    "url_env",
    "timeout",
    "bad",
    "total",
    "variants",
    "max_increase",
    "min_rate",
    "min_total",
)
_NAME = re.compile(r"[a-z0-9_-]{1,64}")
_PLACEHOLDER = re.compile(r"\{\{([^}]*)\}\}")
_URL = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")
MAX_TIMEOUT_S = 30.0


def prometheus_checks(value: object, path: str, env: Mapping[str, str]) -> tuple[PromCheck, ...]:
    checks: list[PromCheck] = []
    for i, item in enumerate(read.sequence(value, path)):
        check = _check(item, read.index(path, i), env)
        if any(c.name == check.name for c in checks):
            raise ConfigError(read.key(read.index(path, i), "name"), f"duplicate {check.name!r}")
        checks.append(check)
    return tuple(checks)


def release_check(
    value: object, path: str, server: PromCheck | None, env: Mapping[str, str], origin: str
) -> PromCheck:
    """A check a release brings, named after `origin`: its `url_env` is read from the proxy's
    environment `env`; without one, it asks the service's own Prometheus server (`server`, its
    first configured check)."""
    data = dict(read.mapping(value, path, _KEYS))
    if "url_env" not in data:
        if server is None:
            raise ConfigError(
                read.key(path, "url_env"),
                "is required: the service has no Prometheus check configured to take its "
                "server from",
            )
        data["url_env"] = server.url_env
        env = {server.url_env: server.url}
    check = _check(data, path, env)
    return dataclasses.replace(check, name=f"{check.name} [{origin}]")


def _check(value: object, path: str, env: Mapping[str, str]) -> PromCheck:
    data = read.mapping(value, path, _KEYS, required=("name", "url_env", "bad", "total"))
    name = read.string(data["name"], read.key(path, "name"), _NAME, "[a-z0-9_-]{1,64}")
    url_env_path = read.key(path, "url_env")
    url_env = read.env_name(data["url_env"], url_env_path)
    url = env.get(url_env, "").strip()
    if not url:
        raise ConfigError(url_env_path, f"environment variable {url_env} is not set or empty")
    if not _URL.fullmatch(url):
        raise ConfigError(url_env_path, f"{url_env} is not an http:// or https:// URL")
    bad, form = _query(data["bad"], read.key(path, "bad"))
    total, total_form = _query(data["total"], read.key(path, "total"))
    if total_form != form:
        raise ConfigError(read.key(path, "total"), f"must use {form} as bad does")
    stable, canary = _variants(data, read.key(path, "variants"), form)
    timeout_path = read.key(path, "timeout")
    timeout = read.duration(data.get("timeout", "2s"), timeout_path)
    if timeout > MAX_TIMEOUT_S:
        raise ConfigError(timeout_path, f"must be at most {MAX_TIMEOUT_S:g}s")
    return PromCheck(
        name=name,
        url=url.rstrip("/"),
        url_env=url_env,
        bad=bad,
        total=total,
        timeout_s=timeout,
        max_increase=read.number(
            data.get("max_increase", 0.2), read.key(path, "max_increase"), 0.0, 10.0
        ),
        min_rate=read.number(data.get("min_rate", 0.001), read.key(path, "min_rate"), 0.0, 0.5),
        min_total=read.integer(data.get("min_total", 100), read.key(path, "min_total"), 1),
        stable_label=stable,
        canary_label=canary,
    )


def _query(value: object, path: str) -> tuple[str, str]:
    """A query and its placeholder: `{{variant}}` or `{{instances}}`, exactly one kind."""
    query = read.string(value, path)
    names = {m[1] for m in _PLACEHOLDER.finditer(query)}
    unknown = names - {"variant", "instances"}
    if unknown:
        raise ConfigError(path, f"unknown placeholder {{{{{sorted(unknown)[0]}}}}}")
    if names == {"variant", "instances"}:
        raise ConfigError(path, f"uses both {VARIANT} and {INSTANCES}; choose one")
    if not names:
        raise ConfigError(
            path, f"must contain {VARIANT} or {INSTANCES} (else both variants read the same)"
        )
    return query, VARIANT if VARIANT in query else INSTANCES


def _variants(data: Mapping[str, object], path: str, form: str) -> tuple[str, str]:
    """The label values of stable and canary (the `{{variant}}` form only)."""
    if "variants" not in data:
        return "stable", "canary"
    if form != VARIANT:
        raise ConfigError(path, f"applies to {VARIANT} queries only, not {INSTANCES}")
    values = read.mapping(data["variants"], path, ("stable", "canary"), ("stable", "canary"))
    stable = read.string(values["stable"], read.key(path, "stable"))
    canary = read.string(values["canary"], read.key(path, "canary"))
    if stable == canary:
        raise ConfigError(path, "stable and canary must differ")
    return stable, canary
