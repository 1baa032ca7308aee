"""Outcome: status classes and who an exchange counts against."""

from __future__ import annotations

import pytest

from proxy.core.outcome import Outcome, classify, status_class

LABELS = {100: "1xx", 101: "1xx", 200: "2xx", 204: "2xx", 304: "3xx", 404: "4xx", 499: "4xx"}
LABELS |= {500: "5xx", 504: "5xx", 599: "5xx", 600: "5xx", 99: "5xx"}  # out of range: bounded


@pytest.mark.parametrize(("status", "label"), LABELS.items())
def test_status_class(status: int, label: str) -> None:
    assert status_class(status) == label


@pytest.mark.parametrize(
    ("status", "failure", "aborted", "outcome"),
    [
        (200, None, False, Outcome.OK),
        (404, None, False, Outcome.OK),  # the upstream answered; the client asked wrongly
        (101, None, False, Outcome.OK),
        (500, None, False, Outcome.UPSTREAM_ERROR),
        (503, None, False, Outcome.UPSTREAM_ERROR),
        (None, "connect", False, Outcome.UPSTREAM_ERROR),
        (None, "timeout", False, Outcome.UPSTREAM_ERROR),
        (200, "reset", False, Outcome.UPSTREAM_ERROR),  # reset mid-body after a 200 head
        (None, "protocol", False, Outcome.UPSTREAM_ERROR),
        (None, None, False, Outcome.REJECTED),
        (200, None, True, Outcome.CLIENT_ABORT),
        (None, "timeout", True, Outcome.CLIENT_ABORT),  # a hang-up never blames the upstream
        (500, None, True, Outcome.CLIENT_ABORT),
    ],
)
def test_classify(status: int | None, failure: str | None, aborted: bool, outcome: Outcome) -> None:
    assert classify(status, failure, aborted) is outcome


def test_unknown_failure_reason_is_a_bug() -> None:
    with pytest.raises(ValueError, match="refused"):
        classify(None, "refused", False)
