"""Evidence: the likelihood profile and its e-values on known values, as properties, and under
the null (Ville); baseline bounds against an exact (Clopper-Pearson) computation."""

from __future__ import annotations

import random
from math import comb, exp, log

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.baseline import RateCount, rate_lower, rate_upper
from proxy.core.budget import error_grid, latency_grid
from proxy.core.evidence import (
    FLOOR_DOWN,
    FLOOR_WEIGHT,
    Profile,
    RatioGrid,
    advance_log_e,
    best_ratio,
    either_log_e,
    floor_drift,
    floor_log_e,
    lower_bound,
    rollback_log_e,
    upper_bound,
)

GRID = error_grid(0.5)


def q(theta: float, share: float) -> float:
    return theta * share / (theta * share + 1 - share)


def direct_loglik(theta: float, events: list[tuple[bool, float]]) -> float:
    """log LR(theta vs 1) of conditional events, straight from the binomial probabilities."""
    total = 0.0
    for canary, share in events:
        p1, p0 = q(theta, share), share
        total += log(p1 / p0) if canary else log((1 - p1) / (1 - p0))
    return total


def weights(pairs: tuple[tuple[int, float], ...]) -> list[tuple[float, float]]:
    return [(GRID.points[i], exp(w)) for i, w in pairs]


def test_grid_holds_the_nulls_and_the_alternatives() -> None:
    assert GRID.points[GRID.null] == 1.0
    assert GRID.points[GRID.tolerance] == 1.5
    ups = [theta for theta, _ in weights(GRID.up)]
    assert ups[0] == 1.5
    assert ups[-1] == pytest.approx(24.0)
    assert sum(w for _, w in weights(GRID.up)) == pytest.approx(1.0)
    assert [w for _, w in weights(GRID.up)][:2] == pytest.approx([0.35, 0.35])
    assert sum(w for _, w in weights(GRID.down)) == pytest.approx(1.0)


def test_grid_rejects_alternatives_on_the_wrong_side() -> None:
    with pytest.raises(ValueError, match="side"):
        RatioGrid.build(tolerance=1.5, up_start=0.9, down=(1.0,), down_weights=(1.0,))
    with pytest.raises(ValueError, match="side"):
        RatioGrid.build(tolerance=1.0, up_start=1.5, down=(1.0,), down_weights=(1.0,))


def test_rollback_e_value_equals_the_mixture_formula() -> None:
    """3 canary and 1 stable events at share 0.25, then 2 stable events at share 0.1."""
    events = [(True, 0.25)] * 3 + [(False, 0.25), (False, 0.1), (False, 0.1)]
    profile = Profile(GRID)
    for canary, share in events:
        profile.add(canary, share)
    expected = sum(w * exp(direct_loglik(t, events)) for t, w in weights(GRID.up))
    assert exp(rollback_log_e(GRID, profile.loglik)) == pytest.approx(expected, rel=1e-12)
    assert profile.events == 6


def test_advance_e_value_equals_the_mixture_formula() -> None:
    events = [(True, 0.2)] * 2 + [(False, 0.2)] * 30
    profile = Profile(GRID)
    for canary, share in events:
        profile.add(canary, share)
    tol = direct_loglik(1.5, events)
    expected = sum(w * exp(direct_loglik(t, events) - tol) for t, w in weights(GRID.down))
    assert exp(advance_log_e(GRID, profile.loglik)) == pytest.approx(expected, rel=1e-12)


def test_one_sample_tally_is_the_binomial_likelihood() -> None:
    n, x, rate = 400, 9, 0.01
    total = Profile(GRID).with_tally([(n, x, rate)])
    for i, theta in enumerate(GRID.points):
        p = theta * rate
        binomial = log(comb(n, x)) + x * log(p) + (n - x) * log(1 - p)
        baseline = log(comb(n, x)) + x * log(rate) + (n - x) * log(1 - rate)
        assert total[i] - total[GRID.null] == pytest.approx(binomial - baseline, rel=1e-9)


def test_empty_tallies_add_nothing() -> None:
    assert Profile(GRID).with_tally([(0, 0, 0.1), (10, 1, 0.0)]) == [0.0] * len(GRID.points)


def test_bounds_bracket_the_estimate() -> None:
    profile = Profile(GRID)
    for _ in range(60):
        profile.add(True, 0.2)
    for _ in range(140):
        profile.add(False, 0.2)  # canary share of events 0.3 at share 0.2: theta ~ 1.7
    ll = profile.loglik
    low, high = lower_bound(GRID, ll, log(100)), upper_bound(GRID, ll, log(100))
    assert low <= best_ratio(GRID, ll) <= high
    assert 1.0 <= low < 1.7 < high


def test_no_evidence_means_unbounded() -> None:
    ll = Profile(GRID).loglik
    assert lower_bound(GRID, ll, log(100)) == 0.0
    assert upper_bound(GRID, ll, log(100)) == float("inf")


EVENTS = st.lists(
    st.tuples(st.booleans(), st.floats(min_value=0.001, max_value=0.999)), max_size=60
)


@given(EVENTS)
def test_e_values_are_nonnegative_and_finite(events: list[tuple[bool, float]]) -> None:
    profile = Profile(GRID)
    for canary, share in events:
        profile.add(canary, share)
    for value in (rollback_log_e(GRID, profile.loglik), advance_log_e(GRID, profile.loglik)):
        assert exp(min(value, 700)) >= 0.0
        assert value == value  # not NaN


@given(EVENTS, st.integers(min_value=2, max_value=50), st.integers(min_value=1, max_value=49))
def test_events_in_proportion_to_the_share_never_build_rollback_evidence(
    events: list[tuple[bool, float]], k: int, j: int
) -> None:
    """A shared incident: j of every k events from the canary at share j/k. For every theta,
    q**j * (1-q)**(k-j) is largest at q = j/k, so no component can grow."""
    j = min(j, k - 1)
    profile = Profile(GRID)
    for canary, share in events:
        profile.add(canary, share)
    before = rollback_log_e(GRID, profile.loglik)
    for i in range(k):
        profile.add(i < j, j / k)
    assert rollback_log_e(GRID, profile.loglik) <= before + 1e-9


@given(EVENTS, st.floats(min_value=0.01, max_value=0.99))
def test_a_canary_event_raises_and_a_stable_event_lowers_the_rollback_e_value(
    events: list[tuple[bool, float]], share: float
) -> None:
    with_canary, with_stable = Profile(GRID), Profile(GRID)
    for is_canary, s in events:
        with_canary.add(is_canary, s)
        with_stable.add(is_canary, s)
    before = rollback_log_e(GRID, with_canary.loglik)
    with_canary.add(True, share)
    with_stable.add(False, share)
    after_canary = rollback_log_e(GRID, with_canary.loglik)
    assert after_canary > before > rollback_log_e(GRID, with_stable.loglik)


@pytest.mark.parametrize("grid", [GRID, latency_grid()], ids=["errors", "latency"])
def test_ville_under_the_null(grid: RatioGrid) -> None:
    """1,000 null streams of 300 events, checked after every event: the rollback e-value
    reaches 1/alpha in at most an alpha fraction of them."""
    rng, alpha, crossed = random.Random(7), 0.05, 0
    for _ in range(1000):
        profile = Profile(grid)
        share = rng.choice([0.05, 0.25, 0.5])
        for _ in range(300):
            profile.add(rng.random() < share, share)
            if rollback_log_e(grid, profile.loglik) >= log(1 / alpha):
                crossed += 1
                break
    assert crossed <= alpha * 1000


def test_floor_e_value_equals_the_mixture_formula() -> None:
    n, x, floor = 5_000, 1, 0.002
    expected = sum(
        (k * floor / floor) ** x * ((1 - k * floor) / (1 - floor)) ** (n - x) / len(FLOOR_DOWN)
        for k in FLOOR_DOWN
    )
    assert exp(floor_log_e(n, x, floor)) == pytest.approx(expected, rel=1e-9)


def test_the_floor_test_grows_without_any_event() -> None:
    assert floor_log_e(0, 0, 0.001) == pytest.approx(0.0)
    clean = [floor_log_e(n, 0, 0.001) for n in (1_000, 4_000, 8_000)]
    assert clean == sorted(clean)
    assert clean[-1] > log(100)  # 8,000 clean requests: a 0.1% floor shown at alpha 1%
    assert floor_drift(0.0, 0.001) == pytest.approx(log(1 - 0.001 / 16) - log(1 - 0.001))
    assert floor_drift(0.002, 0.001) < 0.0  # above the floor: the test loses ground
    assert floor_log_e(10, 0, 0.0) == -float("inf")  # no floor: no evidence


def test_the_advance_average_weighs_the_floor_a_quarter() -> None:
    assert exp(either_log_e(log(8.0), log(4.0))) == pytest.approx(
        (1 - FLOOR_WEIGHT) * 8.0 + FLOOR_WEIGHT * 4.0
    )


@pytest.mark.parametrize("floor", [0.001, 0.01, 0.2])
def test_ville_for_the_floor_test_at_its_null(floor: float) -> None:
    """500 streams of 20,000 requests at exactly the floor rate, looked at every 100: the
    floor e-value reaches 1/alpha in at most an alpha fraction of them."""
    rng, alpha, crossed = random.Random(3), 0.05, 0
    for _ in range(500):
        n = x = 0
        for _ in range(200):
            x += sum(rng.random() < floor for _ in range(100))
            n += 100
            if floor_log_e(n, x, floor) >= log(1 / alpha):
                crossed += 1
                break
    assert crossed <= alpha * 500


def clopper_pearson_upper(count: RateCount, level: float) -> float:
    """The exact upper bound: the p where P(X <= x | n, p) = level, by bisection."""
    low, high = count.rate, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        tail = sum(
            comb(count.requests, i) * mid**i * (1 - mid) ** (count.requests - i)
            for i in range(count.events + 1)
        )
        low, high = (mid, high) if tail > level else (low, mid)
    return high


@pytest.mark.parametrize(("n", "x"), [(200, 0), (200, 3), (500, 10), (100, 50)])
def test_chernoff_bounds_are_valid_and_not_loose(n: int, x: int) -> None:
    count, level = RateCount(n, x), 0.01
    exact = clopper_pearson_upper(count, level)
    assert exact <= rate_upper(count, level) <= exact * 1.6 + 0.01
    assert rate_lower(count, level) <= count.rate <= rate_upper(count, level)


def test_bounds_without_data() -> None:
    assert rate_upper(RateCount(), 0.01) == 1.0
    assert rate_lower(RateCount(10, 0), 0.01) == 0.0
    assert rate_upper(RateCount(5, 5), 0.01) == 1.0
