"""Outcome labels: status classes stay bounded."""

from __future__ import annotations

import pytest

from proxy.core.outcome import status_class

LABELS = {100: "1xx", 101: "1xx", 200: "2xx", 204: "2xx", 304: "3xx", 404: "4xx", 499: "4xx"}
LABELS |= {500: "5xx", 504: "5xx", 599: "5xx", 600: "5xx", 99: "5xx"}  # out of range: bounded


@pytest.mark.parametrize(("status", "label"), LABELS.items())
def test_status_class(status: int, label: str) -> None:
    assert status_class(status) == label
