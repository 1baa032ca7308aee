"""The Server-Timing parser: the W3C grammar, malformed entries skipped, bounded, never raising."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.servertiming import (
    MAX_BYTES,
    MAX_ENTRIES,
    TimingEntry,
    _scan,
    _split,
    fields_of,
    format_entry,
    parse,
    without,
)

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def test_entries_with_dur_and_quoted_desc_containing_commas_and_escapes() -> None:
    value = b'db;dur=12.5, cache;desc="miss, cold \\"x\\"", auth;desc=fail;dur=0.3'
    assert parse([value]) == (
        TimingEntry("db", 12.5),
        TimingEntry("cache", None, 'miss, cold "x"'),
        TimingEntry("auth", 0.3, "fail"),
    )


def test_several_fields_are_one_list_and_ows_is_allowed_around_separators() -> None:
    values = [b"db ; dur = 7", b"\tcache;desc=hit  ,app"]
    assert parse(values) == (
        TimingEntry("db", 7.0),
        TimingEntry("cache", None, "hit"),
        TimingEntry("app"),
    )


def test_params_in_any_order_case_insensitive_and_the_first_of_each_counts() -> None:
    assert parse([b"db;DESC=a;Dur=3;dur=9;desc=b;x=1"]) == (TimingEntry("db", 3.0, "a"),)


def test_a_dur_that_is_no_number_is_zero() -> None:
    assert parse([b"db;dur=fast, q;dur=-4, r;dur=inf"]) == (
        TimingEntry("db", 0.0),
        TimingEntry("q", 0.0),
        TimingEntry("r", 0.0),
    )


def test_malformed_entries_are_skipped_and_the_rest_kept() -> None:
    value = b'db;dur, ;dur=1, "q";dur=2, x;desc="unterminated, y;dur=3'
    assert parse([value, b"ok;dur=1, bad bad, @x, good"]) == (
        TimingEntry("ok", 1.0),
        TimingEntry("good"),
    )


def test_only_wanted_names_are_kept() -> None:
    assert parse([b"db;dur=1, cache;desc=miss, other;dur=2"], frozenset({"cache"})) == (
        TimingEntry("cache", None, "miss"),
    )


def test_fields_of_and_without_pick_the_header_by_any_case() -> None:
    headers = [(b"Server-Timing", b"db;dur=1"), (b"X", b"y"), (b"server-timing", b"c")]
    assert fields_of(headers) == [b"db;dur=1", b"c"]
    assert without(headers) == [(b"X", b"y")]
    kept = [(b"X", b"y")]
    assert without(kept) is kept


def test_bounds_on_entries_and_bytes() -> None:
    many = b", ".join(b"m%d;dur=1" % i for i in range(100))
    assert len(parse([many])) == MAX_ENTRIES
    assert len(parse([many], max_entries=5)) == 5
    long = b"a;dur=1, " + b"x" * (MAX_BYTES * 4) + b", late;dur=2"
    assert parse([long]) == (TimingEntry("a", 1.0),)
    assert parse([b"db;dur=1", b"late;dur=2"], max_bytes=9) == (TimingEntry("db", 1.0),)


@given(st.lists(st.binary(max_size=300), max_size=5), st.integers(1, 64), st.integers(0, 600))
def test_never_raises_on_any_bytes_and_bounds_hold(
    values: list[bytes], max_entries: int, max_bytes: int
) -> None:
    entries = parse(values, max_entries=max_entries, max_bytes=max_bytes)
    assert len(entries) <= max_entries
    assert sum(len(e.name) for e in entries) <= max_bytes
    assert all(e.dur is None or e.dur >= 0.0 for e in entries)


tokens = st.text(alphabet=TCHARS, min_size=1, max_size=12)
descs = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
entries = st.builds(
    TimingEntry,
    tokens,
    st.none() | st.floats(min_value=0.0, max_value=1e9, allow_nan=False),
    st.none() | descs,
)


@given(st.lists(entries, max_size=MAX_ENTRIES))
def test_well_formed_entries_round_trip(items: list[TimingEntry]) -> None:
    text = ", ".join(format_entry(e) for e in items).encode("latin-1")
    assert parse([text], max_bytes=len(text) + 1) == tuple(items)


@given(st.lists(entries, min_size=1, max_size=8), st.integers(1, 7))
def test_round_trip_across_several_fields(items: list[TimingEntry], cut: int) -> None:
    fields = [format_entry(e).encode("latin-1") for e in items]
    joined = [b",".join(fields[:cut]), b",".join(fields[cut:])]
    assert parse([f for f in joined if f]) == tuple(items)


@given(st.text(alphabet="durescDURESC0189.-_!x \t;=,", max_size=120))
def test_the_split_path_finds_what_the_grammar_scanner_finds(text: str) -> None:
    assert _split(text) == _scan(text)
