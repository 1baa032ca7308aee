"""Evidence batches, pure: what a replica ships is what the decider's analysis reads."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import Config, parse_config
from proxy.core.servertiming import TimingEntry
from proxy.errors import StateError
from proxy.fleet.batch import EvidenceBuffer, decode, replay
from tests.support.proxy import config_dict, service


def config(routes: list[str]) -> Config:
    svc = service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"], name="shop")
    svc["rollout"]["analysis"] = {"routes": [{"path_prefix": p} for p in routes]}
    return parse_config(config_dict(svc), {})


def test_a_batch_carries_each_request_and_its_rollout_tag() -> None:
    buffer = EvidenceBuffer(config([]))
    buffer.observe("shop", "free", True, 503, 0.25, "/x", 1234, True)
    buffer.observe("shop", "paid", False, 200, 0.01, "/y", 99, False)
    batch = buffer.drain({"shop": ("spec1", 7)})
    assert batch is not None
    (part,) = decode(batch)
    assert (part.service, part.spec_hash, part.version) == ("shop", "spec1", 7)
    assert part.records == [("free", 1, 503, 0.25, "", 1234, 1), ("paid", 0, 200, 0.01, "", 99, 0)]
    assert buffer.drain({"shop": ("spec1", 7)}) is None  # drained


def test_paths_become_their_longest_route_prefix() -> None:
    buffer = EvidenceBuffer(config(["/api", "/api/v2", "/checkout"]))
    for path in ("/api/v2/orders", "/api/v1", "/checkout/pay", "/home"):
        buffer.observe("shop", "free", True, 200, 0.01, path, 1, False)
    batch = buffer.drain({"shop": ("s", 1)})
    assert batch is not None
    routes = [r[4] for r in decode(batch)[0].records]
    assert routes == ["/api/v2", "/api", "/checkout", ""]
    # Every prefix a path matches is matched by its longest matching prefix too.
    for path, route in zip(("/api/v2/orders", "/api/v1"), routes, strict=False):
        for prefix in ("/api", "/api/v2", "/checkout"):
            assert path.startswith(prefix) == route.startswith(prefix)


def test_the_buffer_is_bounded_and_counts_what_it_drops() -> None:
    buffer = EvidenceBuffer(config([]), limit=3)
    for _ in range(5):
        buffer.observe("shop", "free", True, 200, 0.01, "/", 1, False)
    assert buffer.dropped == 2
    batch = buffer.drain({"shop": ("s", 1)})
    assert batch is not None
    assert len(decode(batch)[0].records) == 3
    buffer.observe("shop", "free", True, 200, 0.01, "/", 1, False)  # room again
    assert buffer.dropped == 2


def test_services_without_a_tag_are_not_shipped() -> None:
    buffer = EvidenceBuffer(config([]))
    buffer.observe("shop", "free", True, 200, 0.01, "/", 1, False)
    assert buffer.drain({}) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"a": 1}',
        orjson.dumps([["shop", "s", 1, [["free", 1, 200]]]]),
        orjson.dumps([["shop", "s", 1, [[1, 1, 200, 0.1, "", 1, 0]]]]),
        orjson.dumps([["shop", "s", 1, [["free", 1, "200", 0.1, "", 1, 0]]]]),
        orjson.dumps([["shop", "s", "one", []]]),
    ],
)
def test_a_malformed_batch_is_a_state_error(raw: bytes) -> None:
    with pytest.raises(StateError, match="malformed evidence batch"):
        decode(raw)


record = st.tuples(
    st.sampled_from(["free", "paid", "internal"]),
    st.booleans(),
    st.integers(100, 599),
    st.floats(0, 60, allow_nan=False),
    st.text(max_size=20),
    st.integers(0, 9999),
    st.booleans(),
)


@given(st.lists(record, max_size=50))
def test_whatever_is_observed_comes_back_in_order(records: list[Any]) -> None:
    buffer = EvidenceBuffer(config([]))
    for tier, canary, status, latency, path, id_hash, generated in records:
        buffer.observe("shop", tier, canary, status, latency, path, id_hash, generated)
    batch = buffer.drain({"shop": ("s", 2)})
    if not records:
        assert batch is None
        return
    assert batch is not None
    got = decode(batch)[0].records
    assert got == [(t, int(c), s, lat, "", i, int(g)) for t, c, s, lat, _, i, g in records]


def timing_config() -> Config:
    svc = service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"], name="shop")
    svc["rollout"]["analysis"] = {
        "routes": [{"path_prefix": "/api"}],
        "server_timing": [{"metric": "db", "judge": "duration"}],
    }
    return parse_config(config_dict(svc), {})


def test_server_timing_entries_travel_with_their_request() -> None:
    buffer = EvidenceBuffer(timing_config())
    entries = (TimingEntry("db", 12.5, 'orders, "by id"'), TimingEntry("db", None, None))
    buffer.observe_timed("shop", "free", True, 200, 0.02, "/api/x", 7, entries)
    buffer.observe_timed("shop", "free", False, 200, 0.01, "/home", 8, ())
    buffer.observe("shop", "paid", True, 502, 0.0, "/api/y", 9, True)
    batch = buffer.drain({"shop": ("s", 3)})
    assert batch is not None
    (part,) = decode(batch)
    assert part.records == [
        ("free", 1, 200, 0.02, "/api", 7, 0, entries),
        ("free", 0, 200, 0.01, "", 8, 0, ()),
        ("paid", 1, 502, 0.0, "/api", 9, 1),
    ]
    # Replayed where it is judged (here: into another buffer), each record keeps its kind.
    again = EvidenceBuffer(timing_config())
    replay(part, again)
    batch = again.drain({"shop": ("s", 3)})
    assert batch is not None
    assert decode(batch)[0].records == part.records


@pytest.mark.parametrize(
    "timing",
    [
        "db",
        [["db", 1.0]],
        [[1, 1.0, None]],
        [["db", "1", None]],
        [["db", True, None]],
        [["db", 1.0, 2]],
        [["db", -1.0, None]],
        [["m", 1.0, None]] * 33,
    ],
)
def test_malformed_server_timing_entries_are_a_state_error(timing: object) -> None:
    raw = orjson.dumps([["shop", "s", 1, [["free", 1, 200, 0.1, "", 1, 0, timing]]]])
    with pytest.raises(StateError):
        decode(raw)


def test_an_infinite_dur_is_a_state_error() -> None:
    raw = b'[["shop", "s", 1, [["free", 1, 200, 0.1, "", 1, 0, [["db", 1e400, null]]]]]]'
    with pytest.raises(StateError):
        decode(raw)
