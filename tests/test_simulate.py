"""loadtests/simulate.py: the oracle matches the issue's numbers, runs are deterministic, and the
table prints."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.support.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "loadtests" / "simulate.py"


@pytest.fixture(scope="module")
def simulate() -> ModuleType:
    return load_script("simulate")


def test_oracle_matches_the_issue(simulate: ModuleType) -> None:
    """Issue 3: 1.0% vs 0.5% errors needs ~6 s on a 25% step and ~23 s on a 5% step."""
    assert simulate.oracle_s(0.005, 0.01, 25.0) == pytest.approx(5.8, abs=0.1)
    assert simulate.oracle_s(0.005, 0.01, 5.0) == pytest.approx(22.8, abs=0.1)


def test_a_regression_run_is_deterministic_and_rolls_back(simulate: ModuleType) -> None:
    scenario = simulate.REGRESSIONS[0]  # 5% errors on a 5% step
    first = simulate.regression_run(scenario, 3)
    assert first == simulate.regression_run(scenario, 3)
    assert first.verdict == "degraded"
    assert first.seconds <= 30


def test_table_prints_every_scenario(
    simulate: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [simulate.regression_run(s, 0) for s in simulate.REGRESSIONS]
    rows = [
        simulate.regression_row(s, [r]) for s, r in zip(simulate.REGRESSIONS, runs, strict=True)
    ]
    simulate.print_table(rows, 0, 1)
    out = capsys.readouterr().out
    for scenario in simulate.REGRESSIONS:
        assert scenario.name in out
    assert "A/A false rollbacks" in out


def test_the_default_run_is_short_and_full_has_300_a_a_rollouts(
    simulate: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulate.run_counts(simulate.parse_args([])) == (100, 50)
    assert simulate.run_counts(simulate.parse_args(["--full"])) == (100, 300)
    assert simulate.run_counts(simulate.parse_args(["--quick"])) == (5, 4)
    assert simulate.run_counts(simulate.parse_args(["--aa-runs", "500"])) == (100, 500)
    with pytest.raises(SystemExit):
        simulate.parse_args(["--help"])
    assert "--full" in capsys.readouterr().out


def test_the_server_timing_scenarios_roll_back_and_their_a_a_rollout_runs(
    simulate: ModuleType,
) -> None:
    timing = [s for s in simulate.REGRESSIONS if s.timing]
    assert [(s.percent, s.db_factor, s.miss_factor) for s in timing] == [
        (25.0, 1.3, 1.0),
        (5.0, 1.3, 1.0),
        (5.0, 1.0, 2.0),
    ]
    result = simulate.regression_run(timing[0], 1)
    assert result == simulate.regression_run(timing[0], 1)
    assert result.verdict == "degraded"
    assert result.seconds <= 60
    assert simulate.scenario_oracle(timing[0]) == pytest.approx(3.6, abs=0.1)
    one_tier = simulate.regression_run(timing[2], 1)
    assert one_tier.verdict == "degraded"
    assert simulate.scenario_oracle(timing[2]) == pytest.approx(1.04, abs=0.05)
    run = simulate.aa_run(20_000, timing=True)
    assert "degraded" not in [step.verdict for step in run]
    rows = simulate.aa_rows([run], "A/A S-T")
    assert rows[0].scenario.startswith("A/A S-T 5% step")
    args = simulate.parse_args([])
    assert simulate.timing_aa_count(args, 50) == 20
    assert simulate.timing_aa_count(simulate.parse_args(["--full"]), 300) == 300
    assert simulate.timing_aa_count(simulate.parse_args(["--quick"]), 4) == 2
