"""Access lists in PostgreSQL (`rag/access.py`): a document's list in `rag_access_lists`, and its grantees copied
onto each of its chunks as `readers` (NULL: the whole organisation), where a search reads them.

Keeping the grantees on the chunk row is what lets the rule run inside the search: HNSW's iterative scan filters on
the row it already reads, and a tenant's exact scan reads them from the tenant index (an index-only scan), so a
narrowed reader's search costs what the organisation's does. A change of list updates its document's chunk rows in
the same transaction as the list: every replica sees it from its next snapshot.
"""

from __future__ import annotations

import asyncpg

from rag.access import AccessList, Reader
from rag.stores.pg_filters import SqlParams


def readers_condition(reader: Reader | None, params: SqlParams) -> str:
    """SQL true for the chunk rows `reader` may read (`TRUE` when not narrowed)."""
    if reader is None:
        return "TRUE"
    return f"(readers IS NULL OR readers && {params.add(list(reader.grantees))}::text[])"


def readers_of(access: AccessList | None) -> list[str] | None:
    """What a chunk row's `readers` holds for this list."""
    return None if access is None else list(access.grantees)


async def lists_of(conn: asyncpg.Connection, document_ids: list[str]) -> dict[str, AccessList]:
    rows = await conn.fetch(
        "SELECT document_id, users, groups FROM rag_access_lists WHERE document_id = ANY($1)", document_ids
    )
    return {row["document_id"]: AccessList(tuple(row["users"]), tuple(row["groups"])) for row in rows}


async def unreadable(conn: asyncpg.Connection, document_ids: list[str], reader: Reader) -> bool:
    """Whether one of these stored documents is one `reader` may not read."""
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM rag_access_lists WHERE document_id = ANY($1) AND NOT grantees && $2::text[]",
            document_ids,
            list(reader.grantees),
        )
    )


async def put_list(conn: asyncpg.Connection, document_id: str, access: AccessList | None) -> None:
    """Set one stored document's list (its chunk rows are the caller's to update)."""
    await conn.execute("DELETE FROM rag_access_lists WHERE document_id = $1", document_id)
    if access is not None:
        await conn.execute(
            "INSERT INTO rag_access_lists (document_id, org_id, users, groups, grantees) "
            "SELECT id, org_id, $2, $3, $4 FROM rag_documents WHERE id = $1",
            document_id,
            list(access.users),
            list(access.groups),
            list(access.grantees),
        )


async def narrows(conn: asyncpg.Connection, reader: Reader, org_id: str | None) -> bool:
    """Whether the organisation (every one, for None) holds a document `reader` may not read; when it holds none,
    the reader sees what the organisation's key sees, and searches as it does."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM rag_access_lists WHERE ($1::text IS NULL OR org_id = $1) "
            "AND NOT grantees && $2::text[])",
            org_id,
            list(reader.grantees),
        )
    )


def document_condition(reader: Reader | None, params: SqlParams) -> str:
    """SQL true for the documents `reader` may read; the query joins `rag_access_lists l` on the document."""
    if reader is None:
        return "TRUE"
    return f"(l.document_id IS NULL OR l.grantees && {params.add(list(reader.grantees))}::text[])"


def access_of(row: asyncpg.Record) -> AccessList | None:
    """The list of a document row read with `l.users, l.groups` from the join."""
    if row["users"] is None:
        return None
    return AccessList(tuple(row["users"]), tuple(row["groups"]))
