"""The series selectors of a PromQL expression, read with a real PromQL parser (promql-parser).

Syntax is judged by promtool (`promtool check rules`); this module only answers "which metric
names and which label names does this expression select on", so that monitoring files can be
checked against what the proxy really exposes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import promql_parser


@dataclass(frozen=True)
class Selector:
    """One vector selector: its metric name and the label names its matchers use."""

    name: str
    labels: frozenset[str]


def _children(node: object) -> Iterator[object]:
    if isinstance(node, promql_parser.BinaryExpr):
        yield from (node.lhs, node.rhs)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield node.expr
        if node.param is not None:
            yield node.param
    elif isinstance(node, promql_parser.Call):
        yield from node.args
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(
        node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr
    ):
        yield node.expr


def _selector(node: promql_parser.VectorSelector) -> Selector:
    matchers = node.matchers.matchers
    name = node.name
    if name is None:  # {__name__="..."}
        names = [m.value for m in matchers if m.name == "__name__"]
        assert len(names) == 1, f"a selector without one metric name: {node}"
        name = names[0]
    return Selector(name, frozenset(m.name for m in matchers if m.name != "__name__"))


def selectors(expr: str) -> list[Selector]:
    """Every vector selector in `expr` (raises on a syntax error the parser sees)."""
    found: list[Selector] = []
    stack: list[object] = [promql_parser.parse(expr)]
    while stack:
        node = stack.pop()
        if isinstance(node, promql_parser.VectorSelector):
            found.append(_selector(node))
        stack.extend(_children(node))
    return found
