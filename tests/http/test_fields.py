"""proxy/http/fields.py: the table of field-name spellings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.http.fields import FieldNames

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
