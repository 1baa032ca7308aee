"""The rollout state machine: step(state, event, ...) -> Transition. Pure; no I/O, no clock.

Theory of operation
-------------------
A rollout is at a step index and in one of four statuses:

    progressing --ADVANCE/PROMOTE--> progressing (next step) ... --> completed
         |   ^                                                      |
     PAUSE  RESUME                                                  |
         v   |                                                      |
        paused                                                      |
    any of them --ABORT / DEGRADED / GUARDRAIL--> rolled_back        |
    any of them --RESTART--> progressing at step 0  <---------------+

Rules, all in the table below (one place, h11's habit):
- Automatic moves (ADVANCE from the analysis, DEGRADED rollbacks) happen only while
  progressing; `paused` freezes them. A guardrail breach rolls back whatever the status, except
  a rollout that is already over.
- People may PROMOTE while paused (the rollout stays paused, one step further), ABORT at any
  time before the rollback, and RESTART from anywhere.
- Advancing past the last step completes the rollout; the canary keeps 100% of its cohort.
- A rolled-back rollout exposes nothing: its routing plan is inactive.
An event that does not apply is either ignored (automatic events: they raced with a person) or
refused (manual events: the caller gets the reason, the admin API answers 409).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Status(StrEnum):
    PROGRESSING = "progressing"
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"


class Event(StrEnum):
    ADVANCE = "advance"  # automatic: the step held its observation period with evidence
    DEGRADED = "degraded"  # automatic: the analysis found the canary worse than baseline
    GUARDRAIL = "guardrail"  # automatic: catastrophic failure, rolled back at once
    PROMOTE = "promote"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    RESTART = "restart"


AUTOMATIC = frozenset({Event.ADVANCE, Event.DEGRADED, Event.GUARDRAIL})


class Move(StrEnum):
    """What an event does to the step index and status."""

    NEXT = "next"  # one step further, or completed after the last
    NEXT_KEEP_STATUS = "next_keep_status"  # promote while paused
    TO = "to"  # change status only
    RESTART = "restart"  # step 0, progressing
    IGNORE = "ignore"
    REFUSE = "refuse"


S, E = Status, Event
# (status, event) -> (move, target status for TO, reason when ignored or refused)
TABLE: dict[tuple[Status, Event], tuple[Move, Status | None, str]] = {
    (S.PROGRESSING, E.ADVANCE): (Move.NEXT, None, ""),
    (S.PROGRESSING, E.PROMOTE): (Move.NEXT, None, ""),
    (S.PROGRESSING, E.DEGRADED): (Move.TO, S.ROLLED_BACK, ""),
    (S.PROGRESSING, E.GUARDRAIL): (Move.TO, S.ROLLED_BACK, ""),
    (S.PROGRESSING, E.PAUSE): (Move.TO, S.PAUSED, ""),
    (S.PROGRESSING, E.RESUME): (Move.REFUSE, None, "the rollout is not paused"),
    (S.PROGRESSING, E.ABORT): (Move.TO, S.ROLLED_BACK, ""),
    (S.PROGRESSING, E.RESTART): (Move.RESTART, None, ""),
    (S.PAUSED, E.ADVANCE): (Move.IGNORE, None, "paused"),
    (S.PAUSED, E.PROMOTE): (Move.NEXT_KEEP_STATUS, None, ""),
    (S.PAUSED, E.DEGRADED): (Move.IGNORE, None, "paused"),
    (S.PAUSED, E.GUARDRAIL): (Move.TO, S.ROLLED_BACK, ""),
    (S.PAUSED, E.PAUSE): (Move.REFUSE, None, "the rollout is already paused"),
    (S.PAUSED, E.RESUME): (Move.TO, S.PROGRESSING, ""),
    (S.PAUSED, E.ABORT): (Move.TO, S.ROLLED_BACK, ""),
    (S.PAUSED, E.RESTART): (Move.RESTART, None, ""),
    (S.COMPLETED, E.ADVANCE): (Move.IGNORE, None, "completed"),
    (S.COMPLETED, E.PROMOTE): (Move.REFUSE, None, "the rollout is already completed"),
    (S.COMPLETED, E.DEGRADED): (Move.IGNORE, None, "completed"),
    (S.COMPLETED, E.GUARDRAIL): (Move.IGNORE, None, "completed"),
    (S.COMPLETED, E.PAUSE): (Move.REFUSE, None, "the rollout is completed"),
    (S.COMPLETED, E.RESUME): (Move.REFUSE, None, "the rollout is completed"),
    (S.COMPLETED, E.ABORT): (Move.TO, S.ROLLED_BACK, ""),
    (S.COMPLETED, E.RESTART): (Move.RESTART, None, ""),
    (S.ROLLED_BACK, E.ADVANCE): (Move.IGNORE, None, "rolled back"),
    (S.ROLLED_BACK, E.PROMOTE): (Move.REFUSE, None, "the rollout was rolled back; restart it"),
    (S.ROLLED_BACK, E.DEGRADED): (Move.IGNORE, None, "rolled back"),
    (S.ROLLED_BACK, E.GUARDRAIL): (Move.IGNORE, None, "rolled back"),
    (S.ROLLED_BACK, E.PAUSE): (Move.REFUSE, None, "the rollout was rolled back"),
    (S.ROLLED_BACK, E.RESUME): (Move.REFUSE, None, "the rollout was rolled back"),
    (S.ROLLED_BACK, E.ABORT): (Move.REFUSE, None, "the rollout was already rolled back"),
    (S.ROLLED_BACK, E.RESTART): (Move.RESTART, None, ""),
}


@dataclass(frozen=True, slots=True)
class RolloutState:
    """Everything needed to resume a rollout; `version` grows by one per transition."""

    status: Status
    step: int
    steps: int  # how many steps the spec has
    version: int = 0


@dataclass(frozen=True, slots=True)
class Transition:
    """The outcome of an event: `applied` with the new state, or not, with the reason."""

    event: Event
    before: RolloutState
    after: RolloutState
    applied: bool
    refused: bool
    reason: str


def initial(steps: int) -> RolloutState:
    return RolloutState(Status.PROGRESSING, 0, steps)


def step(state: RolloutState, event: Event) -> Transition:
    """Apply `event` to `state` by the table."""
    move, target, reason = TABLE[(state.status, event)]
    if move in (Move.IGNORE, Move.REFUSE):
        return Transition(event, state, state, False, move is Move.REFUSE, reason)
    return Transition(event, state, _moved(state, move, target), True, False, "")


def _moved(state: RolloutState, move: Move, target: Status | None) -> RolloutState:
    version = state.version + 1
    if move is Move.RESTART:
        return replace(state, status=Status.PROGRESSING, step=0, version=version)
    if move is Move.TO:
        assert target is not None
        return replace(state, status=target, version=version)
    if state.step + 1 >= state.steps:
        return replace(state, status=Status.COMPLETED, version=version)
    status = state.status if move is Move.NEXT_KEEP_STATUS else Status.PROGRESSING
    return replace(state, status=status, step=state.step + 1, version=version)
