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
