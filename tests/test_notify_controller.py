"""Which controller announces what: the one that commits a transition, not one that adopts it
(a fleet's other replicas), with the journal entry's words as the verdict."""

from __future__ import annotations

from pathlib import Path

from proxy.core.machine import Event
from proxy.core.notices import Notice, NoticeKind
from tests.test_controller import FakeClock, Harness, make_config


class Told:
    """A notice sink that keeps what it is told (the controller's NoticeSink)."""

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def notify(self, notice: Notice) -> None:
        self.notices.append(notice)

    def kinds(self) -> list[NoticeKind]:
        return [n.kind for n in self.notices]


async def _started(tmp_path: Path, clock: FakeClock) -> tuple[Harness, Told]:
    harness = Harness(make_config(tmp_path), clock)
    told = harness.controller.notices = Told()
    await harness.controller.start()
    return harness, told


async def test_only_the_controller_that_commits_announces(tmp_path: Path) -> None:
    clock = FakeClock()
    first, told_first = await _started(tmp_path, clock)
    second, told_second = await _started(tmp_path, clock)  # resumes the same record
    try:
        assert told_first.kinds() == [NoticeKind.RELEASE_STARTED]
        assert told_second.kinds() == []
        await first.controller.apply("shop", Event.PROMOTE, "admin:ops")
        await first.controller.apply("shop", Event.PAUSE, "admin:ops", reason="looking")
        for record in first.store.read().values():
            assert second.controller.adopt(record)
        assert told_second.kinds() == []
        assert told_first.kinds() == [
            NoticeKind.RELEASE_STARTED,
            NoticeKind.STEP_ADVANCED,
            NoticeKind.PAUSED,
        ]
        advanced, paused = told_first.notices[1:]
        assert (advanced.service, advanced.step, advanced.actor) == ("shop", 1, "admin:ops")
        assert advanced.steps == len(first.controller.config.services[0].rollout.steps)
        assert (paused.status, paused.verdict) == ("paused", "looking")
        await second.controller.apply("shop", Event.ABORT, "admin:other", reason="bad numbers")
        assert told_second.kinds() == [NoticeKind.ROLLED_BACK]
        rolled = told_second.notices[0]
        assert (rolled.status, rolled.actor, rolled.verdict) == (
            "rolled_back",
            "admin:other",
            "bad numbers",
        )
        assert rolled.time == clock.wall_time
        assert len(told_first.notices) == 3
    finally:
        await first.controller.close()
        await second.controller.close()


async def test_a_transition_that_does_not_apply_is_not_announced(tmp_path: Path) -> None:
    harness, told = await _started(tmp_path, FakeClock())
    try:
        transition = await harness.controller.apply("shop", Event.RESUME, "admin:ops")
        assert not transition.applied
        assert told.kinds() == [NoticeKind.RELEASE_STARTED]
    finally:
        await harness.controller.close()
