"""Routing: (routing plan, subject) -> Decision(variant, reason, bucket).

Rules, in order:
1. A plan that is not active sends everything to stable (reason `inactive`).
2. Pins win over everything else: a pinned tenant goes where its pin says (reason `pin`).
3. A subject without a key (no identity, `unidentified: stable`) goes to stable.
4. Otherwise the key is hashed into a bucket (see bucketing.py) and the subject is exposed to
   the canary iff `bucket < max(everyone, by_tier[tier], by_tenant[tenant])`.

The thresholds are precomputed by `RoutingPlan.build` from steps 0..step_index: each threshold is
the maximum over those steps, so the canary set of step i is the union of what steps 0..i expose
and a user exposed at one step stays exposed at every later step. Tier and tenant matches are
exact string matches. `decide` is on the hot path: a few dict lookups, one hash, one Decision.

A plan is an immutable snapshot; the controller builds a new one and swaps it, never mutates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NamedTuple

from proxy.core.bucketing import BUCKETS, bucket_for, salt_key


class Variant(StrEnum):
    """Which upstream pool serves a request."""

    STABLE = "stable"
    CANARY = "canary"


class Reason(StrEnum):
    """Why a request got its variant."""

    PIN = "pin"
    EXPOSED = "exposed"
    NOT_EXPOSED = "not_exposed"
    UNIDENTIFIED = "unidentified"
    INACTIVE = "inactive"


# Subject and Decision are made once per request: immutable named tuples cost half as much
# to build as frozen dataclasses.
class Subject(NamedTuple):
    """What routing needs to know about a request."""

    key: str | None  # what is hashed: the identity, or the client address; None = no key
    tenant: str | None
    tier: str


@dataclass(frozen=True, slots=True)
class Step:
    """One rollout step: who it exposes to the canary (`rollout.steps[i]` in the config)."""

    percent: float = 100.0  # 0..100, resolution 0.01
    tiers: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()
    observe_s: float | None = None
    shadow: float = 0.0  # a shadow step: percent of stable's requests mirrored (exposes nobody)


class Decision(NamedTuple):
    """The routing outcome; `bucket` is -1 when nothing was hashed."""

    variant: Variant
    reason: Reason
    bucket: int


# Decisions that carry no bucket are shared constants (nothing to allocate on those paths).
_INACTIVE: Final = Decision(Variant.STABLE, Reason.INACTIVE, -1)
_UNIDENTIFIED: Final = Decision(Variant.STABLE, Reason.UNIDENTIFIED, -1)
_PINNED: Final = {variant: Decision(variant, Reason.PIN, -1) for variant in Variant}


def _threshold(step: Step) -> int:
    return round(step.percent * BUCKETS / 100)


@dataclass(frozen=True, slots=True)
class RoutingPlan:
    """Immutable routing snapshot of one service at one rollout step."""

    salt: str
    step_index: int  # -1: nothing exposed; else steps[0..step_index] are exposed
    active: bool
    pins: Mapping[str, Variant]
    everyone: int  # threshold in buckets (0..BUCKETS) that applies to every subject
    by_tier: Mapping[str, int]
    by_tenant: Mapping[str, int]
    shadow: float = 0.0  # the step's shadow sample: percent of stable's requests mirrored
    salt_prefix: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "salt_prefix", salt_key(self.salt))

    @classmethod
    def build(
        cls,
        salt: str,
        pins: Mapping[str, Variant],
        steps: Sequence[Step],
        step_index: int,
        active: bool = True,
    ) -> RoutingPlan:
        """The plan exposing the union of `steps[0..step_index]`."""
        if not -1 <= step_index < len(steps):
            raise ValueError(f"step_index {step_index} outside -1..{len(steps) - 1}")
        everyone = 0
        by_tier: dict[str, int] = {}
        by_tenant: dict[str, int] = {}
        for step in steps[: step_index + 1]:
            threshold = _threshold(step)
            if not step.tiers and not step.tenants:
                everyone = max(everyone, threshold)
            for tier in step.tiers:
                by_tier[tier] = max(by_tier.get(tier, 0), threshold)
            for tenant in step.tenants:
                by_tenant[tenant] = max(by_tenant.get(tenant, 0), threshold)
        return cls(
            salt=salt,
            step_index=step_index,
            active=active,
            pins=dict(pins),
            everyone=everyone,
            by_tier={t: v for t, v in by_tier.items() if v > everyone},
            by_tenant={t: v for t, v in by_tenant.items() if v > everyone},
            shadow=steps[step_index].shadow if active and step_index >= 0 else 0.0,
        )

    def canary_percent(self) -> float:
        """Percent of everyone exposed to the canary (tier/tenant cohorts not counted)."""
        return self.everyone * 100 / BUCKETS


def decide(plan: RoutingPlan, subject: Subject) -> Decision:
    """Route one subject under `plan` (see the module docstring for the rules)."""
    if not plan.active:
        return _INACTIVE
    tenant = subject.tenant
    if tenant is not None:
        pinned = plan.pins.get(tenant)
        if pinned is not None:
            return _PINNED[pinned]
    key = subject.key
    if key is None:
        return _UNIDENTIFIED
    threshold = plan.everyone
    cohort = plan.by_tier.get(subject.tier, 0)
    if cohort > threshold:
        threshold = cohort
    if tenant is not None:
        cohort = plan.by_tenant.get(tenant, 0)
        if cohort > threshold:
            threshold = cohort
    bucket = bucket_for(plan.salt_prefix, key)
    if bucket < threshold:
        return Decision(Variant.CANARY, Reason.EXPOSED, bucket)
    return Decision(Variant.STABLE, Reason.NOT_EXPOSED, bucket)
