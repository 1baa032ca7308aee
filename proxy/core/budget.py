"""Budget: how the rollout's false-rollback rate is split, and the ratio grid of each check.

The split (theory in analysis.py): step i of n spends 1/2, 1/4, ... of the rollout's rate, the
last step what is left; within a step 1% goes to the guardrail and the rest to the checks, each
by its weight (errors 3, latency 1, each route, each Server-Timing check and each prometheus
check 1); within a check, 10% goes to the pre-exposure baselines' bounds when there are any.
Advancing is held to the rollout's rate per step and check (intersection-union test), with the
same 10% for the baselines' lower bounds. Pure arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import sqrt

from proxy.core.evidence import RatioGrid

ERRORS_WEIGHT = 3  # latency and each route weigh 1
GUARDRAIL_SHARE = 0.01  # of each step's rollback rate, for the guardrail (see analysis.py)
BASELINE_SHARE = 0.1  # of each check's rate, for the pre-exposure baselines' bounds
SQRT2 = sqrt(2.0)
ERRORS_DOWN = ((1.0, 1 / SQRT2, 0.5), (0.6, 0.25, 0.15))  # points, prior weights
LATENCY_DOWN = ((1 / SQRT2, 0.5, 0.25), (0.4, 0.3, 0.3))
DURATION_UP_START = 1.1  # Server-Timing durations: rollback alternatives from here up


@dataclass(frozen=True, slots=True)
class Levels:
    """Error rates a check is held to: its e-processes, and each pre-exposure baseline bound."""

    rollback: float
    advance: float
    baseline_rollback: float
    baseline_advance: float


def step_share(step: int, steps: int) -> float:
    """The fraction of the rollout's rate that step `step` (0-based) of `steps` may spend:
    1/2, 1/4, ... halving per step, the last step taking what is left (they sum to 1)."""
    if not 0 <= step < steps:
        raise ValueError(f"step {step} outside 0..{steps - 1}")
    return float(0.5 ** min(step + 1, steps - 1))


def guardrail_level(rate: float, share: float) -> float:
    """The guardrail's rate in a step that may spend `share` of the rollout's `rate`."""
    return rate * share * GUARDRAIL_SHARE


def checks_share(share: float, weight: int, total: int) -> float:
    """A check's share of the rollout's rate: its weight's part of what the guardrail leaves."""
    return share * (1.0 - GUARDRAIL_SHARE) * weight / total


def check_levels(rate: float, share: float, baselines: int) -> Levels:
    """The levels of a check that may spend `share` of `rate` on rolling back, in a step with
    `baselines` pre-exposure baselines."""
    rollback = rate * share
    kept = 1.0 - BASELINE_SHARE if baselines else 1.0
    per_tier = BASELINE_SHARE / max(baselines, 1)
    return Levels(
        rollback=rollback * kept,
        advance=rate * kept,
        baseline_rollback=rollback * per_tier,
        baseline_advance=rate * per_tier,
    )


def error_grid(max_increase: float) -> RatioGrid:
    """Errors and routes: rollback alternatives from the tolerance up, advance null at it."""
    down, weights = ERRORS_DOWN
    tolerance = 1.0 + max_increase
    return RatioGrid.build(tolerance=tolerance, up_start=tolerance, down=down, down_weights=weights)


def latency_grid() -> RatioGrid:
    """Latency: the tolerance is in the threshold, so both nulls sit at 1."""
    down, weights = LATENCY_DOWN
    return RatioGrid.build(tolerance=1.0, up_start=SQRT2, down=down, down_weights=weights)


def duration_grid() -> RatioGrid:
    """Server-Timing durations: as latency, but rollback alternatives from 1.1 up. A check on a
    central quantile has frequent events and ratios bounded by 1 / (1 - q) (2 at the median):
    a regression just past the tolerance is a ratio near 1.1, which alternatives from sqrt(2)
    would never reject."""
    down, weights = LATENCY_DOWN
    return RatioGrid.build(
        tolerance=1.0, up_start=DURATION_UP_START, down=down, down_weights=weights
    )
