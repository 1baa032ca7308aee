"""Shadow comparison: stable's answer against the canary's, with noise learned from stable.

Pure functions only (no sockets, no clock). An answer is reduced to a fingerprint: a map of
field paths to canonical values, `status`, `header:<name>` for the configured headers, and the
body (a JSON body field by field as `$.a.b[*]...`; any other body as its hash and length under
`body`). Two stable answers to the same request teach the noise of a route: every path that
differs between them is noise. A path that differs only between stable and the canary is a
mismatch. Evidence names paths and counts, never values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

Fingerprint = dict[str, str]


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]  # the configured headers only, names lowercased
    body: bytes
    is_json: bool


def _flatten(value: object, path: str, out: Fingerprint) -> None:
    if isinstance(value, dict):
        out[path] = "{}"
        for key in value:
            _flatten(value[key], f"{path}.{key}", out)
    elif isinstance(value, list):
        out[path] = f"[{len(value)}]"
        for index, item in enumerate(value):
            _flatten(item, f"{path}[{index}]", out)
    else:
        out[path] = json.dumps(value, sort_keys=True)


def flatten_json(value: object) -> Fingerprint:
    """Every node of a JSON value by its path: containers by their shape, leaves by value."""
    out: Fingerprint = {}
    _flatten(value, "$", out)
    return out


def fingerprint(answer: Answer) -> Fingerprint:
    out: Fingerprint = {"status": str(answer.status)}
    for name, value in answer.headers:
        out[f"header:{name.lower()}"] = value
    if answer.is_json:
        try:
            parsed: object = json.loads(answer.body)
        except ValueError:
            parsed = None
            out["body"] = _digest(answer.body)
        else:
            out.update(flatten_json(parsed))
            return out
    out["body"] = _digest(answer.body)
    return out


def _digest(body: bytes) -> str:
    return f"{hashlib.sha256(body).hexdigest()}:{len(body)}"


def diff_paths(a: Mapping[str, str], b: Mapping[str, str]) -> frozenset[str]:
    """The paths whose values differ, or that one side has and the other lacks."""
    return frozenset(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))


def generalize(path: str) -> str:
    """`$.items[3].id` -> `$.items[*].id`: noise learned on one element covers them all."""
    out: list[str] = []
    inside = False
    for char in path:
        if char == "[":
            inside = True
            out.append("[*")
        elif char == "]":
            inside = False
            out.append("]")
        elif not inside:
            out.append(char)
    return "".join(out)


def _ancestors(path: str) -> Iterable[str]:
    yield path
    cut = len(path)
    while cut > 0:
        dot = path.rfind(".", 0, cut)
        bracket = path.rfind("[", 0, cut)
        cut = max(dot, bracket)
        if cut > 0:
            yield path[:cut]


def is_noise(noise: frozenset[str], path: str) -> bool:
    """A path is noise if it, or a container above it, differed between stable answers."""
    return any(generalize(p) in noise for p in _ancestors(path))


def learn_noise(noise: frozenset[str], first: Fingerprint, second: Fingerprint) -> frozenset[str]:
    """The route's noise after two stable answers to the same request."""
    return noise | {generalize(p) for p in diff_paths(first, second)}


def mismatches(noise: frozenset[str], stable: Fingerprint, canary: Fingerprint) -> tuple[str, ...]:
    """The paths the canary alone changes, sorted (empty: the answers agree)."""
    return tuple(sorted(p for p in diff_paths(stable, canary) if not is_noise(noise, p)))


@dataclass(frozen=True, slots=True)
class RouteTally:
    """One route's shadow record: compared answers, mismatched ones, counts per field path."""

    compared: int = 0
    mismatched: int = 0
    noise: frozenset[str] = frozenset()
    paths: tuple[tuple[str, int], ...] = field(default=())

    @property
    def mismatch_rate(self) -> float:
        return self.mismatched / self.compared if self.compared else 0.0

    def top_paths(self, limit: int) -> tuple[tuple[str, int], ...]:
        """The most frequent differing paths (generalized), most first: no values."""
        return tuple(sorted(self.paths, key=lambda item: (-item[1], item[0]))[:limit])


def record(tally: RouteTally, differing: tuple[str, ...]) -> RouteTally:
    counts = dict(tally.paths)
    for path in {generalize(p) for p in differing}:
        counts[path] = counts.get(path, 0) + 1
    return RouteTally(
        compared=tally.compared + 1,
        mismatched=tally.mismatched + (1 if differing else 0),
        noise=tally.noise,
        paths=tuple(sorted(counts.items())),
    )


def teach(tally: RouteTally, first: Fingerprint, second: Fingerprint) -> RouteTally:
    return RouteTally(
        compared=tally.compared,
        mismatched=tally.mismatched,
        noise=learn_noise(tally.noise, first, second),
        paths=tally.paths,
    )


SAFE_METHODS = frozenset({"GET", "HEAD"})
SHADOW_HEADER = "x-rollout-shadow"


def mirrors(method: str, safe: frozenset[str], sample: float, request_hash: int) -> bool:
    """Whether a request stable serves is copied to the canary: a safe method only (a replay
    must never write), in the `sample` percent picked by the request's 64-bit hash."""
    if method.upper() not in safe or sample <= 0.0:
        return False
    return (request_hash % 10_000) < sample * 100.0


def shadow_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The copy's headers: the client's (identity and request id kept), any shadow marker it
    sent replaced by ours, so the service can refuse side effects."""
    kept = [(name, value) for name, value in headers if name.lower() != SHADOW_HEADER]
    kept.append((SHADOW_HEADER, "1"))
    return kept


MAX_ROUTES: Final = 100  # routes tallied per service; the rest under OTHER_ROUTE
OTHER_ROUTE: Final = "other"
_HEX: Final = frozenset("0123456789abcdefABCDEF-")


def _is_id(segment: str) -> bool:
    """A path segment that names one thing: a number, or a long hexadecimal id (UUID, hash)."""
    if segment.isdigit():
        return True
    return (
        len(segment) >= 16 and all(c in _HEX for c in segment) and any(c.isdigit() for c in segment)
    )


def route_of(path: str) -> str:
    """The route a path belongs to: `/users/42/orders/9f1c...` -> `/users/{id}/orders/{id}`."""
    return "/".join("{id}" if _is_id(part) else part for part in path.split("/"))


def bounded_route(known: frozenset[str], route: str, limit: int = MAX_ROUTES) -> str:
    """`route` if it is known or there is room for it among `known`, else OTHER_ROUTE."""
    if route in known or len(known) < limit:
        return route
    return OTHER_ROUTE
