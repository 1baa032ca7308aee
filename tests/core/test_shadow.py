"""The shadow comparison rules: JSON diff, noise from stable, mismatches the canary adds."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.shadow import (
    SAFE_METHODS,
    SHADOW_HEADER,
    Answer,
    RouteTally,
    diff_paths,
    fingerprint,
    flatten_json,
    generalize,
    learn_noise,
    mirrors,
    mismatches,
    record,
    shadow_headers,
    teach,
)

keys = st.text(alphabet="abcdefghij", min_size=1, max_size=4)
leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=6)
documents = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)


def _json(value: object, status: int = 200) -> Answer:
    return Answer(status, (), json.dumps(value).encode(), True)


@given(documents)
def test_an_answer_agrees_with_itself(doc: object) -> None:
    assert diff_paths(flatten_json(doc), flatten_json(doc)) == frozenset()
    assert mismatches(frozenset(), fingerprint(_json(doc)), fingerprint(_json(doc))) == ()


@given(documents, documents)
def test_the_diff_is_symmetric_and_empty_only_for_equal_documents(a: object, b: object) -> None:
    fa, fb = flatten_json(a), flatten_json(b)
    assert diff_paths(fa, fb) == diff_paths(fb, fa)
    assert (diff_paths(fa, fb) == frozenset()) == (
        json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    )


@given(st.dictionaries(keys, leaves, min_size=1), st.data())
def test_one_changed_field_is_exactly_one_path(doc: dict[str, object], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(doc)))
    changed = {**doc, key: ["changed", doc[key]]}
    paths = diff_paths(flatten_json(doc), flatten_json(changed))
    assert f"$.{key}" in paths
    assert all(p.startswith(f"$.{key}") for p in paths)


@given(documents, documents)
def test_what_differs_between_stable_answers_is_never_a_mismatch(a: object, b: object) -> None:
    first, second = fingerprint(_json(a)), fingerprint(_json(b))
    noise = learn_noise(frozenset(), first, second)
    assert mismatches(noise, first, second) == ()


@given(documents, documents, documents)
def test_noise_only_hides_the_paths_it_learned(a: object, b: object, canary: object) -> None:
    first, second, other = fingerprint(_json(a)), fingerprint(_json(b)), fingerprint(_json(canary))
    noise = learn_noise(frozenset(), first, second)
    assert set(mismatches(noise, first, other)) <= diff_paths(first, other)
    assert mismatches(frozenset(), first, other) == tuple(sorted(diff_paths(first, other)))


def test_noise_on_one_list_element_covers_every_element() -> None:
    stable = {"items": [{"id": "a1", "name": "x"}, {"id": "b2", "name": "y"}], "at": 1}
    again = {"items": [{"id": "c3", "name": "x"}, {"id": "d4", "name": "y"}], "at": 2}
    noise = learn_noise(frozenset(), fingerprint(_json(stable)), fingerprint(_json(again)))
    assert noise == {"$.items[*].id", "$.at"}
    canary = {"items": [{"id": "e5", "name": "x"}, {"id": "f6", "name": "z"}], "at": 3}
    assert mismatches(noise, fingerprint(_json(stable)), fingerprint(_json(canary))) == (
        "$.items[1].name",
    )


def test_status_headers_and_opaque_bodies_compare_by_value_hash_and_length() -> None:
    stable = Answer(200, (("content-type", "text/plain"),), b"hello", False)
    longer = Answer(200, (("content-type", "text/plain"),), b"hello!", False)
    failing = Answer(500, (("content-type", "text/html"),), b"hello", False)
    assert fingerprint(stable)["body"].endswith(":5")
    assert mismatches(frozenset(), fingerprint(stable), fingerprint(longer)) == ("body",)
    assert mismatches(frozenset(), fingerprint(stable), fingerprint(failing)) == (
        "header:content-type",
        "status",
    )


def test_a_body_that_claims_json_but_is_not_compares_as_opaque() -> None:
    broken = Answer(200, (), b"{not json", True)
    assert set(fingerprint(broken)) == {"status", "body"}


def test_the_tally_counts_mismatches_and_paths_without_values() -> None:
    tally = teach(RouteTally(), {"$.at": "1"}, {"$.at": "2"})
    assert tally.noise == {"$.at"}
    tally = record(tally, ())
    tally = record(tally, ("$.items[0].price", "$.items[2].price"))
    tally = record(tally, ("$.total",))
    tally = record(tally, ("$.items[1].price",))
    assert (tally.compared, tally.mismatched) == (4, 3)
    assert tally.mismatch_rate == 0.75
    assert tally.top_paths(1) == (("$.items[*].price", 2),)
    assert generalize("$.a[12].b[0]") == "$.a[*].b[*]"


@given(st.integers(min_value=0, max_value=2**64 - 1), st.floats(min_value=0, max_value=100))
def test_only_safe_methods_are_ever_mirrored(request_hash: int, sample: float) -> None:
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert not mirrors(method, SAFE_METHODS, sample, request_hash)
    assert mirrors("GET", SAFE_METHODS, 100.0, request_hash)
    assert not mirrors("get", SAFE_METHODS, 0.0, request_hash)


def test_the_sample_is_the_share_of_request_hashes_mirrored() -> None:
    picked = sum(mirrors("HEAD", SAFE_METHODS, 10.0, h * 7919) for h in range(100_000))
    assert 9_000 < picked < 11_000


def test_the_copy_keeps_identity_and_request_id_and_is_marked() -> None:
    sent = [("x-request-id", "r1"), ("authorization", "t"), ("X-Rollout-Shadow", "0")]
    assert shadow_headers(sent) == [
        ("x-request-id", "r1"),
        ("authorization", "t"),
        (SHADOW_HEADER, "1"),
    ]
