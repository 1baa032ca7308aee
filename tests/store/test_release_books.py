"""Release books in both stores: compare-and-set on the book's version, an exact round trip,
and a file store that detects a tampered document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.errors import StateError
from proxy.store.file import FileStore
from proxy.store.records import ReleaseBook, ReleaseRecord
from proxy.store.redis_store import RedisStore
from tests.support.redis import RedisServer

RELEASE = ReleaseRecord(
    id="abc123",
    service="shop",
    version="1.0",
    status="completed",
    actor="ci (admin:127.0.0.1)",
    started=10.0,
    canary=("http://127.0.0.1:11",),
    salt="shop-1",
    steps=({"percent": 50, "observe": "1s"},),
    change={"summary": "First", "routes": ["/cart"]},
    stable_before=("http://127.0.0.1:9",),
    released=("http://127.0.0.1:9",),
    rollout_version=4,
    ended=20.0,
    outcome="completed",
    verdicts=({"action": "advance", "evidence": {"verdict": "healthy"}},),
)
BOOK = ReleaseBook("shop", 1, (RELEASE,), None, ("http://127.0.0.1:11",))


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_server.url, "books", timeout_s=0.5)
    yield store
    await store.close()


async def _compare_and_set(store: FileStore | RedisStore) -> None:
    assert await store.load_books() == {}
    assert await store.commit_book(BOOK, None)
    assert not await store.commit_book(BOOK, None)  # one exists now
    assert (await store.load_books())["shop"] == BOOK
    newer = ReleaseBook("shop", 2, (RELEASE,), "x", ())
    assert not await store.commit_book(newer, 0)
    assert await store.commit_book(newer, 1)
    assert (await store.load_books())["shop"] == newer


async def test_file_books_are_compare_and_set(tmp_path: Path) -> None:
    await _compare_and_set(FileStore(tmp_path / "state.json"))


async def test_redis_books_are_compare_and_set(redis: RedisStore) -> None:
    await _compare_and_set(redis)


async def test_a_tampered_file_of_books_is_refused(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    assert await store.commit_book(BOOK, None)
    text = store.releases_path.read_text().replace("First", "Forged")
    store.releases_path.write_text(text)
    with pytest.raises(StateError, match="checksum"):
        store.read_books()
