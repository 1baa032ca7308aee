"""Guardrail: when it trips, what it compares with, and its false-alarm rate at its null."""

from __future__ import annotations

import itertools
import random
from math import log

import pytest

from proxy.core.baseline import RateCount, kl, rate_upper
from proxy.core.guardrail import ID_CAP, TAIL_SPLIT, Guardrail

IDS = itertools.count()  # every request from an id of its own, unless a test says otherwise


def stream(
    guard: Guardrail,
    rng: random.Random,
    *,
    share: float,
    stable: float,
    canary: float,
    seconds: float,
    tier: str = "t",
) -> float | None:
    """1,000 requests/s; the time of the trip, or None."""
    for i in range(int(seconds * 1000)):
        now = i / 1000
        on_canary = rng.random() < share
        error = rng.random() < (canary if on_canary else stable)
        guard.add(tier, on_canary, error, now, next(IDS))
        if on_canary and error and guard.look(now, incident=False) is not None:
            return now
    return None


def test_the_trip_carries_the_numbers_of_its_test() -> None:
    guard = Guardrail(0.5, 10, 0.001, {})
    for i in range(990):
        guard.add("t", False, i % 200 == 0, i / 1000, next(IDS))  # 5 stable errors of 990
    for i in range(10):
        guard.add("t", True, True, 0.99 + i / 1000, next(IDS))
    trip = guard.look(1.0, incident=False)
    assert trip is not None
    assert trip.canary == RateCount(10, 10)
    assert trip.control == RateCount(990, 5)
    level = 0.001 / (10 * 11)
    assert trip.bound == pytest.approx(rate_upper(RateCount(990, 5), level * (1 - TAIL_SPLIT)))
    assert trip.statistic == pytest.approx(10 * kl(1.0, trip.bound))
    assert trip.needed == pytest.approx(log(1 / (level * TAIL_SPLIT)))


def test_fewer_than_min_requests_or_under_the_rate_never_trip() -> None:
    guard = Guardrail(0.5, 10, 0.001, {})
    for i in range(1000):
        guard.add("t", False, False, i / 1000, next(IDS))
    for _ in range(9):
        guard.add("t", True, True, 1.0, next(IDS))
    assert guard.look(1.0, incident=False) is None  # 9 < min_requests
    for _ in range(12):
        guard.add("t", True, False, 1.0, next(IDS))
    guard.add("t", True, True, 1.0, next(IDS))
    assert guard.look(1.0, incident=False) is None  # 10 of 22 < 50%


def test_a_stable_arm_failing_at_the_guardrail_rate_carries_no_weight() -> None:
    guard = Guardrail(0.5, 10, 0.001, {})
    for i in range(2000):
        guard.add("t", False, i % 3 != 0, i / 2000, next(IDS))  # stable fails 2 in 3
    for _ in range(200):
        guard.add("t", True, True, 1.0, next(IDS))
    assert guard.look(1.0, incident=False) is None


def test_a_pre_exposure_rate_stands_in_only_outside_incidents() -> None:
    reference = (RateCount(10_000, 50), 0.01)
    guard = Guardrail(0.5, 10, 0.001, {"t": reference})
    for _ in range(10):
        guard.add("t", True, True, 0.5, next(IDS))
    assert guard.look(0.5, incident=True) is None  # other tiers' stable arm is failing
    trip = guard.look(0.5, incident=False)
    assert trip is not None
    assert trip.control == RateCount(10_000, 50)
    assert trip.bound == 0.01


def test_a_tier_without_a_control_is_left_out_of_the_pool() -> None:
    guard = Guardrail(0.5, 10, 0.001, {})
    for i in range(1000):
        guard.add("calm", False, False, i / 1000, next(IDS))
    for _ in range(10):
        guard.add("calm", True, False, 1.0, next(IDS))
        guard.add("unknown", True, True, 1.0, next(IDS))  # no stable traffic, no baseline
    assert guard.look(1.0, incident=False) is None  # the calm tier's canary is healthy


def test_the_window_forgets_old_failures() -> None:
    guard = Guardrail(0.5, 10, 0.001, {})
    for i in range(1000):
        guard.add("t", False, False, i / 1000, next(IDS))
    for _ in range(9):
        guard.add("t", True, True, 0.5, next(IDS))
    for i in range(1000):
        guard.add("t", False, False, 3.0 + i / 1000, next(IDS))
    guard.add("t", True, True, 4.0, next(IDS))
    assert guard.look(4.0, incident=False) is None  # the 9 earlier failures are 3.5 s old


@pytest.mark.parametrize("share", [0.01, 0.05])
def test_a_dead_canary_trips_on_its_tenth_request(share: float) -> None:
    rng = random.Random(1)
    tripped = stream(
        Guardrail(0.5, 10, 5e-4, {}), rng, share=share, stable=0.005, canary=1.0, seconds=3
    )
    assert tripped is not None
    assert tripped < 12 / (1000 * share)


@pytest.mark.parametrize(("share", "rate"), [(0.005, 0.4), (0.02, 0.3), (0.2, 0.45)])
def test_false_alarms_at_the_null_stay_under_the_level(share: float, rate: float) -> None:
    """Canary and stable fail alike, at rates where "half of the last 10 canary requests
    failed" is common: even at a level of 0.1 per step, trips stay under it."""
    rng, level, runs = random.Random(5), 0.1, 100
    trips = sum(
        stream(
            Guardrail(0.5, 10, level, {}), rng, share=share, stable=rate, canary=rate, seconds=20
        )
        is not None
        for _ in range(runs)
    )
    assert trips <= level * runs


# -- no single id trips it (rollback abuse, RELIABILITY 3.3) ------------------------------


def _calm_stable(guard: Guardrail) -> None:
    for i in range(1000):
        guard.add("t", False, i % 200 == 0, i / 1000, next(IDS))  # 0.5% errors


def test_one_id_failing_on_purpose_never_trips_it() -> None:
    """One id sends 4 canary requests for every honest one, all failing: it adds ID_CAP
    failures per window against everyone else's successes."""
    guard = Guardrail(0.5, 10, 0.001, {})
    _calm_stable(guard)
    for i in range(2000):
        now = 1.0 + i / 1000
        if i % 5 == 0:
            guard.add("t", True, False, now, next(IDS))
        else:
            guard.add("t", True, True, now, 424242)
            assert guard.look(now, incident=False) is None


def test_failures_from_fewer_than_three_ids_never_trip_it() -> None:
    guard = Guardrail(0.5, 10, 0.001, {})
    _calm_stable(guard)
    for i in range(2 * ID_CAP):
        guard.add("t", True, True, 1.0 + i / 1000, i % 2)  # ids 0 and 1, all failing
    assert guard.look(1.01, incident=False) is None
    guard.add("t", True, True, 1.02, 7)  # a third id
    assert guard.look(1.02, incident=False) is not None


def test_a_dead_canary_behind_a_few_busy_ids_still_trips_it_at_once() -> None:
    """Three tenants exposed, each sending 100 requests/s, every one failing: their first
    ID_CAP requests each are enough."""
    guard = Guardrail(0.5, 10, 0.001, {})
    _calm_stable(guard)
    tripped = None
    for i in range(300):
        now = 1.0 + i / 300
        guard.add("t", True, True, now, i % 3)
        if guard.look(now, incident=False) is not None:
            tripped = i + 1
            break
    assert tripped is not None
    assert tripped <= 3 * ID_CAP
