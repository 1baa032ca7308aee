"""proxy/notify/delivery.py on its own, against a real webhook server: a notice that cannot
be encoded is counted as failed and does not stop the ones after it; a smaller queue on
reload drops the oldest."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from proxy.config import ReceiverConfig
from proxy.core.notices import EVENTS, Notice, NoticeKind
from proxy.notify.delivery import Notifier
from tests.support.webhooks import Webhooks, eventually


def _receiver(url: str, queue: int = 100) -> ReceiverConfig:
    return ReceiverConfig("team", "json", "HOOK", url, frozenset(EVENTS), queue=queue)


async def test_a_notice_that_cannot_be_encoded_does_not_stop_the_rest() -> None:
    hooks = await Webhooks().start()
    notifier = Notifier([_receiver(hooks.url("in"))], CollectorRegistry(), wall=time.time)
    await notifier.start()
    try:
        broken = Notice(NoticeKind.COMPLETED, 1.0, "shop", "1.0", "r", {"summary": object()})
        notifier.notify(broken)
        notifier.notify(Notice(NoticeKind.PAUSED, 2.0, "shop"))
        await eventually(lambda: len(hooks.got("in")) == 1)
        assert hooks.got("in")[0].body["event"] == "paused"
        (status,) = notifier.status()
        assert status["counts"] == {"sent": 1, "retried": 0, "failed": 1, "dropped": 0}
        assert status["last_error"]["event"] == "completed"
    finally:
        await notifier.close()
        await hooks.close()


async def test_a_smaller_queue_on_reload_drops_the_oldest() -> None:
    notifier = Notifier([], CollectorRegistry(), wall=time.time)
    await notifier.start()
    try:
        # Not started deliveries: a receiver added while its queue fills before it runs.
        notifier.reconfigure([_receiver("http://127.0.0.1:9/x", queue=5)])
        receiver = notifier.receivers["team"]
        assert receiver.task is not None
        receiver.task.cancel()
        for i in range(7):
            notifier.notify(Notice(NoticeKind.PAUSED, float(i), "shop"))
        assert [q.notice.time for q in receiver.queue] == [2.0, 3.0, 4.0, 5.0, 6.0]
        notifier.reconfigure([_receiver("http://127.0.0.1:9/x", queue=2)])
        assert [q.notice.time for q in receiver.queue] == [5.0, 6.0]
        assert receiver.counts.total("dropped") == 5
        notifier.reconfigure([])
        assert notifier.status() == []
    finally:
        await notifier.close()
