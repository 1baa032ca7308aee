"""Count checks: counter increases, the batched sequential test, and "no data is not health".

Pure: counters are fed as a Prometheus answer would give them, time and randomness are
seeded; no sockets.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.analysis import AnalysisConfig, StepAnalysis
from proxy.core.baseline import RateCount
from proxy.core.budget import check_levels, checks_share, error_grid, step_share
from proxy.core.countcheck import (
    NO_DATA,
    CountCheck,
    Increase,
    PromChecks,
    Read,
    Totals,
    add_batch,
)
from proxy.core.evidence import Profile, rollback_log_e
from proxy.core.promql import PromCheck
from proxy.core.verdict import Verdict

CHECK = PromCheck(
    name="payments",
    url="http://127.0.0.1:9",
    url_env="PROM_URL",
    bad='sum(f{version="{{variant}}"})',
    total='sum(a{version="{{variant}}"})',
    min_total=50,
)
LEVELS = check_levels(0.01, checks_share(0.5, 1, 6), 0)


class Counters:
    """Two services' counters (bad, total per variant), as Prometheus would read them."""

    def __init__(self, start: int = 1000) -> None:
        self.values = {(v, k): float(start) for v in ("stable", "canary") for k in ("bad", "total")}

    def serve(self, variant: str, requests: int, bad: int) -> None:
        self.values[variant, "total"] += requests
        self.values[variant, "bad"] += bad

    def reads(self) -> dict[tuple[str, str], Read]:
        return {key: {"": value} for key, value in self.values.items()}


def _begin(check: CountCheck | PromChecks, counters: Counters) -> None:
    """A step's first looks: the scrape before it began (not counted), then the first scrape
    since (its base)."""
    record = check.record if isinstance(check, CountCheck) else _recorder(check)
    record(counters.reads())
    counters.serve("stable", 10, 0)
    counters.serve("canary", 10, 0)
    record(counters.reads())


def _recorder(prom: PromChecks) -> Callable[[Mapping[tuple[str, str], Read]], None]:
    return lambda reads: prom.record("payments", reads)


def _batch(
    rng: random.Random, counters: Counters, n: int, p_stable: float, p_canary: float
) -> None:
    for variant, p in (("stable", p_stable), ("canary", p_canary)):
        counters.serve(variant, n, sum(rng.random() < p for _ in range(n)))


def test_increase_counts_from_the_first_read_and_restarts_after_a_reset() -> None:
    counter = Increase()
    counter.update({"a": 500.0, "b": 10.0})
    assert counter.value == 0
    counter.update({"a": 530.0, "b": 12.0})
    assert counter.value == 32
    counter.update({"a": 4.0, "b": 12.0})  # a restarted: its 30 are kept, it counts from 4
    assert counter.value == 32
    counter.update({"a": 9.0, "b": 15.0, "c": 100.0})  # c is new: from its first value
    assert counter.value == 30 + 5 + 5


@given(st.lists(st.integers(0, 50), min_size=1, max_size=30), st.data())
def test_increase_is_the_sum_of_the_gains_whatever_the_resets(
    gains: list[int], data: st.DataObject
) -> None:
    counter, value, total = Increase(), float(data.draw(st.integers(0, 1000))), 0
    counter.update({"": value})
    for gain in gains:
        if data.draw(st.booleans()) and value > 0:  # the process restarted, then counted
            value = 0.0
        value += gain
        total += gain
        before = counter.value
        counter.update({"": value})
        assert counter.value >= before  # an increase never goes down
    # Gains made between a restart and the next read are counted from the first value read
    # after the restart, so a reset can only lose counts, never add any.
    assert 0 <= counter.value <= total


@given(st.integers(0, 40), st.integers(0, 40), st.floats(0.01, 0.99))
def test_a_batch_is_its_events_one_by_one_at_the_batch_share(
    canary: int, stable: int, share: float
) -> None:
    grid = error_grid(0.2)
    bulk, single = Profile(grid), Profile(grid)
    add_batch(bulk, canary, stable, share)
    for _ in range(canary):
        single.add(True, share)
    for _ in range(stable):
        single.add(False, share)
    assert bulk.loglik == pytest.approx(single.loglik, abs=1e-9)
    assert bulk.events == single.events


def test_a_canary_failing_more_is_rolled_back_from_batches() -> None:
    rng, counters, check = random.Random(1), Counters(), CountCheck(CHECK, LEVELS)
    _begin(check, counters)
    for _ in range(30):
        _batch(rng, counters, 200, 0.01, 0.05)
        check.record(counters.reads())
        if check.evidence().crossed:
            break
    evidence = check.evidence()
    assert evidence.crossed
    assert evidence.check == "prometheus:payments"
    assert evidence.ratio_low > 1.0  # the confidence sequence excludes "no worse"
    assert evidence.canary.rate > evidence.baseline.rate


def test_a_healthy_canary_is_shown_within_tolerance_and_never_crossed() -> None:
    rng, counters, check = random.Random(2), Counters(), CountCheck(CHECK, LEVELS)
    _begin(check, counters)
    for _ in range(60):
        _batch(rng, counters, 500, 0.0002, 0.0002)
        check.record(counters.reads())
    evidence = check.evidence()
    assert evidence.non_inferior
    assert not evidence.crossed
    assert evidence.canary.requests == 60 * 500


def test_no_rollback_before_min_total_on_each_arm() -> None:
    check, counters = CountCheck(CHECK, LEVELS), Counters()
    _begin(check, counters)
    counters.serve("canary", 40, 40)  # every canary payment failed, but only 40 of them
    counters.serve("stable", 40, 0)
    check.record(counters.reads())
    assert check.evidence().e_value >= check.evidence().threshold
    assert not check.evidence().crossed
    counters.serve("canary", 10, 10)
    counters.serve("stable", 10, 0)
    check.record(counters.reads())
    assert check.evidence().crossed


def test_a_batch_without_requests_on_one_arm_waits_for_the_next() -> None:
    check, counters = CountCheck(CHECK, LEVELS), Counters()
    _begin(check, counters)
    counters.serve("canary", 100, 30)  # stable was not scraped in between
    check.record(counters.reads())
    assert check.profile.events == 0
    counters.serve("stable", 100, 1)
    check.record(counters.reads())
    assert check.profile.events == 31
    assert check.evidence().canary.events == 30


def _aa_false_rollbacks(runs: int, batch: int, alpha: float) -> int:
    rng = random.Random(11)
    levels = check_levels(alpha, 1.0, 0)
    crossed = 0
    for _ in range(runs):
        counters, check = Counters(), CountCheck(CHECK, levels)
        _begin(check, counters)
        for _ in range(25):
            _batch(rng, counters, batch, 0.05, 0.05)
            check.record(counters.reads())
            if check.evidence().crossed:
                crossed += 1
                break
    return crossed


@settings(deadline=None)
@given(st.sampled_from([20, 200]))
def test_aa_runs_in_batches_roll_back_at_most_alpha(batch: int) -> None:
    # 300 A/A runs at alpha 0.1 (looked at after every batch): at most 10% may cross, and
    # the binomial spread of 300 runs is within 5 points of it.
    assert _aa_false_rollbacks(300, batch, 0.1) <= 45


def _analysis(error_min_rate: float = 0.001, latency_quantile: float = 0.99) -> StepAnalysis:
    config = AnalysisConfig(
        min_requests=10,
        error_min_rate=error_min_rate,
        latency_quantile=latency_quantile,
        prometheus=(CHECK,),
    )
    return StepAnalysis(config, started=0.0, step=0, steps=2)


def _clean_traffic(analysis: StepAnalysis, n: int) -> None:
    """`n` clean requests on each arm; the stable latency quantile is measured half-way."""
    for i in range(n):
        if i == n // 2:
            analysis.assess(0.001 * i)
        for canary in (False, True):
            analysis.observe(
                tier="free",
                canary=canary,
                error=False,
                latency_s=0.01,
                path="/",
                id_hash=i,
                now=0.001 * i,
            )


def _healthy_reads(prom: PromChecks) -> None:
    counters = Counters()
    _begin(prom, counters)
    for _ in range(40):
        counters.serve("stable", 500, 0)
        counters.serve("canary", 500, 0)
        prom.record("payments", counters.reads())


def test_a_step_does_not_advance_until_the_check_is_read() -> None:
    analysis = _analysis(error_min_rate=0.05, latency_quantile=0.5)
    _clean_traffic(analysis, 3000)
    verdict = analysis.assess(10.0)
    assert verdict.verdict is Verdict.INCONCLUSIVE
    assert verdict.check == "prometheus:payments"
    assert f"{NO_DATA} (prometheus:payments: " in verdict.summary
    _healthy_reads(analysis.prometheus)
    assert analysis.assess(11.0).verdict is Verdict.HEALTHY


def test_no_data_holds_a_healthy_step_and_names_the_check_and_the_error() -> None:
    analysis = _analysis(error_min_rate=0.05, latency_quantile=0.5)
    _clean_traffic(analysis, 3000)
    _healthy_reads(analysis.prometheus)
    assert analysis.assess(10.0).verdict is Verdict.HEALTHY
    reads: Mapping[tuple[str, str], Read] = {
        ("stable", "bad"): "timed out after 2s",
        ("stable", "total"): {"": 1.0},
        ("canary", "bad"): "the query returned no series",
        ("canary", "total"): {"": 1.0},
    }
    analysis.prometheus.record("payments", reads)
    verdict = analysis.assess(11.0)
    assert verdict.verdict is Verdict.INCONCLUSIVE
    assert verdict.summary.startswith(
        "no data from prometheus (prometheus:payments: stable bad: timed out after 2s; "
        "canary bad: the query returned no series)"
    )


def test_no_data_never_rolls_back_by_itself() -> None:
    analysis = _analysis()
    _clean_traffic(analysis, 500)
    for _ in range(50):
        analysis.prometheus.record("payments", {})
        assert analysis.assess(10.0).verdict is not Verdict.DEGRADED


def test_a_regressed_counter_rolls_the_step_back_naming_the_check() -> None:
    analysis = _analysis()
    _clean_traffic(analysis, 500)
    counters = Counters()
    _begin(analysis.prometheus, counters)
    counters.serve("stable", 300, 3)
    counters.serve("canary", 300, 90)
    analysis.prometheus.record("payments", counters.reads())
    verdict = analysis.assess(10.0)
    assert verdict.verdict is Verdict.DEGRADED
    assert verdict.check == "prometheus:payments"
    assert verdict.summary.startswith("prometheus:payments: canary 30% bad vs 1% stable")


def test_the_check_takes_a_share_of_the_same_budget() -> None:
    alone = StepAnalysis(AnalysisConfig(), started=0.0, step=0, steps=2)
    both = _analysis()
    errors_alone, errors_both = alone.errors.levels.rollback, both.errors.levels.rollback
    prom = both.prometheus.checks["payments"].levels.rollback
    share = step_share(0, 2) * 0.01 * 0.99
    assert errors_alone == pytest.approx(share * 3 / 4)
    assert errors_both == pytest.approx(share * 3 / 5)
    assert prom == pytest.approx(share / 5)
    # errors, latency and the prometheus check together spend what errors and latency did
    assert errors_both + both.latency.levels.rollback + prom == pytest.approx(share)
    assert errors_alone + alone.latency.levels.rollback == pytest.approx(share)


def test_rollback_evidence_of_a_batch_equals_the_per_event_test() -> None:
    check, counters = CountCheck(CHECK, LEVELS), Counters()
    _begin(check, counters)
    counters.serve("canary", 100, 7)
    counters.serve("stable", 300, 3)
    check.record(counters.reads())
    single = Profile(error_grid(0.2))
    for canary, count in ((True, 7), (False, 3)):
        for _ in range(count):
            single.add(canary, 0.25)
    assert rollback_log_e(check.grid, check.profile.loglik) == pytest.approx(
        rollback_log_e(single.grid, single.loglik)
    )


@pytest.mark.parametrize("canary_only", [True, False])
def test_a_step_all_on_the_canary_advances_on_the_floor_alone(canary_only: bool) -> None:
    check, counters = CountCheck(CHECK, LEVELS, canary_only=canary_only), Counters()
    _begin(check, counters)
    for _ in range(40):
        counters.serve("canary", 1000, 0)  # stable serves nothing: its counters stand still
        check.record(counters.reads())
    evidence = check.evidence()
    assert check.profile.events == 0
    assert evidence.baseline.requests == 0
    # Only a step whose plan leaves stable no traffic may advance without stable's counts
    # (elsewhere they may just not be scraped yet).
    assert evidence.non_inferior is canary_only
    assert evidence.requests_needed == (0 if canary_only else CHECK.min_total)
    assert not evidence.crossed


def test_the_plan_says_when_a_step_is_all_on_the_canary() -> None:
    def canary_only(shares: dict[str, float]) -> bool:
        return PromChecks((CHECK,), LEVELS, shares).checks["payments"].canary_only

    assert canary_only({"free": 1.0, "paid": 0.99})
    assert not canary_only({"free": 1.0, "paid": 0.5})
    assert not canary_only({})


def test_a_canary_restarting_mid_step_keeps_its_counts_and_adds_no_false_events() -> None:
    check, counters = CountCheck(CHECK, LEVELS), Counters()
    _begin(check, counters)
    counters.serve("canary", 200, 2)
    counters.serve("stable", 200, 2)
    check.record(counters.reads())
    counters.values["canary", "bad"] = counters.values["canary", "total"] = 0.0  # restarted
    counters.serve("canary", 100, 1)
    counters.serve("stable", 100, 1)
    check.record(counters.reads())
    evidence = check.evidence()
    # The 100 canary payments since the restart are counted from the first value read after
    # it (100, 1): a reset loses what came between two reads, never adds.
    assert evidence.canary == RateCount(200, 2)
    assert evidence.baseline == RateCount(300, 3)
    assert check.profile.events == 4
    counters.serve("canary", 100, 1)
    counters.serve("stable", 100, 1)
    check.record(counters.reads())
    assert check.evidence().canary == RateCount(300, 3)
    assert not check.evidence().crossed


def test_a_step_counts_from_the_first_scrape_since_it_began() -> None:
    """The first look answers with the scrape before the step began; the next scrape's
    batch holds requests of the previous step (at its share). Neither is counted: every batch
    judged is of this step alone, and each arm starts from its own first new scrape."""
    check, counters = CountCheck(CHECK, LEVELS), Counters()
    check.record(counters.reads())  # scraped before the step began
    counters.serve("stable", 1000, 200)  # straddles the step's start: an incident, say
    check.record(counters.reads())  # only stable was scraped since
    assert check.seen == Totals(RateCount(), RateCount())
    counters.serve("canary", 50, 40)
    check.record(counters.reads())  # the canary's first scrape since: its base
    assert check.seen == Totals(RateCount(), RateCount())
    assert check.profile.events == 0
    counters.serve("canary", 100, 1)
    counters.serve("stable", 300, 3)
    check.record(counters.reads())
    assert check.seen == Totals(RateCount(100, 1), RateCount(300, 3))
    assert check.profile.events == 4
