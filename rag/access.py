"""Who may read which document: a document's access list, and the reader a search, list or fetch runs for.

A document may carry an access list: the users and groups that may read it. Without one it is readable by
everyone in its organisation (the behaviour before access lists existed, so stored data needs no migration).

Both sides meet as *grantees*, plain strings: `u:<user>` and `g:<group>`. A document's list becomes its grantees;
a reader becomes the grantees it holds. The reader may read a restricted document when the two sets share one.
The stores apply this where the rows are read (inside the search, the list and the fetch), never after: a reader
allowed 1% of an organisation still gets `top_k` results from that 1%.

`Reader` None everywhere means "not narrowed": an organisation's key, a trusted key or an open service, which read
every document of the organisations they may name, exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rag.errors import InvalidRequest

MAX_GRANTEES = 1000  # per document: a list longer than this belongs in a group
MAX_NAME_CHARS = 256


def _names(value: Any, field: str, label: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InvalidRequest(f"{label}: {field!r} must be a list of non-empty strings")
    if any(len(v) > MAX_NAME_CHARS for v in value):
        raise InvalidRequest(f"{label}: a name in {field!r} is longer than {MAX_NAME_CHARS} characters")
    return tuple(sorted(set(value)))


@dataclass(frozen=True, slots=True)
class AccessList:
    """The users and groups that may read a document. Both empty: only the organisation's unnarrowed keys may."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: Any, label: str = "access") -> AccessList | None:
        """An access list from its JSON form `{"users": [...], "groups": [...]}`; None (JSON null) is none."""
        if value is None:
            return None
        if isinstance(value, AccessList):
            return value
        if not isinstance(value, Mapping):
            raise InvalidRequest(f'{label} must be an object {{"users": [...], "groups": [...]}} or null')
        unknown = set(value) - {"users", "groups"}
        if unknown:
            raise InvalidRequest(f"{label}: unknown field(s) {sorted(unknown)}; an access list has users and groups")
        access = cls(_names(value.get("users"), "users", label), _names(value.get("groups"), "groups", label))
        if len(access.users) + len(access.groups) > MAX_GRANTEES:
            raise InvalidRequest(f"{label}: at most {MAX_GRANTEES} users and groups in one list; use a group")
        return access

    @property
    def grantees(self) -> tuple[str, ...]:
        return (*(f"u:{u}" for u in self.users), *(f"g:{g}" for g in self.groups))

    def as_dict(self) -> dict[str, list[str]]:
        return {"users": list(self.users), "groups": list(self.groups)}


def parse_access_lists(values: Any, count: int) -> list[AccessList | None] | None:
    """The `access` field of a JSON add: None, or a list parallel to the documents (null: the whole organisation)."""
    if values is None:
        return None
    if not isinstance(values, list) or len(values) != count:
        raise InvalidRequest(f"access must be a list of {count} access lists (or nulls), one per document")
    return [AccessList.parse(value, f"access[{n}]") for n, value in enumerate(values)]


@dataclass(frozen=True, slots=True)
class Reader:
    """A narrowed reader: one user and their groups. It reads its organisation's documents that have no access
    list, and those whose list names the user or one of the groups."""

    user: str
    groups: frozenset[str] = frozenset()

    @property
    def grantees(self) -> tuple[str, ...]:
        """Sorted, so two equal readers give the same cache key."""
        return (f"u:{self.user}", *sorted(f"g:{g}" for g in self.groups))

    def may_read(self, access: AccessList | None) -> bool:
        """The reference rule the stores implement in SQL and NumPy (the conformance suite checks they agree)."""
        return access is None or bool(set(access.grantees) & set(self.grantees))
