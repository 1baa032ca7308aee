"""`rollout.analysis.server_timing`: checks on the service's Server-Timing response header."""

from __future__ import annotations

import re
from collections.abc import Mapping

from proxy.config import reader as read
from proxy.core.timingcheck import DURATION, JUDGES, RATE, ServerTimingCheck
from proxy.errors import ConfigError

_KEYS = ("metric", "judge", "max_increase", "desc", "quantile", "min_rate")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
_DESC = re.compile(r"[\x20-\x7e]{1,256}")
MAX_CHECKS = 16


def server_timing(value: object, path: str) -> tuple[ServerTimingCheck, ...]:
    """The list of checks; each names a metric (an HTTP token) and `judge: duration|rate`."""
    items = read.sequence(value, path)
    if len(items) > MAX_CHECKS:
        raise ConfigError(path, f"at most {MAX_CHECKS} checks")
    checks: list[ServerTimingCheck] = []
    names: set[str] = set()
    for i, item in enumerate(items):
        check = timing_check(item, read.index(path, i))
        if check.name in names:
            raise ConfigError(read.index(path, i), f"a second check named {check.name}")
        names.add(check.name)
        checks.append(check)
    return tuple(checks)


def timing_check(value: object, path: str) -> ServerTimingCheck:
    """One check: `{metric, judge: duration|rate, max_increase, ...}`."""
    data = read.mapping(value, path, _KEYS, required=("metric", "judge"))
    metric = read.string(data["metric"], read.key(path, "metric"), _TOKEN, "a token like db")
    judge = read.choice(data["judge"], read.key(path, "judge"), JUDGES)
    default = ServerTimingCheck(metric, judge, 0.0)
    increase = read.number(
        data.get("max_increase", 0.2 if judge == DURATION else 0.5),
        read.key(path, "max_increase"),
        0.0,
        10.0,
    )
    _only_for(data, path, "desc", RATE, judge)
    _only_for(data, path, "min_rate", RATE, judge)
    _only_for(data, path, "quantile", DURATION, judge)
    desc = None
    if "desc" in data:
        desc = read.string(data["desc"], read.key(path, "desc"), _DESC, "printable text")
    return ServerTimingCheck(
        metric=metric,
        judge=judge,
        max_increase=increase,
        desc=desc,
        quantile=read.number(
            data.get("quantile", default.quantile), read.key(path, "quantile"), 0.5, 0.999
        ),
        min_rate=read.number(
            data.get("min_rate", default.min_rate), read.key(path, "min_rate"), 0.0, 0.5
        ),
    )


def _only_for(data: Mapping[str, object], path: str, key: str, judge: str, given: str) -> None:
    if key in data and given != judge:
        raise ConfigError(read.key(path, key), f"applies to judge: {judge} only")
