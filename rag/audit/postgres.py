"""The audit log in PostgreSQL (DATABASE_URL set): every replica appends to, and reads, one table."""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg

from rag.audit import AuditEntry
from rag.stores.pg_pool import pooled_connection

SCHEMA_LOCK = 0x52414703
SCHEMA = """
CREATE TABLE IF NOT EXISTS rag_audit (
    id bigserial PRIMARY KEY, at double precision NOT NULL, action text NOT NULL, target text NOT NULL,
    org_id text, actor_kind text NOT NULL, actor_user text, details jsonb NOT NULL);
CREATE INDEX IF NOT EXISTS rag_audit_by_org ON rag_audit (org_id, at);
"""
_COLUMNS = "at, action, target, org_id, actor_kind, actor_user, details"


class PgAuditLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str) -> PgAuditLog:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await conn.execute(SCHEMA)
        return cls(pool)

    async def record(
        self,
        action: str,
        target: str,
        org_id: str | None,
        actor_kind: str,
        actor_user: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        async with pooled_connection(self._pool) as conn:
            await conn.execute(
                f"INSERT INTO rag_audit ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                time.time(),
                action,
                target,
                org_id,
                actor_kind,
                actor_user,
                json.dumps(details or {}),
            )

    async def entries(self, org_id: str | None, limit: int, before: float | None = None) -> list[AuditEntry]:
        async with pooled_connection(self._pool) as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM rag_audit WHERE ($1::text IS NULL OR org_id = $1) "
                "AND ($2::float8 IS NULL OR at < $2) ORDER BY at DESC, id DESC LIMIT $3",
                org_id,
                before,
                limit,
            )
        return [
            AuditEntry(
                row["at"],
                row["action"],
                row["target"],
                row["org_id"],
                row["actor_kind"],
                row["actor_user"],
                json.loads(row["details"]),
            )
            for row in rows
        ]

    async def forget_org(self, org_id: str) -> None:
        async with pooled_connection(self._pool) as conn:
            await conn.execute("DELETE FROM rag_audit WHERE org_id = $1 AND action <> 'org.purge'", org_id)

    async def aclose(self) -> None:
        await self._pool.close()
