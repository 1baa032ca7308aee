"""core/grpc.py: gRPC outcomes as bounded labels and error classes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.core import grpc as grpc_codes
from proxy.core.analysis import AnalysisConfig, classify_status
from proxy.core.outcome import status_class


def test_every_code_has_a_bounded_label_and_bad_values_are_unknown() -> None:
    labels = {grpc_codes.label(grpc_codes.outcome(code)) for code in range(17)}
    assert len(labels) == 17
    assert grpc_codes.label(grpc_codes.outcome(99)) == "grpc:UNKNOWN"
    assert grpc_codes.parse_status(b"14") == 14
    for bad in (b"", b"x", b"-1", b"17", b"014", b"1 4"):
        assert grpc_codes.parse_status(bad) == grpc_codes.UNKNOWN, bad
    assert grpc_codes.is_grpc(b"application/grpc+proto")
    assert not grpc_codes.is_grpc(b"application/grpc-web")


@given(st.binary(max_size=8))
def test_any_status_value_parses_to_a_code(value: bytes) -> None:
    assert 0 <= grpc_codes.parse_status(value) < len(grpc_codes.CODES)


def test_server_side_codes_are_errors_by_default_and_caller_codes_are_not() -> None:
    errors = AnalysisConfig().error_statuses
    for name, code in (
        ("UNAVAILABLE", 14),
        ("INTERNAL", 13),
        ("UNKNOWN", 2),
        ("DEADLINE_EXCEEDED", 4),
    ):
        assert status_class(grpc_codes.outcome(code)) == f"grpc:{name}"
        assert classify_status(grpc_codes.outcome(code), errors)
    for code in (0, 1, 3, 5, 7, 16):
        assert not classify_status(grpc_codes.outcome(code), errors)
    assert classify_status(503, errors)
    assert status_class(200) == "2xx"
