"""The retry budget: how many failed canary attempts may be sent again to stable.

A token bucket fed by traffic, not by time (Finagle's and Envoy's retry budgets): every request
of a service earns `percent / 100` of a token, up to `burst` tokens, and every retry spends one.
So retries stay below `percent`% of the requests over any long stretch, however the canary
fails, and a burst of failures (every canary request in flight when its hosts die) can still
be retried up to `burst`. The bucket starts full. A budget of 0% or a burst of 0 never retries.
Pure: no I/O, no clock.
"""

from __future__ import annotations


class RetryBudget:
    """Tokens earned per request, spent per retry; `used` and `refused` count the spending."""

    __slots__ = ("burst", "earn", "refused", "tokens", "used")

    def __init__(self, percent: int, burst: int) -> None:
        self.earn = percent / 100.0
        self.burst = float(burst) if percent > 0 else 0.0
        self.tokens = self.burst
        self.used = 0
        self.refused = 0

    def deposit(self) -> None:
        """One request was admitted."""
        tokens = self.tokens + self.earn
        self.tokens = tokens if tokens < self.burst else self.burst

    def withdraw(self) -> bool:
        """Spend a token for one retry; False (and counted as refused) when none is left."""
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.used += 1
            return True
        self.refused += 1
        return False
