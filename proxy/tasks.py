"""Stopping background tasks within a bound.

A cancelled task can take longer to stop than a shutdown may wait, or never stop: a library it
awaits may turn the CancelledError into an error of its own, which the task's loop then treats
as a failure to retry after a pause. Shutdown must hang on neither. `stop_tasks` cancels, waits,
cancels again what is still running, and gives up at its bound, returning what did not stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

RECANCEL_S = 0.25  # how often a task that is still running is cancelled again


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], within: float) -> set[asyncio.Task[Any]]:
    """Cancel `tasks` and wait at most `within` seconds for them to end; the ones still running
    then are returned (and left alone). What the ended ones raised is consumed."""
    every = set(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    running = {task for task in every if not task.done()}
    while running:
        for task in running:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, running = await asyncio.wait(running, timeout=min(left, RECANCEL_S))
    for task in every - running:
        if not task.cancelled():
            with contextlib.suppress(Exception):
                task.exception()  # retrieved: no "exception was never retrieved" at exit
    return running


async def finish(tasks: Iterable[asyncio.Task[Any]], within: float) -> set[asyncio.Task[Any]]:
    """Let `tasks` (work under way) finish for up to `within` seconds, then stop what is left
    (within a second more); returns the tasks that would not stop."""
    pending = {task for task in tasks if not task.done()}
    if not pending:
        return set()
    _, late = await asyncio.wait(pending, timeout=within)
    return await stop_tasks(late, 1.0) if late else set()
