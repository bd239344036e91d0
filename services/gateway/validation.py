"""Invalid request bodies described as (field, message): json_api's wording where it applies, else
pydantic's error with its location turned into a JSON path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.exceptions import RequestValidationError

from seqrec.shared.json_api import RequestError


def message_of(exc: RequestError) -> str:
    return str(exc).removeprefix(f"{exc.field}: ")


def pydantic_field(error: dict[str, Any], body: Any) -> str:
    """The JSON path of a pydantic error, e.g. `filters.meta.genre` or `events[1].user_id`.

    A location mixes input keys with labels pydantic adds (the union member, e.g. "sequential");
    walking the input keeps only the segments that are really in it."""
    if error.get("type") in ("union_tag_not_found", "union_tag_invalid"):
        return "query_type"
    loc = list(error.get("loc", ()))
    if loc and loc[0] == "body":
        loc = loc[1:]
    path, node = "", body
    for i, segment in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and isinstance(segment, str) and (segment in node or last):
            path = f"{path}.{segment}" if path else segment
            node = node.get(segment)
        elif isinstance(node, list) and isinstance(segment, int) and 0 <= segment < len(node):
            path, node = f"{path}[{segment}]", node[segment]
    return path or "body"


def describe_invalid(exc: RequestValidationError, parse: Callable[[Any], Any] | None) -> tuple[str, str]:
    """(field, message) for a body that failed validation; json_api's message when it names the problem too."""
    errors = list(exc.errors())
    for error in errors:
        if error.get("type") == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "malformed")
            return "body", f"not valid JSON: {detail}"
    if parse is not None:
        try:
            parse(exc.body)
        except RequestError as err:
            return err.field, message_of(err)
    errors.sort(key=lambda e: e.get("type") != "extra_forbidden")  # unknown fields first, as json_api does
    first = errors[0] if errors else {"msg": "invalid request"}
    return pydantic_field(first, exc.body), str(first.get("msg", "invalid"))
