"""What the PostgreSQL store does for embedding spaces (rag/spaces/): the write barrier a switch holds, the marker that
refuses writes to a space switched away from (and tells a reader still on it to move), and the document states a
follower is compared by."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from rag.errors import SpaceRetired
from rag.stores.pg_schema import SPACE_LOCK


async def check_writable(conn: asyncpg.Connection) -> None:
    """First step of every write's transaction: hold the space lock shared (a switch holds it alone, so no write runs
    across one) and refuse the write once this schema's space was switched away from."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", SPACE_LOCK)
    # A statement of its own, after the lock: a statement reads the snapshot taken when it began, so reading the
    # marker in the same one would read it as it was before a switch this write waited for.
    if await is_retired(conn):
        raise SpaceRetired("this schema's embedding space was switched away from; write to the active one")


async def is_retired(conn: asyncpg.Connection) -> bool:
    """The marker alone: one indexed row, cheap enough to ask before every read."""
    return await conn.fetchval("SELECT value FROM rag_meta WHERE key = 'retired'") is not None


@asynccontextmanager
async def barrier(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Hold off every write, from every replica, while searches and exports go on: the space lock, alone."""
    await conn.execute("SELECT pg_advisory_lock($1)", SPACE_LOCK)
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", SPACE_LOCK)


async def mark_retired(conn: asyncpg.Connection, retired: bool) -> None:
    """Set or clear the marker `check_writable` reads; a switch does it while it holds the space lock."""
    if retired:
        await conn.execute(
            "INSERT INTO rag_meta (key, value) VALUES ('retired', now()::text) ON CONFLICT (key) DO NOTHING"
        )
    else:
        await conn.execute("DELETE FROM rag_meta WHERE key = 'retired'")


async def document_states(conn: asyncpg.Connection) -> dict[str, tuple[int, str | None]]:
    rows = await conn.fetch(
        "SELECT d.id, d.seq, array_to_string(l.users, ',') || ' ' || array_to_string(l.groups, ',') AS access "
        "FROM rag_documents d LEFT JOIN rag_access_lists l ON l.document_id = d.id"
    )
    return {row["id"]: (int(row["seq"]), row["access"]) for row in rows}
