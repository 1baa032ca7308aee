"""The file state store (the embedded default): one JSON document and a JSONL journal.

Releases (proxy/releases.py) are in a second document, `<stem>.releases.json`, written the
same way (atomic, checksummed, compare-and-set on each service's book version).

Writes are atomic and durable: write `<name>.tmp`, flush, fsync, rename over `<name>`, fsync the
directory; `kill -9` at any moment leaves either the old or the new document, never a torn one.
The document carries a schema version and a checksum of its body, so a corrupt or foreign file
is detected (and the caller routes everything to stable) instead of being misread. Transitions
are compare-and-set on the rollout's version. The journal is appended with fsync before the
transition is acknowledged.

Calls block on disk; the async methods run them in a worker thread so the event loop (and the
data plane) never waits on fsync.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import orjson

from proxy.errors import StateError, StoreUnavailable
from proxy.store.records import JournalEntry, ReleaseBook, RolloutRecord

SCHEMA_VERSION = 1
_log = logging.getLogger(__name__)


def _checksum(body: Any) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class FileStore:
    """Rollout records in `path`, the journal in `<stem>.journal.jsonl` beside it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.journal_path = self.path.with_name(self.path.stem + ".journal.jsonl")
        self.releases_path = self.path.with_name(self.path.stem + ".releases.json")
        self._lock = threading.Lock()

    # --- synchronous core -----------------------------------------------------------------

    def read(self) -> dict[str, RolloutRecord]:
        """All records; {} when there is no file yet; StateError when it cannot be trusted."""
        raw = _read(self.path)
        return {} if raw is None else _parse(raw, self.path)

    def compare_and_set(self, record: RolloutRecord, expected_version: int | None) -> bool:
        """Write `record` if the stored version of its rollout is `expected_version`
        (None: there must be no record for the service yet). False when it is not."""
        with self._lock:
            records = self.read()
            current = records.get(record.service)
            found = None if current is None else current.version
            if found != expected_version:
                return False
            records[record.service] = record
            try:
                self._write(records)
            except OSError as exc:  # disk full, read-only: the old document stays whole
                raise StoreUnavailable(f"cannot write {self.path}: {exc.strerror}") from exc
            return True

    def _write(self, records: dict[str, RolloutRecord]) -> None:
        body = {name: record.to_json() for name, record in sorted(records.items())}
        document = {"schema_version": SCHEMA_VERSION, "checksum": _checksum(body), "rollouts": body}
        _atomic_write(self.path, orjson.dumps(document, option=orjson.OPT_INDENT_2))

    def append(self, entry: JournalEntry) -> None:
        line = orjson.dumps(entry.to_json()) + b"\n"
        try:
            self.journal_path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, open(self.journal_path, "ab") as journal:
                journal.write(line)
                journal.flush()
                os.fsync(journal.fileno())
        except OSError as exc:
            raise StoreUnavailable(f"cannot write {self.journal_path}: {exc.strerror}") from exc

    def entries(self, service: str, limit: int = 100) -> list[JournalEntry]:
        """The service's journal, newest first."""
        try:
            lines = self.journal_path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        found: list[JournalEntry] = []
        for line in reversed(lines):
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line cut by a crash mid-append is skipped, never misread
            if data.get("service") == service:
                found.append(JournalEntry.from_json(data))
                if len(found) >= limit:
                    break
        return found

    def read_books(self) -> dict[str, ReleaseBook]:
        """Every service's release book; {} when there is none yet."""
        raw = _read(self.releases_path)
        if raw is None:
            return {}
        body = _body(raw, self.releases_path, "releases")
        return {name: ReleaseBook.from_json(data) for name, data in body.items()}

    def compare_and_set_book(self, book: ReleaseBook, expected_version: int | None) -> bool:
        """Write `book` if the stored book of its service is at `expected_version` (None:
        there must be none yet)."""
        with self._lock:
            books = self.read_books()
            current = books.get(book.service)
            if (None if current is None else current.version) != expected_version:
                return False
            books[book.service] = book
            body = {name: b.to_json() for name, b in sorted(books.items())}
            document = {
                "schema_version": SCHEMA_VERSION,
                "checksum": _checksum(body),
                "releases": body,
            }
            try:
                _atomic_write(self.releases_path, orjson.dumps(document))
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot write {self.releases_path}: {exc.strerror}"
                ) from exc
            return True

    # --- async wrappers -------------------------------------------------------------------

    async def load(self) -> dict[str, RolloutRecord]:
        return await asyncio.to_thread(self.read)

    async def commit(
        self, record: RolloutRecord, expected_version: int | None, entry: JournalEntry
    ) -> bool:
        """Compare-and-set the record, then journal the entry (only when it was written)."""
        return await asyncio.to_thread(self._commit, record, expected_version, entry)

    def _commit(
        self, record: RolloutRecord, expected_version: int | None, entry: JournalEntry
    ) -> bool:
        if not self.compare_and_set(record, expected_version):
            return False
        # The record is the commit point: routing must follow what is written. A journal line
        # that cannot be written after it is reported, and the transition stands.
        try:
            self.append(entry)
        except StoreUnavailable as exc:
            _log.error("journal entry lost (%s): %s", exc, orjson.dumps(entry.to_json()).decode())
        return True

    async def history(self, service: str, limit: int = 100) -> list[JournalEntry]:
        return await asyncio.to_thread(self.entries, service, limit)

    async def load_books(self) -> dict[str, ReleaseBook]:
        return await asyncio.to_thread(self.read_books)

    async def commit_book(self, book: ReleaseBook, expected_version: int | None) -> bool:
        return await asyncio.to_thread(self.compare_and_set_book, book, expected_version)


def _parse(raw: bytes, path: Path) -> dict[str, RolloutRecord]:
    body = _body(raw, path, "rollouts")
    return {name: RolloutRecord.from_json(data) for name, data in body.items()}


def _body(raw: bytes, path: Path, key: str) -> dict[str, Any]:
    """The checksummed body under `key` of a state document."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise StateError(f"{path} does not hold a state document")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise StateError(f"{path} has schema version {document.get('schema_version')!r}")
    body = document.get(key)
    if not isinstance(body, dict) or document.get("checksum") != _checksum(body):
        raise StateError(f"{path} failed its checksum")
    return body


def _read(path: Path) -> bytes | None:
    """The file's bytes; None when there is no file yet; StateError when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from exc


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
