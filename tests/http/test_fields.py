"""proxy/http/fields.py: the table of field-name spellings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.http.fields import (
    R_CONNECTION,
    R_LENGTH,
    R_RELAY,
    R_TE,
    RESPONSE_NOT_RELAYED,
    FieldNames,
)
from proxy.http.framing import HOP_BY_HOP

NAMES = st.binary(min_size=1, max_size=40)


@given(st.lists(NAMES, max_size=2000))
def test_a_name_is_always_lower_cased_like_bytes_lower(names: list[bytes]) -> None:
    table = FieldNames()
    for name in [*names, *names]:  # the second time from the table
        assert table.lower(name) == name.lower()


def test_a_spelling_seen_before_costs_no_new_object() -> None:
    table = FieldNames()
    first = table.lower(b"Content-Length")
    assert first == b"content-length"
    assert table.lower(b"Content-Length") is first
    assert table.lower(b"CONTENT-LENGTH") == first


def test_endless_spellings_keep_the_table_bounded() -> None:
    table = FieldNames()
    for n in range(5000):
        assert table.lower(b"X-Spelling-%d" % n) == b"x-spelling-%d" % n
    assert 0 < len(table._seen) <= 512


@given(st.lists(st.one_of(NAMES, st.sampled_from(sorted(RESPONSE_NOT_RELAYED))), max_size=600))
def test_a_response_field_kind_follows_its_lower_cased_name(names: list[bytes]) -> None:
    table = FieldNames()
    for name in [*names, *(n.upper() for n in names), *names]:
        kind = table.response_kind(name)
        lower = name.lower()
        assert (kind == R_RELAY) == (lower not in RESPONSE_NOT_RELAYED)
        assert (kind == R_LENGTH) == (lower == b"content-length")
        assert (kind == R_TE) == (lower == b"transfer-encoding")
        assert (kind == R_CONNECTION) == (lower == b"connection")
    assert len(table._response) <= 512


@st.composite
def near_misses(draw: st.DrawFn) -> bytes:
    """A name not relayed, one byte after the first changed and its case mixed: the same
    length and first letter, so only the lookup can tell it apart."""
    name = bytearray(draw(st.sampled_from(sorted(RESPONSE_NOT_RELAYED))))
    name[draw(st.integers(1, len(name) - 1))] = draw(st.integers(0, 255))
    return bytes(draw(st.sampled_from([bytes.lower, bytes.upper, bytes.title]))(bytes(name)))


@given(st.lists(near_misses(), min_size=1, max_size=50))
def test_a_name_alike_in_length_and_first_letter_is_looked_up(names: list[bytes]) -> None:
    table = FieldNames()
    for name in names:
        assert (table.response_kind(name) == R_RELAY) == (name.lower() not in RESPONSE_NOT_RELAYED)


def test_every_hop_by_hop_field_and_the_request_id_are_not_relayed() -> None:
    assert HOP_BY_HOP | {b"x-request-id"} == RESPONSE_NOT_RELAYED
