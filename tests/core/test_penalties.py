"""Barred addresses (proxy/core/penalties.py): a bar lasts its time and no longer, and the
table stays within its capacity whatever addresses come."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.penalties import Penalties, bar, barred


def test_a_bar_lasts_its_time() -> None:
    penalties = Penalties(10.0)
    bar(penalties, "192.0.2.1", 100.0)
    assert barred(penalties, "192.0.2.1", 100.0)
    assert barred(penalties, "192.0.2.1", 109.9)
    assert not barred(penalties, "192.0.2.2", 105.0)  # only that address
    assert not barred(penalties, "192.0.2.1", 110.0)
    assert penalties.until == {}  # an ended bar is forgotten


def test_a_later_bar_extends_it() -> None:
    penalties = Penalties(10.0)
    bar(penalties, "192.0.2.1", 0.0)
    bar(penalties, "192.0.2.1", 8.0)
    assert barred(penalties, "192.0.2.1", 17.0)


def test_zero_seconds_and_no_address_bar_nobody() -> None:
    off = Penalties(0.0)
    bar(off, "192.0.2.1", 0.0)
    assert not barred(off, "192.0.2.1", 0.0)
    on = Penalties(5.0)
    bar(on, "", 0.0)  # a connection without a peer address (a Unix socket)
    assert on.until == {}


def test_when_full_ended_bars_and_then_the_oldest_go() -> None:
    penalties = Penalties(10.0, capacity=3)
    bar(penalties, "a", 0.0)
    bar(penalties, "b", 1.0)
    bar(penalties, "c", 5.0)
    bar(penalties, "d", 6.0)  # full: "a", the oldest, goes
    assert list(penalties.until) == ["b", "c", "d"]
    bar(penalties, "e", 12.0)  # full: "b" goes; "c" (ending at 15) stays
    assert list(penalties.until) == ["c", "d", "e"]
    bar(penalties, "f", 16.5)  # "c" goes as the oldest, "d" (ended at 16) with it
    assert list(penalties.until) == ["e", "f"]


@given(
    capacity=st.integers(1, 8),
    events=st.lists(
        st.tuples(st.sampled_from("abcdefghijkl"), st.floats(0.0, 3.0), st.booleans()),
        max_size=200,
    ),
)
def test_the_table_is_bounded_and_a_fresh_bar_holds(
    capacity: int, events: list[tuple[str, float, bool]]
) -> None:
    penalties = Penalties(2.0, capacity=capacity)
    now = 0.0
    for address, gap, is_bar in events:
        now += gap
        if is_bar:
            bar(penalties, address, now)
            assert barred(penalties, address, now)  # the newest bar is never the one evicted
        else:
            end = penalties.until.get(address)
            assert barred(penalties, address, now) == (end is not None and now < end)
        assert len(penalties.until) <= capacity
        assert all(end <= now + 2.0 for end in penalties.until.values())
