"""Metadata filters: `{"key": value}` (equality), `{"key": {"$in": [...]}}` and `{"key": {"$ne": value}}`.

Filters are validated once, up front, so a bad one is a 422 before any search runs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

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
    """A predicate over one chunk's metadata that is true when every condition holds: the reference definition of
    what filters mean. The store uses the faster `filter_mask`; a test checks that both always agree."""
    checks = [_condition(key, condition) for key, condition in filters.items()]
    return lambda meta: all(check(meta) for check in checks)


MISSING = object()  # the index's key for chunks whose metadata lacks the field
ValueIndex = dict[Hashable, np.ndarray]  # value -> indexes of the chunks that have it


def build_value_index(metadatas: list[dict[str, Any]], key: str) -> ValueIndex:
    """Chunk indexes by their value for `key`. Unhashable values (lists, objects) are left out: no scalar filter
    can equal them."""
    groups: dict[Hashable, list[int]] = {}
    for i, meta in enumerate(metadatas):
        value = meta.get(key, MISSING)
        try:
            groups.setdefault(value, []).append(i)
        except TypeError:
            continue
    return {value: np.asarray(indexes, dtype=np.int64) for value, indexes in groups.items()}


def filter_mask(filters: Filters, index_of: Callable[[str], ValueIndex], size: int) -> np.ndarray:
    """The chunks that satisfy every condition, as a boolean mask, computed from value indexes: the same answers as
    `compile_filters`, without a Python call per chunk."""
    mask = np.ones(size, dtype=bool)
    for key, condition in filters.items():
        index = index_of(key)
        if isinstance(condition, dict) and "$ne" in condition:
            keep = np.ones(size, dtype=bool)
            # meta.get(key) != operand: a chunk without the field has None, so `$ne: null` also drops those.
            excluded = [condition["$ne"], MISSING] if condition["$ne"] is None else [condition["$ne"]]
            for value in excluded:
                keep[index.get(value, _EMPTY)] = False
        else:
            values = condition["$in"] if isinstance(condition, dict) else [condition]
            keep = np.zeros(size, dtype=bool)
            for value in values:
                keep[index.get(value, _EMPTY)] = True
        mask &= keep
    return mask


_EMPTY = np.zeros(0, dtype=np.int64)
