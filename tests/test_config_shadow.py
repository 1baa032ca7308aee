"""Shadow steps and `rollout.shadow`: parsed, defaulted, carried into the routing plan, and
every bad value refused with its key path."""

from __future__ import annotations

import re
from typing import Any

import pytest

from proxy.config import ConfigError, ShadowConfig, parse_config
from proxy.rollout import spec_hash
from proxy.runtime import Runtime
from tests.test_config import ENV, example_data, svc


def with_shadow(steps: list[Any], shadow: dict[str, Any] | None = None) -> dict[str, Any]:
    data = example_data()
    rollout = svc(data)["rollout"]
    rollout["steps"] = steps
    if shadow is not None:
        rollout["shadow"] = shadow
    return data


def test_a_shadow_step_exposes_nobody_and_carries_its_sample() -> None:
    data = with_shadow([{"shadow": 10, "observe": "5m"}, {"percent": 5}])
    service = parse_config(data, ENV).services[0]
    first, second = service.rollout.steps
    assert (first.shadow, first.percent, first.observe_s) == (10.0, 0.0, 300.0)
    assert second.shadow == 0.0
    assert service.rollout.shadow == ShadowConfig()
    plan = service.rollout.plan(0)
    assert (plan.shadow, plan.everyone) == (10.0, 0)
    assert service.rollout.plan(1).shadow == 0.0
    assert service.rollout.plan(0, active=False).shadow == 0.0
    assert service.rollout.plan(-1).shadow == 0.0


def test_shadow_defaults_and_values() -> None:
    default = ShadowConfig()
    assert default.methods == frozenset({"GET", "HEAD"})
    assert (default.headers, default.max_body, default.max_concurrency) == ((), 262144, 64)
    assert (default.noise_sample, default.tolerance) == (10.0, 0.01)
    block = {
        "methods": ["get", "OPTIONS"],
        "headers": ["Content-Type", "ETag"],
        "max_body": 1024,
        "max_concurrency": 8,
        "noise_sample": 50,
        "tolerance": 0.002,
    }
    shadow = parse_config(with_shadow([{"shadow": 100}], block), ENV).services[0].rollout.shadow
    assert shadow.methods == frozenset({"GET", "OPTIONS"})
    assert shadow.headers == ("content-type", "etag")
    assert (shadow.max_body, shadow.max_concurrency) == (1024, 8)
    assert (shadow.noise_sample, shadow.tolerance) == (50.0, 0.002)


def test_a_shadow_step_changes_the_spec_hash_and_other_steps_hash_as_before() -> None:
    plain = parse_config(with_shadow([{"percent": 0, "observe": "1m"}]), ENV).services[0]
    shadowed = parse_config(with_shadow([{"shadow": 10, "observe": "1m"}]), ENV).services[0]
    assert spec_hash(plain) != spec_hash(shadowed)


@pytest.mark.parametrize(
    ("steps", "block", "message"),
    [
        ([{"shadow": 0}], None, "rollout.steps[0].shadow: must be a percent above 0"),
        ([{"shadow": 101}], None, "rollout.steps[0].shadow: must be a number from 0 to 100"),
        ([{"shadow": 0.001}], None, "rollout.steps[0].shadow: must have at most two decimals"),
        ([{"shadow": 5, "percent": 5}], None, "steps[0].percent: cannot be given in a shadow"),
        ([{"shadow": 5, "tiers": ["free"]}], None, "steps[0].tiers: cannot be given in a shadow"),
        (
            [{"shadow": 5}],
            {"methods": ["GET", "POST"]},
            "rollout.shadow.methods[1]: POST is not safe to replay",
        ),
        ([{"shadow": 5}], {"methods": []}, "rollout.shadow.methods: must list at least 1"),
        ([{"shadow": 5}], {"max_body": -1}, "rollout.shadow.max_body: must be an integer"),
        ([{"shadow": 5}], {"max_concurrency": 0}, "rollout.shadow.max_concurrency: must be an"),
        ([{"shadow": 5}], {"noise_sample": 200}, "rollout.shadow.noise_sample: must be a number"),
        ([{"shadow": 5}], {"tolerance": 0}, "rollout.shadow.tolerance: must be a number"),
        ([{"shadow": 5}], {"headers": ["a b"]}, "rollout.shadow.headers[0]: must be a header"),
        ([{"shadow": 5}], {"sample": 5}, "rollout.shadow.sample: unknown key"),
    ],
)
def test_bad_shadow_values_name_the_key(
    steps: list[Any], block: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(with_shadow(steps, block), ENV)


def test_a_shadow_step_needs_a_canary_upstream() -> None:
    data = with_shadow([{"shadow": 10}])
    svc(data)["upstreams"].pop("canary", None)
    with pytest.raises(ConfigError, match=re.escape("upstreams.canary: must list at least one")):
        parse_config(data, ENV)


def test_worker_processes_refuse_a_shadow_step() -> None:
    config = parse_config(with_shadow([{"shadow": 10}, {"percent": 5}]), ENV)
    with pytest.raises(ConfigError, match=re.escape("rollout.steps[0].shadow: shadow steps need")):
        Runtime(config, workers=2, config_path="unused.yaml", source="")
    plain = parse_config(with_shadow([{"percent": 5}]), ENV)
    assert Runtime(plain, workers=2, config_path="unused.yaml", source="").workers == 2
