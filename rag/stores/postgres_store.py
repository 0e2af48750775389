"""The shared backend: PostgreSQL with pgvector, for any number of stateless replicas (`VECTOR_STORE=postgres`).

One table of documents and one of chunks: each chunk has its `vector(dim)` (an HNSW index, cosine), its metadata
as JSONB, its organisation in an indexed column, and the transaction that wrote it. The keyword leg is not in the
database: each replica keeps a Tantivy index that follows the chunk table (`pg_keywords.py`), so it needs no
extension beyond pgvector and stops early as the embedded store's does. An add replaces its documents in one
transaction, under a transaction-level advisory lock per document id, so two replicas adding the same document at
once serialise instead of failing. PostgreSQL acknowledges only what it has made durable, so every replica sees an
acknowledged add on its next request.

pgvector's HNSW applies a WHERE clause after the index scan, so a filtered top k could come back short; searches
run with `hnsw.iterative_scan = relaxed_order`, which keeps scanning until k rows pass (pgvector 0.8+), re-sort
what comes back, and scan a filter's rows exactly when the index scan still gave up early. A small tenant skips
HNSW altogether: a B-tree on the organisation holds each chunk's key and vector, so all of its chunks are scored
from the tenant's own index pages. A bulk load (`bulk_load`) drops both indexes, builds them once at its end,
and vacuums the table, so that those index-only scans read no heap page.

A search runs in one REPEATABLE READ transaction: both legs, and the rows of the keyword leg's hits, come from one
snapshot. The schema is created and migrated at start-up under an advisory lock, so replicas starting together do
it once; a table built for another embedding model is refused, as the embedded store refuses one.

A lost connection (PostgreSQL restarting, a network cut) is `StoreUnavailable`, a 503; the pool reconnects by
itself once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from rag.access import AccessList, Reader
from rag.errors import DocumentNotFound, TenantForbidden
from rag.stores import pg_access, pg_export, pg_spaces
from rag.stores.base import AccessByDocument, SearchRequest, StoredDocument
from rag.stores.pg_filters import SqlParams
from rag.stores.pg_keyword_snapshots import TABLES as SNAPSHOT_TABLES
from rag.stores.pg_keyword_snapshots import discard_holding_deleted
from rag.stores.pg_keywords import DELETED_RETENTION_DAYS, PRUNE_DELETED, FollowedKeywordIndex
from rag.stores.pg_pool import pooled_connection
from rag.stores.pg_schema import (
    BULK_LOCK,
    PGVECTOR_EF_CONSTRUCTION,
    migrate,
    search_indexes,
)
from rag.stores.pg_search import PgSearch, exact_tenant_scan
from rag.types import Chunk, DocumentSummary, Hit, tenant_of

__all__ = [
    "PGVECTOR_EF_CONSTRUCTION",
    "PostgresVectorStore",
    "exact_tenant_scan",
    "pooled_connection",
    "search_indexes",
]

logger = logging.getLogger(__name__)


async def vacuum(conn: asyncpg.Connection, tables: list[str], rewrite: bool) -> None:
    """VACUUM each table, or with `rewrite` VACUUM FULL it (a new file; the old one is truncated at commit)."""
    for table in tables:
        await conn.execute(f"VACUUM {'FULL ' if rewrite else ''}{table}")


def _log_notice(conn: asyncpg.Connection, message: asyncpg.PostgresLogMessage) -> None:
    logger.warning("bulk load: PostgreSQL says: %s", message.message)


_DOCUMENT_COLUMNS = "d.id, d.chunks, d.metadata, d.preview, l.users, l.groups"


def _summary(row: asyncpg.Record) -> DocumentSummary:
    return DocumentSummary(
        row["id"], row["chunks"], json.loads(row["metadata"]), row["preview"], pg_access.access_of(row)
    )


async def _init_connection(conn: asyncpg.Connection) -> None:
    await register_vector(conn)


class PostgresVectorStore:
    backend = "postgres"

    def __init__(
        self,
        pool: asyncpg.Pool,
        keywords: FollowedKeywordIndex,
        embedding_model: str,
        dimension: int,
        ef_search: int,
        ef_construction: int,
    ) -> None:
        self._pool = pool
        self._keywords = keywords
        self.embedding_model = embedding_model
        self.dimension = dimension
        self._search = PgSearch(pool, keywords, ef_search, lambda: self.count)
        self.ef_construction = ef_construction
        self.rewrite_on_purge = False  # PG_PURGE_REWRITE: see `purge`
        self.keyword_snapshot_seconds = 3600.0  # PG_KEYWORD_SNAPSHOT_SECONDS: see `purge`
        self._counts = (0, 0)
        self.follower = False  # written by the space builder: writes pass the 'retired' marker
        self._write_slots: asyncio.Semaphore | None = None

    @classmethod
    async def open(
        cls,
        dsn: str,
        embedding_model: str,
        dimension: int,
        keyword_dir: Path,
        ef_search: int = 100,
        pool_size: int = 10,
        ef_construction: int = PGVECTOR_EF_CONSTRUCTION,
        schema: str | None = None,
    ) -> PostgresVectorStore:
        """Open the store in the database at `dsn`; this replica's keyword index lives in `keyword_dir` (built from
        the table when it is missing). `ef_construction` is what the HNSW graph is built and grown with. With
        `schema`, the store's tables are in that schema (created when missing) instead of the default one: a second
        embedding space's (rag/spaces/); the `vector` extension stays where it is."""
        # Every connection finds the tables through its search path, so no query names a schema.
        settings = {} if schema is None else {"search_path": f'"{schema}", public'}
        conn = await asyncpg.connect(dsn, server_settings=settings)
        try:
            if schema is not None:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            # The extension must exist before a connection can register the vector codec.
            store_id = await migrate(conn, embedding_model, dimension, ef_construction)
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=pool_size, init=_init_connection, server_settings=settings
        )
        try:
            keywords = await FollowedKeywordIndex.open(pool, keyword_dir, store_id)
        except BaseException:
            await pool.close()
            raise
        store = cls(pool, keywords, embedding_model, dimension, ef_search, ef_construction)
        # Writes take at most all but one of the pool's connections: writes waiting for a switch of embedding space
        # hold theirs, and the switch's own reads (rag/spaces/builder.py) must still find one.
        store._write_slots = asyncio.Semaphore(max(1, pool_size - 1))
        await store.refresh()
        return store

    @property
    def ef_search(self) -> int:
        """HNSW candidates per search (PG_EF_SEARCH); the benches set it to measure recall against it."""
        return self._search.ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._search.ef_search = value

    def _connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return pooled_connection(self._pool)

    def _write_slot(self) -> AbstractAsyncContextManager[object]:
        return self._write_slots if self._write_slots is not None else contextlib.nullcontext()

    # --- counts ----------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._counts[0]

    @property
    def document_count(self) -> int:
        return self._counts[1]

    def layout(self) -> dict[str, int]:
        return {"ef_search": self.ef_search, "keyword_documents": self._keywords.index.count}

    async def refresh(self) -> None:
        async with self._connection() as conn:
            row = await conn.fetchrow("SELECT chunks, documents FROM rag_counters WHERE id = 1")
        self._counts = (int(row["chunks"]), int(row["documents"]))

    # --- writing ---------------------------------------------------------------------------------

    async def _writing(self, conn: asyncpg.Connection) -> None:
        if not self.follower:  # the builder's own writes pass: it makes them while it holds the lock for a switch
            await pg_spaces.check_writable(conn)

    @asynccontextmanager
    async def switch_barrier(self) -> AsyncIterator[None]:
        async with self._connection() as conn, pg_spaces.barrier(conn):
            yield

    async def mark_retired(self, retired: bool) -> None:
        async with self._connection() as conn:
            await pg_spaces.mark_retired(conn, retired)

    async def is_retired(self) -> bool:
        if self.follower:
            return False
        async with self._connection() as conn:
            return await pg_spaces.is_retired(conn)

    @asynccontextmanager
    async def bulk_load(self, index_memory: str = "1GB") -> AsyncIterator[None]:
        """Load many adds at once: the search indexes are dropped on entry and built once, over every row, on
        exit (also after an error: what was added stays). Building an HNSW graph at once is several times faster
        than growing it one insert at a time, which is what bounds ingestion into a large store.

        Meanwhile, adds from every replica go on as usual, and searches stay correct but read the whole table.
        One load at a time: a second waits for the first. `index_memory` is the build's `maintenance_work_mem`;
        a graph that outgrows it is finished far more slowly, and PostgreSQL says so (logged as a warning).
        """
        async with self._connection() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", BULK_LOCK)
            try:
                indexes = search_indexes(self.ef_construction)
                for name in indexes:
                    await conn.execute(f"DROP INDEX IF EXISTS {name}")
                try:
                    yield
                finally:
                    await conn.execute("SELECT set_config('maintenance_work_mem', $1, false)", index_memory)
                    conn.add_log_listener(_log_notice)  # pgvector says when the graph outgrew index_memory
                    try:
                        for name, create in indexes.items():
                            started = time.perf_counter()
                            await conn.execute(create)
                            logger.info("bulk load: %s built in %.0f s", name, time.perf_counter() - started)
                        # The load's rows are not yet marked all-visible, so a tenant's index-only scan would read
                        # each one's heap page too, until autovacuum came by: at 200,000 chunks a tenant's hybrid
                        # question took 20.4 ms before and 4.4 ms after this (0.2 s). ANALYZE gives the planner
                        # the load's statistics.
                        started = time.perf_counter()
                        await conn.execute("VACUUM (ANALYZE) rag_chunks")
                        logger.info("bulk load: rag_chunks vacuumed in %.0f s", time.perf_counter() - started)
                    finally:
                        conn.remove_log_listener(_log_notice)
                        await conn.execute("RESET maintenance_work_mem")
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", BULK_LOCK)

    async def upsert(
        self,
        chunks: list[Chunk],
        vectors: np.ndarray,
        org_id: str | None = None,
        access: AccessByDocument | None = None,
        reader: Reader | None = None,
        added_by: str | None = None,
    ) -> None:
        if vectors.shape != (len(chunks), self.dimension):
            raise ValueError(f"expected vectors of shape ({len(chunks)}, {self.dimension}), got {vectors.shape}")
        if not chunks:
            return
        documents: dict[str, list[Chunk]] = {}
        for chunk in chunks:
            documents.setdefault(chunk.document_id, []).append(chunk)
        ids = sorted(documents)
        async with self._write_slot(), self._connection() as conn, conn.transaction():
            await self._writing(conn)
            # one lock per document id, taken in order: concurrent replacements of a document serialise
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(id, 0)) FROM unnest($1::text[]) id", ids)
            if org_id is not None and await conn.fetchval(
                "SELECT count(*) FROM rag_documents WHERE id = ANY($1) AND org_id IS DISTINCT FROM $2", ids, org_id
            ):
                raise TenantForbidden("a document with one of these ids belongs to another organisation")
            if reader is not None and await pg_access.unreadable(conn, ids, reader):
                raise TenantForbidden("a document with one of these ids is stored and is not yours to replace")
            given = access or {}
            kept = await pg_access.lists_of(conn, [doc for doc in ids if doc not in given])
            lists = {doc: given[doc] if doc in given else kept.get(doc) for doc in ids}
            readers = {doc: pg_access.readers_of(listed) for doc, listed in lists.items()}
            removed = await conn.fetchrow(
                "WITH gone AS (DELETE FROM rag_documents WHERE id = ANY($1) RETURNING chunks) "
                "SELECT count(*) AS documents, coalesce(sum(chunks), 0) AS chunks FROM gone",
                ids,
            )
            await conn.executemany(
                "INSERT INTO rag_documents (id, org_id, chunks, metadata, preview, added_by) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                [
                    (
                        doc_id,
                        tenant_of(parts[0].metadata),
                        len(parts),
                        json.dumps(parts[0].metadata),
                        parts[0].text[:200],
                        added_by,
                    )
                    for doc_id, parts in documents.items()
                ],
            )
            await conn.copy_records_to_table(
                "rag_chunks",
                columns=["id", "document_id", "org_id", "text", "metadata", "embedding", "readers"],
                records=[
                    (
                        c.id,
                        c.document_id,
                        tenant_of(c.metadata),
                        c.text,
                        json.dumps(c.metadata),
                        vector,
                        readers[c.document_id],
                    )
                    for c, vector in zip(chunks, vectors.astype(np.float32, copy=False), strict=True)
                ],
            )
            for doc, listed in lists.items():
                if listed is not None:
                    await pg_access.put_list(conn, doc, listed)
            await conn.execute(PRUNE_DELETED)
            counts = await conn.fetchrow(
                "UPDATE rag_counters SET chunks = chunks + $1, documents = documents + $2, generation = generation + 1 "
                "WHERE id = 1 RETURNING chunks, documents",
                len(chunks) - int(removed["chunks"]),
                len(documents) - int(removed["documents"]),
            )
        self._counts = (int(counts["chunks"]), int(counts["documents"]))

    async def delete(self, document_id: str, org_id: str | None = None, reader: Reader | None = None) -> int:
        async with self._write_slot(), self._connection() as conn, conn.transaction():
            await self._writing(conn)
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", document_id)
            if reader is not None and await pg_access.unreadable(conn, [document_id], reader):
                raise DocumentNotFound(f"no document with id {document_id!r}")
            chunks = await conn.fetchval(
                "DELETE FROM rag_documents WHERE id = $1 AND ($2::text IS NULL OR org_id = $2) RETURNING chunks",
                document_id,
                org_id,
            )
            if chunks is None:
                raise DocumentNotFound(f"no document with id {document_id!r}")
            await conn.execute(PRUNE_DELETED)
            counts = await conn.fetchrow(
                "UPDATE rag_counters SET chunks = chunks - $1, documents = documents - 1, generation = generation + 1 "
                "WHERE id = 1 RETURNING chunks, documents",
                chunks,
            )
        self._counts = (int(counts["chunks"]), int(counts["documents"]))
        return int(chunks)

    async def delete_many(self, document_ids: list[str], org_id: str | None = None) -> int:
        """Delete those of the documents that exist (of `org_id`, when given) in one transaction; returns their
        chunks."""
        ids = sorted(set(document_ids))
        async with self._write_slot(), self._connection() as conn, conn.transaction():
            await self._writing(conn)
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(id, 0)) FROM unnest($1::text[]) id", ids)
            removed = await conn.fetchrow(
                "WITH gone AS (DELETE FROM rag_documents WHERE id = ANY($1) AND ($2::text IS NULL OR org_id = $2) "
                "RETURNING chunks) SELECT count(*) AS documents, coalesce(sum(chunks), 0) AS chunks FROM gone",
                ids,
                org_id,
            )
            await conn.execute(PRUNE_DELETED)
            counts = await conn.fetchrow(
                "UPDATE rag_counters SET chunks = chunks - $1, documents = documents - $2, generation = generation + 1 "
                "WHERE id = 1 RETURNING chunks, documents",
                int(removed["chunks"]),
                int(removed["documents"]),
            )
        self._counts = (int(counts["chunks"]), int(counts["documents"]))
        return int(removed["chunks"])

    async def documents_added_by(self, user_id: str, org_id: str | None = None) -> list[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT id FROM rag_documents WHERE added_by = $1 AND ($2::text IS NULL OR org_id = $2) ORDER BY seq",
                user_id,
                org_id,
            )
        return [row["id"] for row in rows]

    async def chunks_of(self, org_id: str | None) -> int:
        """The chunks an organisation's documents hold (None: the whole store's); from the documents' counts."""
        async with self._connection() as conn:
            if org_id is None:
                return int(await conn.fetchval("SELECT chunks FROM rag_counters WHERE id = 1"))
            return int(
                await conn.fetchval("SELECT coalesce(sum(chunks), 0) FROM rag_documents WHERE org_id = $1", org_id)
            )

    async def document_ids(self, org_id: str | None) -> list[str]:
        async with self._connection() as conn:
            if org_id is None:
                rows = await conn.fetch("SELECT id FROM rag_documents ORDER BY seq")
            else:
                rows = await conn.fetch("SELECT id FROM rag_documents WHERE org_id = $1 ORDER BY seq", org_id)
        return [row["id"] for row in rows]

    async def write_generation(self) -> int:
        async with self._connection() as conn:
            return int(await conn.fetchval("SELECT generation FROM rag_counters WHERE id = 1"))

    async def document_states(self) -> dict[str, tuple[int, str | None]]:
        async with self._connection() as conn:
            return await pg_spaces.document_states(conn)

    async def purge(self, deleted_here: bool = True) -> None:
        """Purge what deletions left: this replica's keyword index segments holding deleted entries are rewritten,
        and the tables vacuumed. A plain VACUUM makes dead rows free space but leaves their bytes in the page until
        a later write reuses it (measured: docs/deployment.md); with `rewrite_on_purge` (PG_PURGE_REWRITE), after
        deletions through this replica (`deleted_here`), the tables are rewritten (VACUUM FULL), after which no
        table file holds them."""
        async with self._snapshot() as conn:  # deletions through other replicas, applied to this replica's index
            await self._keywords.catch_up(conn)
        async with self._connection() as conn:
            # keyword index snapshots that may hold a deleted chunk's terms go before the vacuum frees their bytes
            await discard_holding_deleted(conn, DELETED_RETENTION_DAYS - 1)
            # cheap when nothing was deleted: a vacuum skips the pages marked all-visible, and calls no index's
            # clean-up (HNSW's is the costly one) without dead rows
            rewrite = self.rewrite_on_purge and deleted_here
            tables = ["rag_chunks", "rag_documents", "rag_access_lists", *SNAPSHOT_TABLES]
            await vacuum(conn, tables, rewrite)
        await self._keywords.purge(self._pool)
        # The purger's tick is also when a replica publishes its index for new replicas to start from; after the
        # rewrite above it holds no deleted chunk's terms, which a snapshot must not hold either.
        if self.keyword_snapshot_seconds > 0:
            await self._keywords.publish_if_due(self._pool, self.keyword_snapshot_seconds)

    async def set_access(self, document_id: str, access: AccessList | None, org_id: str | None = None) -> None:
        async with self._write_slot(), self._connection() as conn, conn.transaction():
            await self._writing(conn)
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", document_id)
            if not await conn.fetchval(
                "SELECT count(*) FROM rag_documents WHERE id = $1 AND ($2::text IS NULL OR org_id = $2)",
                document_id,
                org_id,
            ):
                raise DocumentNotFound(f"no document with id {document_id!r}")
            await pg_access.put_list(conn, document_id, access)
            await conn.execute(
                "UPDATE rag_chunks SET readers = $2 WHERE document_id = $1 AND readers IS DISTINCT FROM $2",
                document_id,
                pg_access.readers_of(access),
            )
            # the write counter moves for a list too: a space builder passes over the store when it moved
            await conn.execute("UPDATE rag_counters SET generation = generation + 1 WHERE id = 1")

    async def get_document(
        self, document_id: str, org_id: str | None = None, reader: Reader | None = None
    ) -> DocumentSummary:
        params = SqlParams(document_id, org_id)
        readable = pg_access.document_condition(reader, params)
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_DOCUMENT_COLUMNS} FROM rag_documents d LEFT JOIN rag_access_lists l ON l.document_id = d.id "
                f"WHERE d.id = $1 AND ($2::text IS NULL OR d.org_id = $2) AND {readable}",
                *params.values,
            )
        if row is None:
            raise DocumentNotFound(f"no document with id {document_id!r}")
        return _summary(row)

    # --- reading ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._search.snapshot() as conn:
            yield conn

    async def export_documents(
        self, org_id: str | None = None, document_ids: list[str] | None = None, batch_chunks: int = 4096
    ) -> AsyncIterator[list[StoredDocument]]:
        async for batch in pg_export.exported(self._pool, self.dimension, org_id, document_ids, batch_chunks):
            yield batch

    async def search(self, request: SearchRequest) -> list[Hit]:
        return await self._search.search(request)

    async def list_documents(
        self, offset: int, limit: int, org_id: str | None = None, reader: Reader | None = None
    ) -> tuple[int, list[DocumentSummary]]:
        offset, limit = min(offset, 2**62), min(limit, 2**62)  # bigint range; any page past the end is empty
        params = SqlParams(org_id)
        where = f"($1::text IS NULL OR d.org_id = $1) AND {pg_access.document_condition(reader, params)}"
        joined = "rag_documents d LEFT JOIN rag_access_lists l ON l.document_id = d.id"
        async with self._connection() as conn:
            if org_id is None and reader is None:
                total = await conn.fetchval("SELECT documents FROM rag_counters WHERE id = 1")
            else:
                total = await conn.fetchval(f"SELECT count(*) FROM {joined} WHERE {where}", *params.values)
            rows = await conn.fetch(
                f"SELECT {_DOCUMENT_COLUMNS} FROM {joined} WHERE {where} ORDER BY d.seq "
                f"LIMIT {params.add(limit)} OFFSET {params.add(offset)}",
                *params.values,
            )
        return int(total), [_summary(row) for row in rows]

    async def aclose(self) -> None:
        await self._pool.close()
        await anyio.to_thread.run_sync(self._keywords.close)
