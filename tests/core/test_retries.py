"""The retry budget: a token bucket fed by requests, spent by retries."""

from __future__ import annotations

from proxy.core.retries import RetryBudget


def test_starts_full_and_refuses_once_the_burst_is_spent() -> None:
    budget = RetryBudget(percent=10, burst=3)
    assert [budget.withdraw() for _ in range(4)] == [True, True, True, False]
    assert (budget.used, budget.refused) == (3, 1)


def test_requests_earn_their_percent_of_a_retry() -> None:
    budget = RetryBudget(percent=20, burst=1)
    budget.withdraw()
    for _ in range(4):
        budget.deposit()
    assert not budget.withdraw(), "4 requests at 20% earn 0.8 of a retry"
    budget.deposit()
    assert budget.withdraw()


def test_long_run_retries_stay_under_the_percent() -> None:
    budget = RetryBudget(percent=25, burst=10)
    allowed = 0
    for _ in range(10_000):
        budget.deposit()
        allowed += budget.withdraw()  # every request fails: as many retries as allowed
    assert allowed <= 10 + 2_500


def test_never_more_tokens_than_the_burst() -> None:
    budget = RetryBudget(percent=100, burst=2)
    for _ in range(100):
        budget.deposit()
    assert [budget.withdraw() for _ in range(3)] == [True, True, False]


def test_zero_percent_never_retries() -> None:
    budget = RetryBudget(percent=0, burst=50)
    assert not budget.withdraw()
