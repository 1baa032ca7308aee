"""Traffic: a tier's canary share, a short recent window of outcomes, and a per-id event cap.

- `ShareEstimate`: the canary's share of a tier's requests, a running mean that becomes an
  exponentially weighted mean over about `SHARE_MEMORY` requests, so it follows a drifting tenant
  mix. It is read *before* the request that carries an event is added (predictable). It also
  says whether the tier is (as good as) wholly on the canary (`whole`): from the plan's share
  while too few requests have been seen to measure it, from the measurement after.
- `RecentWindow`: requests and events of the last `WINDOW_S` seconds in half-second slots (the
  guardrail's windows); constant memory.
- `IncidentWatch`: is the baseline (stable arm) in an incident? Its error rate over the recent
  window against its rate in calm periods; judged once per slot, from stable requests only, so
  it cannot depend on what the canary does.
- `IdCap`: at most `ID_CAP` events per id per `ID_WINDOW_S` count as evidence, so one tenant (or
  an attacker) cannot make a verdict alone; it also reports how concentrated events are. At most
  `ID_TRACKED` ids are remembered per window; beyond that new ids pass uncounted.
Ids are the caller's hashes; nothing here leaves this module but counts and shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

SHARE_MEMORY: Final = 4096
SHARE_MIN_PER_ARM: Final = 25  # requests on each arm before a tier's share is used
# A tier with at least this canary share is judged as wholly on the canary.
WHOLE_SHARE: Final = 0.98
WINDOW_S: Final = 2.0
_SLOT_S: Final = 0.5
_SLOTS: Final = int(WINDOW_S / _SLOT_S)
# The baseline's recent error rate over its calm rate that is an incident.
INCIDENT_FACTOR: Final = 4.0
INCIDENT_MIN_EVENTS: Final = 10
INCIDENT_MAX_S: Final = 120.0  # an "incident" that lasts longer is the new normal
CALM_MIN: Final = 200  # stable requests that form the first calm rate
ID_WINDOW_S: Final = 10.0
ID_CAP: Final = 10
ID_TRACKED: Final = 50_000


class ShareEstimate:
    """The canary's share of one population's requests in one tier; `prior`: the share the
    routing plan gives the tier (None: unknown)."""

    __slots__ = ("_n", "canary", "prior", "stable", "value")

    def __init__(self, prior: float | None = None) -> None:
        self.value = 0.0
        self.canary = 0
        self.stable = 0
        self.prior = prior
        self._n = 0

    def add(self, canary: bool) -> None:
        if self._n < SHARE_MEMORY:
            self._n += 1
        if canary:
            self.canary += 1
            self.value += (1.0 - self.value) / self._n
        else:
            self.stable += 1
            self.value -= self.value / self._n

    @property
    def ready(self) -> bool:
        """Both arms seen often enough for the share to be used as evidence."""
        return self.canary >= SHARE_MIN_PER_ARM and self.stable >= SHARE_MIN_PER_ARM

    @property
    def whole(self) -> bool:
        """Is the tier (as good as) wholly on the canary, its stable arm too thin to compare
        with? Yes while it has no stable request at all; measured once the canary arm has
        SHARE_MIN_PER_ARM requests (a few stable ones, in flight from the previous step, do not
        make a control); in between, the plan's share says (no plan: not yet known, no)."""
        if self.stable == 0:
            return True
        if self.canary >= SHARE_MIN_PER_ARM and self.value >= WHOLE_SHARE:
            return True
        if self.ready or self.prior is None:
            return False
        return self.prior >= WHOLE_SHARE


class RecentWindow:
    """Requests and events over the last WINDOW_S seconds."""

    __slots__ = ("_events", "_requests", "_slot", "events", "requests")

    def __init__(self) -> None:
        self._requests = [0] * _SLOTS
        self._events = [0] * _SLOTS
        self._slot = 0
        self.requests = 0
        self.events = 0

    def add(self, event: bool, now: float) -> None:
        slot = int(now / _SLOT_S)
        if slot != self._slot:
            self._advance(slot)
        i = slot % _SLOTS
        self._requests[i] += 1
        self.requests += 1
        if event:
            self._events[i] += 1
            self.events += 1

    def counts(self, now: float) -> tuple[int, int]:
        """(requests, events) of the last WINDOW_S seconds as of `now`."""
        slot = int(now / _SLOT_S)
        if slot > self._slot:
            self._advance(slot)
        return self.requests, self.events

    def _advance(self, slot: int) -> None:
        for old in range(max(self._slot + 1, slot - _SLOTS + 1), slot + 1):
            i = old % _SLOTS
            self.requests -= self._requests[i]
            self.events -= self._events[i]
            self._requests[i] = 0
            self._events[i] = 0
        self._slot = slot


class IncidentWatch:
    """Flags an incident when the stable arm fails INCIDENT_FACTOR times its calm rate over the
    last WINDOW_S, judged at each slot boundary. A finished slot joins the calm rate only when
    no incident is flagged; the first CALM_MIN requests always do (the reference must come from
    somewhere), and an incident flagged for INCIDENT_MAX_S becomes the new normal."""

    __slots__ = (
        "_errors",
        "_flagged",
        "_requests",
        "_slot",
        "active",
        "calm_errors",
        "calm_requests",
    )

    def __init__(self) -> None:
        self._requests = [0] * _SLOTS
        self._errors = [0] * _SLOTS
        self._slot = 0
        self._flagged = 0  # consecutive slots flagged
        self.calm_requests = 0
        self.calm_errors = 0
        self.active = False

    def add(self, error: bool, now: float) -> None:
        """One stable request."""
        slot = int(now / _SLOT_S)
        if slot != self._slot:
            self._judge(slot)
        i = slot % _SLOTS
        self._requests[i] += 1
        if error:
            self._errors[i] += 1

    def _judge(self, slot: int) -> None:
        requests, errors = sum(self._requests), sum(self._errors)
        calm = (self.calm_errors + 1) / (self.calm_requests + 1)
        limit = max(INCIDENT_MIN_EVENTS, INCIDENT_FACTOR * calm * requests)
        warm = self.calm_requests >= CALM_MIN
        self.active = warm and errors >= limit
        self._flagged = self._flagged + 1 if self.active else 0
        if self._flagged * _SLOT_S > INCIDENT_MAX_S:
            self.calm_requests, self.calm_errors = requests, errors
            self.active, self._flagged = False, 0
        elif not self.active:
            self.calm_requests += self._requests[self._slot % _SLOTS]
            self.calm_errors += self._errors[self._slot % _SLOTS]
        for old in range(max(self._slot + 1, slot - _SLOTS + 1), slot + 1):
            self._requests[old % _SLOTS] = self._errors[old % _SLOTS] = 0
        self._slot = slot


@dataclass(frozen=True, slots=True)
class Concentration:
    """How much of the canary's recent events came from its single busiest id."""

    top_share: float
    events: int


class IdCap:
    """Caps the events any one id contributes per window (ids are opaque integers)."""

    __slots__ = ("_counts", "_previous", "_start", "capped")

    def __init__(self, now: float) -> None:
        self._counts: dict[int, int] = {}
        self._previous: dict[int, int] = {}
        self._start = now
        self.capped = 0

    def admit(self, id_hash: int, canary: bool, now: float) -> bool:
        """Count one event of `id_hash`; False when the id is over its cap."""
        self._roll(now)
        key = id_hash << 1 | canary
        seen = self._counts.get(key, 0)
        if seen or len(self._counts) < ID_TRACKED:
            self._counts[key] = seen + 1
        if seen >= ID_CAP:
            self.capped += 1
            return False
        return True

    def over(self, id_hash: int, canary: bool, now: float) -> bool:
        """Has `id_hash` used up its cap in this window (without counting anything)?"""
        self._roll(now)
        return self._counts.get(id_hash << 1 | canary, 0) >= ID_CAP

    def _roll(self, now: float) -> None:
        if now - self._start >= ID_WINDOW_S:
            self._previous, self._counts, self._start = self._counts, {}, now

    def concentration(self) -> Concentration:
        """Concentration of canary events over the current and the previous window."""
        merged: dict[int, int] = {}
        for counts in (self._previous, self._counts):
            for key, n in counts.items():
                if key & 1:
                    merged[key] = merged.get(key, 0) + n
        total = sum(merged.values())
        return Concentration(max(merged.values()) / total if total else 0.0, total)
