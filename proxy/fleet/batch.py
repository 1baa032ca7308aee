"""Evidence batches: finished requests, from where they were served to where they are judged.

The data plane of a replica records into an `EvidenceBuffer` (the `Evidence` sink of
proxy/dataplane.py: an append, never an await). Every flush turns what it holds into one batch,
each service's part tagged with the rollout it was served under (spec hash and state version),
so the decider never mixes requests of another step or another rollout into its analysis.
Per request a batch keeps what the analysis reads: tier, arm, status, latency, the id's hash,
whether the proxy generated the status, and the longest configured route prefix the path
starts with (every shorter prefix it matches is a prefix of that one, so route checks see
exactly what they would see locally; other paths are not shipped). A response read for
Server-Timing checks adds an eighth field, its kept entries (at most MAX_ENTRIES of the
metrics the checks name, already filtered where it was served); a record without it is one
that was not read, as batches from a version before Server-Timing checks are.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import isfinite
from typing import NamedTuple

import orjson

from proxy.config import Config
from proxy.core.servertiming import MAX_ENTRIES, TimingEntry
from proxy.dataplane import Evidence
from proxy.errors import StateError

# tier, canary (0/1), status, latency_s, route prefix ("" for none), id hash, generated (0/1)
PlainRecord = tuple[str, int, int, float, str, int, int]
# ... and the response's Server-Timing entries its service's checks name
TimedRecord = tuple[str, int, int, float, str, int, int, tuple[TimingEntry, ...]]
Record = PlainRecord | TimedRecord

DEFAULT_LIMIT = 200_000  # records held between flushes; beyond it they are dropped, counted


class ServiceEvidence(NamedTuple):
    service: str
    spec_hash: str
    version: int
    records: list[Record]


class EvidenceBuffer(Evidence):
    """Collects finished requests between flushes (bounded)."""

    __slots__ = ("_held", "_records", "_routes", "dropped", "limit")

    def __init__(self, config: Config, limit: int = DEFAULT_LIMIT) -> None:
        self._routes: dict[str, tuple[str, ...]] = {}
        self.reconfigure(config)
        self._records: dict[str, list[Record]] = {}
        self._held = 0
        self.limit = limit
        self.dropped = 0

    def reconfigure(self, config: Config) -> None:
        """The route prefixes of a (reloaded) config, longest first, per service."""
        self._routes = {
            s.name: tuple(
                sorted((r.path_prefix for r in s.rollout.analysis.routes), key=len, reverse=True)
            )
            for s in config.services
        }

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
        records = self._room(service)
        if records is not None:
            route = self._route(service, path)
            generated = int(proxy_generated)
            records.append((tier, int(canary), status, latency_s, route, id_hash, generated))

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
        records = self._room(service)
        if records is not None:
            route = self._route(service, path)
            records.append((tier, int(canary), status, latency_s, route, id_hash, 0, timing))

    def _room(self, service: str) -> list[Record] | None:
        """The service's records, if the buffer has room for one more (else None, counted)."""
        if self._held >= self.limit:
            self.dropped += 1
            return None
        self._held += 1
        records = self._records.get(service)
        if records is None:
            records = self._records[service] = []
        return records

    def _route(self, service: str, path: str) -> str:
        for prefix in self._routes.get(service, ()):
            if path.startswith(prefix):
                return prefix
        return ""

    def drain(self, tags: Mapping[str, tuple[str, int]]) -> bytes | None:
        """What was recorded since the last drain as one batch (None: nothing), each service
        tagged with its (spec hash, version) in `tags`; services without a tag are dropped."""
        held, self._records, self._held = self._records, {}, 0
        parts = [
            [service, *tags[service], [_wire(r) for r in records]]
            for service, records in held.items()
            if records and service in tags
        ]
        return orjson.dumps(parts) if parts else None


def _wire(record: Record) -> object:
    """A record as JSON-ready data (Server-Timing entries as [name, dur, desc] lists)."""
    if len(record) == 7:
        return record
    return [*record[:7], [[e.name, e.dur, e.desc] for e in record[7]]]


def replay(part: ServiceEvidence, sink: Evidence) -> None:
    """Feed a part's requests to `sink` as if they had been served here."""
    service = part.service
    for record in part.records:
        tier, canary, status, latency_s, route, id_hash, generated = record[:7]
        if len(record) == 8:
            timing = record[7]
            sink.observe_timed(
                service, tier, canary == 1, status, latency_s, route, id_hash, timing
            )
        else:
            sink.observe(
                service, tier, canary == 1, status, latency_s, route, id_hash, generated == 1
            )


def decode(batch: bytes) -> list[ServiceEvidence]:
    """A batch back into its parts; StateError when it is not one (another version wrote it)."""
    try:
        parts = orjson.loads(batch)
        return [
            ServiceEvidence(str(service), str(spec), int(version), [_record(r) for r in records])
            for service, spec, version, records in parts
        ]
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise StateError(f"malformed evidence batch: {exc}") from exc


def _record(row: object) -> Record:
    if not isinstance(row, list) or len(row) not in (7, 8):
        raise ValueError("a record has 7 fields, or 8 with Server-Timing entries")
    plain = _plain(row[:7])
    if len(row) == 7:
        return plain
    return (*plain, _timing(row[7]))


def _timing(value: object) -> tuple[TimingEntry, ...]:
    if not isinstance(value, list) or len(value) > MAX_ENTRIES:
        raise ValueError(f"Server-Timing entries must be a list of at most {MAX_ENTRIES}")
    entries = []
    for item in value:
        if not isinstance(item, list) or len(item) != 3:
            raise ValueError("a Server-Timing entry is [name, dur, desc]")
        name, dur, desc = item
        if not isinstance(name, str) or not (desc is None or isinstance(desc, str)):
            raise ValueError("a Server-Timing name and desc must be strings")
        if not (dur is None or _duration(dur)):
            raise ValueError("a Server-Timing dur must be a finite number >= 0")
        entries.append(TimingEntry(name, None if dur is None else float(dur), desc))
    return tuple(entries)


def _duration(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and isfinite(value)
        and value >= 0
    )


def _plain(row: list[object]) -> PlainRecord:
    tier, canary, status, latency, route, id_hash, generated = row
    if not isinstance(tier, str) or not isinstance(route, str):
        raise ValueError("tier and route must be strings")
    if not isinstance(latency, int | float):
        raise ValueError("latency must be a number")
    if not (
        isinstance(canary, int)
        and isinstance(status, int)
        and isinstance(id_hash, int)
        and isinstance(generated, int)
    ):
        raise ValueError("arm, status, id hash and generated must be integers")
    return (tier, canary, status, float(latency), route, id_hash, generated)
