"""Checks: the running evidence of one check (errors, latency, or a route) within a step.

A `RatioCheck` is fed every request of its population, already classified as an event or not,
with the tier's canary share as it stood before the request. It keeps per-tier tallies, feeds
events of tiers with both arms into its likelihood profiles (conditional test), tallies canary
requests of tiers wholly on the canary against their pre-exposure reference (one-sample test),
counts the canary's own requests and events for the absolute-floor test, and caps each id's
events. `evidence()` reads the verdict-ready numbers. Pure; the thresholds it is held to come in
as `Levels`.

The per-id cap only ever removes evidence from the side it would help: rollback evidence loses
the canary events of an id over its cap (and, against a pre-exposure reference, every request of
that id until its window turns, so the rate stays unbiased), advance evidence loses the stable
events of such an id. Either way the cap can delay a verdict, never make one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import ceil, exp, inf, log

from proxy.core.baseline import RateCount, rate_lower, rate_upper
from proxy.core.budget import Levels
from proxy.core.evidence import (
    FLOOR_WEIGHT,
    Profile,
    RatioGrid,
    advance_log_e,
    either_log_e,
    floor_drift,
    floor_log_e,
    lower_bound,
    rollback_log_e,
    upper_bound,
)
from proxy.core.traffic import IdCap, ShareEstimate
from proxy.core.verdict import CheckEvidence, Source, TierEvidence


@dataclass(frozen=True, slots=True)
class Reference:
    """A tier's pre-exposure rate as bounds: `high` guards rollback, `low` guards advancing."""

    counts: RateCount
    high: float
    low: float

    @classmethod
    def of(cls, counts: RateCount, levels: Levels) -> Reference:
        high = rate_upper(counts, levels.baseline_rollback)
        return cls(counts, high, rate_lower(counts, levels.baseline_advance))


class _Tally:
    __slots__ = (
        "a_ev",
        "a_req",
        "alone",
        "c_ev",
        "c_req",
        "calm_ev",
        "calm_req",
        "s_ev",
        "s_req",
        "share",
        "w_ev",
        "w_req",
    )

    def __init__(self, share: ShareEstimate) -> None:
        self.c_req = self.c_ev = self.s_req = self.s_ev = 0
        self.calm_req = self.calm_ev = 0  # stable requests / events outside incidents
        self.w_req = self.w_ev = 0  # against the pre-exposure rate, for rolling back (capped)
        self.a_req = self.a_ev = 0  # against the pre-exposure rate, for advancing (calm)
        self.alone = False  # the last request was judged against the pre-exposure rate
        self.share = share


class RatioCheck:
    """Evidence for one check over one step."""

    __slots__ = (
        "_cap",
        "_crossed",
        "_floor_ev",
        "_floor_req",
        "_shown",
        "_tallies",
        "calm",
        "floor",
        "grid",
        "levels",
        "name",
        "profile",
        "refs",
    )

    def __init__(
        self,
        name: str,
        grid: RatioGrid,
        levels: Levels,
        refs: Mapping[str, RateCount],
        now: float,
        floor: float = 0.0,
    ) -> None:
        """`floor`: the absolute rate under which the canary is within tolerance whatever the
        baseline's (0: no floor test)."""
        self.name = name
        self.floor = floor
        self._floor_req = self._floor_ev = 0  # canary requests / events outside incidents
        self.grid = grid
        self.levels = levels
        self.refs = {tier: Reference.of(c, levels) for tier, c in refs.items() if c.requests}
        self.profile = Profile(grid)  # every event: the rollback test
        self.calm = Profile(grid)  # events outside baseline incidents: the advance test
        self._tallies: dict[str, _Tally] = {}
        self._cap = IdCap(now)
        self._crossed = self._shown = False  # latched: rolled back / shown non-inferior

    def record(
        self,
        tier: str,
        canary: bool,
        event: bool,
        share: ShareEstimate,
        id_hash: int,
        now: float,
        calm: bool = True,
    ) -> None:
        """One request of the population; `share` is the tier's, before this request; `calm`:
        the baseline is not in an incident."""
        tally = self._tallies.get(tier)
        if tally is None:
            tally = self._tallies[tier] = _Tally(share)
        tally.alone = tier in self.refs and share.whole
        if canary:
            self._record_canary(tally, event, id_hash, now, calm)
            return
        tally.s_req += 1
        tally.s_ev += event
        if calm:
            tally.calm_req += 1
            tally.calm_ev += event
        if event and share.ready and not tally.alone:
            admitted = self._cap.admit(id_hash, False, now)
            self.profile.add(False, share.value)
            if calm and admitted:
                self.calm.add(False, share.value)

    def _record_canary(
        self, tally: _Tally, event: bool, id_hash: int, now: float, calm: bool
    ) -> None:
        tally.c_req += 1
        tally.c_ev += event
        if calm:
            self._floor_req += 1
            self._floor_ev += event
        share = tally.share
        if tally.alone:
            self._record_alone(tally, event, id_hash, now, calm)
        elif event and share.ready:
            if self._cap.admit(id_hash, True, now):
                self.profile.add(True, share.value)
            if calm:
                self.calm.add(True, share.value)

    def _record_alone(
        self, tally: _Tally, event: bool, id_hash: int, now: float, calm: bool
    ) -> None:
        """A canary request of a tier judged against its pre-exposure rate: every calm one for
        advancing; for rolling back, none of an id over its cap (its rate stays unbiased)."""
        if calm:
            tally.a_req += 1
            tally.a_ev += event
        cap = self._cap
        if cap.admit(id_hash, True, now) if event else not cap.over(id_hash, True, now):
            tally.w_req += 1
            tally.w_ev += event

    def rollback_log_e(self) -> float:
        return rollback_log_e(self.grid, self._loglik(high=True))

    def _loglik(self, *, high: bool) -> list[float]:
        """Rollback side (all events, baselines' upper bounds) or advance side (calm events,
        lower bounds)."""
        tallies = [
            (t.w_req, t.w_ev, self.refs[tier].high)
            if high
            else (t.a_req, t.a_ev, self.refs[tier].low)
            for tier, t in self._tallies.items()
            if tier in self.refs
        ]
        return (self.profile if high else self.calm).with_tally(tallies)

    def canary_requests(self) -> int:
        return sum(t.c_req for t in self._tallies.values())

    def baseline_requests(self) -> int:
        return sum(self._baseline(tier, t).requests for tier, t in self._tallies.items())

    def concurrent(self, tier: str) -> RateCount | None:
        """The tier's stable requests and events in this step outside baseline incidents
        (None: it had none)."""
        t = self._tallies.get(tier)
        if t is None or not t.calm_req or self._pre_exposure(tier, t):
            return None
        return RateCount(t.calm_req, t.calm_ev)

    def _pre_exposure(self, tier: str, t: _Tally) -> bool:
        """Is the tier judged against its pre-exposure rate (no concurrent control)?"""
        return tier in self.refs and (t.alone or t.s_req == 0)

    def _baseline(self, tier: str, t: _Tally) -> RateCount:
        if self._pre_exposure(tier, t):
            return self.refs[tier].counts
        return RateCount(t.s_req, t.s_ev)

    def _source(self, tier: str, t: _Tally) -> Source:
        if self._pre_exposure(tier, t):
            return Source.PRE_EXPOSURE
        return Source.CONCURRENT if t.s_req else Source.NONE

    def evidence(self, tolerance: float, paths: tuple[tuple[str, int], ...] = ()) -> CheckEvidence:
        """The check's numbers now; `tolerance` is the ratio reported as tolerated; `paths`:
        a shadow check's differing field paths, with their counts."""
        high, low = self._loglik(high=True), self._loglik(high=False)
        log_roll, log_adv = log(1.0 / self.levels.rollback), log(1.0 / self.levels.advance)
        roll, floor = rollback_log_e(self.grid, high), self._floor_log_e()
        advance = advance_log_e(self.grid, low)
        if self.floor > 0.0:
            advance = either_log_e(advance, floor)
        self._crossed = self._crossed or roll >= log_roll
        self._shown = self._shown or advance >= log_adv
        tiers = tuple(self._tier_evidence(tier, t) for tier, t in sorted(self._tallies.items()))
        return CheckEvidence(
            check=self.name,
            canary=sum((x.canary for x in tiers), RateCount()),
            baseline=sum((x.baseline for x in tiers), RateCount()),
            tiers=tiers,
            e_value=capped_exp(roll),
            threshold=1.0 / self.levels.rollback,
            advance_e_value=capped_exp(advance),
            advance_threshold=1.0 / self.levels.advance,
            ratio_low=lower_bound(self.grid, high, log_roll),
            ratio_high=upper_bound(self.grid, low, log_adv),
            tolerance=tolerance,
            concentration=self._cap.concentration(),
            capped=self._cap.capped,
            requests_needed=0 if self._shown else self._requests_needed(log_adv, low, floor),
            crossed=self._crossed,
            non_inferior=self._shown,
            floor=self.floor,
            floor_e_value=capped_exp(floor),
            paths=paths,
        )

    def _floor_log_e(self) -> float:
        return floor_log_e(self._floor_req, self._floor_ev, self.floor)

    def _tier_evidence(self, tier: str, t: _Tally) -> TierEvidence:
        canary = RateCount(t.c_req, t.c_ev)
        baseline = self._baseline(tier, t)
        return TierEvidence(tier, canary, baseline, t.share.value, self._source(tier, t))

    def _requests_needed(self, log_adv: float, low: list[float], floor: float) -> int:
        """More canary requests until non-inferiority, if the canary keeps its current rates:
        by the ratio test or the floor test, whichever is nearer (each alone must make up for
        its weight in the average)."""
        ratio_need, floor_need = log_adv, log_adv + log(1.0 / FLOOR_WEIGHT)
        if self.floor > 0.0:
            ratio_need += log(1.0 / (1.0 - FLOOR_WEIGHT))
        drift = self._drift_per_request()
        needs = [_needed(ratio_need - advance_log_e(self.grid, low), drift)]
        if self.floor > 0.0:
            rate = self._floor_ev / self._floor_req if self._floor_req else 0.0
            needs.append(_needed(floor_need - floor, floor_drift(rate, self.floor)))
        known = [n for n in needs if n >= 0]
        return min(known) if known else -1

    def _drift_per_request(self) -> float:
        """Expected growth of the advance log e-value per canary request (nats)."""
        g = self.grid
        theta, null = g.points[max(g.down, key=lambda d: d[1])[0]], g.points[g.tolerance]
        c = sum(t.c_req for t in self._tallies.values())
        s_req = sum(t.s_req for t in self._tallies.values())
        s_ev = sum(t.s_ev for t in self._tallies.values())
        if c and s_req and s_ev:
            share, rate = c / (c + s_req), s_ev / s_req
            per_event = _kl(_q(theta, share), _q(null, share))
            return rate * (theta + (1.0 - share) / share) * per_event
        alone = [self.refs[tier].low for tier, t in self._tallies.items() if t.a_req]
        if alone and alone[0] > 0.0:
            return _kl(min(theta * alone[0], 0.5), min(null * alone[0], 0.5))
        return 0.0


def _needed(nats: float, drift: float) -> int:
    """Requests for `nats` more at `drift` nats per request (-1: no drift to size it)."""
    if nats <= 0.0:
        return 0
    return ceil(nats / drift) if drift > 0.0 else -1


def _q(theta: float, share: float) -> float:
    return theta * share / (theta * share + 1.0 - share)


def _kl(p: float, q: float) -> float:
    return p * log(p / q) + (1.0 - p) * log((1.0 - p) / (1.0 - q))


def capped_exp(x: float) -> float:
    """exp(x), inf where it would overflow (an e-value from its log)."""
    return exp(x) if x < 700.0 else inf
