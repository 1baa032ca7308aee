"""Analysis: is the canary worse than its baseline? The evidence of one rollout step.

Theory of operation
-------------------
*What is tested.* Each check compares a rate of "events" between the canary and its baseline as a
ratio theta = canary rate / baseline rate, common to all tiers:
- `errors`: the error rate (`classify_status`; proxy-generated 502/504 always count);
- `route:<prefix>`: the same, for the requests under a configured path prefix only;
- `latency`: the q-quantile. A baseline request slower than its tier's recent stable q-quantile
  tau (a bounded streaming histogram, latency.py) is an event, and so is a canary request slower
  than (1 + max_increase) * tau. The ratio of those rates is 1 exactly when the canary's quantile
  is (1 + max_increase) times the baseline's, whatever the shape of the tail, so the tolerance
  lives in the threshold and the check runs with tolerance 1 (a "slow event" count at tau alone
  would turn +25% at p99 into anything from 1.5x to 3x more slow events, depending on the tail);
- `server_timing:<metric>...`: what the service says in its `Server-Timing` response header
  (timingcheck.py): a metric's `dur` judged as latency is (slow events over the stable arm's
  recent q-quantile of that `dur`, among the requests that carry it), or a metric's presence,
  or its `desc` value, as a rate per answered request judged as errors are. Each is one more
  ratio check with its own per-tier shares, per-id cap and pre-exposure references.
The baseline of a tier is its stable traffic at the same moments. A tier wholly on the canary in
the step is compared with its pre-exposure baseline instead: its stable counts, outside
incidents, from the last step that had some (`TierBaseline`, carried from step to step). "Wholly"
means no stable request at all, or a canary share of at least 98% (the stable arm is then too
thin to compare with): measured once the tier has 25 canary requests, and before that taken from
the routing plan's share when the controller passes it (`expected_shares`). So the few stable
requests still in flight from the previous step do not count as a control, and the measurement
corrects a plan that pins or tenant cohorts made inexact.

*Sequential method* (evidence.py). Condition on the events. In a tier whose canary share of
requests is s (estimated from the tier's recent requests before each one, once each arm has 25 of
them: traffic.py), an event is the canary's with probability q = theta*s / (theta*s + 1 - s). The
product over events of the binomial likelihood ratios of theta against 1 is a nonnegative
martingale when theta = 1 and a supermartingale when theta < 1. Each event uses its own tier's
share, so the test is stratified: a tier mix that differs between the arms cannot create evidence;
and a shared incident (both arms failing alike) adds events in proportion to the shares, which
lowers every ratio against 1 on average and never builds evidence. A pre-exposure tier adds the
one-sample binomial likelihood of its canary requests against a bound on its baseline rate. Rolling
back uses the mixture over theta = (1 + max_increase) * sqrt(2)**k, k = 0..8 (latency: from
sqrt(2)), with 70% of the prior on the first octave (k = 0, 1) and the rest even: regressions near
the tolerance need the most evidence and get the most weight, large ones cross fast whatever their
weight, and with points sqrt(2) apart one is always near the true ratio (about 95% of the best
growth rate). By Ville's inequality a test supermartingale ever reaches 1/alpha with probability at
most alpha, however often it is looked at: the verdict can be read every interval.

*The promise.* P(rolling back a canary no worse than its baseline, at any step of the rollout) <=
false_rollback_rate, by a union bound. Step i of n (0-based) spends 1/2, 1/4, ... of it, halving per
step, and the last step what is left: early steps see the least traffic and catch most bad releases;
later steps see more traffic, which repays their smaller share many times. Within a step the
guardrail gets 1% and the checks share the rest with weight 3 for errors and 1 for latency, each
route and each Server-Timing check (so adding k Server-Timing checks scales every check's share by
(4 + routes) / (4 + routes + k): the total stays the step's, the union bound still holds, and each
check's threshold rises by log((4 + routes + k) / (4 + routes)) nats). Within a check, when the step
has pre-exposure baselines, 10% goes to their bounds (equally per tier) and 90% to the e-process.
Defaults on the 4-step rollout of the simulation: errors get 0.0037 on the first step, 0.0017 on the
second (which has baselines); the guardrail 0.00005 and 0.000025.

*Advancing* needs non-inferiority: evidence against "the canary is worse than tolerated", which
is theta >= tolerance (1 + max_increase; latency 1) for the ratio and, for the canary's own event
rate, >= an absolute floor f (errors and routes: `errors.min_rate`; latency: 1 - q; a
Server-Timing check: its `min_rate` when it judges a rate, 1 - q when a duration). Two
e-processes, each valid under that null: the ratio's (theta = tolerance against alternatives
below it, {1, 1/sqrt 2, 1/2} for errors, {1/sqrt 2, 1/2, 1/4} for latency; reaching 1/alpha is the
upper bound of the confidence sequence falling below the tolerance), and the floor's (the
canary's events among its requests against the rate f, alternatives f/2 .. f/16: evidence.py).
Their weighted average (3/4 ratio, 1/4 floor) is an e-value for the null, and the check is
non-inferior when it reaches 1/alpha. The floor is what lets a service with few or no events
advance at all: with no errors on either arm the ratio has nothing to condition on, while the
floor test grows with every clean canary request (about 8 / f of them at the defaults). An error
rate under f is tolerated whatever the baseline's (0.1% by default; 0 turns the floor off). For
latency, 1 - q is the same claim read directly: a canary whose share of requests slower than
(1 + max_increase) * tau is under 1 - q has its q-quantile under (1 + max_increase) * tau, which
is what also makes tied latencies (no request above any threshold) advance. Each check is held
to false_rollback_rate per step, not split: an advance needs every check at once (an
intersection-union test), and a wrong advance is still watched by the next step. An advance also
needs min_requests on each arm. Until then the verdict is INCONCLUSIVE, with `requests_needed`
more canary requests estimated from the current rates (the nearer of the two tests). An
e-process that crossed has rejected, so both verdicts latch for the step. A canary between 1
and the tolerance may take long either way: that is the indifference zone. Errors that arrive
while the baseline itself is in an incident (its recent error rate 4 times its calm rate) count
for rolling back but not for advancing (neither do the canary's requests in the floor test): an
outage common to both arms adds errors at a ratio near 1 and would otherwise dilute a real
regression into a false showing of non-inferiority. Nor does a step advance during such an
incident: nothing can be judged then, and it keeps an incident from following the rollout into a
step with no stable traffic to compare with.

*Prometheus checks* (countcheck.py, promql.py): a ratio of two counters per variant (`bad`
over `total`), read from a Prometheus server every interval as increases since the step began,
in batches. Each is a check of weight 1 in the split above, like a route (its rollback rate a
share of the step's), tested with the same conditional e-process fed one batch at a time:
given a batch's totals, each of its bad events is the canary's with probability q at the
batch's own measured share, so a batch's likelihood ratio has expectation at most 1 under the
null and the product over batches stays a test supermartingale; batch boundaries are optional
stopping times of the per-event test, which Ville's inequality covers at any look. Advancing
needs each of them non-inferior too, and a check without data (an error, no series, a timeout,
or not read yet) holds the step inconclusive ("no data from prometheus") without ever rolling
it back. A shadow step and the baseline period do not read them.

*Weight per id.* An id contributes at most 10 events per 10 s to the evidence (traffic.py), and
the cap only ever removes evidence from the side it would help: the canary's events of an id over
its cap do not count for rolling back (against a pre-exposure baseline, none of that id's
requests do until its window turns, which keeps the rate unbiased), the baseline's do not count
for advancing. The rest count in the rates, and the verdict says when one id holds half of the
canary's recent events ("canary broke tenant X" is a finding too).

*Guardrail* (guardrail.py). On every failing canary request, without waiting for an interval,
for min_requests, or for the share estimate: over the last 2 s, pool the canary requests of the
tiers that have a control (the tier's recent stable requests when there are at least
guardrail_min_requests of them, else, outside incidents, its pre-exposure rate). It trips when
at least guardrail_min_requests of them failed at guardrail_max_error_rate or more, and their
failures are far too many for their controls: with u the requests-weighted mean of the
controls' upper bounds, n * kl(failure rate, u) >= log(1 / level). The guardrail is a test of
its own, with 1% of the step's rate (its evidence comes in large steps, about 3.5 nats per
failure of a dead canary, so a small share costs it under one failure, while the checks lose
almost nothing): look j (the step's j-th canary request) gets that rate / (j * (j + 1)), half
for the canary's Chernoff tail, half for the controls' bounds, so all looks together spend at
most the guardrail's share. False alarms: a canary no worse than its
control fails at most as often, so its pooled count exceeds that tail with probability at most
the level (Chernoff holds for unequal rates given their mean). A shared incident raises the
control's bound with the canary's rate, so the test needs far more than "half failing": in a
20% incident on both arms it takes 15 or more canary failures in a row (probability < 1e-10),
and a control failing at guardrail_max_error_rate or more carries no weight at all. A dead
canary (every request failing) against a stable arm at 0.5% gains log(1/u) ~ 3.5 nats per
failure, so the 10th failing request trips it (1 s at a 1% step of 1,000 requests/s). No one
id can trip it: each id adds at most 5 canary requests per 2 s to it (its first ones, whatever
their outcome, so the test stays valid for the requests it keeps), and a trip needs failures
from at least 3 distinct ids. An id sending most of the canary's requests, all failing, thus
adds 5 failures against everyone else's successes, while a dead canary fails for every id
(its first 10 failures come from about 10 ids). A step whose canary traffic comes from fewer
than 3 ids (one pinned tenant) is left to the checks, where every id contributes evidence up
to its cap.

*Assumptions.* Requests are independent given their tier and time, and both arms of a tier see the
same event rate when the canary is no worse (over the guardrail's 2 s, the same rate on both
arms). The share is an estimate; its error is small next to that of the events (events are rare
among requests), and the A/A simulation (loadtests/simulate.py) measures the resulting rate.
Baseline bounds treat the previous step's counts as a fixed sample; that step ended on evidence
comparing canary with stable, which favours moments where stable looked worse and so makes the
rollback test more conservative. A pre-exposure baseline cannot see what changed since (time of
day, a shared incident): a step with no stable traffic at all cannot tell a shared incident from
a regression.

API
---
`StepAnalysis(config, baselines=..., started=now, step=i, steps=n, expected_shares=...)`: one per
rollout step. `observe(...)` per request (a few microseconds; returns the guardrail's DEGRADED
assessment the first time it trips, else None; `timing=`: the response's Server-Timing entries
that checks name, for a service with such checks); `assess(now)` per interval;
`tier_baselines()` seeds the next step (a tier judged against its pre-exposure baseline keeps
it).
`classify_status(status, error_statuses, proxy_generated=...)` says what is an error. Pure: no
I/O, no clock (time is passed in as monotonic seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from proxy.core.baseline import RateCount, TierBaseline, TimingBaseline
from proxy.core.budget import (
    ERRORS_WEIGHT,
    Levels,
    check_levels,
    checks_share,
    error_grid,
    guardrail_level,
    latency_grid,
    step_share,
)
from proxy.core.checks import RatioCheck, Reference
from proxy.core.countcheck import PromChecks
from proxy.core.grpc import DEFAULT_ERRORS as DEFAULT_GRPC_ERRORS
from proxy.core.guardrail import Guardrail
from proxy.core.latency import LatencyHistogram
from proxy.core.outcome import status_class
from proxy.core.promql import PromCheck
from proxy.core.servertiming import TimingEntry
from proxy.core.shadow import MAX_ROUTES, generalize
from proxy.core.summary import degraded, guardrail, healthy, inconclusive
from proxy.core.timingcheck import ServerTimingCheck, TimingChecks
from proxy.core.traffic import IncidentWatch, ShareEstimate
from proxy.core.verdict import Assessment, CheckEvidence, Verdict, latency_name

SHADOW_PATHS: Final = 50  # differing field paths counted per route (the rest are not named)
SHADOW_EVIDENCE_PATHS: Final = 10  # ... and named in a check's evidence

__all__ = [
    "AnalysisConfig",
    "Assessment",
    "CheckEvidence",
    "RateCount",
    "RouteCheck",
    "ServerTimingCheck",
    "StepAnalysis",
    "TierBaseline",
    "Verdict",
    "classify_status",
]

_NO_BASELINES: Final[Mapping[str, TierBaseline]] = MappingProxyType({})
_NO_SHARES: Final[Mapping[str, float]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RouteCheck:
    """A change-specific check: the error rate of requests whose path starts with the prefix."""

    path_prefix: str
    error_max_increase: float = 0.5
    origin: str = ""  # "release 1.4.2": the release that brought it (named in its verdicts)

    @property
    def name(self) -> str:
        return f"route:{self.path_prefix}" + (f" [{self.origin}]" if self.origin else "")


DEFAULT_ERROR_STATUSES: Final = frozenset({"5xx", *DEFAULT_GRPC_ERRORS})


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    """`rollout.analysis`; see the module docstring for what each number means."""

    interval_s: float = 1.0
    min_requests: int = 100  # per arm, before any verdict but inconclusive
    error_max_increase: float = 0.5
    error_min_rate: float = 0.001  # an error rate tolerated whatever the baseline's
    latency_quantile: float = 0.99
    latency_max_increase: float = 0.25
    latency_origin: str = ""  # "release 1.4.2": a release tightened the latency check
    guardrail_max_error_rate: float = 0.5
    guardrail_min_requests: int = 10
    routes: tuple[RouteCheck, ...] = ()
    server_timing: tuple[ServerTimingCheck, ...] = ()
    # Classes ("5xx"), codes ("429") and gRPC outcomes ("grpc:UNAVAILABLE") that are errors.
    error_statuses: frozenset[str] = field(default_factory=lambda: DEFAULT_ERROR_STATUSES)
    false_rollback_rate: float = 0.01
    prometheus: tuple[PromCheck, ...] = ()  # checks on the service's own counters


# The class and the text of every three-digit status, made once: classifying a response (on
# every request) then builds no string and hashes none.
_STATUS_CLASSES: Final = tuple(status_class(n) for n in range(1000))
_STATUS_TEXTS: Final = tuple(str(n) for n in range(1000))


def classify_status(
    status: int, error_statuses: frozenset[str], *, proxy_generated: bool = False
) -> bool:
    """Is this response an error? `error_statuses` holds classes ("5xx") or codes ("429")."""
    if proxy_generated and status in (502, 504):
        return True
    if 0 <= status < 1000:
        return _STATUS_CLASSES[status] in error_statuses or _STATUS_TEXTS[status] in error_statuses
    return status_class(status) in error_statuses or str(status) in error_statuses


class _Tier:
    """Per-tier state shared by the checks: shares, the stable latency histogram, threshold."""

    __slots__ = ("baseline", "histogram", "route_shares", "share", "threshold")

    def __init__(
        self, baseline: TierBaseline | None, prior: float | None, routes: int, now: float
    ) -> None:
        self.baseline = baseline
        self.share = ShareEstimate(prior)
        self.route_shares = [ShareEstimate(prior) for _ in range(routes)]
        self.histogram = LatencyHistogram(now)
        self.threshold = baseline.latency_threshold_s if baseline else 0.0

    def refresh(self, quantile: float, now: float) -> None:
        self.histogram.rotate(now)
        measured = self.histogram.threshold(quantile)
        if measured is not None:
            self.threshold = measured.edge_s


class StepAnalysis:
    """Evidence for one rollout step; a new one per step, seeded with the tiers' baselines."""

    def __init__(
        self,
        config: AnalysisConfig,
        *,
        baselines: Mapping[str, TierBaseline] = _NO_BASELINES,
        started: float,
        step: int = 0,
        steps: int = 1,
        expected_shares: Mapping[str, float] = _NO_SHARES,
        shadow_tolerance: float = 0.0,
    ) -> None:
        """`expected_shares`: the canary share the routing plan gives each tier, if known
        (pins and tenant cohorts make it approximate; the measured share overrides it).
        `shadow_tolerance` > 0: a shadow step, judged by its `shadow` checks alone."""
        share = step_share(step, steps)
        self.shadow = ShadowChecks(config, share, shadow_tolerance, started)
        self.config = config
        self.started = started
        self._baselines = dict(baselines)
        self.expected_shares = MappingProxyType(dict(expected_shares))
        self._tiers: dict[str, _Tier] = {}
        self._slow_factor = 1.0 + config.latency_max_increase
        n = len(self._baselines)
        self.errors = RatioCheck(
            "errors",
            error_grid(config.error_max_increase),
            self._levels(share, ERRORS_WEIGHT, n),
            {t: b.errors for t, b in self._baselines.items()},
            started,
            config.error_min_rate,
        )
        self.latency = RatioCheck(
            latency_name(config.latency_origin),
            latency_grid(),
            self._levels(share, 1, n),
            {t: b.slow for t, b in self._baselines.items()},
            started,
            1.0 - config.latency_quantile,
        )
        self.routes = tuple(self._route_check(r, share, n) for r in config.routes)
        self.timing: TimingChecks | None = None
        if config.server_timing:
            timing_refs = {t: b.timing for t, b in self._baselines.items()}
            levels = self._levels(share, 1, n)
            self.timing = TimingChecks(config.server_timing, levels, timing_refs, started)
        self._prefixes = tuple(r.path_prefix for r in config.routes)
        levels = self._levels(share, 1, 0)
        self.prometheus = PromChecks(config.prometheus, levels, self.expected_shares)
        references = {t: (r.counts, r.high) for t, r in self.errors.refs.items()}
        self._guard = Guardrail(
            config.guardrail_max_error_rate,
            config.guardrail_min_requests,
            guardrail_level(config.false_rollback_rate, share),
            references,
        )
        self._incident = IncidentWatch()
        self._tripped: Assessment | None = None

    def _levels(self, share: float, weight: int, baselines: int) -> Levels:
        config = self.config
        total = (
            ERRORS_WEIGHT + 1 + len(config.routes) + len(config.server_timing)
            + len(config.prometheus)
        )  # fmt: skip
        rate = config.false_rollback_rate
        return check_levels(rate, checks_share(share, weight, total), baselines)

    def _route_check(self, route: RouteCheck, share: float, n: int) -> RatioCheck:
        refs = {t: b.routes.get(route.path_prefix, RateCount()) for t, b in self._baselines.items()}
        levels = self._levels(share, 1, n)
        grid = error_grid(route.error_max_increase)
        name, floor = route.name, self.config.error_min_rate
        return RatioCheck(name, grid, levels, refs, self.started, floor)

    def _tier(self, tier: str, now: float) -> _Tier:
        prior = self.expected_shares.get(tier)
        state = _Tier(self._baselines.get(tier), prior, len(self._prefixes), now)
        self._tiers[tier] = state
        return state

    def observe(
        self,
        *,
        tier: str,
        canary: bool,
        error: bool,
        latency_s: float,
        path: str,
        id_hash: int,
        now: float,
        timed: bool = True,
        timing: tuple[TimingEntry, ...] | None = None,
    ) -> Assessment | None:
        """Record one finished request; the guardrail's DEGRADED assessment the first time.
        `timed=False`: the proxy answered itself (a 503 from a full pool queue, a 504 at the
        timeout, a 502): an error, but its latency is the proxy's, not the upstream's, and
        stays out of the latency check (a flood of instant 503s on stable would otherwise
        make a healthy canary look slow). `timing`: the Server-Timing entries the checks
        name, of a response the upstream sent (None: no upstream response, or no check)."""
        state = self._tiers.get(tier) or self._tier(tier, now)
        share = state.share
        calm = not self._incident.active
        self.errors.record(tier, canary, error, share, id_hash, now, calm)
        threshold = state.threshold
        if threshold > 0.0 and timed:
            slow = latency_s > (threshold * self._slow_factor if canary else threshold)
            self.latency.record(tier, canary, slow, share, id_hash, now)
        if not canary and timed:
            state.histogram.add(latency_s)
        share.add(canary)
        if self._prefixes:
            self._observe_routes(state, tier, canary, error, path, id_hash, now, calm)
        checks = self.timing
        if checks is not None and timing is not None and timed:
            prior = self.expected_shares.get(tier)
            checks.record(tier, canary, timing, id_hash, now, calm, prior)
        self._guard.add(tier, canary, error, now, id_hash)
        if not canary:
            self._incident.add(error, now)
            return None
        return self._guardrail(now) if error and self._tripped is None else None

    def _observe_routes(
        self,
        state: _Tier,
        tier: str,
        canary: bool,
        error: bool,
        path: str,
        id_hash: int,
        now: float,
        calm: bool,
    ) -> None:
        for i, prefix in enumerate(self._prefixes):
            if path.startswith(prefix):
                route_share = state.route_shares[i]
                self.routes[i].record(tier, canary, error, route_share, id_hash, now, calm)
                route_share.add(canary)

    def _guardrail(self, now: float) -> Assessment | None:
        trip = self._guard.look(now, self._incident.active)
        if trip is None:
            return None
        self._tripped = guardrail(trip, self._all_checks(), now)
        return self._tripped

    def _all_checks(self) -> tuple[CheckEvidence, ...]:
        errors = self.errors.evidence(1.0 + self.config.error_max_increase)
        latency = self.latency.evidence(1.0)
        routes = [
            check.evidence(1.0 + route.error_max_increase)
            for check, route in zip(self.routes, self.config.routes, strict=True)
        ]
        timing = self.timing.evidence() if self.timing is not None else ()
        return (errors, latency, *routes, *timing, *self.prometheus.evidence())

    def observe_shadow(
        self,
        *,
        route: str,
        differing: tuple[str, ...],
        id_hash: int,
        now: float,
        tier: str = "default",
    ) -> None:
        """One compared answer of a shadow step: `differing`, the paths the canary alone
        changed (empty: the answers agree), for a request of `tier`."""
        self.shadow.observe(route, differing, id_hash, now, tier)

    def assess(self, now: float) -> Assessment:
        """The interval verdict (see the module docstring)."""
        if self.shadow.tolerance > 0.0:
            return self.shadow.assess(now)
        if self._tripped is not None:
            return self._tripped
        for state in self._tiers.values():
            state.refresh(self.config.latency_quantile, now)
        if self.timing is not None:
            self.timing.refresh(now)
        checks = self._all_checks()
        shortfall = self._shortfall()
        crossed = [c for c in checks if c.crossed]
        if crossed and not shortfall:
            return degraded(max(crossed, key=lambda c: c.e_value / c.threshold), checks, now)
        if not shortfall and all(c.non_inferior for c in checks) and not self._incident.active:
            return self.prometheus.hold(healthy(checks, now))
        return self.prometheus.hold(
            inconclusive(checks, shortfall, now, incident=self._incident.active)
        )

    def _shortfall(self) -> int:
        """Requests still missing on the shorter arm before min_requests is met."""
        canary = self.errors.canary_requests()
        baseline = self.errors.baseline_requests()
        return max(0, self.config.min_requests - min(canary, baseline))

    def tier_baselines(self) -> Mapping[str, TierBaseline]:
        """Each tier's baseline for the next step: this step's stable traffic where it had
        some, else the baseline this step was given."""
        result = dict(self._baselines)
        for name, state in self._tiers.items():
            errors = self.errors.concurrent(name)
            if errors is not None:
                result[name] = self._baseline_of(name, state, errors)
        return MappingProxyType(result)

    def _baseline_of(self, name: str, state: _Tier, errors: RateCount) -> TierBaseline:
        routes = {
            prefix: check.concurrent(name) or RateCount()
            for prefix, check in zip(self._prefixes, self.routes, strict=True)
        }
        measured = state.histogram.threshold(self.config.latency_quantile)
        if measured is None:
            old = state.baseline
            slow, edge = (old.slow, old.latency_threshold_s) if old else (RateCount(), 0.0)
        else:
            slow, edge = RateCount(measured.samples, measured.above), measured.edge_s
        timing: Mapping[str, TimingBaseline] = state.baseline.timing if state.baseline else {}
        if self.timing is not None:
            timing = self.timing.baselines(name) or timing
        return TierBaseline(errors, slow, edge, MappingProxyType(routes), MappingProxyType(timing))


class ShadowChecks:
    """The `shadow` check of a shadow step, one e-process per route.

    A compared answer is a canary request; a mismatch (a field the canary alone changed, over
    the learned noise) is its event. Each route is a one-sample test of its mismatch rate
    against `tolerance`, by the machinery of the other checks: `RatioCheck` with the request's
    tiers as its tiers (each tier's rate is shown in the evidence, and a mismatch confined to
    one tier weighs in that tier's tally against the same tolerance), judged against a
    pre-exposure reference whose rate is exactly the tolerance
    (rolling back: the mixture over rates from the tolerance up; advancing: the ratio test and
    the floor test at the tolerance; the grid of the latency check, whose null also sits at
    1: rolling back tests rates from sqrt(2) times the tolerance up). The step's whole share
    of the rollout's rate is the check's (no other check runs in a shadow step); each route
    may spend 1/(MAX_ROUTES + 1) of it (routes are bounded: MAX_ROUTES and `other`), so a
    union bound keeps the promise.
    Advancing needs `min_requests` compared answers and every route seen shown within the
    tolerance (intersection-union)."""

    def __init__(self, config: AnalysisConfig, share: float, tolerance: float, now: float) -> None:
        self.config = config
        self.tolerance = tolerance
        self.started = now
        rate = config.false_rollback_rate
        levels = check_levels(rate, checks_share(share, 1, 1) / (MAX_ROUTES + 1), 0)
        self._levels = levels
        self.routes: dict[str, RatioCheck] = {}
        self.paths: dict[str, dict[str, int]] = {}
        self.compared = 0
        # Never added to: every route is "wholly on the canary", judged against its reference.
        self._whole = ShareEstimate()

    def observe(
        self, route: str, differing: tuple[str, ...], id_hash: int, now: float, tier: str
    ) -> None:
        check = self.routes.get(route)
        if check is None:
            check = self._check(route, now)
        if tier not in check.refs:  # each tier of the route against the tolerance
            check.refs[tier] = Reference(RateCount(), self.tolerance, self.tolerance)
        self.compared += 1
        check.record(tier, True, bool(differing), self._whole, id_hash, now)
        if differing:
            counts = self.paths.setdefault(route, {})
            for path in {generalize(p) for p in differing}:
                if path in counts or len(counts) < SHADOW_PATHS:
                    counts[path] = counts.get(path, 0) + 1

    def _check(self, route: str, now: float) -> RatioCheck:
        check = RatioCheck(
            f"shadow:{route}", latency_grid(), self._levels, {}, self.started, self.tolerance
        )
        self.routes[route] = check
        return check

    def evidence(self) -> tuple[CheckEvidence, ...]:
        """Every route's check, the most mismatched first, with its top differing paths."""
        out = []
        for route, check in self.routes.items():
            counts = self.paths.get(route, {})
            top = tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
            out.append(check.evidence(1.0, top[:SHADOW_EVIDENCE_PATHS]))
        return tuple(sorted(out, key=lambda c: (-c.canary.rate, c.check)))

    def assess(self, now: float) -> Assessment:
        checks = self.evidence()
        shortfall = max(0, self.config.min_requests - self.compared)
        crossed = [c for c in checks if c.crossed]
        if crossed and not shortfall:
            return degraded(max(crossed, key=lambda c: c.e_value / c.threshold), checks, now)
        if checks and not shortfall and all(c.non_inferior for c in checks):
            return healthy(checks, now)
        if not checks:
            summary = f"shadow: no answer compared yet; min_requests not met: {shortfall:,} more"
            return Assessment(Verdict.INCONCLUSIVE, "shadow", summary, 0.0, 0.0, (), shortfall, now)
        return inconclusive(checks, shortfall, now)
