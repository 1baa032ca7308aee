"""Count checks: canary vs stable on counters read from Prometheus, in batches.

A `prometheus` check (promql.py) reads, every analysis interval, two counters per variant:
`bad` and `total`. Counters only grow, so the evidence is their *increase since the step
began*: `Increase` remembers each series' value at the step's first successful read; a value
going down is a counter reset, and the series restarts from its new value (what it had gained
is kept). A look at which all four reads (bad and total of each variant) succeeded adds the
batch since the previous such look: (x_c, n_c) bad and total increases of the canary, (x_s,
n_s) of stable.

*Why the guarantee holds for batches.* The test is the conditional one of the other checks
(analysis.py, evidence.py): given the events, each one is the canary's with probability q =
theta*s / (theta*s + 1 - s), s the canary's share of the requests. Within a batch, given its
totals, the bad counts of the two arms are (to the Poisson approximation of rare events)
independent with means p_c*n_c and p_s*n_s, so given x = x_c + x_s, x_c is binomial(x, q) with
s = n_c / (n_c + n_s) exactly: the share is the batch's own, measured, not estimated. The
batch's likelihood ratio of theta against 1 has conditional expectation 1 when theta = 1 (and
at most 1 when theta < 1), whatever the batch size, so the product over batches is a test
supermartingale in the filtration of looks, and Ville's inequality bounds the probability that
its mixture ever reaches 1/alpha by alpha. Equivalently: it is the per-event test of the other
checks, with every event of a batch looked at once; batch boundaries are optional stopping
times, and a test valid at every event is valid at any subsequence of looks. Large or uneven
batches cost power (the share is coarser), never validity. Nor does the rollback side rest on
the Poisson approximation: with equal rates on the two arms, x_c given x is hypergeometric,
which the binomial dominates in convex order (Hoeffding 1963), and each likelihood ratio of
theta > 1 against 1 is convex and increasing in x_c, so its expectation is at most 1 (a canary
with a lower rate only makes x_c smaller). The advance side (null theta >= tolerance) uses the
binomial at the tolerance as its model, like the per-request test. The floor test (the canary's own
bad/total against `min_rate`) is a product of per-request binomial likelihood ratios, which a
batch only multiplies together. A batch in which an arm's total did not grow is not consumed:
its events wait for the next batch (an arm without requests says nothing about theta).

*The step's first scrape.* A look answers with the latest scrape, up to a scrape interval old:
the step's first look sees the scrape before it began, and the next scrape's increase still
holds requests of the previous step, at the previous step's share. Were the event rates to
change at that moment (an incident starting), that batch's events would not be binomial at its
measured share. So each variant counts from the first look whose values differ from the first
one (its first scrape since the step began): every batch judged is of this step alone, for one
scrape interval more. The same holds within a step only if both variants' counters are scraped
together (one job, one interval): counts of different windows skew the share when rates move.

*Levels.* Each prometheus check is a check of weight 1 in the step's budget (analysis.py), so
its rollback rate is a share of the same false-rollback rate. Either verdict needs `min_total`
on each arm. Advancing needs non-inferiority, as the error check: the ratio's advance test at
1 + max_increase averaged with the floor test. It has no pre-exposure baseline: in a step whose
plan sends every tier wholly to the canary (`canary_only`, no stable traffic) the ratio gathers
nothing, `min_total` is asked of the canary alone, and only the floor test (`min_rate`) can show
the canary within tolerance.

*No data is not health.* A check whose latest reads did not all succeed (an error, no series, a
timeout), or that has not been read yet, is `missing`: the step cannot advance, the verdict
says "no data from prometheus" with the check and the reason, and a missing read adds no
evidence, so it can never roll back by itself. Pure: time and values are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from math import ceil, log
from types import MappingProxyType

from proxy.core.baseline import RateCount
from proxy.core.budget import Levels, error_grid
from proxy.core.checks import capped_exp
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
from proxy.core.promql import KINDS, VARIANTS, PromCheck
from proxy.core.traffic import WHOLE_SHARE, Concentration
from proxy.core.verdict import Assessment, CheckEvidence, Source, TierEvidence, Verdict

NOT_READ = "not read yet"
NO_DATA = "no data from prometheus"

Read = Mapping[str, float] | str  # a query's values per series, or why there are none
Values = tuple[tuple[str, float], ...]


def _values(read: Read) -> Values:
    return () if isinstance(read, str) else tuple(sorted(read.items()))


class Increase:
    """The increase of a counter query (all its series) since its first successful read."""

    __slots__ = ("_series",)

    def __init__(self) -> None:
        self._series: dict[str, tuple[float, float, float]] = {}  # base, last, gained before

    def update(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            known = self._series.get(key)
            if known is None:
                self._series[key] = (value, value, 0.0)
                continue
            base, last, gained = known
            if value < last:  # a reset: restart from the new value, keep what was gained
                gained, base = gained + last - base, value
            self._series[key] = (base, value, gained)

    @property
    def value(self) -> int:
        return int(sum(gained + last - base for base, last, gained in self._series.values()))


def add_batch(profile: Profile, canary: int, stable: int, share: float) -> None:
    """`canary` + `stable` events of one batch in which the canary's share of requests was
    `share`: the binomial likelihood of each grid ratio (evidence.py's `add`, in bulk)."""
    if canary + stable == 0:
        return
    rest = 1.0 - share
    points, logs = profile.grid.points, profile.grid.logs
    profile.loglik = [
        v + canary * lt - (canary + stable) * log(t * share + rest)
        for v, t, lt in zip(profile.loglik, points, logs, strict=True)
    ]
    profile.events += canary + stable


@dataclass(frozen=True, slots=True)
class Totals:
    """Cumulative increases since the step began: (bad, total) per arm."""

    canary: RateCount
    stable: RateCount


class CountCheck:
    """The evidence of one prometheus check over one step."""

    __slots__ = (
        "_crossed",
        "_first",
        "_shown",
        "canary_only",
        "config",
        "consumed",
        "grid",
        "increases",
        "levels",
        "missing",
        "profile",
        "seen",
    )

    def __init__(self, config: PromCheck, levels: Levels, *, canary_only: bool = False) -> None:
        """`canary_only`: the step sends no traffic to stable (see the module docstring)."""
        self.config = config
        self.canary_only = canary_only
        self.levels = levels
        self.grid: RatioGrid = error_grid(config.max_increase)
        self.profile = Profile(self.grid)
        self.increases = {(v, k): Increase() for v in VARIANTS for k in KINDS}
        self.seen = Totals(RateCount(), RateCount())  # at the latest complete look
        self.consumed = self.seen  # up to the last batch fed to the profile
        self.missing = NOT_READ
        self._crossed = self._shown = False
        # Per variant: its values at the step's first look (None once a later look differs,
        # from when its increases count; see `_counting`).
        self._first: dict[str, tuple[Values, ...] | None] = {}

    def record(self, reads: Mapping[tuple[str, str], Read]) -> None:
        """One look: each (variant, kind) query's values, or the reason it has none."""
        errors = []
        for key in self.increases:
            read = reads.get(key, NOT_READ)
            if isinstance(read, str):
                errors.append(f"{key[0]} {key[1]}: {read}")
        if errors:
            self.missing = "; ".join(errors)
            return
        for variant in VARIANTS:
            if self._counting(variant, reads):
                for kind in KINDS:
                    read = reads[variant, kind]
                    assert not isinstance(read, str)
                    self.increases[variant, kind].update(read)
        self.missing = ""
        self.seen = Totals(self._count("canary"), self._count("stable"))
        self._consume()

    def _counting(self, variant: str, reads: Mapping[tuple[str, str], Read]) -> bool:
        """Do `variant`'s counters count yet? Not at the step's first look: Prometheus then
        answers with the scrape before the step began, and the next scrape's batch would
        mix the previous step's requests (at its share) with this one's. The base is the first
        look whose values differ from it (a scrape since the step began), and from then on
        every batch is this step's alone."""
        if variant in self._first and self._first[variant] is None:
            return True
        values = tuple(_values(reads[variant, kind]) for kind in KINDS)
        if variant not in self._first:
            self._first[variant] = values
            return False
        if values == self._first[variant]:
            return False
        self._first[variant] = None
        return True

    def _count(self, variant: str) -> RateCount:
        bad, total = self.increases[variant, "bad"].value, self.increases[variant, "total"].value
        return RateCount(max(total, bad), bad)

    def _consume(self) -> None:
        n_c = self.seen.canary.requests - self.consumed.canary.requests
        n_s = self.seen.stable.requests - self.consumed.stable.requests
        if n_c <= 0 or n_s <= 0:
            return  # an arm without requests in the batch: its events wait for the next
        x_c = max(0, self.seen.canary.events - self.consumed.canary.events)
        x_s = max(0, self.seen.stable.events - self.consumed.stable.events)
        add_batch(self.profile, x_c, x_s, n_c / (n_c + n_s))
        self.consumed = self.seen

    def _short(self, *, both: bool) -> int:
        """How much `total` is still missing for `min_total` on the canary, and on stable too
        (`both`: rolling back; or advancing in a step that has stable traffic)."""
        canary, stable = self.seen.canary.requests, self.seen.stable.requests
        least = min(canary, stable) if both or not self.canary_only else canary
        return max(0, self.config.min_total - least)

    def evidence(self) -> CheckEvidence:
        loglik = self.profile.loglik
        log_roll, log_adv = log(1.0 / self.levels.rollback), log(1.0 / self.levels.advance)
        canary, stable = self.seen.canary, self.seen.stable
        roll = rollback_log_e(self.grid, loglik)
        floor = floor_log_e(canary.requests, canary.events, self.config.min_rate)
        advance = advance_log_e(self.grid, loglik)
        if self.config.min_rate > 0.0:
            advance = either_log_e(advance, floor)
        self._crossed = self._crossed or (not self._short(both=True) and roll >= log_roll)
        self._shown = self._shown or (not self._short(both=False) and advance >= log_adv)
        total = canary.requests + stable.requests
        share = canary.requests / total if total else 0.0
        tier = TierEvidence("prometheus", canary, stable, share, Source.CONCURRENT)
        return CheckEvidence(
            check=self.config.check,
            canary=canary,
            baseline=stable,
            tiers=(tier,),
            e_value=capped_exp(roll),
            threshold=1.0 / self.levels.rollback,
            advance_e_value=capped_exp(advance),
            advance_threshold=1.0 / self.levels.advance,
            ratio_low=lower_bound(self.grid, loglik, log_roll),
            ratio_high=upper_bound(self.grid, loglik, log_adv),
            tolerance=1.0 + self.config.max_increase,
            concentration=Concentration(0.0, 0),
            capped=0,
            requests_needed=0 if self._shown else self._needed(log_adv, advance, floor),
            crossed=self._crossed,
            non_inferior=self._shown,
            floor=self.config.min_rate,
            floor_e_value=capped_exp(floor),
        )

    def _needed(self, log_adv: float, advance: float, floor: float) -> int:
        """More canary requests (of `total`) to show non-inferiority at the current rates: the
        nearer of `min_total` plus the floor test's need (-1: nothing to size it by)."""
        canary, short = self.seen.canary, self._short(both=False)
        if advance >= log_adv:
            return short
        rate = canary.rate if canary.requests else 0.0
        drift = floor_drift(rate, self.config.min_rate)
        if drift <= 0.0:
            return -1
        nats = log_adv + log(1.0 / FLOOR_WEIGHT) - floor
        return max(short, ceil(nats / drift))


class PromChecks:
    """The prometheus checks of one step (one `CountCheck` each), and their missing data."""

    __slots__ = ("checks",)

    def __init__(
        self,
        configs: tuple[PromCheck, ...],
        levels: Levels,
        expected_shares: Mapping[str, float] = MappingProxyType({}),
    ) -> None:
        """`expected_shares`: the canary share the routing plan gives each tier (all of them
        whole: the step has no stable traffic)."""
        shares = expected_shares.values()
        only = bool(shares) and min(shares) >= WHOLE_SHARE
        self.checks = {c.name: CountCheck(c, levels, canary_only=only) for c in configs}

    def record(self, name: str, reads: Mapping[tuple[str, str], Read]) -> None:
        check = self.checks.get(name)
        if check is not None:
            check.record(reads)

    def evidence(self) -> tuple[CheckEvidence, ...]:
        return tuple(c.evidence() for c in self.checks.values())

    def missing(self) -> dict[str, str]:
        """Each check without data at its latest look, with the reason."""
        return {c.config.check: c.missing for c in self.checks.values() if c.missing}

    def hold(self, assessment: Assessment) -> Assessment:
        """`assessment`, held back while any check has no data: a healthy verdict becomes
        inconclusive, and an inconclusive one says why; a rollback is left as it is."""
        missing = self.missing()
        if not missing or assessment.verdict is Verdict.DEGRADED:
            return assessment
        why = "; ".join(f"{check}: {reason}" for check, reason in missing.items())
        summary, needed = f"{NO_DATA} ({why})", -1  # -1: no count of requests brings data
        if assessment.verdict is Verdict.INCONCLUSIVE:
            summary, needed = f"{summary}; {assessment.summary}", assessment.requests_needed
        return replace(
            assessment,
            verdict=Verdict.INCONCLUSIVE,
            check=next(iter(missing)),
            summary=summary,
            requests_needed=needed,
        )
