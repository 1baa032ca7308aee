"""Simulate the controller's statistics in virtual time and print the targets table of issue 3.

    python loadtests/simulate.py                  # 100 runs per regression, 50 A/A (< 3 min)
    python loadtests/simulate.py --full           # 100 and 300 A/A: the false-rollback line
    python loadtests/simulate.py --quick          # a handful of runs, for CI (< 30 s)
    python loadtests/simulate.py --runs 200 --aa-runs 500 --json out.json

Times are on 2 idle cores; an A/A rollout costs 1.5-4 s of CPU, and --full walks three
families of 300 (plain, with Server-Timing checks, with a counter check), about 25 minutes.
The false-rollback bound (1%) can only be checked on at least 300 A/A rollouts: use --full (or
--aa-runs 300 or more) for that line.

Every simulated request goes through `StepAnalysis.observe`, and `assess` is called once per
virtual second, as the controller does. Traffic: 1,000 requests/s from 20,000 users over four
tiers with their own error rates (0.5% overall) and latencies (log-normal, sigma 0.5); a user is
on the canary when its bucket is below the step's percent, so a tier's canary share is what
routing gives, not exactly the step's percent. The rollout is ROLLOUT; its length and the step's
index set the step's share of the false-rollback rate. Runs are seeded (`random.Random(seed)`),
so the table is the same on every machine and for any number of workers.

Regression scenarios run one step with a bad canary from its start (after healthy steps: the
baselines they would leave) and measure the time to roll back. The A/A scenario walks whole
rollouts with a healthy canary and a 60 s incident in which both arms fail at 20% (starting in
the first 30 s of the first or the second step); a step advances when `observe` has passed and
the verdict is healthy; the last step only has to hold for `observe`. Advance times are reported
over the steps the incident did not touch, and separately for those it did (from its end).

The service's own signals: in the Server-Timing scenarios every response carries `db;dur=` and
`cache;desc=`, checked on db time and miss rate; in the app-counter scenarios the service
counts its failures per variant in counters that Prometheus scrapes every 15 s, read by a
prometheus check every second (so the evidence arrives in 15 s batches). Each has its A/A
family (the same signals on both arms, the same incident), 300 rollouts with --full.

The oracle is the time a one-sided two-proportion z-test at alpha 0.01 with 50% power needs,
with its sample size chosen knowing the rates: n = z(0.99)^2 * p0 * (1 + 1/r) / (p1 - p0)^2
canary requests, r = stable/canary requests. For advancing, p1 = (1 + max_increase) * p0.
For latency, p0 = 1% of baseline requests above the baseline p99 and p1 = the canary's share of
requests above (1 + max_increase) times it: the question the latency check answers.
For app counters the oracle sees every request's outcome at once: the scrape interval's delay
is part of the measured time, not of the oracle's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from bisect import bisect_right
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from math import exp, log
from pathlib import Path
from random import Random
from statistics import NormalDist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.core.analysis import AnalysisConfig, RateCount, StepAnalysis, TierBaseline, Verdict
from proxy.core.promql import PromCheck
from proxy.core.servertiming import TimingEntry
from proxy.core.timingcheck import ServerTimingCheck

RATE = 1000  # requests per virtual second
ROLLOUT = (5.0, 25.0, 50.0, 100.0)  # percent per step
OBSERVE_S = 30.0
STEP_LIMIT_S = 900.0  # a step still undecided then counts as "stuck"
SIGMA = 0.5  # log-normal latency spread
INCIDENT_S, INCIDENT_RATE = 60.0, 0.20
CONFIG = AnalysisConfig()
# The Server-Timing scenarios: every response carries `db;dur=<ms>`, log-normal (sigma DB_SIGMA)
# around its tier's DB_MEDIAN_MS, and `cache;desc=miss` (MISS_RATE of them) or `cache;desc=hit`;
# the service is checked on its median db time (+20% tolerated) and its miss rate (+10%).
DB_CHECK = ServerTimingCheck("db", "duration", 0.2)
MISS_CHECK = ServerTimingCheck("cache", "rate", 0.1, desc="miss")
TIMING_CONFIG = replace(CONFIG, server_timing=(DB_CHECK, MISS_CHECK))
DB_SIGMA = 0.5
DB_MEDIAN_MS = (4.0, 8.0, 12.0, 20.0)  # per tier, as TIERS
MISS_RATE = 0.2
_HIT = TimingEntry("cache", None, "hit")
_MISS = TimingEntry("cache", None, "miss")
# The app-counter scenarios: the service counts its own failures (say, logins refused) per
# variant, APP_BAD_RATE of requests, in two counters Prometheus scrapes every SCRAPE_S; the
# analysis reads them every virtual second (the controller's interval), so what it sees moves
# in batches of SCRAPE_S seconds of traffic. Checked with the prometheus check's defaults.
APP_CHECK = PromCheck("app", "", "", bad="app_failures_total", total="app_requests_total")
COUNTER_CONFIG = replace(CONFIG, prometheus=(APP_CHECK,))
APP_BAD_RATE = 0.02
SCRAPE_S = 15.0
Z99 = NormalDist().inv_cdf(0.99)


@dataclass(frozen=True)
class Tier:
    name: str
    weight: float
    error_rate: float
    median_s: float


TIERS = (
    Tier("internal", 0.05, 0.003, 0.040),
    Tier("free", 0.55, 0.006, 0.050),
    Tier("paid", 0.28, 0.004, 0.080),
    Tier("enterprise", 0.12, 0.004, 0.120),
)
STABLE_ERROR_RATE = sum(t.weight * t.error_rate for t in TIERS)


@dataclass(frozen=True)
class Scenario:
    name: str
    percent: float
    error_factor: float = 1.0  # canary error rate / stable's
    latency_factor: float = 1.0  # canary latency / stable's
    target_s: float = 0.0
    timing: bool = False  # responses carry Server-Timing, and the service checks it
    db_factor: float = 1.0  # canary db time / stable's
    miss_factor: float = 1.0  # canary cache miss rate / stable's ...
    miss_tier: str = ""  # ... in this tier only ("": every tier)
    counters: bool = False  # the service exports failure counters, and the service checks them
    app_factor: float = 1.0  # canary app failure rate / stable's


REGRESSIONS = (
    Scenario("5% errors on a 5% step", 5.0, error_factor=0.05 / STABLE_ERROR_RATE, target_s=5.0),
    Scenario("1.0% errors on a 25% step", 25.0, error_factor=2.0, target_s=20.0),
    Scenario("1.0% errors on a 5% step", 5.0, error_factor=2.0, target_s=70.0),
    Scenario("p99 latency +50% on a 25% step", 25.0, latency_factor=1.5, target_s=30.0),
    Scenario("Server-Timing db +30% on a 25% step", 25.0, target_s=30, timing=True, db_factor=1.3),
    Scenario("Server-Timing db +30% on a 5% step", 5.0, target_s=60, timing=True, db_factor=1.3),
    Scenario(
        "Server-Timing miss rate 2x, free tier only, 5% step",
        5.0,
        target_s=10.0,
        timing=True,
        miss_factor=2.0,
        miss_tier="free",
    ),
    Scenario(
        "App counter failures 2x on a 25% step, 15 s scrapes",
        25.0,
        target_s=30.0,
        counters=True,
        app_factor=2.0,
    ),
    Scenario(
        "App counter failures 2x on a 5% step, 15 s scrapes",
        5.0,
        target_s=60.0,
        counters=True,
        app_factor=2.0,
    ),
)


_NAMES = tuple(t.name for t in TIERS)
_RATES = tuple(t.error_rate for t in TIERS)
_MEDIANS = tuple(t.median_s for t in TIERS)
_USERS = 20_000
_USER_TIER = tuple(  # users 0.._USERS laid out by tier weight
    min(
        bisect_right(
            [sum(t.weight for t in TIERS[: i + 1]) for i in range(len(TIERS))], u / _USERS
        ),
        len(TIERS) - 1,
    )
    for u in range(_USERS)
)
_SPREAD = tuple(exp(SIGMA * NormalDist().inv_cdf((i + 0.5) / 8192)) for i in range(8192))


@dataclass
class World:
    """One run's traffic: who is on the canary, what fails, how slow."""

    rng: Random
    buckets: list[int]  # per user, 0..9999: on the canary when below percent * 100
    error_factor: float
    latency_factor: float
    incident: tuple[float, float] = (-1.0, -1.0)
    timing: Scenario | None = None  # responses carry Server-Timing, as this scenario says
    counters: Counters | None = None  # the service's own failure counters

    @classmethod
    def seeded(
        cls,
        seed: int,
        error_factor: float = 1.0,
        latency_factor: float = 1.0,
        timing: Scenario | None = None,
        app_factor: float | None = None,
    ) -> World:
        """`app_factor`: the service exports failure counters, the canary's at this factor."""
        rng = Random(seed)
        buckets = [rng.randrange(10_000) for _ in range(_USERS)]
        counters = None
        if app_factor is not None:
            counters = Counters.started(rng, app_factor)
        return cls(rng, buckets, error_factor, latency_factor, timing=timing, counters=counters)


@dataclass
class Counters:
    """The service's `app_failures_total` and `app_requests_total` per variant: their values
    now (`live`) and at Prometheus' latest scrape (`scraped`), which is what a query reads."""

    factor: float  # canary failure rate / stable's
    live: dict[tuple[str, str], float]  # (variant, kind) -> value
    scraped: dict[tuple[str, str], float]
    next_scrape: float

    @classmethod
    def started(cls, rng: Random, factor: float) -> Counters:
        """Counters that have run for a while (their values since the process started), with
        the scrape at a random phase of its interval."""
        live = {
            (v, k): float(rng.randrange(10_000, 20_000) * (50 if k == "total" else 1))
            for v in ("stable", "canary")
            for k in ("bad", "total")
        }
        return cls(factor, live, dict(live), rng.uniform(0.0, SCRAPE_S))

    def count(self, canary: bool, bad: bool) -> None:
        variant = "canary" if canary else "stable"
        self.live[variant, "total"] += 1.0
        if bad:
            self.live[variant, "bad"] += 1.0

    def read(self, analysis: StepAnalysis, now: float) -> None:
        """Scrape when due, then give the analysis what a query would return now."""
        while now >= self.next_scrape:
            self.scraped = dict(self.live)
            self.next_scrape += SCRAPE_S
        reads = {key: {"{}": value} for key, value in self.scraped.items()}
        analysis.prometheus.record(APP_CHECK.name, reads)


_THIRTEEN = (13,) * RATE


def run_second(world: World, analysis: StepAnalysis, percent: float, start: float) -> float:
    """Feed one virtual second of requests; the guardrail's trip time, or -1."""
    rng, buckets, cut = world.rng, world.buckets, percent * 100
    rnd = rng.random
    users = [int(rnd() * _USERS) for _ in _THIRTEEN]
    draws = [rnd() for _ in _THIRTEEN]
    spreads = [_SPREAD[b] for b in map(rng.getrandbits, _THIRTEEN)]
    in_incident = world.incident[0] <= start < world.incident[1]
    factor = 1.0 if in_incident else world.error_factor
    slower, observe = world.latency_factor, analysis.observe
    db, misses = _timing_draws(world, len(users))
    scenario, counters = world.timing, world.counters
    app = [rnd() for _ in _THIRTEEN] if counters is not None else []
    for i, user in enumerate(users):
        k = _USER_TIER[user]
        canary = buckets[user] < cut
        rate = INCIDENT_RATE if in_incident else _RATES[k]
        latency = _MEDIANS[k] * spreads[i]
        if canary:
            rate *= factor
            latency *= slower
        now = start + i / RATE
        timing = None
        if scenario is not None:
            timing = _timing(scenario, k, canary, db[i], misses[i])
        if counters is not None:
            app_rate = INCIDENT_RATE if in_incident else APP_BAD_RATE
            counters.count(canary, app[i] < app_rate * (counters.factor if canary else 1.0))
        tripped = observe(
            tier=_NAMES[k],
            canary=canary,
            error=draws[i] < rate,
            latency_s=latency,
            path="/",
            id_hash=user,
            now=now,
            timing=timing,
        )
        if tripped is not None:
            return now
    return -1.0


_DB_SPREAD = tuple(exp(DB_SIGMA * NormalDist().inv_cdf((i + 0.5) / 8192)) for i in range(8192))


def _timing_draws(world: World, n: int) -> tuple[list[float], list[float]]:
    """Per request, the db time's log-normal factor and the cache draw (empty: no
    Server-Timing in this world)."""
    if world.timing is None:
        return [], []
    rng = world.rng
    spreads = [_DB_SPREAD[b] for b in map(rng.getrandbits, (13,) * n)]
    return spreads, [rng.random() for _ in range(n)]


def _timing(
    scenario: Scenario, tier: int, canary: bool, spread: float, draw: float
) -> tuple[TimingEntry, ...]:
    """One response's Server-Timing entries."""
    dur = DB_MEDIAN_MS[tier] * spread * (scenario.db_factor if canary else 1.0)
    miss = MISS_RATE
    if canary and scenario.miss_tier in ("", _NAMES[tier]):
        miss *= scenario.miss_factor
    return (TimingEntry("db", dur), _MISS if draw < miss else _HIT)


@dataclass(frozen=True)
class StepResult:
    verdict: str  # "degraded" | "healthy" | "inconclusive" (last step) | "stuck"
    seconds: float  # until the step ended
    shown_s: float  # until the first healthy verdict (inf: never)
    after_incident_s: float = float("nan")  # seconds from the incident's end to the step's end


def run_step(
    world: World,
    analysis: StepAnalysis,
    percent: float,
    start: float,
    done: Callable[[Verdict, float], bool],
) -> StepResult:
    """Run a step until a rollback, until `done(verdict, elapsed)`, or STEP_LIMIT_S."""
    t, shown = start, float("inf")
    while t - start < STEP_LIMIT_S:
        tripped = run_second(world, analysis, percent, t)
        if tripped >= 0:
            return StepResult("degraded", tripped - start, shown)
        t += 1.0
        if world.counters is not None:
            world.counters.read(analysis, t)
        verdict = analysis.assess(t).verdict
        if verdict is Verdict.DEGRADED:
            return StepResult("degraded", t - start, shown)
        if verdict is Verdict.HEALTHY:
            shown = min(shown, t - start)
        if done(verdict, t - start):
            return StepResult(verdict.value, t - start, shown)
    return StepResult("stuck", t - start, shown)


def healthy_baselines(previous_percent: float) -> dict[str, TierBaseline]:
    """What a healthy previous step of OBSERVE_S would leave (counts at the expected rates)."""
    quantile = NormalDist().inv_cdf(CONFIG.latency_quantile)
    baselines = {}
    for tier in TIERS:
        n = int(OBSERVE_S * RATE * tier.weight * (1 - previous_percent / 100))
        baselines[tier.name] = TierBaseline(
            errors=RateCount(n, round(n * tier.error_rate)),
            slow=RateCount(n, round(n * (1 - CONFIG.latency_quantile))),
            latency_threshold_s=tier.median_s * exp(SIGMA * quantile),
        )
    return baselines


def regression_run(scenario: Scenario, seed: int) -> StepResult:
    """One step with a bad canary from its start, after healthy steps (their baselines)."""
    timing = scenario if scenario.timing else None
    app = scenario.app_factor if scenario.counters else None
    world = World.seeded(seed, scenario.error_factor, scenario.latency_factor, timing, app)
    step = ROLLOUT.index(scenario.percent)
    baselines = healthy_baselines(ROLLOUT[step - 1]) if step else {}
    config = scenario_config(scenario)
    analysis = step_analysis(baselines, 0.0, step, config)
    return run_step(world, analysis, scenario.percent, 0.0, lambda v, s: False)


def scenario_config(scenario: Scenario) -> AnalysisConfig:
    """The service's checks in this scenario: the defaults, plus those its signals feed."""
    if scenario.timing:
        return TIMING_CONFIG
    return COUNTER_CONFIG if scenario.counters else CONFIG


def step_analysis(
    baselines: dict[str, TierBaseline],
    started: float,
    step: int,
    config: AnalysisConfig = CONFIG,
) -> StepAnalysis:
    """The analysis of ROLLOUT's step, told the plan's share of every tier (as the controller
    does)."""
    shares = {t.name: ROLLOUT[step] / 100 for t in TIERS}
    return StepAnalysis(
        config,
        baselines=baselines,
        started=started,
        step=step,
        steps=len(ROLLOUT),
        expected_shares=shares,
    )


def aa_run(seed: int, signals: str = "") -> list[StepResult]:
    """A whole healthy rollout with one shared incident; the result of each step reached.

    The incident starts within the first 30 s of step `seed % 2` (5% or 25%). Steps do not
    advance while the baseline is in an incident, so it cannot follow the rollout into the
    last step, which has no stable traffic to tell a shared incident from a regression.
    `signals`: "timing", every response carries Server-Timing db and cache (the same on both
    arms) and the service is also checked on them (TIMING_CONFIG); "counters", the service
    exports failure counters (the same rate on both arms, and in the incident too), checked by
    a prometheus check on 15 s scrapes (COUNTER_CONFIG).
    """
    scenario = Scenario("A/A", 0.0, timing=signals == "timing", counters=signals == "counters")
    timing = scenario if scenario.timing else None
    world = World.seeded(seed, timing=timing, app_factor=1.0 if scenario.counters else None)
    config = scenario_config(scenario)
    baselines: dict[str, TierBaseline] = {}
    results: list[StepResult] = []
    t = 0.0
    for index, percent in enumerate(ROLLOUT):
        if index == seed % 2:
            begin = t + world.rng.uniform(0.0, 30.0)
            world.incident = (begin, begin + INCIDENT_S)
        analysis = step_analysis(baselines, t, index, config)
        last = index == len(ROLLOUT) - 1
        result = run_step(world, analysis, percent, t, _advance_rule(last))
        end = world.incident[1]
        if t < end <= t + result.seconds:
            result = replace(result, after_incident_s=t + result.seconds - end)
        results.append(result)
        if result.verdict in ("degraded", "stuck"):
            break
        baselines = dict(analysis.tier_baselines())
        t += result.seconds
    return results


def _advance_rule(last: bool) -> Callable[[Verdict, float], bool]:
    if last:
        return lambda verdict, elapsed: elapsed >= OBSERVE_S
    return lambda verdict, elapsed: verdict is Verdict.HEALTHY and elapsed >= OBSERVE_S


def oracle_s(p0: float, p1: float, percent: float) -> float:
    """Seconds a fixed-size one-sided z-test (alpha 0.01, power 50%) needs at this step."""
    share = percent / 100
    ratio = (1 - share) / share
    n = Z99**2 * p0 * (1 + 1 / ratio) / (p1 - p0) ** 2
    return n / (RATE * share)


def scenario_oracle(scenario: Scenario) -> float:
    if scenario.counters:
        # As if every request's outcome were seen at once (no scrape batches).
        return oracle_s(APP_BAD_RATE, APP_BAD_RATE * scenario.app_factor, scenario.percent)
    if scenario.miss_factor != 1.0:
        # The miss rate of one tier (or all): that tier's requests only.
        weight = sum(t.weight for t in TIERS if scenario.miss_tier in ("", t.name))
        p1 = MISS_RATE * scenario.miss_factor
        return oracle_s(MISS_RATE, p1, scenario.percent) / weight
    if scenario.db_factor != 1.0:
        # Baseline db times above their q-quantile vs canary ones above (1 + max_increase) times it.
        shift = log(scenario.db_factor / (1 + DB_CHECK.max_increase)) / DB_SIGMA
        z = NormalDist().inv_cdf(DB_CHECK.quantile)
        p1 = 1 - NormalDist().cdf(z - shift)
        return oracle_s(1 - DB_CHECK.quantile, p1, scenario.percent)
    if scenario.latency_factor != 1.0:
        p0 = 1 - CONFIG.latency_quantile
        shift = log(scenario.latency_factor / (1 + CONFIG.latency_max_increase)) / SIGMA
        p1 = 1 - NormalDist().cdf(NormalDist().inv_cdf(CONFIG.latency_quantile) - shift)
        return oracle_s(p0, p1, scenario.percent)
    p0 = STABLE_ERROR_RATE
    return oracle_s(p0, p0 * scenario.error_factor, scenario.percent)


def advance_oracle(percent: float) -> float:
    p0 = STABLE_ERROR_RATE
    return oracle_s(p0, p0 * (1 + CONFIG.error_max_increase), percent)


def counter_advance_oracle(percent: float) -> float:
    """The slower of the errors check and the counter check (APP_BAD_RATE, +20% tolerated)."""
    p0 = APP_BAD_RATE
    counter = oracle_s(p0, p0 * (1 + APP_CHECK.max_increase), percent)
    return max(advance_oracle(percent), counter)


def _quantile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank); inf counts as a value, nan when empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass(frozen=True)
class Row:
    scenario: str
    runs: int
    done: float  # fraction of runs that rolled back / showed non-inferiority / advanced / held
    median_s: float
    p90_s: float
    oracle_s: float
    ratio: float
    target_s: float
    met: bool


def _row(name: str, times: list[float], runs: int, oracle: float, target: float) -> Row:
    median = _quantile(times, 0.5)
    done = sum(t != float("inf") for t in times) / max(runs, 1)
    ratio = median / oracle if oracle == oracle else float("nan")
    return Row(
        name, runs, done, median, _quantile(times, 0.9), oracle, ratio, target, median <= target
    )


def regression_row(scenario: Scenario, results: list[StepResult]) -> Row:
    times = [r.seconds if r.verdict == "degraded" else float("inf") for r in results]
    return _row(scenario.name, times, len(results), scenario_oracle(scenario), scenario.target_s)


def aa_rows(
    runs: list[list[StepResult]],
    label: str = "A/A",
    oracle_of: Callable[[float], float] = advance_oracle,
) -> list[Row]:
    """Per step: the runs the incident did not touch, then those it ended in (from its end).
    `oracle_of(percent)`: the time the slowest of the family's checks needs to advance."""
    rows, nan = [], float("nan")
    for index, percent in enumerate(ROLLOUT[:-1]):
        reached = [run[index] for run in runs if len(run) > index]
        clean = [r for r in reached if r.after_incident_s != r.after_incident_s]
        hit = [r for r in reached if r.after_incident_s == r.after_incident_s]
        oracle = oracle_of(percent)
        target = max(OBSERVE_S, 3 * oracle)
        name = f"{label} {percent:g}% step"
        shown = [r.shown_s for r in clean]
        rows.append(_row(f"{name}: shows non-inferiority", shown, len(clean), oracle, 3 * oracle))
        rows.append(_row(f"{name}: advances", _advanced(clean), len(clean), oracle, target))
        if hit:
            after = _advanced(hit, after_incident=True)
            rows.append(_row(f"{name}, incident: advances after", after, len(hit), oracle, target))
    reached = [run[-1] for run in runs if len(run) == len(ROLLOUT)]
    held = [r.seconds if r.verdict != "degraded" else float("inf") for r in reached]
    rows.append(_row(f"{label} {ROLLOUT[-1]:g}% step: holds", held, len(reached), nan, OBSERVE_S))
    return rows


def _advanced(results: list[StepResult], after_incident: bool = False) -> list[float]:
    """Seconds to advance (from the step's start, or from the incident's end); inf: never."""
    return [
        (r.after_incident_s if after_incident else r.seconds)
        if r.verdict == "healthy"
        else float("inf")
        for r in results
    ]


def _fmt(value: float) -> str:
    if value != value:
        return "-"
    return "inf" if value == float("inf") else f"{value:.1f}"


def print_table(rows: list[Row], rollbacks: int, aa_runs: int) -> None:
    head = (
        f"{'scenario':<52} {'runs':>5} {'done':>5} {'median s':>9} {'p90 s':>7} "
        f"{'oracle s':>9} {'ratio':>6} {'target s':>9}  met"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.scenario:<52} {r.runs:>5} {r.done:>5.0%} {_fmt(r.median_s):>9} "
            f"{_fmt(r.p90_s):>7} {_fmt(r.oracle_s):>9} {_fmt(r.ratio):>6} "
            f"{_fmt(r.target_s):>9}  {'yes' if r.met else 'NO'}"
        )
    rate, bound = rollbacks / aa_runs, CONFIG.false_rollback_rate
    verdict = "yes" if rate <= bound else "NO"
    print(
        f"A/A false rollbacks (60 s incident, both arms at {INCIDENT_RATE:.0%} errors): "
        f"{rollbacks}/{aa_runs} = {rate:.2%}, bound {bound:.0%}: {verdict}"
    )


def _regression_job(job: tuple[int, int]) -> StepResult:
    return regression_run(REGRESSIONS[job[0]], job[1])


def _timing_aa_job(seed: int) -> list[StepResult]:
    return aa_run(seed, "timing")


def _counter_aa_job(seed: int) -> list[StepResult]:
    return aa_run(seed, "counters")


def signal_aa_count(asked: int | None, args: argparse.Namespace, aa_runs: int) -> int:
    """A/A rollouts with the Server-Timing checks, or with the counter check: as many as the
    others with --full or when `asked`, else at most SIGNAL_AA_RUNS (the default run stays
    short)."""
    if asked is not None:
        return asked
    if args.quick:
        return 2
    return aa_runs if args.full else min(aa_runs, SIGNAL_AA_RUNS)


RUNS, AA_RUNS = 100, 50  # the default run: under 3 minutes on 2 cores
FULL_AA_RUNS = 300  # enough A/A rollouts to check the false-rollback bound
QUICK = (5, 4)
SIGNAL_AA_RUNS = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument(
        "--runs", type=int, default=RUNS, help=f"runs per regression scenario ({RUNS})"
    )
    parser.add_argument(
        "--aa-runs",
        type=int,
        default=None,
        help=f"A/A rollouts ({AA_RUNS}; --full: {FULL_AA_RUNS}, the fewest that can check the "
        "1%% false-rollback bound)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"{FULL_AA_RUNS} A/A rollouts, for the false-rollback line (about 10 min on 2 cores)",
    )
    parser.add_argument(
        "--timing-aa-runs",
        type=int,
        default=None,
        help=f"A/A rollouts with Server-Timing db and cache checks (default: {SIGNAL_AA_RUNS}, "
        "--full: as many as --aa-runs)",
    )
    parser.add_argument(
        "--counter-aa-runs",
        type=int,
        default=None,
        help=f"A/A rollouts with a prometheus counter check on 15 s scrapes (default: "
        f"{SIGNAL_AA_RUNS}, --full: as many as --aa-runs)",
    )
    parser.add_argument("--quick", action="store_true", help="a handful of runs (CI smoke, < 30 s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    return parser.parse_args(argv)


def run_counts(args: argparse.Namespace) -> tuple[int, int]:
    """(runs per regression, A/A rollouts) the arguments ask for."""
    if args.quick:
        return QUICK
    if args.aa_runs is not None:
        return args.runs, args.aa_runs
    return args.runs, FULL_AA_RUNS if args.full else AA_RUNS


@dataclass(frozen=True)
class Family:
    """A/A rollouts with the checks of the service's own signals."""

    what: str
    label: str
    job: Callable[[int], list[StepResult]]
    first_seed: int
    oracle_of: Callable[[float], float]


SIGNALS = (
    Family("Server-Timing db and cache checks", "A/A S-T", _timing_aa_job, 20_000, advance_oracle),
    Family(
        "a prometheus counter check on 15 s scrapes",
        "A/A counters",
        _counter_aa_job,
        30_000,
        counter_advance_oracle,
    ),
)


def _rollbacks(runs: list[list[StepResult]]) -> int:
    return sum(any(r.verdict == "degraded" for r in run) for run in runs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs, aa_runs = run_counts(args)
    jobs = [(i, seed) for i in range(len(REGRESSIONS)) for seed in range(runs)]
    asked = (args.timing_aa_runs, args.counter_aa_runs)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        flat = list(pool.map(_regression_job, jobs, chunksize=4))
        aa = list(pool.map(aa_run, range(10_000, 10_000 + aa_runs), chunksize=2))
        signal_aa = []
        for family, n in zip(SIGNALS, asked, strict=True):
            seeds = range(family.first_seed, family.first_seed + signal_aa_count(n, args, aa_runs))
            signal_aa.append(list(pool.map(family.job, seeds, chunksize=2)))
    rows = [regression_row(s, flat[i * runs : (i + 1) * runs]) for i, s in enumerate(REGRESSIONS)]
    rows += aa_rows(aa)
    for family, results in zip(SIGNALS, signal_aa, strict=True):
        rows += aa_rows(results, family.label, family.oracle_of) if results else []
    rollout = " -> ".join(f"{p:g}%" for p in ROLLOUT)
    print(
        f"rollout {rollout} (observe {OBSERVE_S:g} s), {RATE:,} req/s, stable errors "
        f"{STABLE_ERROR_RATE:.2%}, {runs} runs per regression, {aa_runs} A/A rollouts\n"
    )
    print_table(rows, _rollbacks(aa), aa_runs)
    for family, results in zip(SIGNALS, signal_aa, strict=True):
        if results:
            n, bad = len(results), _rollbacks(results)
            print(f"A/A false rollbacks with {family.what}: {bad}/{n} = {bad / n:.2%}")
    if args.quick:
        print("(--quick: a smoke run; too few runs to judge the targets)")
    elif aa_runs < FULL_AA_RUNS:
        print(f"(under {FULL_AA_RUNS} A/A rollouts the false-rollback line is indicative: --full)")
    if args.json:
        payload = {
            "rows": [asdict(r) for r in rows],
            "aa_rollbacks": _rollbacks(aa),
            "aa_runs": aa_runs,
            "timing_aa_rollbacks": _rollbacks(signal_aa[0]),
            "timing_aa_runs": len(signal_aa[0]),
            "counter_aa_rollbacks": _rollbacks(signal_aa[1]),
            "counter_aa_runs": len(signal_aa[1]),
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
