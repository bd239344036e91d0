"""Metadata filters for recommendation queries, built from plain Python values.

    from seqrec.client import filters
    client.user_to_item("u1", filters=[filters.equals("genre", "drama"), filters.between("price", lt=20)])

A field is a metadata column of the served bundle, with or without the `meta.` prefix of the JSON API. Clauses
are combined with AND; a column the bundle did not export is refused with INVALID_ARGUMENT naming it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from seqrec.proto.v1 import common_pb2

Scalar = str | int | float | bool
META_PREFIX = "meta."


def value(v: Scalar | Sequence[Scalar]) -> common_pb2.MetadataValue:
    """The typed value of a Python scalar, or of a list of scalars (a multi-valued column)."""
    if isinstance(v, bool):  # before int: bool is an int in Python
        return common_pb2.MetadataValue(bool_value=v)
    if isinstance(v, int):
        return common_pb2.MetadataValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.MetadataValue(double_value=v)
    if isinstance(v, str):
        return common_pb2.MetadataValue(string_value=v)
    if isinstance(v, Sequence):
        return common_pb2.MetadataValue(list_value=_values(v))
    raise TypeError(f"a metadata value is a str, int, float, bool or a list of them, not {type(v).__name__}")


def _values(values: Iterable[Scalar]) -> common_pb2.ValueList:
    items = list(values)
    if any(not isinstance(v, (str, int, float, bool)) for v in items):
        raise TypeError("a list of metadata values holds scalars only")
    return common_pb2.ValueList(values=[value(v) for v in items])


def _field(name: str) -> str:
    if not name or name == META_PREFIX:
        raise ValueError("a filter needs a metadata column name")
    return name if name.startswith(META_PREFIX) else META_PREFIX + name


def equals(field: str, v: Scalar) -> common_pb2.FilterClause:
    """Items whose `field` equals `v` (on a multi-valued column: holds `v`)."""
    return common_pb2.FilterClause(field=_field(field), equals=value(v))


def any_of(field: str, values: Iterable[Scalar]) -> common_pb2.FilterClause:
    """Items whose `field` (or any element of it) is one of `values`."""
    return common_pb2.FilterClause(field=_field(field), any_of=_values(values))


def between(field: str, *, gte: float | None = None, gt: float | None = None, lte: float | None = None,
            lt: float | None = None) -> common_pb2.FilterClause:
    """Items whose numeric `field` lies in the range; unset bounds are open, at least one is needed."""
    bounds = {k: float(b) for k, b in (("gte", gte), ("gt", gt), ("lte", lte), ("lt", lt)) if b is not None}
    if not bounds:
        raise ValueError("between: give at least one of gte, gt, lte, lt")
    return common_pb2.FilterClause(field=_field(field), range=common_pb2.NumericRange(**bounds))
