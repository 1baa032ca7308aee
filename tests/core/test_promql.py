"""PromQL checks: queries rendered per variant, and instant-query answers read (no sockets)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.promql import PromCheck, instances_regex, parse_result, render
from proxy.errors import NoPromData

BAD = 'sum(payment_failures_total{version="{{variant}}"})'
BY_INSTANCE = 'sum(payment_failures_total{instance=~"{{instances}}"})'


def test_the_variant_form_puts_the_label_value_in_the_query() -> None:
    check = PromCheck("payments", "http://p", "PROM_URL", BAD, BAD, stable_label="v1")
    assert render(check.bad, check.label("stable"), []) == (
        'sum(payment_failures_total{version="v1"})'
    )
    assert render(check.bad, check.label("canary"), []) == (
        'sum(payment_failures_total{version="canary"})'
    )
    assert not check.by_instances
    assert check.check == "prometheus:payments"


def test_a_label_value_is_quoted_for_a_promql_string() -> None:
    assert render(BAD, 'a"b\\c', []) == 'sum(payment_failures_total{version="a\\"b\\\\c"})'


def test_the_instances_form_is_an_escaped_regex_of_the_pool() -> None:
    query = render(BY_INSTANCE, "stable", ["10.0.0.1:80", "10.0.0.2:80"])
    # The query holds `\\.`: a PromQL string escape of the regex `\.`, a literal dot.
    one, two = "10\\\\.0\\\\.0\\\\.1:80", "10\\\\.0\\\\.0\\\\.2:80"
    assert query == f'sum(payment_failures_total{{instance=~"{one}|{two}"}})'
    assert PromCheck("x", "http://p", "E", BY_INSTANCE, BY_INSTANCE).by_instances


@given(
    st.lists(
        st.from_regex(r"[a-z0-9.\-\[\]:]{1,20}:[0-9]{1,5}", fullmatch=True),
        min_size=1,
        max_size=5,
        unique=True,
    )
)
def test_the_instances_regex_matches_exactly_its_instances(hosts: list[str]) -> None:
    # Undo the PromQL string quoting, as Prometheus does, then use the regex as RE2 would
    # (fully anchored): it matches each instance, and nothing that differs in one character.
    pattern = instances_regex(hosts).replace("\\\\", "\\")
    for host in hosts:
        assert re.fullmatch(pattern, host)
        if host.replace(".", "x") not in hosts:
            assert "." not in host or not re.fullmatch(pattern, host.replace(".", "x"))


def _vector(*values: tuple[dict[str, str], str]) -> dict[str, object]:
    result = [{"metric": m, "value": [1700000000.1, v]} for m, v in values]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_a_vector_gives_a_value_per_series() -> None:
    payload = _vector(({}, "12"), ({"instance": "a:1", "job": "x"}, "3.5"))
    assert parse_result(payload) == {"": 12.0, "instance=a:1,job=x": 3.5}


def test_a_scalar_gives_one_value() -> None:
    payload = {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "7"]}}
    assert parse_result(payload) == {"": 7.0}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_vector(), "no series"),
        (_vector(({}, "NaN")), "no series"),
        (
            {"status": "error", "errorType": "bad_data", "error": "parse error at char 4"},
            "bad_data: parse error at char 4",
        ),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "not matrix"),
        ({"status": "success"}, "no data"),
        ([1, 2], "not a JSON object"),
        (_vector(({}, "many")), "not a number"),
    ],
)
def test_no_usable_value_is_no_data_with_the_reason(payload: object, reason: str) -> None:
    with pytest.raises(NoPromData, match=re.escape(reason)):
        parse_result(payload)
