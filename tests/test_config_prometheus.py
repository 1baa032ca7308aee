"""`rollout.analysis.prometheus`: both query forms load; every mistake names its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import parse_config
from proxy.core.promql import PromCheck
from proxy.errors import ConfigError
from tests.support.proxy import config_dict, service

ENV = {"PROM_URL": "http://prometheus.internal:9090/"}
BAD = 'sum(payment_failures_total{version="{{variant}}"})'
TOTAL = 'sum(payment_attempts_total{version="{{variant}}"})'
PATH = "services[0].rollout.analysis.prometheus[0]"


def _load(check: dict[str, Any], env: dict[str, str] | None = None) -> tuple[PromCheck, ...]:
    section = service(["http://10.0.0.1:80", "http://10.0.0.2:80"], ["http://10.0.0.3:80"])
    section["rollout"]["analysis"] = {"prometheus": [check]}
    config = parse_config(config_dict(section), ENV if env is None else env)
    return config.services[0].rollout.analysis.prometheus


def _payments(**extra: Any) -> dict[str, Any]:
    return {"name": "payments", "url_env": "PROM_URL", "bad": BAD, "total": TOTAL, **extra}


def test_the_variant_form_with_a_label_map_loads() -> None:
    (check,) = _load(
        _payments(timeout="2s", max_increase=0.2, variants={"stable": "v1", "canary": "v2"})
    )
    assert check == PromCheck(
        name="payments",
        url="http://prometheus.internal:9090",
        url_env="PROM_URL",
        bad=BAD,
        total=TOTAL,
        timeout_s=2.0,
        max_increase=0.2,
        stable_label="v1",
        canary_label="v2",
    )


def test_the_instances_form_loads() -> None:
    by_instance = 'sum(payment_attempts_total{instance=~"{{instances}}"})'
    (check,) = _load(_payments(bad=by_instance.replace("attempts", "failures"), total=by_instance))
    assert check.by_instances
    assert (check.stable_label, check.canary_label, check.min_total) == ("stable", "canary", 100)


@pytest.mark.parametrize(
    ("check", "env", "key", "reason"),
    [
        (_payments(), {}, "url_env", "environment variable PROM_URL is not set or empty"),
        (_payments(), {"PROM_URL": " "}, "url_env", "PROM_URL is not set or empty"),
        (_payments(), {"PROM_URL": "prom:9090"}, "url_env", "not an http:// or https:// URL"),
        (_payments(url_env="1X"), None, "url_env", "an environment variable name"),
        (_payments(bad="sum(payment_failures_total)"), None, "bad", "must contain {{variant}}"),
        (
            _payments(total='sum(a{version="{{variant}}",instance=~"{{instances}}"})'),
            None,
            "total",
            "uses both",
        ),
        (_payments(bad='sum(f{v="{{version}}"})'), None, "bad", "unknown placeholder"),
        (
            _payments(total='sum(a{instance=~"{{instances}}"})'),
            None,
            "total",
            "must use {{variant}} as bad does",
        ),
        (
            _payments(
                bad='sum(f{instance=~"{{instances}}"})',
                total='sum(a{instance=~"{{instances}}"})',
                variants={"stable": "v1", "canary": "v2"},
            ),
            None,
            "variants",
            "applies to {{variant}} queries only",
        ),
        (_payments(variants={"stable": "v1"}), None, "variants.canary", "is required"),
        (_payments(variants={"stable": "v", "canary": "v"}), None, "variants", "must differ"),
        (_payments(timeout="1m"), None, "timeout", "at most 30s"),
        (_payments(max_increase=-1), None, "max_increase", "from 0 to 10"),
        (_payments(min_total=0), None, "min_total", "integer from 1"),
        (_payments(name="Pay ments"), None, "name", "[a-z0-9_-]{1,64}"),
        (_payments(query="x"), None, "query", "unknown key"),
        ({"name": "payments", "bad": BAD, "total": TOTAL}, None, "url_env", "is required"),
    ],
)
def test_a_mistake_names_its_key(
    check: dict[str, Any], env: dict[str, str] | None, key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(check, env)
    assert raised.value.path == f"{PATH}.{key}"
    assert reason in raised.value.reason
    assert "prometheus.internal" not in str(raised.value)  # the URL is never echoed


def test_two_checks_of_one_name_are_refused() -> None:
    section = service(["http://10.0.0.1:80"], ["http://10.0.0.3:80"])
    section["rollout"]["analysis"] = {"prometheus": [_payments(), _payments()]}
    with pytest.raises(ConfigError) as raised:
        parse_config(config_dict(section), ENV)
    assert raised.value.path == "services[0].rollout.analysis.prometheus[1].name"


def test_the_documented_example_loads() -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    section = docs.split("### `rollout.analysis.prometheus`", 1)[1]
    example = yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0])
    (check,) = _load(example["rollout"]["analysis"]["prometheus"][0])
    assert (check.name, check.stable_label, check.canary_label) == ("payments", "v1", "v2")
