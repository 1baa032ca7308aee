"""config/grafana/rollout-proxy.json: an importable dashboard whose every query parses (promtool)
and selects only what a real proxy exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.exposition import Exposition, exposition, unexposed
from tests.support.promtool import promtool_run

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "config" / "grafana" / "rollout-proxy.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# What Grafana puts in place of its variables before sending a query to Prometheus.
SUBSTITUTIONS = {"$__rate_interval": "1m", "$__interval": "1m", "$service": "checkout"}
_LABEL_VALUES = re.compile(r"^label_values\((\w+),\s*(\w+)\)$")


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _substituted(expr: str) -> str:
    for name, value in SUBSTITUTIONS.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable left in {expr!r}"
    return expr


def _exprs() -> list[str]:
    exprs = [target["expr"] for panel in _panels() for target in panel["targets"]]
    annotations = _dashboard()["annotations"]["list"]
    exprs += [a["expr"] for a in annotations if a.get("datasource") == DATASOURCE]
    return [_substituted(expr) for expr in exprs]


@pytest.fixture(scope="module")
def exposed() -> Exposition:
    return exposition()


def test_dashboard_is_importable_as_is() -> None:
    board = _dashboard()
    (source,) = board["__inputs"]
    assert source == {
        "name": "DS_PROMETHEUS",
        "label": "Prometheus",
        "description": source["description"],
        "type": "datasource",
        "pluginId": "prometheus",
        "pluginName": "Prometheus",
    }
    assert isinstance(board["schemaVersion"], int)
    assert board["schemaVersion"] >= 36  # datasource references as {type, uid}
    assert board["uid"] == "rollout-proxy"
    assert board["title"]
    assert board["id"] is None  # an import creates it
    required = {(r["type"], r["id"]) for r in board["__requires"]}
    assert {("panel", p["type"]) for p in _panels()} <= required
    assert ("datasource", "prometheus") in required


def test_every_panel_queries_the_datasource_input() -> None:
    panels = _panels()
    assert len(panels) >= 8
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = _dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_the_panels_the_operators_need_are_there() -> None:
    exprs = " ".join(_exprs())
    for needed in (
        "rollout_canary_percent",
        "rollout_step",
        "rollout_status",
        "by (service, variant) (rate(rollout_requests_total",
        "by (service, tier, variant) (rate(rollout_requests_total",
        "histogram_quantile(0.5, sum by (service, variant, le)",
        "histogram_quantile(0.99, sum by (service, variant, le)",
        "by (service, variant, reason) (rate(rollout_upstream_failures_total",
        "rollout_decisions_total",
    ):
        assert needed in exprs, needed


def test_service_variable_lists_the_services() -> None:
    (variable,) = _dashboard()["templating"]["list"]
    assert variable["name"] == "service"
    assert variable["datasource"] == DATASOURCE
    assert variable["query"] == "label_values(rollout_step, service)"
    for panel in _panels():
        for target in panel["targets"]:
            expr = target["expr"]
            # per-process families carry no service label; everything else is filtered
            if "rollout_state_stale_seconds" not in expr and "rollout_rejected" not in expr:
                assert 'service=~"$service"' in expr, panel["title"]


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses the queries as recording rules (the same PromQL parser as Prometheus)."""
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = promtool_run("check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in output


def test_queries_use_only_what_a_real_proxy_exposes(exposed: Exposition) -> None:
    assert unexposed(_exprs(), exposed) == []
    (variable,) = _dashboard()["templating"]["list"]
    match = _LABEL_VALUES.match(variable["query"])
    assert match is not None
    assert match[2] in exposed.samples[match[1]]
