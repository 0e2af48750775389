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
from rag.errors import DocumentNotFound, StoreUnavailable, TenantForbidden
from rag.stores import pg_access
from rag.stores.base import AccessByDocument, SearchRequest
from rag.stores.fusion import fuse
from rag.stores.pg_filters import SqlParams, where_clause
from rag.stores.pg_keywords import PRUNE_DELETED, FollowedKeywordIndex
from rag.stores.pg_schema import (
    BULK_LOCK,
    PGVECTOR_EF_CONSTRUCTION,
    migrate,
    search_indexes,
)
from rag.types import Chunk, DocumentSummary, Hit, tenant_of

__all__ = ["PGVECTOR_EF_CONSTRUCTION", "PostgresVectorStore", "exact_tenant_scan", "search_indexes"]

logger = logging.getLogger(__name__)

HYBRID_POOL = 100
# A tenant's dense leg: scoring all T of its chunks (an index-only scan, about 0.7 us a chunk) against HNSW, which
# passes over the other tenants' neighbours to find k of its own, about k * N / T candidates at 9.4 us each (a heap
# and a TOAST page): measured at 1M chunks, a tenant of 20,000: 13.9 against 47 ms. Exact wins while
# T * T <= 13 * k * N, so the cost follows the tenant's size where it is small, and large tenants keep the index.
EXACT_TENANT_FACTOR = 13

# What a lost or refused connection raises, in asyncpg and below it
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    TimeoutError,
)


@asynccontextmanager
async def pooled_connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection from `pool`; a lost database becomes StoreUnavailable (503), never a 500 with a trace."""
    try:
        async with pool.acquire() as conn:
            yield conn
    except CONNECTION_ERRORS as exc:
        raise StoreUnavailable("the database is unavailable; try again in a moment") from exc


def exact_tenant_scan(tenant_rows: int, total_rows: int, k: int) -> bool:
    """Whether a tenant's k nearest chunks cost less found by scoring all of them than through HNSW."""
    return tenant_rows * tenant_rows <= EXACT_TENANT_FACTOR * k * max(total_rows, tenant_rows)


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


def _chunk(row: asyncpg.Record) -> Chunk:
    return Chunk(row["id"], row["document_id"], row["text"], json.loads(row["metadata"]))


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
        self.ef_search = ef_search
        self.ef_construction = ef_construction
        self.rewrite_on_purge = False  # PG_PURGE_REWRITE: see `purge`
        self._counts = (0, 0)

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
    ) -> PostgresVectorStore:
        """Open the store in the database at `dsn`; this replica's keyword index lives in `keyword_dir` (built from
        the table when it is missing). `ef_construction` is what the HNSW graph is built and grown with."""
        # The extension must exist before a connection can register the vector codec.
        conn = await asyncpg.connect(dsn)
        try:
            store_id = await migrate(conn, embedding_model, dimension, ef_construction)
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size, init=_init_connection)
        try:
            keywords = await FollowedKeywordIndex.open(pool, keyword_dir, store_id)
        except BaseException:
            await pool.close()
            raise
        store = cls(pool, keywords, embedding_model, dimension, ef_search, ef_construction)
        await store.refresh()
        return store

    def _connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return pooled_connection(self._pool)

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
        async with self._connection() as conn, conn.transaction():
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
        async with self._connection() as conn, conn.transaction():
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
        async with self._connection() as conn, conn.transaction():
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

    async def document_ids(self, org_id: str) -> list[str]:
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT id FROM rag_documents WHERE org_id = $1 ORDER BY seq", org_id)
        return [row["id"] for row in rows]

    async def purge(self, deleted_here: bool = True) -> None:
        """Purge what deletions left: this replica's keyword index segments holding deleted entries are rewritten,
        and the tables vacuumed. A plain VACUUM makes dead rows free space but leaves their bytes in the page until
        a later write reuses it (measured: docs/deployment.md); with `rewrite_on_purge` (PG_PURGE_REWRITE), after
        deletions through this replica (`deleted_here`), the tables are rewritten (VACUUM FULL), after which no
        table file holds them."""
        async with self._snapshot() as conn:  # deletions through other replicas, applied to this replica's index
            await self._keywords.catch_up(conn)
        async with self._connection() as conn:
            # cheap when nothing was deleted: a vacuum skips the pages marked all-visible, and calls no index's
            # clean-up (HNSW's is the costly one) without dead rows
            rewrite = self.rewrite_on_purge and deleted_here
            await vacuum(conn, ["rag_chunks", "rag_documents", "rag_access_lists"], rewrite)
        await self._keywords.purge(self._pool)

    async def set_access(self, document_id: str, access: AccessList | None, org_id: str | None = None) -> None:
        async with self._connection() as conn, conn.transaction():
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
        """A connection in a read-only REPEATABLE READ transaction: every query of one search sees one snapshot."""
        async with self._connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.execute(f"SET LOCAL hnsw.ef_search = {int(self.ef_search)}")
            await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            yield conn

    def _exact_for_tenant(self, request: SearchRequest, k: int) -> bool:
        """Whether scoring every chunk of the request's tenant costs less than the filtered HNSW scan (the keyword
        index, caught up by `search`, counts the tenant's chunks, the latest writes included)."""
        tenant = tenant_of(request.filters or {})
        if tenant is None:
            return False
        return exact_tenant_scan(self._keywords.index.tenant_count(tenant), self.count, k)

    async def _dense(self, conn: asyncpg.Connection, request: SearchRequest, k: int) -> list[asyncpg.Record]:
        params = SqlParams(np.asarray(request.vector, dtype=np.float32))
        where = f"{where_clause(request.filters, params)} AND {pg_access.readers_condition(request.reader, params)}"
        select = "SELECT key, id, document_id, text, metadata, 1 - (embedding <=> $1) AS similarity FROM rag_chunks"
        if self._exact_for_tenant(request, k):
            # Ranked on the keys and vectors alone (the tenant's index pages), then the k winners' rows are read.
            best = f"SELECT key, (embedding <=> $1) + 0 AS distance FROM rag_chunks WHERE {where} ORDER BY distance"
            rows = await conn.fetch(
                "SELECT c.key, c.id, c.document_id, c.text, c.metadata, 1 - best.distance AS similarity "
                f"FROM ({best} LIMIT {int(k)}) best JOIN rag_chunks c USING (key)",
                *params.values,
            )
            return sorted(rows, key=lambda row: row["similarity"], reverse=True)
        rows = await conn.fetch(f"{select} WHERE {where} ORDER BY embedding <=> $1 LIMIT {int(k)}", *params.values)
        if (request.filters or request.reader) and len(rows) < k:
            # A small tenant among many: the iterative index scan can stop (hnsw.max_scan_tuples) before it has seen
            # k of its rows. An exact scan of the filtered rows (the ORDER BY no longer matches the index) finds
            # every one; it is cheap precisely because the filter keeps few rows.
            rows = await conn.fetch(
                f"{select} WHERE {where} ORDER BY (embedding <=> $1) + 0 LIMIT {int(k)}", *params.values
            )
        return sorted(rows, key=lambda row: row["similarity"], reverse=True)  # relaxed order: sort again

    async def _keyword(
        self, conn: asyncpg.Connection, request: SearchRequest, k: int
    ) -> list[tuple[asyncpg.Record, float]]:
        """(row, BM25 score) of the best `k` chunks the snapshot holds and the filters pass, from this replica's
        keyword index, which `search` caught up. A tenant named by a string is matched inside the index; other
        filters, and whatever the index holds that the snapshot does not, are dropped after it ranks, so the
        candidate list grows until it holds k rows or every match was seen."""
        tenant = tenant_of(request.filters or {})
        with_vector = request.vector is not None
        limit = max(k, 10)
        while True:
            found = await anyio.to_thread.run_sync(self._keywords.index.search, request.text, limit, tenant)
            if not found:
                return []
            params = SqlParams([key for key, _ in found])
            if with_vector:
                params.add(np.asarray(request.vector, dtype=np.float32))
            similarity = "1 - (embedding <=> $2)" if with_vector else "NULL::float8"
            where = f"{where_clause(request.filters, params)} AND {pg_access.readers_condition(request.reader, params)}"
            rows = await conn.fetch(
                f"SELECT key, id, document_id, text, metadata, {similarity} AS similarity FROM rag_chunks "
                f"WHERE key = ANY($1::bigint[]) AND {where}",
                *params.values,
            )
            by_key = {row["key"]: row for row in rows}
            ranked = [(by_key[key], score) for key, score in found if key in by_key]
            if len(ranked) >= k or len(found) < limit:
                return ranked[:k]
            limit *= 4

    async def search(self, request: SearchRequest) -> list[Hit]:
        if request.top_k < 1:
            return []
        if request.mode != "keyword" and request.vector is None:
            raise ValueError(f"{request.mode} search needs a query vector")
        async with self._snapshot() as conn:
            if request.mode != "dense" or tenant_of(request.filters or {}) is not None:
                await self._keywords.catch_up(conn)  # once, in the search's snapshot: both legs read it
            if request.mode == "keyword":
                found = await self._keyword(conn, request, request.top_k)
                return [Hit(_chunk(row), score, ("keyword",), score) for row, score in found]
            floor = request.threshold
            if request.mode == "dense":
                rows = await self._dense(conn, request, request.top_k)
                return [
                    Hit(_chunk(r), float(r["similarity"])) for r in rows if floor is None or r["similarity"] >= floor
                ]
            pool = max(request.top_k, HYBRID_POOL)
            dense_rows = await self._dense(conn, request, pool)
            if floor is not None:
                if not dense_rows or dense_rows[0]["similarity"] < floor:
                    return []  # no chunk is similar enough: the question is off-topic
                dense_rows = [r for r in dense_rows if r["similarity"] >= floor]
            keyword_rows = await self._keyword(conn, request, pool)
        by_key = {r["key"]: r for r in (*(row for row, _ in keyword_rows), *dense_rows)}
        dense = {r["key"]: float(r["similarity"]) for r in dense_rows}
        keyword = {row["key"]: score for row, score in keyword_rows}
        similarity = {key: float(row["similarity"]) for key, row in by_key.items()}
        hits = []
        for key, fused in fuse(similarity, keyword)[: request.top_k]:
            legs = tuple(leg for leg, pool_of in (("dense", dense), ("keyword", keyword)) if key in pool_of)
            hits.append(Hit(_chunk(by_key[key]), similarity[key], legs, keyword.get(key), fused))
        return hits

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
