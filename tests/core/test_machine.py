"""The rollout state machine over every (status, event) pair, plus properties over sequences."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.machine import AUTOMATIC, Event, RolloutState, Status, initial, step

P, PA, C, R = Status.PROGRESSING, Status.PAUSED, Status.COMPLETED, Status.ROLLED_BACK
STEPS = 4
MID = 1  # a step that is neither the first nor the last

# (status, event) -> (status after, step after) for a rollout at step MID, or "ignored"/"refused".
EXPECTED: dict[tuple[Status, Event], tuple[Status, int] | str] = {
    (P, Event.ADVANCE): (P, MID + 1),
    (P, Event.PROMOTE): (P, MID + 1),
    (P, Event.DEGRADED): (R, MID),
    (P, Event.GUARDRAIL): (R, MID),
    (P, Event.PAUSE): (PA, MID),
    (P, Event.RESUME): "refused",
    (P, Event.ABORT): (R, MID),
    (P, Event.RESTART): (P, 0),
    (PA, Event.ADVANCE): "ignored",
    (PA, Event.PROMOTE): (PA, MID + 1),
    (PA, Event.DEGRADED): "ignored",
    (PA, Event.GUARDRAIL): (R, MID),
    (PA, Event.PAUSE): "refused",
    (PA, Event.RESUME): (P, MID),
    (PA, Event.ABORT): (R, MID),
    (PA, Event.RESTART): (P, 0),
    (C, Event.ADVANCE): "ignored",
    (C, Event.PROMOTE): "refused",
    (C, Event.DEGRADED): "ignored",
    (C, Event.GUARDRAIL): "ignored",
    (C, Event.PAUSE): "refused",
    (C, Event.RESUME): "refused",
    (C, Event.ABORT): (R, MID),
    (C, Event.RESTART): (P, 0),
    (R, Event.ADVANCE): "ignored",
    (R, Event.PROMOTE): "refused",
    (R, Event.DEGRADED): "ignored",
    (R, Event.GUARDRAIL): "ignored",
    (R, Event.PAUSE): "refused",
    (R, Event.RESUME): "refused",
    (R, Event.ABORT): "refused",
    (R, Event.RESTART): (P, 0),
}


def test_the_expectation_covers_every_pair() -> None:
    assert set(EXPECTED) == {(s, e) for s in Status for e in Event}


def test_every_status_event_pair() -> None:
    for (status, event), expected in EXPECTED.items():
        before = RolloutState(status, MID, STEPS, version=7)
        result = step(before, event)
        if isinstance(expected, str):
            assert not result.applied, (status, event)
            assert result.refused == (expected == "refused"), (status, event)
            assert result.after == before
            assert result.reason
        else:
            assert result.applied, (status, event)
            assert (result.after.status, result.after.step) == expected, (status, event)
            assert result.after.version == 8


def test_advancing_past_the_last_step_completes() -> None:
    last = RolloutState(P, STEPS - 1, STEPS)
    assert step(last, Event.ADVANCE).after.status is C
    assert step(last, Event.PROMOTE).after.step == STEPS - 1
    paused_last = RolloutState(PA, STEPS - 1, STEPS)
    assert step(paused_last, Event.PROMOTE).after.status is C


def test_automatic_events_are_never_refused() -> None:
    for status in Status:
        for event in AUTOMATIC:
            assert not step(RolloutState(status, MID, STEPS), event).refused


@given(st.lists(st.sampled_from(list(Event)), max_size=60))
def test_any_sequence_keeps_the_invariants(events: list[Event]) -> None:
    state = initial(STEPS)
    for event in events:
        result = step(state, event)
        after = result.after
        assert 0 <= after.step < STEPS
        assert after.version == state.version + (1 if result.applied else 0)
        if after.step > state.step:
            assert event in (Event.ADVANCE, Event.PROMOTE)
            assert after.step == state.step + 1
        if after.step < state.step:
            assert event is Event.RESTART
        state = after
