"""proxy/http/framing.py: the Connection options that name no field."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.http.framing import STANDARD_OPTIONS, names_no_field

SPELLINGS = st.sampled_from(sorted(STANDARD_OPTIONS)).flatmap(
    lambda option: st.tuples(
        st.sampled_from([b"", b" ", b"\t"]),
        st.sampled_from([option, option.upper(), option.title()]),
        st.sampled_from([b"", b" "]),
    ).map(b"".join)
)


@given(st.one_of(SPELLINGS, st.binary(max_size=20)))
def test_a_value_names_no_field_exactly_when_it_is_one_standard_option(value: bytes) -> None:
    assert names_no_field(value) == (value.strip().lower() in STANDARD_OPTIONS)


def test_a_list_of_options_or_a_field_name_names_a_field() -> None:
    assert names_no_field(b"keep-alive")
    assert names_no_field(b" Close ")
    assert not names_no_field(b"close, x-secret")
    assert not names_no_field(b"x-secret")
