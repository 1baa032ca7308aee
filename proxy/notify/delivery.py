"""Delivering notices to webhook receivers: a bounded queue and a background task each.

`Notifier.notify` is what the controller and the reloader call: a plain, non-blocking call
that puts the notice on the queue of every receiver that wants its kind (when a queue is full
its oldest notice is dropped and counted). Each receiver's task posts the notices in order
with aiohttp, each attempt bounded by the receiver's `timeout`; a failed attempt (no answer,
a timeout, a status other than 2xx) is retried after `backoff_s` (exponential, jittered, at
most `attempts` in all), then given up on. Nothing here is awaited by the data plane or the
controller.

Counted in `rollout_notifications_total{receiver, event, result}`, result one of RESULTS:
`sent` (a 2xx answer), `retried` (an attempt failed, another follows), `failed` (the last
attempt failed: the notice is given up), `dropped` (the queue was full: never sent); and in
`rollout_notification_errors_total{receiver, reason}`, reason one of REASONS, per failed
attempt. `status()` is each receiver's line in the admin API's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.config import ReceiverConfig
from proxy.core.notices import EVENTS, Notice, NoticeKind, backoff_s, content_type, payload
from proxy.reload import ReloadResult

RESULTS = ("sent", "retried", "failed", "dropped")
REASONS = ("timeout", "connect", "status")  # no answer in time, no connection, not 2xx
BACKOFF_CAP_S = 30.0
Sleep = Callable[[float], Any]


@dataclass(slots=True)
class Counts:
    """What happened to one receiver's notices."""

    by_event: dict[tuple[str, str], int] = field(default_factory=dict)  # (event, result)
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    last_sent: dict[str, Any] | None = None  # time, event
    last_error: dict[str, Any] | None = None  # time, event, error

    def add(self, event: str, result: str) -> None:
        self.by_event[(event, result)] = self.by_event.get((event, result), 0) + 1

    def total(self, result: str) -> int:
        return sum(n for (_, r), n in self.by_event.items() if r == result)


@dataclass(frozen=True, slots=True)
class Queued:
    notice: Notice
    id: str  # the same on every attempt


class Receiver:
    """One webhook: its queue, its counts, and the task that delivers."""

    def __init__(self, config: ReceiverConfig, run: Callable[[Receiver], Any]) -> None:
        self.config = config
        self.queue: deque[Queued] = deque()
        self.counts = Counts()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._run = run

    def put(self, queued: Queued) -> None:
        """Enqueue without waiting; the oldest notice makes room when the queue is full."""
        while len(self.queue) >= self.config.queue:
            dropped = self.queue.popleft()
            self.counts.add(dropped.notice.kind.value, "dropped")
        self.queue.append(queued)
        self.wake.set()

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(self))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    def status(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "name": self.config.name,
            "format": self.config.format,
            "events": sorted(self.config.events),
            "queue_depth": len(self.queue),
            "queue_limit": self.config.queue,
            "counts": {result: counts.total(result) for result in RESULTS},
            "errors": dict(counts.errors),
            "last_sent": counts.last_sent,
            "last_error": counts.last_error,
        }


class Notifier(Collector):
    """Every receiver of the config, and their metrics on the runtime's registry."""

    def __init__(
        self,
        receivers: Sequence[ReceiverConfig],
        registry: CollectorRegistry,
        *,
        wall: Callable[[], float],
        sleep: Sleep = asyncio.sleep,
        draw: Callable[[], float] = random.random,
        source: str | None = None,
    ) -> None:
        self.receivers: dict[str, Receiver] = {}
        self.wall = wall
        self.sleep = sleep
        self.draw = draw
        self.source = source or f"rollout-proxy/{socket.gethostname()}"
        self.session: aiohttp.ClientSession | None = None
        self._configs = tuple(receivers)
        registry.register(self)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start delivering (the session and the tasks need the running loop)."""
        if self._configs and self.session is None:
            self.session = aiohttp.ClientSession()
        self.reconfigure(self._configs)

    def reconfigure(self, receivers: Sequence[ReceiverConfig]) -> None:
        """Serve a reloaded list: a receiver kept by name keeps its queue and counts (its
        queue trimmed to a smaller limit, counted as dropped); one removed stops."""
        self._configs = tuple(receivers)
        if self.session is None and receivers:
            self.session = aiohttp.ClientSession()
        wanted = {r.name: r for r in receivers}
        for name in [n for n in self.receivers if n not in wanted]:
            gone = self.receivers.pop(name)
            if gone.task is not None:
                gone.task.cancel()
        for name, config in wanted.items():
            found = self.receivers.get(name)
            if found is None:
                found = self.receivers[name] = Receiver(config, self._run)
            found.config = config
            while len(found.queue) > config.queue:
                found.counts.add(found.queue.popleft().notice.kind.value, "dropped")
            found.start()

    async def close(self) -> None:
        for receiver in self.receivers.values():
            await receiver.stop()
        if self.session is not None:
            await self.session.close()
            self.session = None

    # --- the sink ---------------------------------------------------------------------------

    def notify(self, notice: Notice) -> None:
        """Queue `notice` for every receiver that wants its kind; never waits."""
        queued = Queued(notice, str(uuid.uuid4()))
        for receiver in self.receivers.values():
            if notice.kind.value in receiver.config.events:
                receiver.put(queued)

    def status(self) -> list[dict[str, Any]]:
        return [r.status() for r in self.receivers.values()]

    # --- delivery ---------------------------------------------------------------------------

    async def _run(self, receiver: Receiver) -> None:
        while True:
            if not receiver.queue:
                receiver.wake.clear()
                await receiver.wake.wait()
                continue
            queued = receiver.queue.popleft()
            try:
                await self._deliver(receiver, queued)
            except Exception as exc:  # a notice that cannot be sent must not stop the rest
                event = queued.notice.kind.value
                receiver.counts.add(event, "failed")
                receiver.counts.last_error = {
                    "time": self.wall(),
                    "event": event,
                    "error": str(exc),
                }

    async def _deliver(self, receiver: Receiver, queued: Queued) -> None:
        config, event = receiver.config, queued.notice.kind.value
        body = orjson.dumps(payload(queued.notice, config.format, queued.id, self.source))
        headers = {"Content-Type": content_type(config.format)}
        for attempt in range(config.attempts):
            error = await self._post(config, body, headers)
            if error is None:
                receiver.counts.add(event, "sent")
                receiver.counts.last_sent = {"time": self.wall(), "event": event}
                return
            reason, detail = error
            receiver.counts.errors[reason] += 1
            receiver.counts.last_error = {"time": self.wall(), "event": event, "error": detail}
            if attempt + 1 == config.attempts:
                receiver.counts.add(event, "failed")
                return
            receiver.counts.add(event, "retried")
            await self.sleep(backoff_s(attempt, config.backoff_s, BACKOFF_CAP_S, self.draw()))

    async def _post(
        self, config: ReceiverConfig, body: bytes, headers: dict[str, str]
    ) -> tuple[str, str] | None:
        """One attempt: None when the receiver took it, else (reason, what went wrong)."""
        assert self.session is not None, "the notifier was not started"
        timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        try:
            async with self.session.post(
                config.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                return "status", f"HTTP {response.status}"
        except TimeoutError:
            return "timeout", f"no answer within {config.timeout_s:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            return "connect", f"{type(exc).__name__}: {exc}"

    # --- metrics ----------------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "rollout_notifications",
            "Release notifications by receiver, event and result: sent (2xx), retried (an "
            "attempt failed, another follows), failed (given up after the last attempt), "
            "dropped (the receiver's queue was full).",
            labels=("receiver", "event", "result"),
        )
        errors = CounterMetricFamily(
            "rollout_notification_errors",
            "Failed delivery attempts by receiver and reason: timeout, connect, status.",
            labels=("receiver", "reason"),
        )
        for name, receiver in self.receivers.items():
            for event in sorted(receiver.config.events, key=EVENTS.index):
                for result in RESULTS:
                    count = receiver.counts.by_event.get((event, result), 0)
                    total.add_metric((name, event, result), count)
            for reason, count in receiver.counts.errors.items():
                errors.add_metric((name, reason), count)
        yield total
        yield errors


def reload_notice(result: ReloadResult) -> Notice:
    """The notice of a reload that changed nothing because it could not."""
    return Notice(
        kind=NoticeKind.CONFIG_RELOAD_FAILED,
        time=result.time,
        status=result.result,
        actor=result.trigger,
        verdict=result.error or "",
    )
