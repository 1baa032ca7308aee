"""Analysis: known values through StepAnalysis, the guardrail, stratification and shared
incidents as properties, pre-exposure baselines, the per-id cap, and simulated A/A and
regression streams."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from math import exp, log
from statistics import NormalDist

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.analysis import (
    AnalysisConfig,
    Assessment,
    RateCount,
    StepAnalysis,
    TierBaseline,
    Verdict,
    classify_status,
)
from proxy.core.budget import check_levels, error_grid, step_share
from proxy.core.outcome import status_class
from proxy.core.verdict import Source

NORMAL = NormalDist()


@dataclass
class Feed:
    """Feeds requests one millisecond apart, each with its own id and a log-normal latency
    unless told otherwise."""

    analysis: StepAnalysis
    now: float = 0.0
    next_id: int = 0
    tripped: list[Assessment] = field(default_factory=list)

    def __call__(
        self,
        tier: str,
        canary: bool,
        error: bool = False,
        latency: float | None = None,
        path: str = "/",
        id_hash: int | None = None,
    ) -> None:
        self.next_id += 1
        if latency is None:  # log-normal: median 50 ms, sigma 0.5, p99 ~ 160 ms
            latency = 0.05 * exp(0.5 * NORMAL.inv_cdf((self.next_id * 7919 % 1000 + 0.5) / 1000))
        result = self.analysis.observe(
            tier=tier,
            canary=canary,
            error=error,
            latency_s=latency,
            path=path,
            id_hash=self.next_id if id_hash is None else id_hash,
            now=self.now,
        )
        if result is not None:
            self.tripped.append(result)
        self.now += 0.001

    def block(self, tier: str, k: int, *, event: str = "", fail: bool = False) -> None:
        """k requests, one canary: the tier's share stays exactly 1/k at block starts.
        event "canary" / "stable": the block's first request is that arm's error."""
        first_canary = event != "stable"
        self(tier, first_canary, error=fail or bool(event))
        for i in range(1, k):
            canary = not first_canary and i == 1
            self(tier, canary, error=fail)


def q(theta: float, share: float) -> float:
    return theta * share / (theta * share + 1 - share)


# -- classify_status and the budget ------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "statuses", "generated", "error"),
    [
        (500, {"5xx"}, False, True),
        (503, {"5xx"}, False, True),
        (404, {"5xx"}, False, False),
        (429, {"5xx", "429"}, False, True),
        (502, frozenset(), True, True),  # the proxy's own 502/504 always count
        (504, frozenset(), True, True),
        (502, frozenset(), False, False),
        (200, {"5xx"}, True, False),
    ],
)
def test_classify_status(status: int, statuses: set[str], generated: bool, error: bool) -> None:
    assert classify_status(status, frozenset(statuses), proxy_generated=generated) is error


@pytest.mark.parametrize("statuses", [{"5xx"}, {"4xx", "503"}, {"2xx", "429", "999"}, set()])
def test_classify_status_by_class_or_code_for_every_status(statuses: set[str]) -> None:
    """Every status, inside the precomputed range and out of it, against the rule itself."""
    chosen = frozenset(statuses)
    for status in [*range(-2, 1102), 10_000]:
        expected = status_class(status) in chosen or str(status) in chosen
        assert classify_status(status, chosen) is expected, status


@pytest.mark.parametrize("steps", range(1, 9))
def test_step_shares_spend_the_whole_rate_once(steps: int) -> None:
    shares = [step_share(i, steps) for i in range(steps)]
    assert sum(shares) == pytest.approx(1.0)
    assert shares == sorted(shares, reverse=True)


def test_step_share_refuses_a_step_outside_the_rollout() -> None:
    with pytest.raises(ValueError, match="outside"):
        step_share(4, 4)


def test_levels_split_between_e_process_and_baselines() -> None:
    plain, seeded = check_levels(0.01, 0.25, 0), check_levels(0.01, 0.25, 4)
    assert plain.rollback == pytest.approx(0.0025)
    assert plain.advance == pytest.approx(0.01)
    assert seeded.rollback + 4 * seeded.baseline_rollback == pytest.approx(0.0025)
    assert seeded.advance + 4 * seeded.baseline_advance == pytest.approx(0.01)


# -- known values ------------------------------------------------------------------------


def test_the_e_value_after_a_known_sequence_equals_the_formula() -> None:
    """Tier share exactly 1/4; then 3 canary errors and 1 stable error."""
    config = AnalysisConfig(min_requests=10)
    feed = Feed(StepAnalysis(config, started=0.0))
    for _ in range(60):
        feed.block("t", 4)
    for _ in range(3):
        feed.block("t", 4, event="canary")
    feed.block("t", 4, event="stable")
    grid = error_grid(0.5)
    expected = sum(
        exp(w) * (q(t, 0.25) / 0.25) ** 3 * (1 - q(t, 0.25)) / 0.75
        for t, w in ((grid.points[i], w) for i, w in grid.up)
    )
    assessment = feed.analysis.assess(feed.now)
    errors = assessment.checks[0]
    assert errors.check == "errors"
    assert errors.e_value == pytest.approx(expected, rel=1e-9)
    assert errors.threshold == pytest.approx(1 / (0.01 * 0.99 * 3 / 4))  # 1%: the guardrail
    assert errors.canary == RateCount(64, 3)
    assert errors.baseline == RateCount(192, 1)
    assert [t.share for t in errors.tiers] == pytest.approx([0.25])
    assert assessment.verdict is Verdict.INCONCLUSIVE


def test_min_requests_hold_back_a_verdict() -> None:
    feed = Feed(StepAnalysis(AnalysisConfig(min_requests=500), started=0.0))
    for _ in range(60):
        feed.block("t", 2)
    for b in range(150):  # overwhelming evidence (40% canary errors), too few requests
        feed.block("t", 2, event="canary" if b % 5 < 2 else "")
    early = feed.analysis.assess(feed.now)
    assert early.checks[0].crossed
    assert early.verdict is Verdict.INCONCLUSIVE
    assert "min_requests not met" in early.summary
    for _ in range(400):
        feed.block("t", 2)
    late = feed.analysis.assess(feed.now)
    assert late.verdict is Verdict.DEGRADED
    assert late.check == "errors"
    assert late.statistic >= late.bound
    assert "errors vs" in late.summary


# -- guardrail ---------------------------------------------------------------------------


def test_guardrail_trips_on_the_tenth_failing_canary_request() -> None:
    feed = Feed(StepAnalysis(AnalysisConfig(), started=0.0))
    for _ in range(50):
        feed.block("t", 20)  # share 5%, no errors
    feed.now = 10.0  # the guardrail's window has emptied
    for n in range(1, 11):
        feed.block("t", 20, event="canary")
        assert bool(feed.tripped) is (n == 10)
    tripped = feed.tripped[0]
    assert tripped.verdict is Verdict.DEGRADED
    assert tripped.check == "guardrail"
    assert "10 of 10 recent canary requests failed" in tripped.summary
    feed.block("t", 20, event="canary")
    assert len(feed.tripped) == 1  # returned once ...
    assert feed.analysis.assess(feed.now) is tripped  # ... and held by assess


def test_a_shared_outage_does_not_trip_the_guardrail() -> None:
    feed = Feed(StepAnalysis(AnalysisConfig(), started=0.0))
    for _ in range(50):
        feed.block("t", 20)
    for _ in range(100):
        feed.block("t", 20, fail=True)  # both arms fail every request
    assert feed.tripped == []
    assert feed.analysis.assess(feed.now).verdict is not Verdict.DEGRADED


# -- stratification and shared incidents (properties) ------------------------------------

TIER = st.tuples(st.integers(min_value=2, max_value=12), st.integers(min_value=1, max_value=6))


@settings(max_examples=30, deadline=None)
@given(st.lists(TIER, min_size=1, max_size=3), st.integers(min_value=40, max_value=120))
def test_a_tier_mix_that_differs_between_arms_creates_no_evidence(
    tiers: list[tuple[int, int]], blocks: int
) -> None:
    """Each tier t has canary share 1/k_t and fails every request of one block in m_t: the
    canary's pooled error rate can differ wildly from stable's, but within each tier the errors
    fall in proportion to the share, so no evidence may build."""
    feed = Feed(StepAnalysis(AnalysisConfig(min_requests=10), started=0.0))
    for name, (k, _) in enumerate(tiers):
        for _ in range(max(50, 100 // k)):
            feed.block(str(name), k)  # warm-up: the shares are measured
    for b in range(blocks):
        for name, (k, m) in enumerate(tiers):
            feed.block(str(name), k, fail=b % m == 0)
    errors = feed.analysis.assess(feed.now).checks[0]
    assert errors.e_value <= 1.0 + 1e-6
    assert not errors.crossed


def test_stratification_example_pooled_rates_differ_but_no_evidence() -> None:
    feed = Feed(StepAnalysis(AnalysisConfig(min_requests=10), started=0.0))
    for b in range(600):
        feed.block("busy", 2, fail=b % 2 == 0)  # half canary, 50% errors on both arms
        feed.block("calm", 10)  # one in ten canary, no errors
    errors = feed.analysis.assess(feed.now).checks[0]
    assert errors.canary.rate > 2.5 * errors.baseline.rate  # pooled: looks like a regression
    assert errors.e_value <= 1.0 + 1e-6


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=2, max_value=20), st.integers(min_value=10, max_value=200))
def test_a_shared_incident_does_not_move_the_evidence_towards_rollback(k: int, length: int) -> None:
    feed = Feed(StepAnalysis(AnalysisConfig(min_requests=10), started=0.0))
    for _ in range(max(50, 100 // k)):
        feed.block("t", k)
    for _ in range(5):
        feed.block("t", k, event="canary")  # some evidence against the canary first
    before = feed.analysis.assess(feed.now).checks[0].e_value
    for _ in range(length):
        feed.block("t", k, fail=True)
    assert feed.analysis.assess(feed.now).checks[0].e_value <= before * (1 + 1e-6)


# -- pre-exposure baselines --------------------------------------------------------------


def first_step(seed: int) -> StepAnalysis:
    """Two tiers at half canary, 2% errors on both arms."""
    rng = random.Random(seed)
    analysis = StepAnalysis(AnalysisConfig(), started=0.0, step=0, steps=2)
    feed = Feed(analysis)
    for _ in range(40_000):
        feed(rng.choice("ab"), rng.random() < 0.5, error=rng.random() < 0.02)
    return analysis


def second_step(baselines: TierBaseline | dict[str, TierBaseline], rate: float) -> Assessment:
    """Tier a wholly on the canary at `rate` errors, tier b still half and healthy."""
    rng = random.Random(3)
    assert isinstance(baselines, dict)
    analysis = StepAnalysis(AnalysisConfig(), baselines=baselines, started=0.0, step=1, steps=2)
    feed = Feed(analysis)
    for n in range(20_000):
        if rng.random() < 0.5:
            feed("a", True, error=rng.random() < rate)
        else:
            feed("b", rng.random() < 0.5, error=rng.random() < 0.02)
        if n % 1000 == 999:
            result = analysis.assess(feed.now)
            if result.verdict is Verdict.DEGRADED:
                return result
    return analysis.assess(feed.now)


def test_tier_baselines_carry_stable_counts_forward() -> None:
    baselines = first_step(1).tier_baselines()
    assert set(baselines) == {"a", "b"}
    a = baselines["a"]
    assert 9_000 < a.errors.requests < 11_000
    assert 0.015 < a.errors.rate < 0.025
    assert 0.14 < a.latency_threshold_s < 0.19  # the p99
    assert a.slow.requests > 0


def test_a_wholly_exposed_tier_is_judged_against_its_pre_exposure_baseline() -> None:
    baselines = dict(first_step(1).tier_baselines())
    healthy = second_step(baselines, 0.02)
    assert healthy.verdict is not Verdict.DEGRADED
    tier_a = next(t for t in healthy.checks[0].tiers if t.tier == "a")
    assert tier_a.source is Source.PRE_EXPOSURE
    assert tier_a.baseline == baselines["a"].errors
    bad = second_step(baselines, 0.10)
    assert bad.verdict is Verdict.DEGRADED
    assert bad.check == "errors"


# -- per-id cap --------------------------------------------------------------------------


def test_one_id_cannot_carry_the_evidence_alone_and_is_reported() -> None:
    feed = Feed(StepAnalysis(AnalysisConfig(min_requests=10), started=0.0))
    for _ in range(60):
        feed.block("t", 4)
    for _ in range(400):
        feed("t", True, error=True, id_hash=7)  # one broken tenant on the canary
        for i in range(8):
            feed("t", i < 2)
    errors = feed.analysis.assess(feed.now).checks[0]
    assert errors.capped == 400 - 10
    assert errors.concentration.top_share == 1.0
    assert errors.concentration.events == 400
    assert errors.canary.events == 400  # still in the rates


# -- requests needed ---------------------------------------------------------------------


def test_inconclusive_says_how_many_more_requests() -> None:
    feed = Feed(StepAnalysis(AnalysisConfig(min_requests=10), started=0.0))
    for _ in range(300):
        feed.block("t", 4)
    nothing = feed.analysis.assess(feed.now)
    assert nothing.verdict is Verdict.INCONCLUSIVE
    # no events yet: the floor test sizes it (0.1% floor, a clean canary: about 7 / 0.1%)
    assert 3_000 < nothing.requests_needed < 12_000
    for _ in range(400):
        feed.block("t", 4)
    feed.analysis.assess(feed.now)  # the latency threshold is measured by now
    for b in range(400):
        feed.block("t", 4, event="stable" if b % 20 == 0 else "")
    some = feed.analysis.assess(feed.now)
    assert some.verdict is Verdict.INCONCLUSIVE
    assert some.requests_needed > 0


# -- simulated streams -------------------------------------------------------------------


def stream(seed: int, *, factor: float, slower: float = 1.0, incident: bool = False) -> Verdict:
    """Two tiers (shares 0.3 and 0.1, error rates 4% and 1%), 8,000 requests, a verdict
    every 200; an incident fails both arms at 30% for a quarter of the run."""
    rng = random.Random(seed)
    config = AnalysisConfig(false_rollback_rate=0.1, min_requests=50)
    analysis = StepAnalysis(config, started=0.0)
    feed = Feed(analysis)
    for n in range(8_000):
        tier = "a" if rng.random() < 0.6 else "b"
        canary = rng.random() < (0.3 if tier == "a" else 0.1)
        rate = 0.04 if tier == "a" else 0.01
        if incident and 4_000 <= n < 6_000:
            rate = 0.3
        elif canary:
            rate *= factor
        latency = 0.05 * exp(0.5 * rng.gauss(0.0, 1.0)) * (slower if canary else 1.0)
        feed(tier, canary, error=rng.random() < rate, latency=latency, id_hash=rng.randrange(10**6))
        if feed.tripped:
            return Verdict.DEGRADED
        if n % 200 == 199 and analysis.assess(feed.now).verdict is Verdict.DEGRADED:
            return Verdict.DEGRADED
    return Verdict.INCONCLUSIVE


def test_a_a_streams_roll_back_well_under_the_bound() -> None:
    runs = [stream(seed, factor=1.0, incident=seed % 2 == 0) for seed in range(200)]
    rollbacks = runs.count(Verdict.DEGRADED)
    assert rollbacks <= 0.1 * 200 / 2  # bound 10%, with a margin of two


def test_a_clear_error_regression_is_detected() -> None:
    assert all(stream(seed, factor=3.0) is Verdict.DEGRADED for seed in range(20))


def test_a_clear_latency_regression_is_detected() -> None:
    assert all(stream(seed, factor=1.0, slower=2.0) is Verdict.DEGRADED for seed in range(20))


def test_advance_needs_non_inferiority_on_every_check() -> None:
    rng = random.Random(5)
    config = AnalysisConfig(min_requests=100)
    analysis = StepAnalysis(config, started=0.0)
    feed = Feed(analysis)
    verdicts = []
    for n in range(120_000):
        canary = rng.random() < 0.5
        latency = 0.05 * exp(0.5 * rng.gauss(0.0, 1.0))
        feed("t", canary, error=rng.random() < 0.02, latency=latency)
        if n % 5_000 == 4_999:
            verdicts.append(analysis.assess(feed.now))
    assert verdicts[0].verdict is Verdict.INCONCLUSIVE
    final = verdicts[-1]
    assert final.verdict is Verdict.HEALTHY
    assert all(c.non_inferior for c in final.checks)
    assert all(c.ratio_high <= c.tolerance for c in final.checks)
    assert "within tolerance" in final.summary
    assert log(final.statistic) >= log(final.bound)


def test_a_shared_incident_neither_shows_non_inferiority_nor_lets_a_step_advance() -> None:
    rng = random.Random(9)
    analysis = StepAnalysis(AnalysisConfig(min_requests=100), started=0.0)
    feed = Feed(analysis)
    for _ in range(3_000):  # calm: 1% errors on both arms
        feed("t", rng.random() < 0.5, error=rng.random() < 0.01)
    for _ in range(20_000):  # 20 s of a shared outage: thousands of errors at ratio 1
        feed("t", rng.random() < 0.5, error=rng.random() < 0.3)
    during = analysis.assess(feed.now)
    assert during.verdict is Verdict.INCONCLUSIVE
    assert "holding: the baseline itself is failing" in during.summary
    assert not during.checks[0].non_inferior  # incident errors do not count for advancing
    assert not during.checks[0].crossed  # nor against the canary


# -- the guardrail is fast, and a shared incident does not trip it ------------------------


def one_percent_step(analysis: StepAnalysis, seconds: float, stable: float, canary: float) -> Feed:
    """1,000 requests/s of one tier from ever new ids, every 100th on the canary; stable fails
    at `stable`, the canary at `canary` (deterministic draws)."""
    rng = random.Random(11)
    feed = Feed(analysis)
    for n in range(int(seconds * 1000)):
        on_canary = n % 100 == 99
        feed("t", on_canary, error=rng.random() < (canary if on_canary else stable))
        if feed.tripped:
            break
    return feed


def test_a_dead_canary_at_a_1_percent_step_trips_the_guardrail_within_a_second() -> None:
    """10 canary requests/s, all failing: the 10th trips it, long before the tier's share could
    be measured (25 canary requests) or an e-process fed by it could cross."""
    feed = one_percent_step(StepAnalysis(AnalysisConfig(), started=0.0), 2.0, 0.005, 1.0)
    assert len(feed.tripped) == 1
    tripped = feed.tripped[0]
    assert tripped.at < 1.0
    assert tripped.check == "guardrail"
    assert "10 of 10 recent canary requests failed" in tripped.summary
    assert tripped.statistic >= tripped.bound


@pytest.mark.parametrize("rate", [0.2, 0.45, 0.6])
def test_a_shared_incident_at_a_1_percent_step_does_not_trip_the_guardrail(rate: float) -> None:
    """Both arms fail alike: recent canary windows of 10 to 20 requests often fail at 50% or
    more by chance, but never far above what the stable arm of the same tier does."""
    for seed in range(5):
        analysis = StepAnalysis(AnalysisConfig(), started=0.0)
        feed = Feed(analysis)
        rng = random.Random(seed)
        for n in range(30_000):
            feed("t", n % 100 == 99, error=rng.random() < rate)
        assert feed.tripped == []


def test_the_guardrail_of_a_tier_wholly_on_the_canary_uses_its_pre_exposure_rate() -> None:
    baselines = {"a": TierBaseline(errors=RateCount(5_000, 50))}  # 1% before exposure
    analysis = StepAnalysis(AnalysisConfig(), baselines=baselines, started=0.0, step=1, steps=2)
    feed = Feed(analysis)
    for _ in range(3):
        feed("a", False)  # stragglers from the previous step: no control
    for _ in range(10):
        feed("a", True, error=True)
    assert [t.check for t in feed.tripped] == ["guardrail"]
    assert "baseline 1% over 5,000 requests" in feed.tripped[0].summary


def test_a_tier_without_any_control_does_not_trip_the_guardrail() -> None:
    feed = Feed(StepAnalysis(AnalysisConfig(), started=0.0))
    for _ in range(50):
        feed("new", True, error=True)  # wholly on the canary, never measured before
    assert feed.tripped == []


# -- a tier (almost) wholly on the canary is judged against its pre-exposure baseline -------


def exposed_step(
    rate: float, *, stragglers: int, expected: dict[str, float] | None = None
) -> StepAnalysis:
    """Tier a wholly on the canary at `rate` errors after `stragglers` stable requests still in
    flight from the previous step; tier b half canary and healthy (2% on both arms)."""
    rng = random.Random(4)
    baselines = {
        "a": TierBaseline(errors=RateCount(20_000, 400)),
        "b": TierBaseline(errors=RateCount(20_000, 400)),
    }
    analysis = StepAnalysis(
        AnalysisConfig(),
        baselines=baselines,
        started=0.0,
        step=1,
        steps=2,
        expected_shares=expected or {},
    )
    feed = Feed(analysis)
    for _ in range(stragglers):
        feed("a", False)
    for n in range(20_000):
        if rng.random() < 0.5:
            feed("a", True, error=rng.random() < rate)
        else:
            feed("b", rng.random() < 0.5, error=rng.random() < 0.02)
        if n % 1000 == 999 and analysis.assess(feed.now).verdict is Verdict.DEGRADED:
            break
    return analysis


@pytest.mark.parametrize("expected", [None, {"a": 1.0, "b": 0.5}], ids=["measured", "planned"])
def test_stable_stragglers_do_not_hide_a_tier_wholly_on_the_canary(
    expected: dict[str, float] | None,
) -> None:
    """A few stable requests at the start of the step must not leave the tier without any
    comparison (its share never measurable, its pre-exposure baseline never used)."""
    bad = exposed_step(0.10, stragglers=5, expected=expected).assess(1e9)
    assert bad.verdict is Verdict.DEGRADED
    assert bad.check == "errors"
    tier_a = next(t for t in bad.checks[0].tiers if t.tier == "a")
    assert tier_a.source is Source.PRE_EXPOSURE
    assert tier_a.baseline == RateCount(20_000, 400)


def test_a_tier_judged_against_its_pre_exposure_baseline_keeps_it_for_the_next_step() -> None:
    analysis = exposed_step(0.02, stragglers=5)
    assert analysis.tier_baselines()["a"].errors == RateCount(20_000, 400)  # not the stragglers
    assert analysis.tier_baselines()["b"].errors.requests > 4_000  # measured in this step


def test_a_measured_share_overrides_a_plan_that_says_wholly_canary() -> None:
    """The plan says tier a is all canary, but pins keep half of it on stable: once the share
    is measured, tier a is compared with its concurrent stable traffic."""
    baselines = {"a": TierBaseline(errors=RateCount(20_000, 400))}
    analysis = StepAnalysis(
        AnalysisConfig(),
        baselines=baselines,
        started=0.0,
        step=1,
        steps=2,
        expected_shares={"a": 1.0},
    )
    feed = Feed(analysis)
    for _ in range(200):
        feed.block("a", 2)
    tier_a = analysis.assess(feed.now).checks[0].tiers[0]
    assert tier_a.source is Source.CONCURRENT
    assert tier_a.baseline == RateCount(200, 0)


# -- non-inferiority with few or no events -----------------------------------------------


def test_a_clean_service_with_tied_latencies_advances() -> None:
    """No errors on either arm and every latency the same: neither ratio has anything to
    condition on, but the floors show the canary's error rate under errors.min_rate and its
    share of slow requests under 1 - q."""
    analysis = StepAnalysis(AnalysisConfig(), started=0.0)
    feed = Feed(analysis)
    verdicts = []
    for n in range(40_000):
        feed("t", n % 2 == 0, latency=0.010)
        if n % 2_000 == 1_999:
            verdicts.append(analysis.assess(feed.now))
    assert verdicts[0].verdict is Verdict.INCONCLUSIVE
    final = verdicts[-1]
    assert final.verdict is Verdict.HEALTHY
    errors, latency = final.checks
    assert errors.ratio_high == float("inf")  # no events: the ratio alone shows nothing
    assert errors.floor_e_value >= errors.advance_threshold
    assert latency.floor == pytest.approx(0.01)
    assert "errors rate below the 0.1% floor" in final.summary


def test_a_canary_above_the_floor_does_not_advance_on_it() -> None:
    """Stable clean, canary at 0.5% errors: 0.5% is above the 0.1% floor, and the ratio
    (unbounded against a clean baseline) rolls it back."""
    rng = random.Random(2)
    analysis = StepAnalysis(AnalysisConfig(), started=0.0)
    feed = Feed(analysis)
    for n in range(40_000):
        canary = n % 2 == 0
        feed("t", canary, error=canary and rng.random() < 0.005, latency=0.010)
    result = analysis.assess(feed.now)
    assert result.verdict is Verdict.DEGRADED
    assert not result.checks[0].non_inferior


def test_the_floor_can_be_turned_off() -> None:
    analysis = StepAnalysis(AnalysisConfig(error_min_rate=0.0), started=0.0)
    feed = Feed(analysis)
    for n in range(40_000):
        feed("t", n % 2 == 0, latency=0.010)
    errors = analysis.assess(feed.now).checks[0]
    assert not errors.non_inferior
    assert errors.requests_needed == -1  # nothing to size it with


# -- the per-id cap never makes a verdict --------------------------------------------------


def test_a_busy_stable_id_with_many_errors_builds_no_rollback_evidence() -> None:
    """Both arms fail 2% of their requests, but all of stable's errors come from one busy id:
    capping its events would make the canary look 10 times worse."""
    rng = random.Random(8)
    feed = Feed(StepAnalysis(AnalysisConfig(min_requests=10), started=0.0))
    for _ in range(20_000):
        feed("t", True, error=rng.random() < 0.02, id_hash=rng.randrange(10**6))
        stable_error = rng.random() < 0.02
        feed("t", False, error=stable_error, id_hash=7 if stable_error else rng.randrange(10**6))
    errors = feed.analysis.assess(feed.now).checks[0]
    assert errors.capped > 300
    assert not errors.crossed
    assert errors.e_value < 1.0


def test_answers_the_proxy_gave_itself_stay_out_of_the_latency_check() -> None:
    """A stable pool that overflows answers thousands of instant 503s: errors of stable, but
    no latency of its upstream. Were they timed, the canary (20 ms) would look slow."""
    analysis = StepAnalysis(AnalysisConfig(min_requests=50), started=0.0)
    now = 0.0
    for i in range(4000):
        now += 0.001
        canary = i % 2 == 0
        if canary:
            analysis.observe(tier="t", canary=True, error=False, latency_s=0.02, path="/",
                             id_hash=i, now=now)  # fmt: skip
        else:
            analysis.observe(tier="t", canary=False, error=True, latency_s=0.0005, path="/",
                             id_hash=i, now=now, timed=False)  # fmt: skip
        if i % 500 == 0:
            analysis.assess(now)
    verdict = analysis.assess(now)
    assert verdict.verdict is not Verdict.DEGRADED, verdict
    latency = next(c for c in verdict.checks if c.check == "latency")
    assert latency.canary.requests == 0, "untimed answers fed the latency check"


# -- rollback abuse (RELIABILITY 3.3) ----------------------------------------------------


def _abuse(attacker_error: bool, canary_error_every: int, seconds: int) -> list[Assessment]:
    """Healthy traffic from many ids (20% on the canary) plus one id sending 4 times as
    many requests to the canary; one verdict per simulated second."""
    feed = Feed(StepAnalysis(AnalysisConfig(min_requests=50), started=0.0))
    verdicts = []
    n = 0
    for _ in range(seconds):
        for _ in range(200):  # 1,000 requests/s: 5 ms apart, in blocks of five
            for i in range(5):
                n += 1
                canary = i == 0
                bad = canary and canary_error_every > 0 and (n // 5) % canary_error_every == 0
                feed("t", canary, error=bad or (not canary and n % 500 == 0))
            for _ in range(4):
                feed("t", True, error=attacker_error, id_hash=424242)
        verdicts.append(feed.analysis.assess(feed.now))
    verdicts.extend(feed.tripped)
    return verdicts


def test_one_id_failing_on_purpose_cannot_roll_a_healthy_canary_back() -> None:
    verdicts = _abuse(attacker_error=True, canary_error_every=0, seconds=20)
    assert all(v.verdict is not Verdict.DEGRADED for v in verdicts), verdicts[-1]


def test_a_flood_of_cheap_successes_from_one_id_cannot_hide_a_regression() -> None:
    # Real users on the canary fail 1 in 10 (stable: 0.2%); one id floods it with successes.
    verdicts = _abuse(attacker_error=False, canary_error_every=10, seconds=30)
    assert any(v.verdict is Verdict.DEGRADED for v in verdicts)


def test_a_latency_check_a_release_tightened_is_named_after_the_release() -> None:
    """A release that brings `latency` holds the service's latency check to its tolerance:
    the verdict that rolls it back names the check and the release."""
    config = AnalysisConfig(min_requests=50, latency_origin="release 2.0")
    analysis = StepAnalysis(config, started=0.0)
    now, verdict = 0.0, analysis.assess(0.0)
    for i in range(20_000):
        now += 0.001
        canary = i % 2 == 0
        slow = 0.08 if canary else 0.02 + (i % 97) / 10_000
        analysis.observe(tier="t", canary=canary, error=False, latency_s=slow, path="/",
                         id_hash=i, now=now)  # fmt: skip
        if i % 500 == 0:
            verdict = analysis.assess(now)
            if verdict.verdict is Verdict.DEGRADED:
                break
    assert verdict.verdict is Verdict.DEGRADED, verdict
    assert verdict.check == "latency [release 2.0]"
    assert verdict.summary.startswith("latency [release 2.0]:"), verdict.summary
    assert [c.check for c in verdict.checks][:2] == ["errors", "latency [release 2.0]"]
