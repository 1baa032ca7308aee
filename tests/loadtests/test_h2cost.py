"""loadtests/h2cost.py measures real h2 work: every batch's requests and responses are seen
by the other end, and the figures are per request, of both halves, on both sides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from h2.events import Event, RequestReceived

from tests.support.scripts import load_script

h2cost = load_script("h2cost")


def test_the_cost_of_both_sides_is_written_per_request(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    assert h2cost.main(["--requests", "300", "--streams", "100", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    sides = {row["side"]: row for row in report["costs"]}
    assert set(sides) == {"server (client connections)", "client (upstream sessions)"}
    for row in sides.values():
        assert row["requests"] == 300
        assert row["receive_us"] > 0
        assert row["send_us"] > 0
        assert row["total_us"] == pytest.approx(row["receive_us"] + row["send_us"])


def test_a_batch_a_side_did_not_see_whole_is_an_error() -> None:
    seen: list[Event] = [RequestReceived(stream_id=n) for n in (1, 3, 5)]
    with pytest.raises(RuntimeError, match="3 RequestReceived events where 4 were sent"):
        h2cost._check(seen, RequestReceived, 4)


def test_fewer_requests_than_a_batch_is_refused() -> None:
    with pytest.raises(SystemExit):
        h2cost.main(["--requests", "10", "--streams", "100"])
