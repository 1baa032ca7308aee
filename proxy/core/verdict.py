"""Verdict: what the analysis of one rollout step says, with the numbers behind it.

Immutable results only (the controller journals them and the admin API shows them): per-arm and
per-tier counts and rates, the e-values against their thresholds, the confidence bounds on the
canary/baseline ratio, and a plain-words summary. No raw ids, no tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from proxy.core.baseline import RateCount
from proxy.core.traffic import Concentration

LATENCY: Final = "latency"


def latency_name(origin: str = "") -> str:
    """The latency check's name in verdicts: `latency`, or `latency [release 1.4.2]` while a
    release holds it to its own tolerance or quantile."""
    return f"{LATENCY} [{origin}]" if origin else LATENCY


def is_latency(check: str) -> bool:
    return check == LATENCY or check.startswith(f"{LATENCY} [")


class Verdict(StrEnum):
    HEALTHY = "healthy"  # every check shows non-inferiority: the step may advance
    DEGRADED = "degraded"  # a check (or the guardrail) crossed its bound: roll back
    INCONCLUSIVE = "inconclusive"  # keep watching; `requests_needed` says for how long


class Source(StrEnum):
    """What a tier's canary is compared with."""

    CONCURRENT = "concurrent"  # the tier's stable traffic in the same window
    PRE_EXPOSURE = "pre_exposure"  # the tier's stable counts from before it was all canary
    NONE = "none"  # neither: the tier adds no evidence


@dataclass(frozen=True, slots=True)
class TierEvidence:
    tier: str
    canary: RateCount
    baseline: RateCount
    share: float  # the canary's share of the tier's requests (recent)
    source: Source


@dataclass(frozen=True, slots=True)
class CheckEvidence:
    """One check: `e_value >= threshold` rolls back; `advance_e_value >= advance_threshold`
    shows non-inferiority. Both are latched for the step (`crossed`, `non_inferior`): an
    e-process that has crossed has rejected, whatever it does later (Ville's inequality bounds
    the probability of ever crossing). `ratio_low`..`ratio_high` bound the canary/baseline
    ratio (0 and inf when unbounded); for latency the ratio compares canary requests slower
    than (1 + max_increase) times the baseline quantile with baseline requests slower than it.
    `advance_e_value` averages the ratio test's e-value with `floor_e_value`, the evidence that
    the canary's own event rate is below the absolute `floor` (0: no floor test).
    """

    check: str
    canary: RateCount
    baseline: RateCount
    tiers: tuple[TierEvidence, ...]
    e_value: float
    threshold: float
    advance_e_value: float
    advance_threshold: float
    ratio_low: float
    ratio_high: float
    tolerance: float
    concentration: Concentration
    capped: int  # events left out of the evidence by the per-id cap
    requests_needed: int  # more canary requests to show non-inferiority; -1: unknown yet
    crossed: bool  # the rollback e-value has reached its threshold during this step
    non_inferior: bool  # the advance e-value has reached its threshold during this step
    floor: float  # the absolute event rate tolerated whatever the baseline's (0: none)
    floor_e_value: float  # evidence that the canary's event rate is below `floor`
    # A shadow check: the field paths the canary alone changed, with their counts, most
    # first (paths only, never values).
    paths: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Assessment:
    """A verdict, the check that decided it, and the evidence of every check."""

    verdict: Verdict
    check: str  # "errors" | "latency" | "guardrail" | "route:/login" | "server_timing:db" | "all"
    summary: str
    statistic: float  # the deciding check's e-value ...
    bound: float  # ... and the threshold it is held to
    checks: tuple[CheckEvidence, ...]
    requests_needed: int  # 0 unless inconclusive; -1: unknown yet (no events to size it)
    at: float  # the monotonic time of the verdict
