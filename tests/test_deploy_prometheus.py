"""config/prometheus/: the example scrape config and the alerting rules, checked by promtool,
unit-tested with promtool's rule tests, and held against what a real proxy exposes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from tests.support.exposition import Exposition, exposition, unexposed
from tests.support.promtool import promtool_run

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "config" / "prometheus"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _alerts() -> list[dict[str, Any]]:
    groups = _yaml(PROMETHEUS / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def exposed() -> Exposition:
    return exposition()


def test_scrape_config_passes_promtool() -> None:
    output = promtool_run("check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert "1 rule files found" in output  # and promtool checked alerts.yml through it


def test_scrape_config_targets_the_admin_listener_metrics() -> None:
    config = _yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    example = _yaml(ROOT / "config" / "example.yaml")
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [example["admin"]["listen"]]


def test_alert_rules_pass_promtool() -> None:
    output = promtool_run("check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert f"SUCCESS: {len(_alerts())} rules found" in output


def test_alert_unit_tests_pass_promtool() -> None:
    output = promtool_run("test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert "SUCCESS" in output


def test_the_expected_alerts_exist() -> None:
    names = {rule["alert"] for rule in _alerts()}
    assert names == {
        "RolloutCanaryRolledBack",
        "RolloutStuck",
        "RolloutUpstreamFailures",
        "RolloutStateStale",
    }


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: str(rule["alert"]))
def test_each_alert_has_severity_annotations_and_for(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"warning", "critical"}
    for annotation in ("summary", "description"):
        assert "{{ $labels.service }}" in rule["annotations"][annotation]
    assert rule["for"].endswith("m")
    assert int(rule["for"].removesuffix("m")) >= 1


def _labels(series: str) -> dict[str, str]:
    node = promql_parser.parse(series)  # a promtool input series is a plain selector
    assert isinstance(node, promql_parser.VectorSelector)
    return {m.name: m.value for m in node.matchers.matchers}


def _shown(case: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Alerts a unit-test case expects to fire, and those it also shows silent on a healthy
    input series: one whose labels (those the alert carries) never appear among the firing."""
    inputs = [_labels(item["series"]) for item in case["input_series"]]
    firing: dict[str, list[dict[str, str]]] = {}
    for check in case["alert_rule_test"]:
        alerts = firing.setdefault(check["alertname"], [])
        for alert in check["exp_alerts"]:
            alerts.append({k: v for k, v in alert["exp_labels"].items() if k != "severity"})
    fired = {name for name, alerts in firing.items() if alerts}
    silent = set()
    for name in fired:
        keys = {k for alert in firing[name] for k in alert}
        for series in inputs:
            projected = {k: series[k] for k in keys if k in series}
            if projected.keys() == keys and projected not in firing[name]:
                silent.add(name)
    return fired, silent


def test_every_alert_is_shown_firing_and_silent_on_a_healthy_series() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for case in _yaml(PROMETHEUS / "alerts_test.yml")["tests"]:
        case_fired, case_silent = _shown(case)
        fired |= case_fired
        silent |= case_silent
    every = {rule["alert"] for rule in _alerts()}
    assert fired == every
    assert silent == every


def test_rules_use_only_what_a_real_proxy_exposes(exposed: Exposition) -> None:
    assert unexposed([rule["expr"] for rule in _alerts()], exposed) == []


def test_the_exposition_check_catches_wrong_names(exposed: Exposition) -> None:
    wrong = [
        "rate(rollout_requests[5m])",  # a counter without its _total suffix
        "rollout_request_duration_seconds",  # a histogram without _bucket/_sum/_count
        'rollout_step{variant="canary"}',  # a label the family does not have
    ]
    assert len(unexposed(wrong, exposed)) == 3
    assert {"rollout_requests_total", "rollout_request_duration_seconds_bucket"} <= set(
        exposed.samples
    )
