"""Summary: builds each kind of Assessment and says its evidence in plain words.

"errors: canary 1.9% errors vs 0.5% baseline over 4,812 canary requests; ratio >= 1.7x
(e-value 2,390 >= 750)". Numbers only, never an id. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import inf

from proxy.core.checks import capped_exp
from proxy.core.guardrail import Trip
from proxy.core.verdict import Assessment, CheckEvidence, Verdict, is_latency

CONCENTRATED = 0.5  # the busiest id's share of recent canary events worth saying
CONCENTRATED_MIN_EVENTS = 10


def _pct(rate: float) -> str:
    return f"{rate * 100:.2g}%"


def _ratio(value: float) -> str:
    return "unbounded" if value == inf else f"{value:.3g}x"


def describe(check: CheckEvidence) -> str:
    """What the two arms did, in one clause."""
    c, b = check.canary, check.baseline
    if check.check.startswith("shadow:"):
        differing = ", ".join(f"{path} ({count:,})" for path, count in check.paths[:3])
        return (
            f"{check.check}: {_pct(c.rate)} of {c.requests:,} compared canary answers differ "
            f"from stable's (tolerated {_pct(check.floor)})"
            + (f"; differing: {differing}" if differing else "")
        )
    if check.check.startswith("prometheus:"):
        return (
            f"{check.check}: canary {_pct(c.rate)} bad vs {_pct(b.rate)} stable, over "
            f"{c.requests:,} canary and {b.requests:,} stable counts since the step began"
        )
    if is_latency(check.check):
        return (
            f"{check.check}: {_pct(c.rate)} of canary requests slower than the tolerated quantile "
            f"vs {_pct(b.rate)} of baseline requests slower than the quantile, over "
            f"{c.requests:,} canary requests"
        )
    if check.check.startswith("server_timing:"):
        return _server_timing(check)
    return (
        f"{check.check}: canary {_pct(c.rate)} errors vs {_pct(b.rate)} baseline "
        f"over {c.requests:,} canary requests"
    )


def _server_timing(check: CheckEvidence) -> str:
    """A Server-Timing check: a rate (its name has `;desc=` or `;present`) or a `dur`."""
    c, b = check.canary, check.baseline
    if ";" in check.check:
        return (
            f"{check.check}: in {_pct(c.rate)} of canary responses vs {_pct(b.rate)} of "
            f"baseline's, over {c.requests:,} canary requests"
        )
    return (
        f"{check.check}: {_pct(c.rate)} of canary durations over the tolerated quantile vs "
        f"{_pct(b.rate)} of baseline durations over the quantile, over {c.requests:,} canary "
        "requests with the metric"
    )


def concentration(check: CheckEvidence) -> str:
    """A note when one id holds most of the canary's recent events, else ''."""
    conc = check.concentration
    if conc.events < CONCENTRATED_MIN_EVENTS or conc.top_share < CONCENTRATED:
        return ""
    return f"; {conc.top_share:.0%} of {conc.events:,} recent canary events came from one id"


def degraded(check: CheckEvidence, checks: tuple[CheckEvidence, ...], now: float) -> Assessment:
    summary = (
        f"{describe(check)}; ratio >= {_ratio(check.ratio_low)} "
        f"(e-value {check.e_value:,.0f} >= {check.threshold:,.0f}){concentration(check)}"
    )
    return Assessment(
        Verdict.DEGRADED, check.check, summary, check.e_value, check.threshold, checks, 0, now
    )


def guardrail(trip: Trip, checks: tuple[CheckEvidence, ...], now: float) -> Assessment:
    c = trip.canary
    summary = (
        f"guardrail: {c.events:,} of {c.requests:,} recent canary requests failed "
        f"({_pct(c.rate)}; baseline {_pct(trip.control.rate)} over {trip.control.requests:,} "
        f"requests, at most {_pct(trip.bound)}); "
        f"evidence {trip.statistic:.1f} >= {trip.needed:.1f} nats"
    )
    return Assessment(
        Verdict.DEGRADED,
        "guardrail",
        summary,
        capped_exp(trip.statistic),
        capped_exp(trip.needed),
        checks,
        0,
        now,
    )


def _bound(check: CheckEvidence) -> str:
    ratio = (
        f"{check.check} ratio <= {_ratio(check.ratio_high)} (tolerated {_ratio(check.tolerance)})"
    )
    if check.non_inferior and check.ratio_high > check.tolerance and check.floor > 0.0:
        return f"{check.check} rate below the {_pct(check.floor)} floor ({ratio})"
    return ratio


def _weakest(checks: Sequence[CheckEvidence]) -> CheckEvidence:
    return min(checks, key=lambda c: c.advance_e_value / c.advance_threshold)


def healthy(checks: tuple[CheckEvidence, ...], now: float) -> Assessment:
    weakest = _weakest(checks)
    summary = "within tolerance: " + "; ".join(_bound(c) for c in checks[:10])
    if len(checks) > 10:
        summary += f"; and {len(checks) - 10} more"
    return Assessment(
        Verdict.HEALTHY,
        "all",
        summary,
        weakest.advance_e_value,
        weakest.advance_threshold,
        checks,
        0,
        now,
    )


def _needed(pending: Sequence[CheckEvidence], shortfall: int) -> int:
    needs = [c.requests_needed for c in pending]
    if -1 in needs:
        return -1
    return max([shortfall, *needs])


def inconclusive(
    checks: tuple[CheckEvidence, ...], shortfall: int, now: float, *, incident: bool = False
) -> Assessment:
    pending = [c for c in checks if not c.non_inferior]
    needed = _needed(pending, shortfall)
    parts = [f"{_bound(c)}, not yet below it" for c in pending]
    if incident:
        parts.insert(0, "holding: the baseline itself is failing (a shared incident)")
    if shortfall:
        parts.append(f"min_requests not met: {shortfall:,} more on the smaller arm")
    if needed:
        parts.append(
            "no events yet to size it" if needed < 0 else f"about {needed:,} more canary requests"
        )
    summary = "waiting for evidence: " + "; ".join(parts)
    weakest = _weakest(checks)
    return Assessment(
        Verdict.INCONCLUSIVE,
        weakest.check,
        summary,
        weakest.advance_e_value,
        weakest.advance_threshold,
        checks,
        needed,
        now,
    )
