"""Metadata filters as SQL over a JSONB column, with exactly the meaning `rag.filters.compile_filters` gives them.

That meaning is Python's: a filter value equals a stored value when Python's `==` says so, so `1`, `1.0` and `true`
are equal, `null` matches only a field that is present and null, and `$ne` keeps chunks that lack the field (their
value is taken as None). The conformance suite checks both backends against the reference predicate.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from rag.filters import Filters
from rag.types import TENANT_KEY


class SqlParams:
    """Positional parameters ($1, $2, ...) collected while building a query."""

    def __init__(self, *initial: Any) -> None:
        self.values: list[Any] = list(initial)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _equals(field: str, value: Any, params: SqlParams) -> str:
    """SQL true when the metadata field is present and Python-equal to `value` (a JSON scalar)."""
    key = params.add(field)
    stored = f"(metadata -> {key})"
    if value is None:
        return f"({stored} = 'null'::jsonb)"
    if isinstance(value, str):
        return f"({stored} = to_jsonb({params.add(value)}::text))"
    # CASE, not AND: SQL does not promise to test the type before it casts, and a string does not cast to numeric
    number = (
        f"(CASE WHEN jsonb_typeof({stored}) = 'number' "
        f"THEN ({stored})::numeric = {params.add(Decimal(str(int(value) if isinstance(value, bool) else value)))} "
        "ELSE FALSE END)"
    )
    if value is True or value is False or value in (0, 1):  # True == 1 == 1.0, False == 0 == 0.0
        boolean = f"({stored} = {params.add(json.dumps(bool(value)))}::jsonb)"
        return f"({number} OR {boolean})"
    return number


def where_clause(filters: Filters | None, params: SqlParams) -> str:
    """A SQL condition (`TRUE` when there is no filter). A string equality on the tenant key uses the indexed
    `org_id` column."""
    conditions = []
    for field, condition in (filters or {}).items():
        if isinstance(condition, dict):
            ((op, operand),) = condition.items()
            if op == "$in":
                options = [_equals(field, value, params) for value in operand]
                conditions.append(f"({' OR '.join(options)})" if options else "FALSE")
            elif operand is None:  # $ne null: the field is present and not null
                key = params.add(field)
                conditions.append(f"(metadata ? {key} AND (metadata -> {key}) <> 'null'::jsonb)")
            else:  # $ne value: a missing field counts as None, which is not the value
                conditions.append(f"(NOT COALESCE({_equals(field, operand, params)}, FALSE))")
        elif field == TENANT_KEY and isinstance(condition, str):
            conditions.append(f"(org_id = {params.add(condition)})")
        else:
            conditions.append(_equals(field, condition, params))
    return " AND ".join(conditions) if conditions else "TRUE"
