"""Traffic: the share estimate, the recent window, the incident watch and the per-id cap."""

from __future__ import annotations

import pytest

from proxy.core.traffic import (
    CALM_MIN,
    ID_CAP,
    ID_WINDOW_S,
    SHARE_MEMORY,
    SHARE_MIN_PER_ARM,
    WHOLE_SHARE,
    IdCap,
    IncidentWatch,
    RecentWindow,
    ShareEstimate,
)


def test_share_is_the_running_mean_then_follows_a_change() -> None:
    share = ShareEstimate()
    for i in range(400):
        share.add(i % 4 == 0)
    assert share.value == pytest.approx(0.25)
    assert share.ready is (SHARE_MIN_PER_ARM <= 100)
    for _ in range(4 * SHARE_MEMORY):
        share.add(True)  # the whole tier moves to the canary
    assert share.value > 0.95


def test_share_is_not_ready_until_both_arms_are_seen() -> None:
    share = ShareEstimate()
    for _ in range(10 * SHARE_MIN_PER_ARM):
        share.add(True)
    assert not share.ready
    assert share.stable == 0


def test_a_few_stable_requests_do_not_make_a_tier_partly_canary() -> None:
    """Stable requests still in flight from the previous step: the tier is wholly on the
    canary, at once when the plan says so, else once the share is measured."""
    for prior in (None, 1.0):
        share = ShareEstimate(prior)
        for _ in range(3):
            share.add(False)
        assert share.whole is (prior is not None)
        for _ in range(1000):
            share.add(True)
        assert share.value >= WHOLE_SHARE
        assert share.whole
        assert not share.ready  # the conditional test could never use this tier


def test_the_plan_says_until_the_share_is_measured() -> None:
    share = ShareEstimate(prior=0.5)
    for _ in range(3):
        share.add(False)
    assert not share.whole  # the plan exposes half of the tier: a control is coming
    wrong = ShareEstimate(prior=1.0)  # pins keep half of the tier on stable
    for i in range(4 * SHARE_MIN_PER_ARM):
        wrong.add(i % 2 == 0)
    assert wrong.ready
    assert not wrong.whole  # measured: the plan is corrected


def test_without_stable_traffic_a_tier_is_wholly_canary() -> None:
    share = ShareEstimate()
    assert share.whole
    share.add(True)
    assert share.whole
    share.add(False)
    assert not share.whole  # no plan, nothing measured yet


def test_recent_window_counts_as_of_a_later_time() -> None:
    window = RecentWindow()
    for i in range(10):
        window.add(True, 0.1 * i)
    assert window.counts(1.5) == (10, 10)
    assert window.counts(3.0) == (0, 0)  # nothing added since, and it still forgets


def test_recent_window_forgets_after_its_length() -> None:
    window = RecentWindow()
    for i in range(100):
        window.add(i % 2 == 0, i * 0.01)  # 1 s of traffic, half events
    assert (window.requests, window.events) == (100, 50)
    window.add(False, 2.6)  # more than 2 s later: only this request is left
    assert (window.requests, window.events) == (1, 0)


def test_incident_watch_flags_a_jump_in_the_baseline_and_clears_after() -> None:
    watch = IncidentWatch()
    now = 0.0
    for i in range(max(CALM_MIN, 4000)):
        watch.add(i % 200 == 0, now)  # 0.5% errors
        now += 0.001
    assert not watch.active
    for i in range(1500):
        watch.add(i % 5 == 0, now)  # 20% errors
        now += 0.001
    assert watch.active
    calm = watch.calm_requests
    for i in range(3000):
        watch.add(i % 200 == 0, now)
        now += 0.001
    assert not watch.active
    assert watch.calm_requests > calm  # calm slots count again


def test_a_lasting_change_becomes_the_new_normal() -> None:
    watch = IncidentWatch()
    now, flagged = 0.0, False
    for i in range(400_000):
        watch.add(i % 10 == 0 if now > 5 else i % 200 == 0, now)
        flagged = flagged or watch.active
        now += 0.001
    assert flagged
    assert not watch.active


def test_id_cap_counts_at_most_the_cap_per_window() -> None:
    cap = IdCap(0.0)
    admitted = [cap.admit(7, True, 1.0) for _ in range(ID_CAP + 5)]
    assert admitted == [True] * ID_CAP + [False] * 5
    assert cap.capped == 5
    assert cap.admit(8, True, 1.0)  # another id is not affected
    assert cap.admit(7, True, ID_WINDOW_S + 0.5)  # a new window
    conc = cap.concentration()
    assert conc.events == ID_CAP + 5 + 1 + 1
    assert conc.top_share == pytest.approx((ID_CAP + 5 + 1) / conc.events)


def test_id_cap_says_when_an_id_is_over_without_counting() -> None:
    cap = IdCap(0.0)
    for _ in range(ID_CAP):
        assert not cap.over(3, True, 1.0)
        cap.admit(3, True, 1.0)
    assert cap.over(3, True, 1.0)
    assert not cap.over(3, False, 1.0)  # the other arm of the same id is counted apart
    assert not cap.over(3, True, ID_WINDOW_S + 0.5)  # a new window
    assert cap.capped == 0


def test_concentration_ignores_the_baseline() -> None:
    cap = IdCap(0.0)
    for _ in range(5):
        cap.admit(3, False, 0.0)
    assert cap.concentration().events == 0
    assert cap.concentration().top_share == 0.0
