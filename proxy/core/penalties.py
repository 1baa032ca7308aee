"""Client addresses barred for a while after they abused a connection.

Pure: the time is passed in. A connection's allowances (`allowance.py`) end a connection that
floods, but a client that reconnects at once gets a fresh allowance each time, and every new
connection costs the proxy an accept, a handshake and a parse before the allowance runs out
again. So an address whose connection was ended for abuse is barred: its new connections are
closed at accept, before any byte is read, until the bar ends.

The table is bounded (`capacity` addresses): when it is full, the oldest bar goes, with every
ended one, so an attacker with many addresses cannot make it grow without end.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Penalties:
    seconds: float  # how long a bar lasts; 0 bars nobody
    capacity: int = 4096
    until: dict[str, float] = field(default_factory=dict)  # address -> the bar's end


def bar(penalties: Penalties, address: str, now: float) -> None:
    """Bar `address` from `now` for `penalties.seconds` (a later bar extends it)."""
    if penalties.seconds <= 0 or not address:
        return
    until = penalties.until
    until.pop(address, None)  # re-inserted last: the newest bar is evicted last
    if len(until) >= penalties.capacity:
        _evict(until, now)
    until[address] = now + penalties.seconds


def barred(penalties: Penalties, address: str, now: float) -> bool:
    """Whether `address` is barred at `now` (an ended bar is forgotten)."""
    until = penalties.until
    if not until:
        return False
    end = until.get(address)
    if end is None:
        return False
    if now < end:
        return True
    del until[address]
    return False


def _evict(until: dict[str, float], now: float) -> None:
    # Bars are kept in the order they were set, which is the order they end in (all last
    # `seconds`, but for a reload that changed it): ended ones are at the front.
    oldest = next(iter(until))
    del until[oldest]
    while until:
        first = next(iter(until))
        if until[first] > now:
            return
        del until[first]
