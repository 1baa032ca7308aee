"""Releases: the rules of starting, ending and promoting one, as plain functions. Pure.

A release is one version of a service deployed on its own upstreams ("the canary") and
judged step by step by a rollout. These rules decide:

- what a start request does (`on_start`): the same version again is the release already
  there (a retried CI job never starts two); another version while one is active is a
  conflict, unless it supersedes the active one (rolled back first);
- which salt a release routes by (`derive_salt`): its own, from service and version, so the
  same users are not always the first exposed;
- how a release ends (`outcome_of`), from the status of its rollout and the event that ended it;
- which pool is stable (`stable_pool`): the store's record once a release completed, else
  the config file's; and how that is said when they differ (`drift`);
- for a blue/green pair of pools, which pool a release without its own upstreams targets
  (`idle_color`) and which pool completion makes stable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

T = TypeVar("T")


class ReleaseStatus(StrEnum):
    PROGRESSING = "progressing"
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"  # on evidence: the analysis or a guardrail
    ABORTED = "aborted"  # by a person
    SUPERSEDED = "superseded"  # rolled back to start a newer version


ACTIVE = frozenset({ReleaseStatus.PROGRESSING, ReleaseStatus.PAUSED})
FAILED = frozenset({ReleaseStatus.ROLLED_BACK, ReleaseStatus.ABORTED, ReleaseStatus.SUPERSEDED})

BLUE_GREEN = ("blue", "green")


class StartKind(StrEnum):
    EXISTING = "existing"  # the same version: answer with the release already there
    CONFLICT = "conflict"  # another version is active and the request does not supersede it
    START = "start"  # start it (after rolling back `supersedes`, when set)


@dataclass(frozen=True, slots=True)
class StartDecision:
    kind: StartKind
    release: str | None = None  # EXISTING: that release's id; CONFLICT: the active one's
    supersedes: str | None = None  # START: the active release rolled back first


@dataclass(frozen=True, slots=True)
class Known:
    """What `on_start` needs to know of a release already recorded."""

    id: str
    version: str
    status: ReleaseStatus


def on_start(releases: Sequence[Known], version: str, supersede: bool) -> StartDecision:
    """What a request to start `version` does, given the service's recorded releases."""
    for known in releases:
        if known.version == version:
            return StartDecision(StartKind.EXISTING, known.id)
    active = next((k for k in releases if k.status in ACTIVE), None)
    if active is None:
        return StartDecision(StartKind.START)
    if not supersede:
        return StartDecision(StartKind.CONFLICT, active.id)
    return StartDecision(StartKind.START, supersedes=active.id)


def derive_salt(service: str, version: str) -> str:
    """The routing salt of a release that names none: stable for a (service, version), and
    unrelated between versions, so each release exposes a different first set of users."""
    digest = hashlib.sha256(f"release\0{service}\0{version}".encode()).hexdigest()
    return f"{service}-{digest[:16]}"


def release_id(service: str, version: str, started: float) -> str:
    """A short id, unique per start of a version (a version is started at most once)."""
    digest = hashlib.sha256(f"{service}\0{version}\0{started!r}".encode()).hexdigest()
    return digest[:12]


def outcome_of(rollout_status: str, ended_by: str, superseded: bool = False) -> ReleaseStatus:
    """The release status that its rollout's status means (`ended_by`: the machine event of
    the last transition: abort, degraded, guardrail, advance, promote, ...)."""
    if rollout_status == "completed":
        return ReleaseStatus.COMPLETED
    if rollout_status == "paused":
        return ReleaseStatus.PAUSED
    if rollout_status == "rolled_back":
        if superseded:
            return ReleaseStatus.SUPERSEDED
        return ReleaseStatus.ABORTED if ended_by == "abort" else ReleaseStatus.ROLLED_BACK
    return ReleaseStatus.PROGRESSING


def stable_pool(configured: Sequence[str], stored: Sequence[str] | None) -> tuple[str, ...]:
    """Which upstreams are stable: what the store recorded when a release completed (it
    survives restarts, reloads and failover), else the config file's `upstreams.stable`."""
    return tuple(stored) if stored else tuple(configured)


def drift(configured: Sequence[str], stored: Sequence[str] | None) -> str | None:
    """In words, when the store's stable pool is not the config file's (None when equal)."""
    if not stored or sorted(stored) == sorted(configured):
        return None
    return (
        f"stable is {', '.join(stored)} (promoted by a release, kept in the state store), "
        f"not the config file's upstreams.stable {', '.join(configured)}"
    )


def other_color(color: str) -> str:
    """The other pool of a blue/green pair."""
    return BLUE_GREEN[1] if color == BLUE_GREEN[0] else BLUE_GREEN[0]


def live_color(configured: str, stored: str | None) -> str:
    """Which pool of a blue/green pair is stable: the store's, else the config file's."""
    return stored if stored in BLUE_GREEN else configured


def idle_color(configured: str, stored: str | None) -> str:
    """The pool a release without upstreams of its own targets: the one not stable."""
    return other_color(live_color(configured, stored))


def keep_newest(items: Sequence[T], keep: int) -> list[T]:
    """At most `keep` items of a newest-first list (the release history's bound)."""
    return list(items[: max(keep, 1)])
