"""What a state store keeps: one record per rollout, and the decision journal's entries.

Records are plain frozen dataclasses with an exact JSON form (orjson); stores never keep
anything else. A record holds every fact needed to resume (Argo Rollouts / Flagger habit):
status, step, when the step started (wall clock, for people and restarts), the hash of the
rollout spec it belongs to, and a version that grows by one per transition (compare-and-set).
Journal entries never hold raw tenant ids or tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.machine import Status
from proxy.errors import StateError


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    service: str
    spec_hash: str
    status: Status
    step: int
    version: int
    step_started: float  # wall-clock seconds since the epoch
    updated: float

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "spec_hash": self.spec_hash,
            "status": self.status.value,
            "step": self.step,
            "version": self.version,
            "step_started": self.step_started,
            "updated": self.updated,
        }

    @classmethod
    def from_json(cls, data: object) -> RolloutRecord:
        if not isinstance(data, Mapping):
            raise StateError("rollout record is not an object")
        try:
            return cls(
                service=str(data["service"]),
                spec_hash=str(data["spec_hash"]),
                status=Status(data["status"]),
                step=_int(data["step"]),
                version=_int(data["version"]),
                step_started=float(data["step_started"]),
                updated=float(data["updated"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"malformed rollout record: {exc}") from exc


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One applied transition with its actor and evidence."""

    time: float  # wall clock
    service: str
    actor: str  # "controller", or "admin:<source address>"
    action: str  # the machine event: advance, degraded, guardrail, promote, ...
    from_status: str
    from_step: int
    to_status: str
    to_step: int
    version: int
    reason: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "service": self.service,
            "actor": self.actor,
            "action": self.action,
            "from": {"status": self.from_status, "step": self.from_step},
            "to": {"status": self.to_status, "step": self.to_step},
            "version": self.version,
            "reason": self.reason,
            "evidence": dict(self.evidence),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JournalEntry:
        return cls(
            time=float(data["time"]),
            service=str(data["service"]),
            actor=str(data["actor"]),
            action=str(data["action"]),
            from_status=str(data["from"]["status"]),
            from_step=int(data["from"]["step"]),
            to_status=str(data["to"]["status"]),
            to_step=int(data["to"]["step"]),
            version=int(data["version"]),
            reason=str(data.get("reason", "")),
            evidence=dict(data.get("evidence", {})),
        )


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    """One release of a service: what CI said it is, how it is rolled out, how it ended."""

    id: str
    service: str
    version: str
    status: str  # proxy.core.releases.ReleaseStatus
    actor: str
    started: float  # wall clock
    canary: tuple[str, ...]  # the release's upstreams (URLs)
    salt: str
    steps: tuple[Mapping[str, Any], ...] = ()  # as given (empty: the service's configured)
    change: Mapping[str, Any] = field(default_factory=dict)
    checks: tuple[Mapping[str, Any], ...] = ()  # the release's own checks, as given
    color: str | None = None  # blue/green: the pool the release runs on
    stable_before: tuple[str, ...] = ()  # the stable pool when it started
    released: tuple[str, ...] = ()  # completed: the previous stable pool, free to tear down
    rollout_version: int = 0  # the rollout record's version when the release's rollout began
    ended: float | None = None
    outcome: str = ""  # in words
    verdicts: tuple[Mapping[str, Any], ...] = ()  # per transition, with the evidence

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "version": self.version,
            "status": self.status,
            "actor": self.actor,
            "started": self.started,
            "ended": self.ended,
            "canary": list(self.canary),
            "salt": self.salt,
            "steps": [dict(s) for s in self.steps],
            "change": dict(self.change),
            "checks": [dict(c) for c in self.checks],
            "color": self.color,
            "stable_before": list(self.stable_before),
            "released": list(self.released),
            "rollout_version": self.rollout_version,
            "outcome": self.outcome,
            "verdicts": [dict(v) for v in self.verdicts],
        }

    @classmethod
    def from_json(cls, data: object) -> ReleaseRecord:
        if not isinstance(data, Mapping):
            raise StateError("release record is not an object")
        try:
            ended = data.get("ended")
            color = data.get("color")
            return cls(
                id=str(data["id"]),
                service=str(data["service"]),
                version=str(data["version"]),
                status=str(data["status"]),
                actor=str(data["actor"]),
                started=float(data["started"]),
                ended=None if ended is None else float(ended),
                canary=tuple(str(u) for u in data["canary"]),
                salt=str(data["salt"]),
                steps=tuple(dict(s) for s in data.get("steps", [])),
                change=dict(data.get("change", {})),
                checks=tuple(dict(c) for c in data.get("checks", [])),
                color=None if color is None else str(color),
                stable_before=tuple(str(u) for u in data.get("stable_before", [])),
                released=tuple(str(u) for u in data.get("released", [])),
                rollout_version=_int(data.get("rollout_version", 0)),
                outcome=str(data.get("outcome", "")),
                verdicts=tuple(dict(v) for v in data.get("verdicts", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"malformed release record: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ReleaseBook:
    """A service's releases (newest first, bounded) and which pool is stable, as promoted by
    the last completed release. `version` grows by one per write (compare-and-set)."""

    service: str
    version: int
    releases: tuple[ReleaseRecord, ...] = ()
    active: str | None = None  # the id of the release in progress
    stable: tuple[str, ...] = ()  # empty: the config file's upstreams.stable
    live: str | None = None  # blue/green: the stable pool's color (None: the config's)

    def current(self) -> ReleaseRecord | None:
        return next((r for r in self.releases if r.id == self.active), None)

    def find(self, key: str) -> ReleaseRecord | None:
        """A release by id, or by version."""
        return next((r for r in self.releases if key in (r.id, r.version)), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "version": self.version,
            "active": self.active,
            "stable": list(self.stable),
            "live": self.live,
            "releases": [r.to_json() for r in self.releases],
        }

    @classmethod
    def from_json(cls, data: object) -> ReleaseBook:
        if not isinstance(data, Mapping):
            raise StateError("release book is not an object")
        try:
            active, live = data.get("active"), data.get("live")
            return cls(
                service=str(data["service"]),
                version=_int(data["version"]),
                active=None if active is None else str(active),
                stable=tuple(str(u) for u in data.get("stable", [])),
                live=None if live is None else str(live),
                releases=tuple(ReleaseRecord.from_json(r) for r in data.get("releases", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"malformed release book: {exc}") from exc
