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
    run = simulate.aa_run(20_000, "timing")
    assert "degraded" not in [step.verdict for step in run]
    rows = simulate.aa_rows([run], "A/A S-T")
    assert rows[0].scenario.startswith("A/A S-T 5% step")
    args = simulate.parse_args([])
    assert simulate.signal_aa_count(None, args, 50) == 20
    assert simulate.signal_aa_count(None, simulate.parse_args(["--full"]), 300) == 300
    assert simulate.signal_aa_count(None, simulate.parse_args(["--quick"]), 4) == 2
    assert simulate.signal_aa_count(7, args, 50) == 7


def test_an_app_counter_regression_seen_in_15_s_scrapes_rolls_back_and_its_a_a_advances(
    simulate: ModuleType,
) -> None:
    """The service's own failure counters, read through 15 s scrapes: the analysis sees them
    move in batches, rolls a 2x canary back within a few scrapes, and lets a healthy one
    through every step."""
    counters = [s for s in simulate.REGRESSIONS if s.counters]
    assert [(s.percent, s.app_factor) for s in counters] == [(25.0, 2.0), (5.0, 2.0)]
    for scenario in counters:
        result = simulate.regression_run(scenario, 2)
        assert result == simulate.regression_run(scenario, 2)
        assert result.verdict == "degraded"
        assert result.seconds <= 4 * simulate.SCRAPE_S
    world = simulate.World.seeded(5, app_factor=1.0)
    assert world.counters is not None
    seen = []
    analysis = simulate.step_analysis({}, 0.0, 1, simulate.COUNTER_CONFIG)
    for second in range(1, 46):
        simulate.run_second(world, analysis, 25.0, float(second - 1))
        world.counters.read(analysis, float(second))
        seen.append(analysis.prometheus.checks["app"].seen.canary.requests)
    assert len(set(seen)) in (3, 4), "the counters move once a scrape, not every second"
    run = simulate.aa_run(30_000, "counters")
    assert [step.verdict for step in run] == ["healthy", "healthy", "healthy", "inconclusive"]
    rows = simulate.aa_rows([run], "A/A counters", simulate.counter_advance_oracle)
    assert rows[0].oracle_s == pytest.approx(142.4, abs=0.5)  # the counter check sets it
