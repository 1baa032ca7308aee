"""The Redis state store (fleet mode): one rollout shared by every replica.

Keys (all in one hash slot, `{prefix}`, so the scripts also run on a Redis Cluster):

    {prefix}:state              hash   service -> rollout record (JSON)
    {prefix}:journal:<service>  stream one entry per applied transition
    {prefix}:decider            string the replica holding the decider lease (with a TTL)
    {prefix}:evidence           stream batches of finished requests from every replica
    {prefix}:releases           hash   service -> release book (JSON, proxy/releases.py)
    <prefix>:changes            pub/sub channel: the name of a service whose record changed

A transition is one Lua script: compare the stored version, write the record, append the
journal entry and publish the change, atomically, so a journal entry exists exactly when its
transition was applied, and of two writers from the same version exactly one wins. Every call
is bounded by `timeout`; a Redis that is down or hung raises `StoreUnavailable` and never
retries by itself (the replica loop decides when to try again).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import IntEnum
from typing import Any

import orjson
from redis import asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy.errors import StateError, StoreUnavailable
from proxy.store.records import JournalEntry, ReleaseBook, RolloutRecord

JOURNAL_MAX = 10_000  # entries kept per service (approximate trimming)
EVIDENCE_MAX = 2_000  # batches kept (about 2 minutes of a few replicas)

# Compare-and-set on a hash field holding JSON with a `version`: the head of the scripts below.
# KEYS[1]: the hash. ARGV: field (the service), expected version (-1: no value yet), new value.
_CAS = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
local expected = tonumber(ARGV[2])
if current then
    if cjson.decode(current)['version'] ~= expected then return 0 end
elseif expected ~= -1 then
    return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
"""

# KEYS: state, journal, changes channel. ARGV: service, expected version (-1: no record
# yet), record JSON, journal entry JSON, journal length.
_COMMIT = (
    _CAS
    + """redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'entry', ARGV[4])
redis.call('PUBLISH', KEYS[3], ARGV[1])
return 1
"""
)

# KEYS: lease. ARGV: holder, ttl in ms. 1: renewed our lease; 2: took a free one; 0: held by
# another replica.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: releases hash, changes channel. ARGV: service, expected version (-1: none yet), book.
_COMMIT_BOOK = (
    _CAS
    + """redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""
)

_WATCH_POLL_S = 1.0


class Lease(IntEnum):
    LOST = 0  # another replica holds it
    RENEWED = 1  # ours, without a gap: nobody else can have decided meanwhile
    TAKEN = 2  # newly ours


_UNREACHABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, TimeoutError)


class RedisStore:
    """Rollout records, journal, lease and evidence in Redis, behind one small client."""

    def __init__(self, url: str, prefix: str, timeout_s: float) -> None:
        self.prefix = prefix
        self.timeout_s = timeout_s
        # No retries inside the client: a failed call is reported at once and the caller's
        # loop (with jittered backoff) decides when to try again.
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        slot = "{" + prefix + "}"
        self._state_key = f"{slot}:state"
        self._lease_key = f"{slot}:decider"
        self._evidence_key = f"{slot}:evidence"
        self._journal_prefix = f"{slot}:journal:"
        self._releases_key = f"{slot}:releases"
        self.channel = f"{prefix}:changes"
        self._commit = self._client.register_script(_COMMIT)
        self._lease = self._client.register_script(_LEASE)
        self._release = self._client.register_script(_RELEASE)
        self._commit_book = self._client.register_script(_COMMIT_BOOK)

    # --- the Store protocol (proxy/controller.py) ------------------------------------------

    async def load(self) -> dict[str, RolloutRecord]:
        async with _reachable("read the rollout state"):
            raw = await self._client.hgetall(self._state_key)
        return {_text(key): _record(value) for key, value in raw.items()}

    async def commit(
        self, record: RolloutRecord, expected_version: int | None, entry: JournalEntry
    ) -> bool:
        keys = [self._state_key, self._journal_prefix + record.service, self.channel]
        args: list[bytes | str | int] = [
            record.service,
            -1 if expected_version is None else expected_version,
            orjson.dumps(record.to_json()),
            orjson.dumps(entry.to_json()),
            JOURNAL_MAX,
        ]
        async with _reachable("write the rollout state", write=True):
            written = await self._commit(keys=keys, args=args)
        return bool(written)

    async def history(self, service: str, limit: int = 100) -> list[JournalEntry]:
        async with _reachable("read the decision journal"):
            rows: Any = await self._client.xrevrange(self._journal_prefix + service, count=limit)
        return [JournalEntry.from_json(orjson.loads(fields[b"entry"])) for _, fields in rows]

    async def load_books(self) -> dict[str, ReleaseBook]:
        async with _reachable("read the releases"):
            raw = await self._client.hgetall(self._releases_key)
        return {_text(key): _book(value) for key, value in raw.items()}

    async def commit_book(self, book: ReleaseBook, expected_version: int | None) -> bool:
        args: list[bytes | str | int] = [
            book.service,
            -1 if expected_version is None else expected_version,
            orjson.dumps(book.to_json()),
        ]
        async with _reachable("write the releases", write=True):
            written = await self._commit_book(keys=[self._releases_key, self.channel], args=args)
        return bool(written)

    # --- fleet coordination -----------------------------------------------------------------

    async def hold_lease(self, holder: str, ttl_s: float) -> Lease:
        """Renew `holder`'s decider lease, or take it if nobody holds it."""
        async with _reachable("renew the decider lease"):
            held = await self._lease(keys=[self._lease_key], args=[holder, int(ttl_s * 1000)])
        return Lease(int(held))

    async def release_lease(self, holder: str) -> None:
        async with _reachable("release the decider lease"):
            await self._release(keys=[self._lease_key], args=[holder])

    async def lease_holder(self) -> str | None:
        async with _reachable("read the decider lease"):
            holder = await self._client.get(self._lease_key)
        return _text(holder) if holder is not None else None

    async def add_evidence(self, batch: bytes) -> None:
        async with _reachable("send evidence"):
            await self._client.xadd(
                self._evidence_key, {"b": batch}, maxlen=EVIDENCE_MAX, approximate=True
            )

    async def evidence_tail(self) -> str:
        """The id of the newest evidence batch ("0-0" when there is none): read after it."""
        async with _reachable("read evidence"):
            rows: Any = await self._client.xrevrange(self._evidence_key, count=1)
        return _text(rows[0][0]) if rows else "0-0"

    async def read_evidence(self, after: str, count: int = 500) -> list[tuple[str, bytes]]:
        """Evidence batches newer than `after`, oldest first (never blocks)."""
        async with _reachable("read evidence"):
            found: Any = await self._client.xread({self._evidence_key: after}, count=count)
        return [(_text(ident), fields[b"b"]) for _, rows in found or () for ident, fields in rows]

    async def watch(self, changed: Callable[[str], None]) -> None:
        """Call `changed(service)` for every change notification, and `changed("")` once
        subscribed (what was missed before must be read now); returns never, raises
        StoreUnavailable when the connection fails."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            async with _reachable("follow changes"):
                await pubsub.subscribe(self.channel)
                changed("")
                while True:
                    message = await pubsub.get_message(timeout=_WATCH_POLL_S)
                    if message is not None:
                        changed(_text(message["data"]))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    async def close(self) -> None:
        await self._client.aclose()


@asynccontextmanager
async def _reachable(doing: str, *, write: bool = False) -> AsyncIterator[None]:
    """Redis failures as the proxy's errors: unreachable (try again) or broken state."""
    try:
        yield
    except _UNREACHABLE as exc:
        _cancellation_first()
        why = str(exc) or type(exc).__name__
        message = f"cannot {doing}: Redis unreachable ({why})"
        if write and isinstance(exc, redis_errors.TimeoutError | TimeoutError):
            # A hung Redis may still run the write when it wakes: say so.
            message += "; it may still apply when Redis answers: look at the status first"
        raise StoreUnavailable(message) from exc
    except redis_errors.RedisError as exc:
        _cancellation_first()
        raise StateError(f"cannot {doing}: Redis answered {exc}") from exc


def _cancellation_first() -> None:
    """A call cut short by its task's cancellation ends as a cancellation. The client may turn
    the CancelledError into a connection or timeout error as it drops the connection, and the
    loops that retry on those (reconcile, lease, watch) would then never stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(raw: Any) -> RolloutRecord:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"malformed rollout record in Redis: {exc}") from exc
    return RolloutRecord.from_json(data)


def _book(raw: Any) -> ReleaseBook:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"malformed release book in Redis: {exc}") from exc
    return ReleaseBook.from_json(data)
