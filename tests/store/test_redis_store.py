"""The Redis store against a real redis-server: compare-and-set, journal, lease, evidence,
and what a caller sees when Redis is down or hung."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from proxy.core.machine import Status
from proxy.errors import StateError, StoreUnavailable
from proxy.store.records import JournalEntry, RolloutRecord
from proxy.store.redis_store import Lease, RedisStore
from tests.support.redis import RedisServer


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_server.url, "test", timeout_s=0.3)
    yield store
    await store.close()


def record(version: int, step: int = 0, status: Status = Status.PROGRESSING) -> RolloutRecord:
    return RolloutRecord("shop", "abc", status, step, version, 1.0, 2.0)


def entry(version: int, action: str = "promote") -> JournalEntry:
    return JournalEntry(
        3.0,
        "shop",
        "admin:test",
        action,
        "progressing",
        0,
        "progressing",
        1,
        version,
        "why",
        {"n": version},
    )


async def test_commit_is_compare_and_set_with_exactly_one_journal_entry(
    store: RedisStore,
) -> None:
    assert await store.load() == {}
    assert await store.commit(record(1), None, entry(1, "start"))
    assert not await store.commit(record(1), None, entry(1, "start"))  # exists already
    assert not await store.commit(record(3), 2, entry(3))  # wrong version
    assert await store.commit(record(2, step=1), 1, entry(2))
    assert await store.load() == {"shop": record(2, step=1)}
    history = await store.history("shop")
    assert [(e.action, e.version) for e in history] == [("promote", 2), ("start", 1)]
    assert history[0] == entry(2)


async def test_racing_commits_from_one_version_give_one_winner(
    redis_server: RedisServer, store: RedisStore
) -> None:
    assert await store.commit(record(1), None, entry(1, "start"))
    others = [RedisStore(redis_server.url, "test", timeout_s=1.0) for _ in range(10)]
    try:
        results = await asyncio.gather(
            *(s.commit(record(2, step=i), 1, entry(2)) for i, s in enumerate(others))
        )
    finally:
        await asyncio.gather(*(s.close() for s in others))
    assert results.count(True) == 1
    assert (await store.load())["shop"].step == results.index(True)
    assert len(await store.history("shop")) == 2


async def test_prefixes_keep_fleets_apart(redis_server: RedisServer, store: RedisStore) -> None:
    other = RedisStore(redis_server.url, "other", timeout_s=0.3)
    try:
        assert await store.commit(record(1), None, entry(1, "start"))
        assert await other.load() == {}
        assert await other.history("shop") == []
    finally:
        await other.close()


async def test_the_lease_is_held_by_one_replica_until_it_expires(store: RedisStore) -> None:
    assert await store.hold_lease("a", 0.3) is Lease.TAKEN
    assert await store.hold_lease("b", 0.3) is Lease.LOST
    assert await store.hold_lease("a", 0.3) is Lease.RENEWED
    assert await store.lease_holder() == "a"
    await asyncio.sleep(0.4)
    assert await store.hold_lease("b", 0.3) is Lease.TAKEN
    await store.release_lease("a")  # not a's any more: nothing happens
    assert await store.lease_holder() == "b"
    await store.release_lease("b")
    assert await store.lease_holder() is None


async def test_evidence_batches_are_read_after_a_mark(store: RedisStore) -> None:
    assert await store.evidence_tail() == "0-0"
    await store.add_evidence(b"one")
    mark = await store.evidence_tail()
    await store.add_evidence(b"two")
    await store.add_evidence(b"three")
    rows = await store.read_evidence(mark)
    assert [batch for _, batch in rows] == [b"two", b"three"]
    assert await store.read_evidence(rows[-1][0]) == []


async def test_notifications_name_the_changed_service(store: RedisStore) -> None:
    seen: list[str] = []
    subscribed, notified = asyncio.Event(), asyncio.Event()

    def changed(service: str) -> None:
        seen.append(service)
        (notified if service else subscribed).set()

    task = asyncio.create_task(store.watch(changed))
    try:
        await asyncio.wait_for(subscribed.wait(), 2)
        await store.commit(record(1), None, entry(1, "start"))
        await asyncio.wait_for(notified.wait(), 2)
    finally:
        task.cancel()
    assert seen == ["", "shop"]  # first "subscribed: read what you missed"


async def test_a_stopped_redis_is_unavailable_at_once(
    redis_server: RedisServer, store: RedisStore
) -> None:
    assert await store.commit(record(1), None, entry(1, "start"))
    await redis_server.stop()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="Redis unreachable"):
        await store.load()
    with pytest.raises(StoreUnavailable):
        await store.commit(record(2), 1, entry(2))
    assert time.monotonic() - started < 1.0
    await redis_server.start()  # empty again (no persistence), on the same port
    assert await store.load() == {}


async def test_a_hung_redis_is_unavailable_within_the_timeout(
    redis_server: RedisServer, store: RedisStore
) -> None:
    assert await store.commit(record(1), None, entry(1, "start"))
    redis_server.pause()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.load()
    assert 0.25 < time.monotonic() - started < 1.0
    redis_server.resume()
    fresh = RedisStore(redis_server.url, "test", timeout_s=0.3)
    try:
        assert (await fresh.load())["shop"] == record(1)
    finally:
        await fresh.close()


async def test_a_malformed_record_is_a_state_error_not_a_crash(
    redis_server: RedisServer, store: RedisStore
) -> None:
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw.hset("{test}:state", "shop", b"{not json")
    finally:
        await raw.aclose()
    with pytest.raises(StateError, match="malformed rollout record"):
        await store.load()


async def test_a_call_cut_short_by_its_cancellation_ends_as_a_cancellation() -> None:
    from redis import exceptions as redis_errors

    from proxy.store.redis_store import _reachable

    async def call(cancelled: bool) -> None:
        try:
            await asyncio.sleep(0 if not cancelled else 10)
        finally:
            # What the client may do as it drops the connection under a cancellation.
            async with _reachable("read the rollouts"):
                raise redis_errors.ConnectionError("Connection closed by server.")

    with pytest.raises(StoreUnavailable):
        await call(cancelled=False)
    task = asyncio.get_running_loop().create_task(call(cancelled=True))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_retrying_loop_on_a_hung_redis_stops_when_cancelled(
    store: RedisStore, redis_server: RedisServer
) -> None:
    async def keep_renewing() -> None:
        while True:  # as the replica's lease loop: a failed call is retried
            try:
                await store.hold_lease("r1", 1.0)
            except StateError:
                await asyncio.sleep(0.01)

    redis_server.pause()
    try:
        task = asyncio.get_running_loop().create_task(keep_renewing())
        for _ in range(3):  # cancel during the call, during the pause after it, and again
            await asyncio.sleep(0.15)
            task.cancel()
            async with asyncio.timeout(1.0):
                with pytest.raises(asyncio.CancelledError):
                    await task
            task = asyncio.get_running_loop().create_task(keep_renewing())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        redis_server.resume()
