"""User filters → Milvus expressions: validation names the key, literals cannot change the expression."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from seqrec.proto.v1 import common_pb2
from seqrec.services.ranker.filters import (
    AnyOf,
    Equals,
    FilterError,
    Range,
    build_expression,
    exclusion_expr,
    field_name,
    presence_name,
    quote,
    validate_clauses,
)

SCHEMA = {"brand": "string", "price": "double", "year": "int64", "in_stock": "bool"}
HOSTILE = ['x" or m_brand != "', '\\" || 1==1 #', "'); drop", "a\nb\r\tc", "\\", '"', "Ünïcødé ☃ 名前",
           'm_brand == "x" or true', "\\\\\"\\"]


def value(v: Any) -> common_pb2.MetadataValue:
    if isinstance(v, bool):
        return common_pb2.MetadataValue(bool_value=v)
    if isinstance(v, int):
        return common_pb2.MetadataValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.MetadataValue(double_value=v)
    if isinstance(v, list):
        return common_pb2.MetadataValue(list_value=common_pb2.ValueList(values=[value(x) for x in v]))
    return common_pb2.MetadataValue(string_value=v)


def to_proto(filters: dict[str, Any]) -> list[common_pb2.FilterClause]:
    """The gRPC form of JSON filters, built independently of the module under test."""
    out = []
    for key, cond in filters.items():
        if isinstance(cond, list):
            out.append(common_pb2.FilterClause(field=key, any_of=common_pb2.ValueList(values=[value(v) for v in cond])))
        elif isinstance(cond, dict):
            out.append(common_pb2.FilterClause(field=key, range=common_pb2.NumericRange(**cond)))
        else:
            out.append(common_pb2.FilterClause(field=key, equals=value(cond)))
    return out


def _gate(column: str, test: str) -> str:
    return f"(h_{column} == true and {test})"


@pytest.mark.parametrize(("filters", "expr"), [
    ({"meta.brand": "acme"}, _gate("brand", 'm_brand == "acme"')),
    ({"meta.in_stock": False}, _gate("in_stock", "m_in_stock == false")),
    ({"meta.year": 2001}, _gate("year", "m_year == 2001")),
    ({"meta.year": 2001.0}, _gate("year", "m_year == 2001")),
    ({"meta.price": 5}, _gate("price", "m_price == 5.0")),
    ({"meta.price": -0.25}, _gate("price", "m_price == -0.25")),
    ({"meta.price": 1e300}, _gate("price", "m_price == 1e+300")),
    ({"meta.brand": ["a", "b"]}, _gate("brand", 'm_brand in ["a", "b"]')),
    ({"meta.in_stock": [True]}, _gate("in_stock", "m_in_stock in [true]")),
    ({"meta.price": {"gte": 1, "lt": 2.5}}, _gate("price", "m_price >= 1.0 and m_price < 2.5")),
    ({"meta.year": {"gt": 2003.5, "lte": 2010.9}}, _gate("year", "m_year > 2003 and m_year <= 2010")),
    ({"meta.year": {"gte": 2.5, "lt": 7.5}}, _gate("year", "m_year >= 3 and m_year < 8")),
    ({"meta.brand": "a", "meta.price": {"lte": 9}},
     _gate("brand", 'm_brand == "a"') + " and " + _gate("price", "m_price <= 9.0")),
    ({}, ""),
    (None, ""),
])
def test_expressions_json_and_proto_agree(filters: dict[str, Any] | None, expr: str) -> None:
    assert build_expression(filters, SCHEMA) == expr
    assert build_expression(to_proto(filters or {}), SCHEMA) == expr
    assert validate_clauses(filters, SCHEMA) == validate_clauses(to_proto(filters or {}), SCHEMA)


def test_typed_clauses() -> None:
    clauses = validate_clauses({"meta.brand": ["a"], "meta.year": {"gt": 1.5}, "meta.in_stock": True}, SCHEMA)
    assert clauses == [AnyOf("brand", ("a",)), Range("year", gt=1), Equals("in_stock", True)]


@pytest.mark.parametrize("bound", [-3.5, -3.0, 0.0, 2.5, 7.0])
def test_integer_range_bounds_keep_their_meaning(bound: float) -> None:
    xs = range(-6, 10)
    for op, test in {"gte": lambda x, b: x >= b, "gt": lambda x, b: x > b,
                     "lte": lambda x, b: x <= b, "lt": lambda x, b: x < b}.items():
        (clause,) = validate_clauses({"meta.year": {op: bound}}, SCHEMA)
        rounded = getattr(clause, op)
        assert isinstance(rounded, int)
        assert [test(x, rounded) for x in xs] == [test(x, bound) for x in xs]


@pytest.mark.parametrize(("filters", "message"), [
    ({"brand": "x"}, "filters: key 'brand' must start with 'meta.'"),
    ({"meta.brandd": "x"},
     "filters: unknown column 'meta.brandd'; filterable: ['meta.brand', 'meta.in_stock', 'meta.price', 'meta.year']"),
    ({'meta.x == 1 or y': 1}, "filters: unknown column 'meta.x == 1 or y'"),
    ({"meta.price": "abc"}, "filters.meta.price: expected a number, got 'abc'"),
    ({"meta.price": True}, "filters.meta.price: expected a number, got True"),
    ({"meta.year": False}, "filters.meta.year: expected a number, got False"),
    ({"meta.year": 2000.5}, "filters.meta.year: expected a 64-bit integer, got 2000.5"),
    ({"meta.year": 2**63}, "filters.meta.year: expected a 64-bit integer"),
    ({"meta.in_stock": "yes"}, "filters.meta.in_stock: expected true or false, got 'yes'"),
    ({"meta.in_stock": 1}, "filters.meta.in_stock: expected true or false, got 1"),
    ({"meta.brand": 5}, "filters.meta.brand: expected a string, got 5"),
    ({"meta.brand": None}, "filters.meta.brand: expected a string, got None"),
    ({"meta.price": float("nan")}, "filters.meta.price: expected a finite number, got nan"),
    ({"meta.price": float("inf")}, "filters.meta.price: expected a finite number, got inf"),
    ({"meta.price": 10**400}, "filters.meta.price: number out of range"),
    ({"meta.price": {"gte": float("-inf")}}, "filters.meta.price.gte: expected a finite number"),
    ({"meta.price": {"gte": "1"}}, "filters.meta.price.gte: expected a number, got '1'"),
    ({"meta.price": {"lt": True}}, "filters.meta.price.lt: expected a number, got True"),
    ({"meta.price": {"gtee": 1}}, "filters.meta.price: a range takes ['gt', 'gte', 'lt', 'lte'], got ['gtee']"),
    ({"meta.price": {}}, "filters.meta.price: a range takes"),
    ({"meta.brand": {"gte": 1}}, "filters.meta.brand: a range needs a numeric column, meta.brand is string"),
    ({"meta.in_stock": {"lt": 1}}, "filters.meta.in_stock: a range needs a numeric column"),
    ({"meta.year": {"gte": 1e30}}, "filters.meta.year.gte: outside the 64-bit integer range"),
    ({"meta.brand": []}, "filters.meta.brand: a list needs at least one value"),
    ({"meta.brand": ["a"] * 1001}, "filters.meta.brand: more than 1000 values"),
    ({"meta.brand": ["a", ["b"]]}, "filters.meta.brand[1]: expected a single string value, got a nested list"),
    ({"meta.brand": ["a", {"gte": 1}]}, "filters.meta.brand[1]: expected a single string value, got a nested dict"),
    ({"meta.year": [1, "2"]}, "filters.meta.year[1]: expected a number, got '2'"),
    ({"meta.brand": "x" * 1025}, "filters.meta.brand: string longer than 1024 characters"),
    ({"meta.brand": "a\x00b"}, "filters.meta.brand: control character U+0000 is not allowed"),
    ({"meta.brand": ["ok", "\x1b[2J"]}, "filters.meta.brand[1]: control character U+001B is not allowed"),
])
def test_errors_name_the_key(filters: dict[str, Any], message: str) -> None:
    with pytest.raises(FilterError) as err:
        build_expression(filters, SCHEMA)
    assert str(err.value).startswith(message)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(("clauses", "message"), [
    ([common_pb2.FilterClause(field="meta.brand")], "filters.meta.brand: no operator set"),
    ([common_pb2.FilterClause(field="brand", equals=value("x"))], "filters: key 'brand' must start with 'meta.'"),
    ([common_pb2.FilterClause(field="meta.brand", equals=common_pb2.MetadataValue())],
     "filters.meta.brand: no value set"),
    ([common_pb2.FilterClause(field="meta.brand", equals=value(["a"]))],
     "filters.meta.brand: expected a single string value, got a nested list"),
    ([common_pb2.FilterClause(field="meta.brand", any_of=common_pb2.ValueList(values=[value("a"), value(["b"])]))],
     "filters.meta.brand[1]: expected a single string value, got a nested list"),
    ([common_pb2.FilterClause(field="meta.price", range=common_pb2.NumericRange())],
     "filters.meta.price: a range takes"),
    ([common_pb2.FilterClause(field="meta.price", range=common_pb2.NumericRange(lt=float("nan")))],
     "filters.meta.price.lt: expected a finite number"),
    ([common_pb2.FilterClause(field="meta.in_stock", equals=value(1))],
     "filters.meta.in_stock: expected true or false"),
    (["meta.brand"], "filters: expected FilterClause messages"),
    ("meta.brand", "filters: expected an object of meta.<column> filters, got str"),
])
def test_proto_errors_name_the_key(clauses: Any, message: str) -> None:
    with pytest.raises(FilterError, match=re.escape(message)):
        validate_clauses(clauses, SCHEMA)


@pytest.mark.parametrize(("text", "literal"), [
    ('x" or m_brand != "', r'"x\" or m_brand != \""'),
    ('\\" || 1==1 #', r'"\\\" || 1==1 #"'),
    ("'); drop", "\"'); drop\""),
    ("a\nb\r\tc", r'"a\nb\r\tc"'),
    ("Ünïcødé ☃ 名前", '"Ünïcødé ☃ 名前"'),
])
def test_quote_escapes(text: str, literal: str) -> None:
    assert quote(text) == literal
    assert build_expression({"meta.brand": text}, SCHEMA) == _gate("brand", f"m_brand == {literal}")


def unquote(expr: str, start: int) -> tuple[str, int]:
    """Read the double-quoted literal at expr[start] (C-style escapes); returns (value, end)."""
    assert expr[start] == '"'
    out, i = [], start + 1
    while expr[i] != '"':
        if expr[i] == "\\":
            out.append({"n": "\n", "r": "\r", "t": "\t"}.get(expr[i + 1], expr[i + 1]))
            i += 2
        else:
            assert expr[i] not in "\r\n"
            out.append(expr[i])
            i += 1
    return "".join(out), i + 1


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_stay_one_literal(text: str) -> None:
    expr = build_expression({"meta.brand": text, "meta.in_stock": True}, SCHEMA)
    head = "(h_brand == true and m_brand == "
    assert expr.startswith(head)
    decoded, end = unquote(expr, len(head))
    assert decoded == text
    assert expr[end:] == ") and " + _gate("in_stock", "m_in_stock == true")
    listed = build_expression({"meta.brand": [text, "b"]}, SCHEMA)
    decoded, end = unquote(listed, len("(h_brand == true and m_brand in ["))
    assert decoded == text and listed[end:] == ', "b"])'


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_parse_back_in_milvus_lite(text: str) -> None:
    parser = pytest.importorskip("milvus_lite.search.filter", reason="milvus-lite is not installed")
    tree = parser.parse_expr(build_expression({"meta.brand": text}, SCHEMA))
    assert type(tree).__name__ == "And" and len(tree.operands) == 2
    flag, test = tree.operands
    assert flag.left.name == "h_brand" and flag.right.value is True
    assert type(test).__name__ == "CmpOp" and test.op == "=="
    assert test.left.name == "m_brand" and test.right.value == text


def test_field_names_are_safe_and_distinct() -> None:
    columns = ["brand", "brand name", "brand_name", "brand-name", "price ($)", "名前", "x == 1 or y"]
    names = [field_name(c) for c in columns]
    assert names[0] == "m_brand" and names[2] == "m_brand_name"
    assert all(re.fullmatch(r"m_[A-Za-z0-9_]+", n) for n in names)
    assert len(set(names)) == len(names)
    schema = {"x == 1 or y": "int64"}
    assert build_expression({"meta.x == 1 or y": 3}, schema) == (f"({presence_name('x == 1 or y')} == true and "
                                                                 f"{field_name('x == 1 or y')} == 3)")
    flags = [presence_name(c) for c in columns]
    assert all(re.fullmatch(r"h_[A-Za-z0-9_]+", n) for n in flags) and len(set(flags) | set(names)) == 2 * len(names)


def test_exclusion_expression() -> None:
    assert exclusion_expr([3, 1, np.int64(2)]) == "index not in [3, 1, 2]"
    assert exclusion_expr([]) == ""
    with pytest.raises(ValueError, match="64-bit integer"):
        exclusion_expr([1, True])
    with pytest.raises(ValueError, match="64-bit integer"):
        exclusion_expr(["1 or true"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="more than 10000"):
        exclusion_expr(list(range(10_001)))
