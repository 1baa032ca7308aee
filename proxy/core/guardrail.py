"""Guardrail: roll back a canary that fails at `max_error_rate` or more at once, on the request
that shows it, without the share estimate or an interval (theory in analysis.py).

Per tier it keeps the last WINDOW_S seconds of canary and stable outcomes. A look (on every
failing canary request) pools the recent canary requests of the tiers that have a control: the
tier's recent stable requests when there are at least `min_requests` of them, else its
pre-exposure rate bound (outside incidents). It trips when those canary requests are at least
`min_requests`, fail at `max_error_rate` or more, and fail far too often for their controls:
requests * kl(failure rate, control bound) >= log(1 / (half the look's level)), where the
control bound is the requests-weighted mean of the tiers' upper bounds (recent stable counts at
the other half of the look's level, split per tier). Look j (the step's j-th canary request) is
held to level / (j * (j + 1)), so all looks of a step together spend at most `level`.

No single id can trip it (rollback abuse, RELIABILITY 3.3): each id counts for at most
`ID_CAP` canary requests per `WINDOW_S` (its first ones, failing or not: which requests count
does not depend on their outcome, so the test above stays valid for those it sees), and a
trip needs failures from at least `MIN_FAILING_IDS` distinct ids among them. One id sending
most of the canary's requests, all failing, then adds at most ID_CAP failures against
everybody else's successes; a dead canary fails for every id, and its first failing requests
come from as many ids as requests. A canary whose traffic comes from fewer ids than that (a
step exposing one or two tenants) is left to the checks, whose per-id cap lets every id
contribute evidence over time. Ids are the caller's hashes (the routing bucket). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import log
from typing import Final

from proxy.core.baseline import RateCount, kl, rate_upper
from proxy.core.traffic import WINDOW_S, RecentWindow

TAIL_SPLIT: Final = 0.5  # of a look's level for the canary's tail; the rest for the stable bounds
ID_CAP: Final = 5  # canary requests one id adds to the guardrail per WINDOW_S
MIN_FAILING_IDS: Final = 3  # distinct ids among the failing canary requests a trip needs
ID_TRACKED: Final = 50_000  # ids remembered per window; beyond that new ids count uncapped


@dataclass(frozen=True, slots=True)
class Trip:
    """Why the guardrail tripped: the pooled recent canary counts and their controls."""

    canary: RateCount  # recent canary requests of the tiers with a control
    control: RateCount  # those tiers' recent stable requests (or pre-exposure counts)
    bound: float  # the control rate's upper bound the canary was tested against
    statistic: float  # requests * kl(canary rate, bound), nats
    needed: float  # log(1 / the look's tail level), nats


@dataclass(frozen=True, slots=True)
class _Row:
    canary: RateCount
    control: RateCount
    bound: float | None  # fixed (pre-exposure) bound; None: from the recent stable counts


class _TierWindows:
    __slots__ = ("canary", "stable")

    def __init__(self) -> None:
        self.canary = RecentWindow()
        self.stable = RecentWindow()


class _IdWindow:
    """Canary requests and failures per id over one WINDOW_S, and the window before."""

    __slots__ = ("counts", "failing", "previous", "start")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.failing: set[int] = set()
        self.previous: set[int] = set()  # the failing ids of the window before
        self.start = 0.0

    def admit(self, id_hash: int, error: bool, now: float) -> bool:
        """Count one canary request of `id_hash`; False when the id is over its cap."""
        if now - self.start >= WINDOW_S:
            self.previous, self.failing = self.failing, set()
            self.counts, self.start = {}, now
        seen = self.counts.get(id_hash, 0)
        if seen >= ID_CAP:
            return False
        if seen or len(self.counts) < ID_TRACKED:
            self.counts[id_hash] = seen + 1
        if error:
            self.failing.add(id_hash)
        return True

    def enough_failing(self) -> bool:
        """Failures from MIN_FAILING_IDS distinct ids, over this window and the one before
        (the canary windows reach that far back)."""
        failing = self.failing
        if len(failing) >= MIN_FAILING_IDS:
            return True
        extra = len(failing)
        for id_hash in self.previous:
            if id_hash not in failing:
                extra += 1
                if extra >= MIN_FAILING_IDS:
                    return True
        return False


class Guardrail:
    """The guardrail of one step; `references` maps a tier to its pre-exposure counts and
    their rate's upper bound (valid at the rollback level they were drawn at)."""

    __slots__ = (
        "_ids",
        "_looks",
        "_tiers",
        "level",
        "max_error_rate",
        "min_requests",
        "references",
    )

    def __init__(
        self,
        max_error_rate: float,
        min_requests: int,
        level: float,
        references: Mapping[str, tuple[RateCount, float]],
    ) -> None:
        self.max_error_rate = max_error_rate
        self.min_requests = min_requests
        self.level = level
        self.references = references
        self._tiers: dict[str, _TierWindows] = {}
        self._looks = 0  # canary requests of the step so far
        self._ids = _IdWindow()

    def add(self, tier: str, canary: bool, error: bool, now: float, id_hash: int) -> None:
        windows = self._tiers.get(tier)
        if windows is None:
            windows = self._tiers[tier] = _TierWindows()
        if canary:
            self._looks += 1
            if self._ids.admit(id_hash, error, now):
                windows.canary.add(error, now)
        else:
            windows.stable.add(error, now)

    def look(self, now: float, incident: bool) -> Trip | None:
        """After a failing canary request: the trip, or None."""
        rows = self._rows(now, incident)
        if not self._breached(rows) or not self._ids.enough_failing():
            return None
        j = self._looks
        level = self.level / (j * (j + 1))
        return self._test(rows, level)

    def _rows(self, now: float, incident: bool) -> list[_Row]:
        rows = []
        for tier, windows in self._tiers.items():
            canary = RateCount(*windows.canary.counts(now))
            if not canary.requests:
                continue
            stable = RateCount(*windows.stable.counts(now))
            reference = self.references.get(tier)
            if stable.requests >= self.min_requests:
                rows.append(_Row(canary, stable, None))
            elif reference is not None and not incident:
                rows.append(_Row(canary, *reference))
        return rows

    def _breached(self, rows: list[_Row]) -> bool:
        """At least min_requests canary requests, failing at max_error_rate or more."""
        total = sum((r.canary for r in rows), RateCount())
        return (
            total.requests >= self.min_requests
            and total.events >= self.max_error_rate * total.requests
        )

    def _test(self, rows: list[_Row], level: float) -> Trip | None:
        recent = sum(r.bound is None for r in rows)
        per_bound = level * (1.0 - TAIL_SPLIT) / max(recent, 1)
        bounds = [rate_upper(r.control, per_bound) if r.bound is None else r.bound for r in rows]
        kept = [(r, b) for r, b in zip(rows, bounds, strict=True) if b < self.max_error_rate]
        if not self._breached([r for r, _ in kept]):
            return None
        canary = sum((r.canary for r, _ in kept), RateCount())
        bound = sum(r.canary.requests * b for r, b in kept) / canary.requests
        statistic = canary.requests * kl(canary.rate, bound)
        needed = log(1.0 / (level * TAIL_SPLIT))
        if canary.rate <= bound or statistic < needed:
            return None
        control = sum((r.control for r, _ in kept), RateCount())
        return Trip(canary, control, bound, statistic, needed)
