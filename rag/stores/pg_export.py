"""Reading the PostgreSQL store back whole, for an export: one REPEATABLE READ, read-only transaction, so every
batch comes from the same state of the database while replicas go on writing (PostgreSQL's MVCC: nobody waits)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import numpy as np

from rag.stores import pg_access
from rag.stores.base import StoredDocument
from rag.stores.pg_pool import pooled_connection
from rag.types import Chunk

PAGE_DOCUMENTS = 500


async def exported(
    pool: asyncpg.Pool, dimension: int, org_id: str | None, document_ids: list[str] | None, batch_chunks: int
) -> AsyncIterator[list[StoredDocument]]:
    """`PostgresVectorStore.export_documents`."""
    async with pooled_connection(pool) as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        documents = conn.cursor(
            "SELECT d.id, d.added_by, l.users, l.groups FROM rag_documents d "
            "LEFT JOIN rag_access_lists l ON l.document_id = d.id "
            "WHERE ($1::text IS NULL OR d.org_id = $1) AND ($2::text[] IS NULL OR d.id = ANY($2)) ORDER BY d.seq",
            org_id,
            document_ids,
            prefetch=PAGE_DOCUMENTS,
        )
        batch: list[StoredDocument] = []
        size = 0
        page: list[asyncpg.Record] = []
        async for row in documents:
            page.append(row)
            if len(page) < PAGE_DOCUMENTS:
                continue
            for document in await _with_chunks(conn, page, dimension):
                batch.append(document)
                size += len(document.chunks)
                if size >= batch_chunks:
                    yield batch
                    batch, size = [], 0
            page = []
        for document in await _with_chunks(conn, page, dimension) if page else []:
            batch.append(document)
        if batch:
            yield batch


async def _with_chunks(conn: asyncpg.Connection, page: list[asyncpg.Record], dimension: int) -> list[StoredDocument]:
    rows = await conn.fetch(
        "SELECT id, document_id, text, metadata, embedding FROM rag_chunks WHERE document_id = ANY($1) ORDER BY key",
        [row["id"] for row in page],
    )
    chunks: dict[str, list[Chunk]] = {row["id"]: [] for row in page}
    vectors: dict[str, list[np.ndarray]] = {row["id"]: [] for row in page}
    for row in rows:
        chunks[row["document_id"]].append(
            Chunk(row["id"], row["document_id"], row["text"], json.loads(row["metadata"]))
        )
        vectors[row["document_id"]].append(row["embedding"].to_numpy())
    return [
        StoredDocument(
            row["id"],
            chunks[row["id"]],
            np.asarray(vectors[row["id"]], dtype=np.float32).reshape(-1, dimension),
            pg_access.access_of(row),
            row["added_by"],
        )
        for row in page
    ]
