"""Server-Timing checks inside StepAnalysis: a `dur` judged as latency is, a metric's presence
or `desc` judged as a rate, within the step's false-rollback budget, with pre-exposure
baselines carried from step to step."""

from __future__ import annotations

import random
from math import log

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.analysis import AnalysisConfig, Assessment, StepAnalysis, Verdict
from proxy.core.budget import check_levels, checks_share, step_share
from proxy.core.servertiming import TimingEntry, parse
from proxy.core.timingcheck import ServerTimingCheck

DB = ServerTimingCheck("db", "duration", 0.2)
MISS = ServerTimingCheck("cache", "rate", 0.1, desc="miss")
CONFIG = AnalysisConfig(min_requests=200, server_timing=(DB, MISS))


def feed(
    analysis: StepAnalysis,
    n: int,
    rng: random.Random,
    *,
    canary_share: float = 0.5,
    db_factor: float = 1.0,
    miss_canary: float = 0.2,
    miss_stable: float = 0.2,
    start: float = 0.0,
    tier: str = "default",
) -> float:
    """`n` requests 1 ms apart; db `dur` log-normal around 10 ms (times `db_factor` on the
    canary); a cache miss at the given rates. Returns the time after the last one."""
    now = start
    for i in range(n):
        now = start + i * 0.001
        canary = rng.random() < canary_share
        dur = 10.0 * rng.lognormvariate(0.0, 0.4) * (db_factor if canary else 1.0)
        miss = rng.random() < (miss_canary if canary else miss_stable)
        entries = (TimingEntry("db", dur), TimingEntry("cache", None, "miss" if miss else "hit"))
        analysis.observe(
            tier=tier,
            canary=canary,
            error=False,
            latency_s=0.05,
            path="/",
            id_hash=rng.getrandbits(32),
            now=now,
            timing=entries,
        )
        if i % 500 == 499:
            analysis.assess(now)
    return now


def run(seed: int, n: int = 6000) -> Verdict:
    analysis = StepAnalysis(CONFIG, started=0.0, step=0, steps=3)
    end = feed(analysis, n, random.Random(seed))
    return analysis.assess(end).verdict


def test_db_time_doubled_on_the_canary_rolls_back_naming_the_check() -> None:
    analysis = StepAnalysis(CONFIG, started=0.0, step=0, steps=3)
    end = feed(analysis, 4000, random.Random(1), db_factor=2.0)
    verdict = analysis.assess(end)
    assert verdict.verdict is Verdict.DEGRADED
    assert verdict.check == "server_timing:db"
    db = next(c for c in verdict.checks if c.check == "server_timing:db")
    assert db.crossed
    assert db.canary.rate > 0.8 > 0.6 > db.baseline.rate
    assert "server_timing:db" in verdict.summary


def test_cache_miss_rate_doubled_on_the_canary_rolls_back_naming_the_check() -> None:
    analysis = StepAnalysis(CONFIG, started=0.0, step=0, steps=3)
    end = feed(analysis, 6000, random.Random(2), miss_canary=0.4, miss_stable=0.2)
    verdict = analysis.assess(end)
    assert verdict.verdict is Verdict.DEGRADED
    assert verdict.check == "server_timing:cache;desc=miss"
    check = next(c for c in verdict.checks if c.check == verdict.check)
    assert check.ratio_low > 1.1


def test_the_same_distribution_on_both_arms_advances() -> None:
    analysis = StepAnalysis(CONFIG, started=0.0, step=0, steps=3)
    end = feed(analysis, 20000, random.Random(3), miss_canary=0.2, miss_stable=0.2)
    verdict = analysis.assess(end)
    assert verdict.verdict is Verdict.HEALTHY
    names = {c.check for c in verdict.checks}
    assert {"server_timing:db", "server_timing:cache;desc=miss"} <= names
    assert all(c.non_inferior for c in verdict.checks)


def test_a_a_runs_do_not_roll_back() -> None:
    verdicts = [run(seed, n=4000) for seed in range(20)]
    assert Verdict.DEGRADED not in verdicts


def test_requests_without_the_header_count_as_no_event_and_no_duration() -> None:
    analysis = StepAnalysis(CONFIG, started=0.0, step=0, steps=3)
    for i in range(400):
        analysis.observe(
            tier="t",
            canary=i % 2 == 0,
            error=False,
            latency_s=0.05,
            path="/",
            id_hash=i,
            now=i * 0.001,
            timing=(),
        )
    checks = {c.check: c for c in analysis.assess(1.0).checks}
    miss = checks["server_timing:cache;desc=miss"]
    assert (miss.canary.requests, miss.canary.events, miss.baseline.requests) == (200, 0, 200)
    assert checks["server_timing:db"].canary.requests == 0


def test_responses_the_proxy_made_or_without_timing_are_left_out() -> None:
    analysis = StepAnalysis(CONFIG, started=0.0, step=0, steps=3)
    analysis.observe(
        tier="t",
        canary=True,
        error=True,
        latency_s=0.0,
        path="/",
        id_hash=1,
        now=0.0,
        timed=False,
        timing=(TimingEntry("cache", None, "miss"),),
    )
    analysis.observe(
        tier="t", canary=True, error=False, latency_s=0.0, path="/", id_hash=1, now=0.0
    )
    checks = {c.check: c for c in analysis.assess(1.0).checks}
    assert checks["server_timing:cache;desc=miss"].canary.requests == 0
    assert checks["errors"].canary.requests == 2


def test_each_timing_check_takes_a_share_of_the_step_budget() -> None:
    plain = StepAnalysis(AnalysisConfig(), started=0.0, step=0, steps=3)
    with_timing = StepAnalysis(CONFIG, started=0.0, step=0, steps=3)
    share = step_share(0, 3)
    assert with_timing.errors.levels == check_levels(0.01, checks_share(share, 3, 6), 0)
    assert plain.errors.levels == check_levels(0.01, checks_share(share, 3, 4), 0)
    assert with_timing.timing is not None
    total = (
        with_timing.errors.levels.rollback
        + with_timing.latency.levels.rollback
        + sum(c.levels.rollback for c in with_timing.timing.checks)
    )
    assert abs(total - 0.01 * share * 0.99) < 1e-12
    threshold = next(
        c.threshold for c in with_timing.assess(0.0).checks if c.check == "server_timing:db"
    )
    assert abs(log(threshold) - log(1 / (0.01 * share * 0.99 / 6))) < 1e-9


def test_a_tier_wholly_on_the_canary_is_judged_against_its_timing_baseline() -> None:
    first = StepAnalysis(CONFIG, started=0.0, step=0, steps=3)
    end = feed(first, 6000, random.Random(4), tier="t")
    baselines = first.tier_baselines()
    carried = baselines["t"].timing
    assert set(carried) == {"server_timing:db", "server_timing:cache;desc=miss"}
    assert carried["server_timing:db"].edge_s > 0.0
    assert 0.15 < carried["server_timing:cache;desc=miss"].counts.rate < 0.25
    second = StepAnalysis(CONFIG, baselines=baselines, started=end, step=1, steps=3)
    end = feed(second, 4000, random.Random(5), tier="t", canary_share=1.0, db_factor=2.0, start=end)
    verdict = second.assess(end)
    assert verdict.verdict is Verdict.DEGRADED
    assert verdict.check == "server_timing:db"


def _one_slow_id(spread: bool) -> Assessment:
    """Half of the canary's requests slow (50 ms db time) and from one id, or (`spread`) from
    as many ids; the rest of both arms log-normal around 10 ms."""
    analysis = StepAnalysis(CONFIG, started=0.0, step=0, steps=3)
    rng = random.Random(6)
    now = 0.0
    for i in range(8000):
        now = i * 0.001
        canary = i % 2 == 0
        heavy = canary and i % 4 == 0
        dur = 50.0 if heavy else 10.0 * rng.lognormvariate(0.0, 0.4)
        analysis.observe(
            tier="t",
            canary=canary,
            error=False,
            latency_s=0.05,
            path="/",
            id_hash=1 if heavy and not spread else 1000 + i,
            now=now,
            timing=(TimingEntry("db", dur),),
        )
        if i % 500 == 499:
            analysis.assess(now)
    return analysis.assess(now)


def test_one_id_cannot_roll_back_on_its_own_slow_db_time() -> None:
    """Its events over the per-id cap do not count for rolling back, and the verdict says they
    are concentrated; the same slow requests from many ids roll back."""
    verdict = _one_slow_id(spread=False)
    db = next(c for c in verdict.checks if c.check == "server_timing:db")
    assert verdict.verdict is not Verdict.DEGRADED
    assert db.capped > 0
    assert db.concentration.top_share > 0.5
    spread = _one_slow_id(spread=True)
    assert spread.verdict is Verdict.DEGRADED
    assert spread.check == "server_timing:db"


@given(
    st.lists(st.tuples(st.booleans(), st.binary(max_size=80)), max_size=60),
    st.sampled_from(["t1", "t2"]),
)
def test_any_header_bytes_on_either_arm_never_break_the_analysis(
    responses: list[tuple[bool, bytes]], tier: str
) -> None:
    analysis = StepAnalysis(CONFIG, started=0.0, step=0, steps=3)
    for i, (canary, value) in enumerate(responses):
        entries = parse(
            [b"db;dur=" + value, value], analysis.timing.wanted if analysis.timing else None
        )
        analysis.observe(
            tier=tier,
            canary=canary,
            error=False,
            latency_s=0.01,
            path="/",
            id_hash=i,
            now=i * 0.01,
            timing=entries,
        )
    verdict = analysis.assess(1.0)
    checks = {c.check: c for c in verdict.checks}
    miss = checks["server_timing:cache;desc=miss"]
    assert miss.canary.requests + miss.baseline.requests == len(responses)
