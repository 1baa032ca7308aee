"""The release rules: start decisions, salts, outcomes, which pool is stable."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.releases import (
    Known,
    ReleaseStatus,
    StartKind,
    derive_salt,
    drift,
    idle_color,
    keep_newest,
    on_start,
    outcome_of,
    stable_pool,
)

DONE = Known("a", "1.0", ReleaseStatus.COMPLETED)
RUNNING = Known("b", "1.1", ReleaseStatus.PROGRESSING)


def test_the_same_version_again_is_the_release_already_there() -> None:
    assert on_start([RUNNING, DONE], "1.0", supersede=False) == on_start(
        [RUNNING, DONE], "1.0", supersede=True
    )
    assert on_start([RUNNING, DONE], "1.1", supersede=False).release == "b"
    assert on_start([RUNNING], "1.1", supersede=False).kind is StartKind.EXISTING


def test_another_version_while_one_runs_conflicts_unless_it_supersedes() -> None:
    assert on_start([RUNNING, DONE], "2.0", supersede=False).kind is StartKind.CONFLICT
    decision = on_start([RUNNING, DONE], "2.0", supersede=True)
    assert (decision.kind, decision.supersedes) == (StartKind.START, "b")
    assert on_start([DONE], "2.0", supersede=False).kind is StartKind.START
    assert on_start([], "2.0", supersede=False).supersedes is None


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_salts_are_stable_per_version_and_differ_between_versions(a: str, b: str) -> None:
    assert derive_salt("shop", a) == derive_salt("shop", a)
    if a != b:
        assert derive_salt("shop", a) != derive_salt("shop", b)
    assert derive_salt("shop", a) != derive_salt("cart", a)


def test_outcomes_in_the_rollouts_words() -> None:
    assert outcome_of("completed", "advance") is ReleaseStatus.COMPLETED
    assert outcome_of("rolled_back", "degraded") is ReleaseStatus.ROLLED_BACK
    assert outcome_of("rolled_back", "guardrail") is ReleaseStatus.ROLLED_BACK
    assert outcome_of("rolled_back", "abort") is ReleaseStatus.ABORTED
    assert outcome_of("rolled_back", "abort", superseded=True) is ReleaseStatus.SUPERSEDED
    assert outcome_of("paused", "pause") is ReleaseStatus.PAUSED
    assert outcome_of("progressing", "advance") is ReleaseStatus.PROGRESSING


def test_the_store_stable_pool_wins_and_a_difference_is_said() -> None:
    configured = ["http://a:1"]
    assert stable_pool(configured, None) == ("http://a:1",)
    assert stable_pool(configured, ["http://b:2"]) == ("http://b:2",)
    assert drift(configured, None) is None
    assert drift(configured, ["http://a:1"]) is None
    message = drift(configured, ["http://b:2"])
    assert message is not None
    assert "http://b:2" in message
    assert "http://a:1" in message


def test_blue_green_targets_the_pool_not_stable() -> None:
    assert idle_color("blue", None) == "green"
    assert idle_color("blue", "green") == "blue"


@given(st.lists(st.integers()), st.integers(min_value=1, max_value=50))
def test_history_is_bounded_and_keeps_the_newest(items: list[int], keep: int) -> None:
    kept = keep_newest(items, keep)
    assert len(kept) == min(len(items), keep)
    assert kept == items[: len(kept)]
