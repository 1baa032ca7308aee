"""The per-request feed from the data plane into each rollout's analysis.

It runs once for every request served, so it is compiled with the request path (setup.py).
The controller owns it: it shares the controller's rollouts, holds whether this process judges
them (`deciding`), and calls the controller back when the guardrail trips.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from proxy.core.analysis import Assessment, classify_status
from proxy.core.machine import Status
from proxy.core.servertiming import TimingEntry
from proxy.dataplane import Evidence

if TYPE_CHECKING:
    from proxy.rollout import Rollout

# A finished rollout (or one that has not started) gathers no evidence.
_OBSERVED: Final = frozenset({Status.PROGRESSING, Status.PAUSED})


class AnalysisFeed(Evidence):
    """Feeds each finished request to its rollout's analysis while the rollout runs."""

    __slots__ = ("deciding", "now", "on_trip", "rollouts")

    def __init__(
        self,
        rollouts: dict[str, Rollout],  # a dict, so that compiled `get` is a dict lookup
        now: Callable[[], float],
        on_trip: Callable[[str, Assessment], None],
        *,
        deciding: bool,
    ) -> None:
        self.rollouts = rollouts
        self.now = now
        self.on_trip = on_trip
        self.deciding = deciding

    def observe(
        self,
        service: str,
        tier: str,
        canary: bool,
        status: int,
        latency_s: float,
        path: str,
        id_hash: int,
        proxy_generated: bool,
    ) -> None:
        """One finished request (never awaits)."""
        self._feed(service, tier, canary, status, latency_s, path, id_hash, proxy_generated, None)

    def observe_timed(
        self,
        service: str,
        tier: str,
        canary: bool,
        status: int,
        latency_s: float,
        path: str,
        id_hash: int,
        timing: tuple[TimingEntry, ...],
    ) -> None:
        """One upstream response with its Server-Timing entries (never awaits)."""
        self._feed(service, tier, canary, status, latency_s, path, id_hash, False, timing)

    def _feed(
        self,
        service: str,
        tier: str,
        canary: bool,
        status: int,
        latency_s: float,
        path: str,
        id_hash: int,
        proxy_generated: bool,
        timing: tuple[TimingEntry, ...] | None,
    ) -> None:
        rollout = self.rollouts.get(service)
        if rollout is None or rollout.state.status not in _OBSERVED:
            return
        analysis = rollout.analysis
        error = classify_status(
            status, analysis.config.error_statuses, proxy_generated=proxy_generated
        )
        tripped = analysis.observe(
            tier=tier,
            canary=canary,
            error=error,
            latency_s=latency_s,
            path=path,
            id_hash=id_hash,
            now=self.now(),
            timed=not proxy_generated,
            timing=timing,
        )
        if tripped is not None and not rollout.guardrail_pending and self.deciding:
            rollout.guardrail_pending = True
            rollout.last = tripped
            self.on_trip(service, tripped)

    def compared(
        self,
        service: str,
        route: str,
        differing: tuple[str, ...],
        id_hash: int,
        tier: str = "default",
    ) -> None:
        """One answer of a shadow step compared (the mirror's callback; never awaits)."""
        rollout = self.rollouts.get(service)
        if rollout is None or rollout.state.status not in _OBSERVED:
            return
        rollout.analysis.observe_shadow(
            route=route, differing=differing, id_hash=id_hash, now=self.now(), tier=tier
        )
