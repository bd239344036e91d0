"""User filters on item metadata → a safe Milvus boolean expression.

JSON filters (`{"meta.brand": "Samsung", "meta.price": {"lt": 500}}`) and protobuf `FilterClause`
lists are validated against the bundle's `metadata_schema` into the same typed clauses, then
rendered with field names taken from the schema (never from user text) and escaped literals.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from seqrec.proto.v1 import common_pb2

PREFIX = "meta."
MAX_LIST_VALUES = 1000
MAX_STRING_CHARS = 1024
MAX_EXCLUDED = 10_000
PRIMARY_KEY = "index"
RANGE_OPS = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}
COLUMN_TYPES = ("bool", "int64", "double", "string")
_INT64 = (-(2**63), 2**63 - 1)
# Escapes both Milvus (Go/ANTLR) and Milvus Lite understand; any other control character has no
# escape common to both, so such strings are rejected rather than passed raw.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

Scalar = bool | int | float | str


class FilterError(ValueError):
    """A filter that does not fit the bundle's metadata schema; the message names the key."""


@dataclass(frozen=True)
class Equals:
    column: str
    value: Scalar


@dataclass(frozen=True)
class AnyOf:
    column: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Range:
    column: str
    gte: int | float | None = None
    gt: int | float | None = None
    lte: int | float | None = None
    lt: int | float | None = None


Clause = Equals | AnyOf | Range


def safe_name(prefix: str, text: str) -> str:
    """`prefix + text` restricted to [A-Za-z0-9_]; a short hash is appended when characters were replaced,
    so distinct inputs never share a name."""
    clean = re.sub(r"[^A-Za-z0-9_]", "_", text)
    if clean != text:
        clean += "_" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return prefix + clean


def field_name(column: str) -> str:
    """Milvus field holding metadata column `column`, e.g. `m_brand`."""
    return safe_name("m_", column)


def presence_name(column: str) -> str:
    """Milvus BOOL field saying whether the item has a value in metadata column `column`, e.g. `h_brand`.

    Nullable fields need Milvus 2.5+, so a missing value is stored as a placeholder in `field_name(column)` with
    this flag false, on every Milvus alike; every clause is gated on the flag, so a missing value never matches.
    """
    return safe_name("h_", column)


def typed_value(kind: str, value: Any) -> Any:
    """A metadata value for its typed field; values that do not fit the column type (or strings no
    filter can name) count as missing there (None), so they never match a filter. `display` keeps them as they
    are."""
    if kind == "bool":
        return bool(value) if isinstance(value, (bool, np.bool_)) else None
    if isinstance(value, (bool, np.bool_)):
        return None
    if kind == "int64":
        return int(value) if isinstance(value, Integral) and -(2**63) <= value < 2**63 else None
    if kind == "double":
        return float(value) if isinstance(value, Real) and math.isfinite(value) else None
    return value if isinstance(value, str) and len(value) <= MAX_STRING_CHARS else None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _scalar(path: str, kind: str, value: Any) -> Scalar:
    """`value` checked against the column type (bool before int: bool is an int in Python)."""
    if isinstance(value, (list, tuple, dict)):
        raise FilterError(f"{path}: expected a single {kind} value, got a nested {type(value).__name__}")
    if kind == "bool":
        if not isinstance(value, bool):
            raise FilterError(f"{path}: expected true or false, got {_show(value)}")
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise FilterError(f"{path}: expected a string, got {_show(value)}")
        if len(value) > MAX_STRING_CHARS:
            raise FilterError(f"{path}: string longer than {MAX_STRING_CHARS} characters")
        if bad := _CONTROL.search(value):
            raise FilterError(f"{path}: control character U+{ord(bad.group()):04X} is not allowed")
        return value
    number = _number(path, value)
    if kind == "double":
        return float(number)
    if not float(number).is_integer() or not _INT64[0] <= number <= _INT64[1]:
        raise FilterError(f"{path}: expected a 64-bit integer, got {_show(value)}")
    return int(number)


def _number(path: str, value: Any) -> int | float:
    """A finite int or float (not a bool), unchanged."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FilterError(f"{path}: expected a number, got {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise FilterError(f"{path}: expected a finite number, got {_show(value)}")
    if isinstance(value, int) and not -(2**1023) < value < 2**1023:
        raise FilterError(f"{path}: number out of range")
    return value


def _column(key: Any, schema: Mapping[str, str]) -> tuple[str, str]:
    """(schema column, its type) for a `meta.<column>` key."""
    if not isinstance(key, str) or not key.startswith(PREFIX):
        raise FilterError(f"filters: key {_show(key)} must start with {PREFIX!r}")
    name = key[len(PREFIX):]
    for column, kind in schema.items():
        if column == name:
            if kind not in COLUMN_TYPES:
                raise FilterError(f"filters.{key}: column type {kind!r} is not filterable")
            return column, kind
    filterable = sorted(PREFIX + c for c in schema)
    raise FilterError(f"filters: unknown column {_show(key)}; filterable: {filterable}")


def _any_of(path: str, column: str, kind: str, values: Sequence[Any]) -> AnyOf:
    if not values:
        raise FilterError(f"{path}: a list needs at least one value")
    if len(values) > MAX_LIST_VALUES:
        raise FilterError(f"{path}: more than {MAX_LIST_VALUES} values")
    return AnyOf(column, tuple(_scalar(f"{path}[{i}]", kind, v) for i, v in enumerate(values)))


def _range(path: str, column: str, kind: str, bounds: Mapping[str, Any]) -> Range:
    if kind not in ("int64", "double"):
        raise FilterError(f"{path}: a range needs a numeric column, {PREFIX}{column} is {kind}")
    unknown = sorted(str(op) for op in bounds if op not in RANGE_OPS)
    if unknown or not bounds:
        raise FilterError(f"{path}: a range takes {sorted(RANGE_OPS)}, got {sorted(map(str, bounds))}")
    return Range(column, **{op: _bound(f"{path}.{op}", kind, op, v) for op, v in bounds.items()})


def _bound(path: str, kind: str, op: str, value: Any) -> int | float:
    """A range bound; on an int64 column the equivalent integer bound (x >= 2.5 ⇔ x >= 3), so the
    expression never compares an integer field with a float literal."""
    number = _number(path, value)
    if kind == "double":
        return float(number)
    if isinstance(number, int):
        whole = number
    else:
        whole = math.ceil(number) if op in ("gte", "lt") else math.floor(number)
    if not _INT64[0] <= whole <= _INT64[1]:
        raise FilterError(f"{path}: outside the 64-bit integer range")
    return whole


def _from_json(filters: Mapping[Any, Any], schema: Mapping[str, str]) -> list[Clause]:
    clauses: list[Clause] = []
    for key, cond in filters.items():
        column, kind = _column(key, schema)
        path = f"filters.{key}"
        if isinstance(cond, list):
            clauses.append(_any_of(path, column, kind, cond))
        elif isinstance(cond, dict):
            clauses.append(_range(path, column, kind, cond))
        else:
            clauses.append(Equals(column, _scalar(path, kind, cond)))
    return clauses


def _proto_value(path: str, value: common_pb2.MetadataValue) -> Any:
    which = value.WhichOneof("kind")
    if which is None:
        raise FilterError(f"{path}: no value set")
    if which == "list_value":
        return list(value.list_value.values)  # rejected by _scalar as a nested list
    return getattr(value, which)


def _from_proto(clauses: Sequence[common_pb2.FilterClause], schema: Mapping[str, str]) -> list[Clause]:
    out: list[Clause] = []
    for clause in clauses:
        column, kind = _column(clause.field, schema)
        path = f"filters.{clause.field}"
        op = clause.WhichOneof("op")
        if op == "equals":
            out.append(Equals(column, _scalar(path, kind, _proto_value(path, clause.equals))))
        elif op == "any_of":
            values = [_proto_value(f"{path}[{i}]", v) for i, v in enumerate(clause.any_of.values)]
            out.append(_any_of(path, column, kind, values))
        elif op == "range":
            bounds = {name: getattr(clause.range, name) for name in RANGE_OPS if clause.range.HasField(name)}
            out.append(_range(path, column, kind, bounds))
        else:
            raise FilterError(f"{path}: no operator set (equals, any_of or range)")
    return out


def validate_clauses(filters: Mapping[str, Any] | Sequence[common_pb2.FilterClause] | None,
               schema: Mapping[str, str]) -> list[Clause]:
    """Validate JSON filters or protobuf clauses against the schema (column → type)."""
    if not filters:
        return []
    if isinstance(filters, Mapping):
        return _from_json(filters, schema)
    if isinstance(filters, (str, bytes)) or not isinstance(filters, Sequence):
        raise FilterError(f"filters: expected an object of {PREFIX}<column> filters, got {type(filters).__name__}")
    if not all(isinstance(c, common_pb2.FilterClause) for c in filters):
        raise FilterError("filters: expected FilterClause messages")
    return _from_proto(filters, schema)


def quote(text: str) -> str:
    """A double-quoted expression literal that no input can break out of."""
    if _CONTROL.search(text):
        raise FilterError(f"control character in string literal {_show(text)}")
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in text) + '"'


def literal(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return quote(value)


def to_expr(clauses: Sequence[Clause]) -> str:
    """Clauses joined with `and`, each gated on its column's presence flag; the empty string when there are
    none."""
    parts = []
    for clause in clauses:
        field = field_name(clause.column)
        if isinstance(clause, Equals):
            test = f"{field} == {literal(clause.value)}"
        elif isinstance(clause, AnyOf):
            test = f"{field} in [{', '.join(literal(v) for v in clause.values)}]"
        else:
            test = " and ".join(f"{field} {RANGE_OPS[op]} {literal(getattr(clause, op))}"
                                for op in RANGE_OPS if getattr(clause, op) is not None)
        parts.append(f"({presence_name(clause.column)} == true and {test})")
    return " and ".join(parts)


def build_expression(filters: Mapping[str, Any] | Sequence[common_pb2.FilterClause] | None,
                schema: Mapping[str, str]) -> str:
    """Validated filters (JSON or protobuf) as a Milvus expression."""
    return to_expr(validate_clauses(filters, schema))


def exclusion_expr(indices: Sequence[int]) -> str:
    """`index not in [...]` over item primary keys; empty for no indices."""
    if len(indices) > MAX_EXCLUDED:
        raise ValueError(f"more than {MAX_EXCLUDED} excluded items")
    keys = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, Integral) or not _INT64[0] <= i <= _INT64[1]:
            raise ValueError(f"excluded item index must be a 64-bit integer, got {_show(i)}")
        keys.append(str(int(i)))
    return f"{PRIMARY_KEY} not in [{', '.join(keys)}]" if keys else ""

