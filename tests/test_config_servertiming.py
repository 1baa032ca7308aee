"""`rollout.analysis.server_timing` and `strip_server_timing`: parsed, defaulted, and every bad
value refused with its key path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, parse_config
from proxy.config.changes import describe
from proxy.core.timingcheck import ServerTimingCheck
from proxy.runtime import Runtime
from tests.test_config import ENV, example_data, svc

KEY = "services[0].rollout.analysis.server_timing"


def with_checks(checks: list[Any], **service: Any) -> dict[str, Any]:
    data = example_data()
    svc(data)["rollout"].setdefault("analysis", {})["server_timing"] = checks
    svc(data).update(service)
    return data


def test_the_issue_s_shape_is_parsed_with_defaults_and_strips_by_default() -> None:
    checks = [
        {"metric": "db", "judge": "duration", "max_increase": 0.2},
        {"metric": "cache", "desc": "miss", "judge": "rate", "max_increase": 0.1},
        {"metric": "auth", "judge": "rate", "quantile": None}
        if False
        else {"metric": "auth", "judge": "rate"},
    ]
    service = parse_config(with_checks(checks), ENV).services[0]
    assert service.rollout.analysis.server_timing == (
        ServerTimingCheck("db", "duration", 0.2, None, 0.5, 0.001),
        ServerTimingCheck("cache", "rate", 0.1, "miss", 0.5, 0.001),
        ServerTimingCheck("auth", "rate", 0.5),
    )
    names = [c.name for c in service.rollout.analysis.server_timing]
    assert names == [
        "server_timing:db",
        "server_timing:cache;desc=miss",
        "server_timing:auth;present",
    ]
    assert service.strip_server_timing is True


def test_without_checks_the_header_is_relayed_unless_told_to_strip() -> None:
    plain = parse_config(example_data(), ENV).services[0]
    assert (plain.rollout.analysis.server_timing, plain.strip_server_timing) == ((), False)
    data = example_data()
    svc(data)["strip_server_timing"] = True
    stripped = parse_config(data, ENV).services[0]
    assert stripped.strip_server_timing is True
    kept = parse_config(
        with_checks([{"metric": "db", "judge": "duration"}], strip_server_timing=False), ENV
    )
    assert kept.services[0].strip_server_timing is False
    assert kept.services[0].rollout.analysis.server_timing[0].max_increase == 0.2
    changed = describe(parse_config(example_data(), ENV), parse_config(data, ENV))
    assert changed == [f"service {stripped.name}: strip_server_timing"]


def test_quantile_and_min_rate_are_read() -> None:
    checks = [
        {"metric": "db", "judge": "duration", "quantile": 0.9},
        {"metric": "auth", "desc": "fail", "judge": "rate", "min_rate": 0.0, "max_increase": 0.5},
    ]
    db, auth = parse_config(with_checks(checks), ENV).services[0].rollout.analysis.server_timing
    assert (db.quantile, auth.min_rate, auth.desc) == (0.9, 0.0, "fail")


@pytest.mark.parametrize(
    ("checks", "message"),
    [
        ("db", f"{KEY}: must be a list"),
        ([{"judge": "rate"}], f"{KEY}[0].metric: is required"),
        ([{"metric": "db"}], f"{KEY}[0].judge: is required"),
        ([{"metric": "db", "judge": "p99"}], f"{KEY}[0].judge: must be one of: duration, rate"),
        ([{"metric": "d b", "judge": "rate"}], f"{KEY}[0].metric: must be a token like db"),
        (
            [{"metric": "db", "judge": "rate", "max_increase": -1}],
            f"{KEY}[0].max_increase: must be",
        ),
        (
            [{"metric": "db", "judge": "duration", "desc": "x"}],
            f"{KEY}[0].desc: applies to judge: rate only",
        ),
        (
            [{"metric": "db", "judge": "rate", "quantile": 0.9}],
            f"{KEY}[0].quantile: applies to judge: duration only",
        ),
        (
            [{"metric": "db", "judge": "duration", "min_rate": 0.1}],
            f"{KEY}[0].min_rate: applies to",
        ),
        (
            [{"metric": "db", "judge": "duration", "quantile": 0.2}],
            f"{KEY}[0].quantile: must be a number",
        ),
        (
            [{"metric": "db", "judge": "rate", "desc": "\x01"}],
            f"{KEY}[0].desc: must be printable text",
        ),
        ([{"metric": "db", "judge": "rate", "dur": 1}], f"{KEY}[0].dur: unknown key"),
        (
            [{"metric": "db", "judge": "duration"}, {"metric": "db", "judge": "duration"}],
            f"{KEY}[1]: a second check named server_timing:db",
        ),
        ([{"metric": f"m{i}", "judge": "rate"} for i in range(17)], f"{KEY}: at most 16 checks"),
    ],
)
def test_bad_checks_name_the_key(checks: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(with_checks(checks), ENV)
    assert message in str(caught.value)


def test_strip_server_timing_must_be_a_boolean() -> None:
    data = example_data()
    svc(data)["strip_server_timing"] = "yes"
    with pytest.raises(
        ConfigError, match=re.escape("services[0].strip_server_timing: must be true")
    ):
        parse_config(data, ENV)


def test_fleet_and_worker_processes_take_server_timing_checks() -> None:
    data = with_checks([{"metric": "db", "judge": "duration"}])
    fleet = dict(data, state={"backend": "redis", "url_env": "REDIS_URL"})
    env = {**ENV, "REDIS_URL": "redis://127.0.0.1:6379/0"}
    assert parse_config(fleet, env).services[0].rollout.analysis.server_timing
    config = parse_config(data, ENV)
    assert Runtime(config, workers=2, config_path="unused.yaml", source="").workers == 2


def test_every_block_of_docs_checks_md_is_a_valid_analysis_section() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "checks.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 5
    for block in blocks:
        section = yaml.safe_load(block)
        data = example_data()
        svc(data)["rollout"]["analysis"] = section
        analysis = parse_config(data, ENV).services[0].rollout.analysis
        assert analysis.server_timing or analysis.routes
