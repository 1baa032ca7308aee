"""The `shadow` check of a shadow step: per-route mismatch rates against the tolerance, with
the sequential machinery of the other checks; and the route naming rules it is counted by."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.analysis import AnalysisConfig, StepAnalysis, Verdict
from proxy.core.shadow import MAX_ROUTES, OTHER_ROUTE, bounded_route, route_of

CONFIG = AnalysisConfig(min_requests=100)


def shadow_step(tolerance: float = 0.01) -> StepAnalysis:
    return StepAnalysis(CONFIG, started=0.0, step=0, steps=3, shadow_tolerance=tolerance)


def feed(analysis: StepAnalysis, route: str, n: int, rate: float, rng: random.Random) -> None:
    for i in range(n):
        differing = ("$.items[3].price", "$.total") if rng.random() < rate else ()
        analysis.observe_shadow(route=route, differing=differing, id_hash=i, now=1.0)


def test_nothing_compared_is_inconclusive() -> None:
    verdict = shadow_step().assess(1.0)
    assert verdict.verdict is Verdict.INCONCLUSIVE
    assert verdict.requests_needed == 100


def test_a_route_far_over_the_tolerance_rolls_back_with_its_paths_and_counts() -> None:
    analysis = shadow_step(0.01)
    rng = random.Random(7)
    feed(analysis, "/users/{id}", 2000, 0.0, rng)
    feed(analysis, "/items/{id}", 2000, 0.08, rng)
    verdict = analysis.assess(2.0)
    assert verdict.verdict is Verdict.DEGRADED
    assert verdict.check == "shadow:/items/{id}"
    failing = verdict.checks[0]
    assert failing.check == "shadow:/items/{id}"
    events = failing.canary.events
    assert events > 0
    assert dict(failing.paths) == {"$.items[*].price": events, "$.total": events}
    assert "$.items[*].price" in verdict.summary
    clean = next(c for c in verdict.checks if c.check == "shadow:/users/{id}")
    assert (clean.canary.events, clean.paths, clean.crossed) == (0, (), False)


def test_clean_routes_advance_once_shown_under_the_tolerance() -> None:
    analysis = shadow_step(0.02)
    rng = random.Random(3)
    feed(analysis, "/a", 60, 0.0, rng)
    assert analysis.assess(1.0).verdict is Verdict.INCONCLUSIVE  # min_requests not met
    feed(analysis, "/a", 1000, 0.0, rng)
    feed(analysis, "/b", 1000, 0.0, rng)
    verdict = analysis.assess(2.0)
    assert verdict.verdict is Verdict.HEALTHY
    assert {c.check for c in verdict.checks} == {"shadow:/a", "shadow:/b"}
    assert all(c.non_inferior for c in verdict.checks)


def test_a_route_not_yet_shown_under_the_tolerance_holds_the_step() -> None:
    analysis = shadow_step(0.02)
    rng = random.Random(5)
    feed(analysis, "/a", 2000, 0.0, rng)
    feed(analysis, "/rare", 5, 0.0, rng)
    verdict = analysis.assess(2.0)
    assert verdict.verdict is Verdict.INCONCLUSIVE
    assert "shadow:/rare" in verdict.summary


def test_a_canary_at_half_the_tolerance_is_not_rolled_back() -> None:
    rolled_back = 0
    for seed in range(20):
        analysis = shadow_step(0.01)
        feed(analysis, "/a", 5000, 0.005, random.Random(seed))
        rolled_back += analysis.assess(2.0).verdict is Verdict.DEGRADED
    assert rolled_back == 0


def test_a_normal_step_has_no_shadow_checks() -> None:
    analysis = StepAnalysis(CONFIG, started=0.0, step=0, steps=3)
    analysis.observe_shadow(route="/a", differing=("$.x",), id_hash=1, now=1.0)
    assert all(not c.check.startswith("shadow") for c in analysis.assess(2.0).checks)


def test_route_of_writes_ids_as_placeholders() -> None:
    assert route_of("/users/42/orders/7") == "/users/{id}/orders/{id}"
    assert route_of("/doc/9f1c2a7e-4b0d-4f6e-9a51-0c2d3e4f5a6b") == "/doc/{id}"
    assert route_of("/v2/health") == "/v2/health"
    assert route_of("/users/deadbeefdeadbeef") == "/users/deadbeefdeadbeef"  # no digit: a word


@given(st.sets(st.text(min_size=1, max_size=5), max_size=150), st.text(max_size=5))
def test_routes_per_service_stay_bounded(known: set[str], route: str) -> None:
    kept = frozenset(sorted(known)[:MAX_ROUTES])
    got = bounded_route(kept, route)
    assert got in (route, OTHER_ROUTE)
    assert len(kept | {got}) <= MAX_ROUTES + 1
    if route in kept:
        assert got == route
    elif len(kept) >= MAX_ROUTES:
        assert got == OTHER_ROUTE


def test_a_mismatch_confined_to_one_tier_is_judged_and_shown_for_that_tier() -> None:
    analysis = shadow_step(0.01)
    rng = random.Random(3)
    for i in range(3000):
        tier = "enterprise" if i % 3 == 0 else "free"
        wrong = tier == "enterprise" and rng.random() < 0.15
        analysis.observe_shadow(
            route="/items/{id}", differing=("$.price",) if wrong else (), id_hash=i, now=1.0,
            tier=tier,
        )  # fmt: skip
    verdict = analysis.assess(2.0)
    assert verdict.verdict is Verdict.DEGRADED
    (check,) = verdict.checks
    tiers = {t.tier: t.canary for t in check.tiers}
    assert set(tiers) == {"enterprise", "free"}
    assert tiers["free"].events == 0
    assert tiers["enterprise"].events > 100
