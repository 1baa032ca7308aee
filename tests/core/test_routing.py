"""Routing: thresholds, pins, stickiness, monotone growth, exact matching (property tests)."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import RolloutConfig, Step
from proxy.core.bucketing import bucket_of
from proxy.core.routing import Decision, Reason, Subject, Variant, decide

TIERS = ["internal", "free", "paid"]
TENANTS = ["acme", "globex", "beta-corp", "bigbank"]


def rollout(*steps: Step, pins: dict[str, Variant] | None = None, salt: str = "s") -> RolloutConfig:
    return RolloutConfig("canary", salt, MappingProxyType(pins or {}), steps)


EXAMPLE = rollout(
    Step(tiers=frozenset({"internal"}), observe_s=120),
    Step(tenants=frozenset({"acme", "globex"})),
    Step(percent=1),
    Step(percent=10, tiers=frozenset({"free"})),
    Step(percent=25),
    Step(percent=100),
    pins={"beta-corp": Variant.CANARY, "bigbank": Variant.STABLE},
    salt="checkout-2026-11",
)


def test_thresholds_are_unions_of_steps() -> None:
    plan = EXAMPLE.plan(3)
    assert plan.everyone == 100
    assert plan.by_tier == {"internal": 10_000, "free": 1_000}
    assert plan.by_tenant == {"acme": 10_000, "globex": 10_000}
    assert plan.canary_percent() == 1.0
    last = EXAMPLE.plan(5)
    assert (last.everyone, last.by_tier, last.by_tenant) == (10_000, {}, {})
    assert last.canary_percent() == 100.0


def test_nothing_exposed_before_the_first_step() -> None:
    plan = EXAMPLE.plan(-1)
    decision = decide(plan, Subject("qa", "qa", "internal"))
    assert decision == Decision(Variant.STABLE, Reason.NOT_EXPOSED, bucket_of(plan.salt, "qa"))


@pytest.mark.parametrize("index", [-2, 6])
def test_step_index_out_of_range(index: int) -> None:
    with pytest.raises(ValueError, match="step_index"):
        EXAMPLE.plan(index)


def test_ring_zero_exposes_exactly_the_internal_tier() -> None:
    plan = EXAMPLE.plan(0)
    assert decide(plan, Subject("u1", None, "internal")).variant is Variant.CANARY
    assert decide(plan, Subject("u1", None, "Internal")).variant is Variant.STABLE
    assert decide(plan, Subject("u1", None, "free")).variant is Variant.STABLE


def test_tenant_match_is_exact() -> None:
    plan = EXAMPLE.plan(1)
    assert decide(plan, Subject("acme", "acme", "free")).reason is Reason.EXPOSED
    for other in ("ACME", "acme ", "acme-eu"):
        assert decide(plan, Subject(other, other, "free")).variant is Variant.STABLE


def test_pins_win_and_inactive_sends_everything_to_stable() -> None:
    plan = EXAMPLE.plan(5)
    assert decide(plan, Subject("bigbank", "bigbank", "free")) == Decision(
        Variant.STABLE, Reason.PIN, -1
    )
    early = EXAMPLE.plan(-1)
    assert decide(early, Subject(None, "beta-corp", "free")).variant is Variant.CANARY
    off = EXAMPLE.plan(5, active=False)
    for subject in (Subject("beta-corp", "beta-corp", "free"), Subject("x", None, "internal")):
        assert decide(off, subject) == Decision(Variant.STABLE, Reason.INACTIVE, -1)


def test_unidentified_goes_to_stable() -> None:
    plan = EXAMPLE.plan(5)
    assert decide(plan, Subject(None, None, "internal")) == Decision(
        Variant.STABLE, Reason.UNIDENTIFIED, -1
    )


def test_split_ratio_within_binomial_tolerance() -> None:
    plan = rollout(Step(percent=10)).plan(0)
    n = 10_000
    exposed = sum(
        decide(plan, Subject(f"u{i}", None, "free")).variant == "canary" for i in range(n)
    )
    assert abs(exposed - n * 0.1) < 4 * (n * 0.1 * 0.9) ** 0.5


def test_percent_resolution_is_one_hundredth() -> None:
    plan = rollout(Step(percent=0.01)).plan(0)
    assert plan.everyone == 1
    for i in range(5_000):
        decision = decide(plan, Subject(f"u{i}", None, "t"))
        assert (decision.variant is Variant.CANARY) == (decision.bucket == 0)


ids = st.text(min_size=1, max_size=20).map(lambda s: s.encode("utf-8", "replace").decode())
percents = st.integers(0, 10_000).map(lambda b: b / 100)
steps = st.builds(
    Step,
    percent=percents,
    tiers=st.frozensets(st.sampled_from(TIERS), max_size=2),
    tenants=st.frozensets(st.sampled_from(TENANTS), max_size=2),
)
subjects = st.builds(
    Subject,
    key=ids,
    tenant=st.none() | st.sampled_from(TENANTS),
    tier=st.sampled_from(TIERS),
)


def in_cohort(step: Step, subject: Subject) -> bool:
    if not step.tiers and not step.tenants:
        return True
    return subject.tier in step.tiers or subject.tenant in step.tenants


@given(st.lists(steps, min_size=1, max_size=6), subjects, st.text(max_size=10))
def test_exposed_iff_some_earlier_step_exposes(
    step_list: list[Step], subject: Subject, salt: str
) -> None:
    config = rollout(*step_list, salt=salt.encode("utf-8", "replace").decode())
    assert subject.key is not None
    bucket = bucket_of(config.salt, subject.key)
    previous = False
    for i in range(len(step_list)):
        decision = decide(config.plan(i), subject)
        expected = any(
            in_cohort(s, subject) and bucket < round(s.percent * 100) for s in step_list[: i + 1]
        )
        assert (decision.variant is Variant.CANARY) == expected
        assert decision.bucket == bucket
        assert previous <= expected  # once exposed, exposed at every later step
        previous = expected


@given(ids, percents, percents)
def test_raising_percent_only_moves_stable_to_canary(ident: str, p1: float, p2: float) -> None:
    low, high = sorted((p1, p2))
    subject = Subject(ident, None, "free")
    at_low = decide(rollout(Step(percent=low)).plan(0), subject)
    at_high = decide(rollout(Step(percent=high)).plan(0), subject)
    if at_low.variant is Variant.CANARY:
        assert at_high.variant is Variant.CANARY


@given(st.lists(steps, min_size=1, max_size=4), subjects, st.sampled_from(list(Variant)))
def test_pins_win_over_everything(step_list: list[Step], subject: Subject, pin: Variant) -> None:
    pinned = Subject(subject.key, "bigbank", subject.tier)
    config = rollout(*step_list, pins={"bigbank": pin})
    for i in range(-1, len(step_list)):
        assert decide(config.plan(i), pinned) == Decision(pin, Reason.PIN, -1)


@given(subjects, st.integers(0, 3))
def test_same_subject_same_decision(subject: Subject, index: int) -> None:
    config = rollout(Step(percent=5), Step(percent=30), Step(percent=60), Step(percent=90))
    first = decide(config.plan(index), subject)
    assert decide(config.plan(index), subject) == first
