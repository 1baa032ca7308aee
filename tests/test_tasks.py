"""Stopping background tasks within a bound, whatever the tasks do with their cancellation."""

from __future__ import annotations

import asyncio

from proxy.tasks import finish, stop_tasks


class Flaky(Exception):
    pass


async def _retries_on_error(swallow: list[int], log: list[str]) -> None:
    """A loop that retries after its errors, fed a cancellation turned into an error (as a
    client library may do as it drops a connection) the first `swallow[0]` times."""
    while True:
        try:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if len(log) < swallow[0]:
                    log.append("swallowed")
                    raise Flaky("connection closed") from None
                raise
        except Flaky:
            continue


async def test_a_task_that_turns_its_cancellation_into_an_error_is_cancelled_again() -> None:
    log: list[str] = []
    task = asyncio.get_running_loop().create_task(_retries_on_error([2], log))
    await asyncio.sleep(0)
    left = await stop_tasks([task], within=2.0)
    assert left == set()
    assert task.cancelled()
    assert log == ["swallowed", "swallowed"]


async def test_a_task_that_never_stops_is_given_up_at_the_bound() -> None:
    loop = asyncio.get_running_loop()
    swallow = [1_000_000]
    task = loop.create_task(_retries_on_error(swallow, []))
    await asyncio.sleep(0)
    started = loop.time()
    left = await stop_tasks([task], within=0.6)
    took = loop.time() - started
    assert left == {task}
    assert 0.6 <= took < 1.5
    swallow[0] = 0  # the test's own cleanup: now it stops when asked
    assert await stop_tasks([task], within=1.0) == set()


async def test_ended_tasks_have_their_errors_consumed_and_finished_ones_are_not_cancelled() -> None:
    loop = asyncio.get_running_loop()

    async def fails() -> None:
        raise Flaky("boom")

    async def quick() -> str:
        await asyncio.sleep(0.01)
        return "done"

    failed, done = loop.create_task(fails()), loop.create_task(quick())
    await asyncio.sleep(0.05)
    assert await stop_tasks([failed, done], within=1.0) == set()
    assert done.result() == "done"
    assert not done.cancelled()
    assert isinstance(failed.exception(), Flaky)


async def test_finish_waits_for_work_under_way_then_stops_the_rest() -> None:
    loop = asyncio.get_running_loop()

    async def work(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    short, long = loop.create_task(work(0.05)), loop.create_task(work(30))
    started = loop.time()
    assert await finish([short, long], within=0.3) == set()
    assert loop.time() - started < 1.0
    assert short.result() == 0.05
    assert long.cancelled()
