"""Server-Timing checks: what the service says about its own work, judged canary vs baseline.

A `ServerTimingCheck` names a Server-Timing metric and how to judge it:
- `judge: duration`: the metric's `dur` per request, a latency-like check on its q-quantile
  (`quantile`, default the median) by the slow-event machinery of the latency check: a stable
  request whose `dur` is over its tier's recent stable q-quantile tau is an event, and so is a
  canary request whose `dur` is over (1 + max_increase) * tau. The population is the requests
  that carry the metric with a `dur`; tolerance 1 (it is in the threshold) and floor 1 - q as
  for latency, but rollback alternatives from 1.1 up (`duration_grid`): at a central quantile
  events are frequent and the ratio is at most 1 / (1 - q), so +30% against +20% tolerated at
  the median is a ratio of about 1.13.
- `judge: rate`: per request, an event when the metric is present (with `desc` equal to the
  check's `desc`, when it names one). The population is every request the upstream answered;
  the grid is the error check's (tolerance 1 + max_increase) and the floor `min_rate`.
Each check is one `RatioCheck` with its own per-tier canary share (its population may differ
from the tier's), per-id caps and pre-exposure references, exactly as a route check. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from proxy.core.baseline import RateCount, TimingBaseline
from proxy.core.budget import Levels, duration_grid, error_grid
from proxy.core.checks import RatioCheck
from proxy.core.latency import LatencyHistogram
from proxy.core.servertiming import TimingEntry
from proxy.core.traffic import ShareEstimate
from proxy.core.verdict import CheckEvidence

DURATION: Final = "duration"
RATE: Final = "rate"
JUDGES: Final = (DURATION, RATE)


@dataclass(frozen=True, slots=True)
class ServerTimingCheck:
    """One `rollout.analysis.server_timing` entry (see the module docstring)."""

    metric: str
    judge: str  # DURATION | RATE
    max_increase: float
    desc: str | None = None  # RATE: count only entries with this desc (None: presence)
    quantile: float = 0.5  # DURATION: the quantile of `dur` compared
    min_rate: float = 0.001  # RATE: an event rate tolerated whatever the baseline's
    origin: str = ""  # "release 1.4.2": the release that brought it

    @property
    def name(self) -> str:
        """The check's name in verdicts and the journal: `server_timing:db` (duration),
        `server_timing:cache;desc=miss` or `server_timing:cache;present` (rate); a release's
        own check ends with ` [release V]`."""
        if self.judge == DURATION:
            name = f"server_timing:{self.metric}"
        elif self.desc is not None:
            name = f"server_timing:{self.metric};desc={self.desc}"
        else:
            name = f"server_timing:{self.metric};present"
        return f"{name} [{self.origin}]" if self.origin else name


class _TimingTier:
    __slots__ = ("histograms", "shares", "thresholds")

    def __init__(self, checks: int, prior: float | None, now: float) -> None:
        self.shares = [ShareEstimate(prior) for _ in range(checks)]
        self.histograms = [LatencyHistogram(now) for _ in range(checks)]
        self.thresholds = [0.0] * checks


class TimingChecks:
    """The Server-Timing checks of one step."""

    __slots__ = ("_baselines", "_tiers", "checks", "specs", "started", "wanted")

    def __init__(
        self,
        specs: tuple[ServerTimingCheck, ...],
        levels: Levels,
        baselines: Mapping[str, Mapping[str, TimingBaseline]],
        now: float,
    ) -> None:
        """`baselines`: tier -> check name -> its pre-exposure counts."""
        self.specs = specs
        self.started = now
        self.wanted = frozenset(s.metric for s in specs)
        self._baselines = baselines
        self.checks = tuple(self._check(spec, levels) for spec in specs)
        self._tiers: dict[str, _TimingTier] = {}

    def _check(self, spec: ServerTimingCheck, levels: Levels) -> RatioCheck:
        refs = {
            tier: by_name[spec.name].counts
            for tier, by_name in self._baselines.items()
            if spec.name in by_name
        }
        if spec.judge == DURATION:
            grid, floor = duration_grid(), 1.0 - spec.quantile
        else:
            grid, floor = error_grid(spec.max_increase), spec.min_rate
        return RatioCheck(spec.name, grid, levels, refs, self.started, floor)

    def _tier(self, tier: str, prior: float | None, now: float) -> _TimingTier:
        state = self._tiers[tier] = _TimingTier(len(self.specs), prior, now)
        for i, spec in enumerate(self.specs):
            base = self._baselines.get(tier, {}).get(spec.name)
            if base is not None:
                state.thresholds[i] = base.edge_s
        return state

    def record(
        self,
        tier: str,
        canary: bool,
        entries: tuple[TimingEntry, ...],
        id_hash: int,
        now: float,
        calm: bool,
        prior: float | None,
    ) -> None:
        """One request the upstream answered, with its kept Server-Timing entries."""
        state = self._tiers.get(tier) or self._tier(tier, prior, now)
        for i, spec in enumerate(self.specs):
            share = state.shares[i]
            if spec.judge == DURATION:
                dur = _dur(entries, spec.metric)
                if dur is None:
                    continue
                value_s = dur / 1000.0
                threshold = state.thresholds[i]
                if threshold > 0.0:
                    edge = threshold * (1.0 + spec.max_increase) if canary else threshold
                    self.checks[i].record(tier, canary, value_s > edge, share, id_hash, now, calm)
                if not canary:
                    state.histograms[i].add(value_s)
            else:
                event = _has(entries, spec.metric, spec.desc)
                self.checks[i].record(tier, canary, event, share, id_hash, now, calm)
            share.add(canary)

    def refresh(self, now: float) -> None:
        """Each duration check's threshold from its tier's recent stable `dur` values."""
        for state in self._tiers.values():
            for i, spec in enumerate(self.specs):
                if spec.judge != DURATION:
                    continue
                histogram = state.histograms[i]
                histogram.rotate(now)
                measured = histogram.threshold(spec.quantile)
                if measured is not None:
                    state.thresholds[i] = measured.edge_s

    def evidence(self) -> tuple[CheckEvidence, ...]:
        return tuple(
            check.evidence(1.0 if spec.judge == DURATION else 1.0 + spec.max_increase)
            for check, spec in zip(self.checks, self.specs, strict=True)
        )

    def baselines(self, tier: str) -> dict[str, TimingBaseline] | None:
        """The tier's counts for the next step (None: the tier had no stable traffic here,
        so it keeps the baselines it was given)."""
        state = self._tiers.get(tier)
        if state is None:
            return None
        out: dict[str, TimingBaseline] = {}
        given = self._baselines.get(tier, {})
        for i, spec in enumerate(self.specs):
            old = given.get(spec.name)
            if spec.judge == DURATION:
                measured = state.histograms[i].threshold(spec.quantile)
                if measured is not None:
                    counts = RateCount(measured.samples, measured.above)
                    out[spec.name] = TimingBaseline(counts, measured.edge_s)
                elif old is not None:
                    out[spec.name] = old
                continue
            counts_now = self.checks[i].concurrent(tier)
            if counts_now is not None:
                out[spec.name] = TimingBaseline(counts_now)
            elif old is not None:
                out[spec.name] = old
        return out


def _dur(entries: tuple[TimingEntry, ...], metric: str) -> float | None:
    for entry in entries:
        if entry.name == metric and entry.dur is not None:
            return entry.dur
    return None


def _has(entries: tuple[TimingEntry, ...], metric: str, desc: str | None) -> bool:
    return any(e.name == metric and (desc is None or e.desc == desc) for e in entries)
