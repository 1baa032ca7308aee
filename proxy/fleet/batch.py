"""Evidence batches: finished requests, from where they were served to where they are judged.

The data plane of a replica records into an `EvidenceBuffer` (the `Evidence` sink of
proxy/dataplane.py: an append, never an await). Every flush turns what it holds into one batch,
each service's part tagged with the rollout it was served under (spec hash and state version),
so the decider never mixes requests of another step or another rollout into its analysis.
Per request a batch keeps what the analysis reads: tier, arm, status, latency, the id's hash,
whether the proxy generated the status, and the longest configured route prefix the path
starts with (every shorter prefix it matches is a prefix of that one, so route checks see
exactly what they would see locally; other paths are not shipped).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import orjson

from proxy.config import Config
from proxy.dataplane import Evidence
from proxy.errors import StateError

# tier, canary (0/1), status, latency_s, route prefix ("" for none), id hash, generated (0/1)
Record = tuple[str, int, int, float, str, int, int]

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
        if self._held >= self.limit:
            self.dropped += 1
            return
        route = ""
        for prefix in self._routes.get(service, ()):
            if path.startswith(prefix):
                route = prefix
                break
        records = self._records.get(service)
        if records is None:
            records = self._records[service] = []
        records.append((tier, int(canary), status, latency_s, route, id_hash, int(proxy_generated)))
        self._held += 1

    def drain(self, tags: Mapping[str, tuple[str, int]]) -> bytes | None:
        """What was recorded since the last drain as one batch (None: nothing), each service
        tagged with its (spec hash, version) in `tags`; services without a tag are dropped."""
        held, self._records, self._held = self._records, {}, 0
        parts = [
            [service, *tags[service], records]
            for service, records in held.items()
            if records and service in tags
        ]
        return orjson.dumps(parts) if parts else None


def replay(part: ServiceEvidence, sink: Evidence) -> None:
    """Feed a part's requests to `sink` as if they had been served here."""
    service = part.service
    for tier, canary, status, latency_s, route, id_hash, generated in part.records:
        sink.observe(service, tier, canary == 1, status, latency_s, route, id_hash, generated == 1)


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
    if not isinstance(row, list) or len(row) != 7:
        raise ValueError("a record has 7 fields")
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
