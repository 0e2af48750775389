"""Metadata filters: `{"key": value}` (equality), `{"key": {"$in": [...]}}` and `{"key": {"$ne": value}}`.

Filters are validated once, up front, so a bad one is a 422 before any search runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rag.errors import InvalidRequest

Filters = dict[str, Any]
_SCALARS = (str, int, float, bool, type(None))


def validate_filters(filters: Filters | None) -> Filters | None:
    """Return the filters unchanged, or raise InvalidRequest naming the first problem."""
    if not filters:
        return None
    for key, condition in filters.items():
        if isinstance(condition, dict):
            if len(condition) != 1:
                raise InvalidRequest(f"filter on {key!r} must have exactly one operator ($in or $ne)")
            ((op, operand),) = condition.items()
            if op == "$in":
                if not isinstance(operand, list) or not all(isinstance(v, _SCALARS) for v in operand):
                    raise InvalidRequest(f"filter {key!r}: $in takes a list of scalar values")
            elif op == "$ne":
                if not isinstance(operand, _SCALARS):
                    raise InvalidRequest(f"filter {key!r}: $ne takes a scalar value")
            else:
                raise InvalidRequest(f"filter {key!r}: unknown operator {op!r} (use $in or $ne)")
        elif not isinstance(condition, _SCALARS):
            raise InvalidRequest(f"filter {key!r}: expected a scalar value, $in or $ne")
    return filters


def _condition(key: str, condition: Any) -> Callable[[dict[str, Any]], bool]:
    if isinstance(condition, dict):
        ((op, operand),) = condition.items()
        if op == "$in":
            allowed = list(operand)
            return lambda meta: key in meta and meta[key] in allowed
        return lambda meta: meta.get(key) != operand
    return lambda meta: key in meta and meta[key] == condition


def compile_filters(filters: Filters) -> Callable[[dict[str, Any]], bool]:
    """A predicate over a chunk's metadata that is true when every condition holds."""
    checks = [_condition(key, condition) for key, condition in filters.items()]
    return lambda meta: all(check(meta) for check in checks)
