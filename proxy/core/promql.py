"""PromQL checks: their configuration, their queries per variant, and reading an answer.

A `PromCheck` (`rollout.analysis.prometheus[]`) is a ratio of two counters per variant, `bad`
over `total`, each a PromQL query with a placeholder that `render` fills per variant:
- `{{variant}}`: the variant's label value (`stable` / `canary`, or the check's `variants`
  map, e.g. `{stable: v1, canary: v2}`), quoted for a PromQL string;
- `{{instances}}`: an anchored regex of the `host:port` of the variant's upstreams (for
  `instance=~"{{instances}}"`), every regex metacharacter escaped.

`parse_result` reads the JSON of an instant query (`/api/v1/query`): a vector (one value per
series, keyed by its labels) or a scalar. Anything else, an error answer, or no series at all
raises `NoPromData` with the reason: no data is not health (countcheck.py). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from proxy.errors import NoPromData

VARIANT: Final = "{{variant}}"
INSTANCES: Final = "{{instances}}"
VARIANTS: Final = ("stable", "canary")
KINDS: Final = ("bad", "total")
_REGEX_SPECIAL: Final = frozenset(".^$*+?()[]{}|\\")


@dataclass(frozen=True, slots=True)
class PromCheck:
    """One check against a Prometheus server; see docs/configuration.md for each key."""

    name: str
    url: str  # read from the environment variable `url_env`
    url_env: str
    bad: str
    total: str
    timeout_s: float = 2.0
    max_increase: float = 0.2
    min_rate: float = 0.001  # a bad/total rate tolerated whatever the baseline's (0: none)
    min_total: int = 100  # per variant, counted from the step's start, before a verdict
    stable_label: str = "stable"
    canary_label: str = "canary"

    @property
    def by_instances(self) -> bool:
        """The `{{instances}}` form (else the `{{variant}}` form)."""
        return INSTANCES in self.bad

    @property
    def check(self) -> str:
        """The check's name in verdicts."""
        return f"prometheus:{self.name}"

    def label(self, variant: str) -> str:
        return self.canary_label if variant == "canary" else self.stable_label


def _string(value: str) -> str:
    """`value` as the inside of a double-quoted PromQL string."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def instances_regex(instances: Sequence[str]) -> str:
    """`host:port|host:port` with regex metacharacters escaped, for inside a PromQL string."""
    escaped = ("".join("\\" + c if c in _REGEX_SPECIAL else c for c in i) for i in instances)
    return _string("|".join(escaped))


def render(query: str, label: str, instances: Sequence[str]) -> str:
    """`query` for one variant: its label value and the host:port of its upstreams."""
    return query.replace(VARIANT, _string(label)).replace(INSTANCES, instances_regex(instances))


def _value(sample: object) -> float:
    if not isinstance(sample, list | tuple) or len(sample) != 2:
        raise NoPromData("a sample is not [time, value]")
    try:
        return float(sample[1])
    except (TypeError, ValueError):
        raise NoPromData(f"a sample value is not a number: {sample[1]!r:.40}") from None


def _series_key(metric: object) -> str:
    if not isinstance(metric, Mapping):
        return ""
    return ",".join(f"{k}={metric[k]}" for k in sorted(metric))


def parse_result(payload: object) -> dict[str, float]:
    """The finite value of every series of an instant query's answer (a scalar: key "")."""
    if not isinstance(payload, Mapping):
        raise NoPromData("the answer is not a JSON object")
    if payload.get("status") != "success":
        kind, error = payload.get("errorType", "error"), payload.get("error", "no reason given")
        raise NoPromData(f"prometheus answered {kind}: {error}")
    data = payload.get("data")
    if not isinstance(data, Mapping):
        raise NoPromData("the answer has no data")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        values = {"": _value(result)}
    elif kind == "vector" and isinstance(result, list):
        values = {
            _series_key(item.get("metric")): _value(item.get("value"))
            for item in result
            if isinstance(item, Mapping)
        }
    else:
        raise NoPromData(f"a vector or scalar was expected, not {kind}")
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    if not finite:
        raise NoPromData("the query returned no series")
    return finite
