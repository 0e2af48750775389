"""How the PostgreSQL store searches: both legs in one REPEATABLE READ snapshot, the dense leg through HNSW or, for
a small tenant, an exact scan of the tenant index, the keyword leg through this replica's Tantivy index, then
their fusion. A narrowed reader's rule is part of every query (`pg_access.readers_condition`); a reader allowed
few chunks of a small tenant has them read once and ranked by both legs among themselves alone.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import asyncpg
import numpy as np

from llm.tracing import tracer
from rag.stores import pg_access
from rag.stores.base import SearchRequest
from rag.stores.fusion import fuse
from rag.stores.pg_filters import SqlParams, where_clause
from rag.stores.pg_keywords import FollowedKeywordIndex
from rag.stores.pg_pool import pooled_connection
from rag.types import Chunk, Hit, tenant_of

HYBRID_POOL = 100
# A narrowed reader of a tenant small enough for the exact scan, allowed at most this many of its chunks: they are
# read once (keys and distances, from the tenant index), ranked in Python for the dense leg, and handed to the
# keyword index as the only keys to match, so neither leg passes over chunks the reader may not read.
FEW_READABLE = 4096
# Up to this many, the keyword index matches only the reader's keys (a term set query, whose cost grows with the
# keys: with 400, a keyword leg took 14.3 ms against 5.7 at 200,000 chunks); above it, it ranks the tenant's chunks
# and the reader's are taken from its list, which is asked for as many as the reader's share says it needs.
KEYS_INSIDE_INDEX = 256
# A tenant's dense leg: scoring all T of its chunks (an index-only scan, about 0.7 us a chunk) against HNSW, which
# passes over the other tenants' neighbours to find k of its own, about k * N / T candidates at 9.4 us each (a heap
# and a TOAST page): measured at 1M chunks, a tenant of 20,000: 13.9 against 47 ms. Exact wins while
# T * T <= 13 * k * N, so the cost follows the tenant's size where it is small, and large tenants keep the index.
EXACT_TENANT_FACTOR = 13


def exact_tenant_scan(tenant_rows: int, total_rows: int, k: int) -> bool:
    """Whether a tenant's k nearest chunks cost less found by scoring all of them than through HNSW."""
    return tenant_rows * tenant_rows <= EXACT_TENANT_FACTOR * k * max(total_rows, tenant_rows)


def _chunk(row: asyncpg.Record) -> Chunk:
    return Chunk(row["id"], row["document_id"], row["text"], json.loads(row["metadata"]))


class PgSearch:
    """The searches of one replica: its pool, its keyword index, its HNSW candidate list and its chunk count."""

    def __init__(
        self, pool: asyncpg.Pool, keywords: FollowedKeywordIndex, ef_search: int, count: Callable[[], int]
    ) -> None:
        self._pool = pool
        self._keywords = keywords
        self.ef_search = ef_search
        self._count = count

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a read-only REPEATABLE READ transaction: every query of one search sees one snapshot."""
        async with pooled_connection(self._pool) as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.execute(f"SET LOCAL hnsw.ef_search = {int(self.ef_search)}")
            await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            yield conn

    def _exact_for_tenant(self, request: SearchRequest, k: int) -> bool:
        """Whether scoring every chunk of the request's tenant costs less than the filtered HNSW scan (the keyword
        index, caught up by `search`, counts the tenant's chunks, the latest writes included)."""
        tenant = tenant_of(request.filters or {})
        if tenant is None:
            return False
        return exact_tenant_scan(self._keywords.index.tenant_count(tenant), self._count(), k)

    async def _few_readable(self, conn: asyncpg.Connection, request: SearchRequest, k: int) -> dict[int, float] | None:
        """Every chunk a narrowed reader may read in its (small) tenant, key -> cosine distance (0 in keyword mode),
        when there are at most FEW_READABLE; None otherwise, and for a search that is not narrowed."""
        # The reader's rule thins the rows HNSW must pass over to find k of the tenant's (by the share it may read),
        # while the exact scan costs the tenant's size whatever the rule: judged as for the hybrid pool, it stays
        # exact where an unnarrowed dense search of a few rows would take HNSW.
        if request.reader is None or not self._exact_for_tenant(request, max(k, HYBRID_POOL)):
            return None
        params = SqlParams()
        distance = "0::float8"
        if request.vector is not None:
            distance = f"(embedding <=> {params.add(np.asarray(request.vector, dtype=np.float32))})"
        where = f"{where_clause(request.filters, params)} AND {pg_access.readers_condition(request.reader, params)}"
        rows = await conn.fetch(
            f"SELECT key, {distance} AS distance FROM rag_chunks WHERE {where} LIMIT {FEW_READABLE + 1}",
            *params.values,
        )
        if len(rows) > FEW_READABLE:
            return None
        return {row["key"]: float(row["distance"]) for row in rows}

    async def _rows(
        self, conn: asyncpg.Connection, keys: list[int], vector: np.ndarray | None
    ) -> dict[int, asyncpg.Record]:
        """The chunk rows of these keys (with their similarity to `vector`), by key."""
        params = SqlParams(keys)
        similarity = "NULL::float8"
        if vector is not None:
            similarity = f"1 - (embedding <=> {params.add(np.asarray(vector, dtype=np.float32))})"
        rows = await conn.fetch(
            f"SELECT key, id, document_id, text, metadata, {similarity} AS similarity FROM rag_chunks "
            "WHERE key = ANY($1::bigint[])",
            *params.values,
        )
        return {row["key"]: row for row in rows}

    async def _dense(
        self, conn: asyncpg.Connection, request: SearchRequest, k: int, readable: dict[int, float] | None = None
    ) -> list[asyncpg.Record]:
        if readable is not None:
            nearest = sorted(readable, key=readable.__getitem__)[:k]
            found = await self._rows(conn, nearest, request.vector)
            return sorted(found.values(), key=lambda row: row["similarity"], reverse=True)
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
        self, conn: asyncpg.Connection, request: SearchRequest, k: int, readable: dict[int, float] | None = None
    ) -> list[tuple[asyncpg.Record, float]]:
        """(row, BM25 score) of the best `k` chunks the snapshot holds and the filters pass, from this replica's
        keyword index, which `search` caught up. A tenant named by a string is matched inside the index; other
        filters, and whatever the index holds that the snapshot does not, are dropped after it ranks, so the
        candidate list grows until it holds k rows or every match was seen."""
        tenant = tenant_of(request.filters or {})
        if readable is not None:
            found = await self._keyword_among(request.text, k, tenant, readable)
            rows = await self._rows(conn, [key for key, _ in found], request.vector)
            return [(rows[key], score) for key, score in found if key in rows]
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

    async def _keyword_among(
        self, text: str, k: int, tenant: str | None, readable: dict[int, float]
    ) -> list[tuple[int, float]]:
        """(key, BM25 score) of the best `k` of the reader's chunks (`readable`, all of them), best first."""
        index = self._keywords.index
        if len(readable) <= KEYS_INSIDE_INDEX:  # matched inside the index: its top k are the reader's
            only = np.fromiter(readable, dtype=np.int64, count=len(readable))
            return await anyio.to_thread.run_sync(index.search, text, k, tenant, only)
        among = index.tenant_count(tenant) if tenant is not None else self._count()
        limit = max(k, 10, int(k * max(among, 1) / len(readable) * 1.5))
        while True:
            found = await anyio.to_thread.run_sync(index.search, text, limit, tenant)
            picked = [(key, score) for key, score in found if key in readable]
            if len(picked) >= k or len(found) < limit:
                return picked[:k]
            limit *= 4

    async def search(self, request: SearchRequest) -> list[Hit]:
        if request.top_k < 1:
            return []
        if request.mode != "keyword" and request.vector is None:
            raise ValueError(f"{request.mode} search needs a query vector")
        async with self.snapshot() as conn:
            if request.mode != "dense" or tenant_of(request.filters or {}) is not None:
                await self._keywords.catch_up(conn)  # once, in the search's snapshot: both legs read it
            if request.reader is not None and not await pg_access.narrows(
                conn, request.reader, tenant_of(request.filters or {})
            ):
                request = replace(request, reader=None)  # nothing here is closed to this reader
            pool = request.top_k if request.mode != "hybrid" else max(request.top_k, HYBRID_POOL)
            readable = await self._few_readable(conn, request, pool)
            if request.mode == "keyword":
                found = await self._keyword_leg(conn, request, request.top_k, readable)
                return [Hit(_chunk(row), score, ("keyword",), score) for row, score in found]
            floor = request.threshold
            if request.mode == "dense":
                rows = await self._dense_leg(conn, request, request.top_k, readable)
                return [
                    Hit(_chunk(r), float(r["similarity"])) for r in rows if floor is None or r["similarity"] >= floor
                ]
            dense_rows = await self._dense_leg(conn, request, pool, readable)
            if floor is not None:
                if not dense_rows or dense_rows[0]["similarity"] < floor:
                    return []  # no chunk is similar enough: the question is off-topic
                dense_rows = [r for r in dense_rows if r["similarity"] >= floor]
            keyword_rows = await self._keyword_leg(conn, request, pool, readable)
        with tracer.start_as_current_span("search.fuse") as span:
            by_key = {r["key"]: r for r in (*(row for row, _ in keyword_rows), *dense_rows)}
            dense = {r["key"]: float(r["similarity"]) for r in dense_rows}
            keyword = {row["key"]: score for row, score in keyword_rows}
            similarity = {key: float(row["similarity"]) for key, row in by_key.items()}
            span.set_attribute("rag.candidates", len(similarity))
            hits = []
            for key, fused in fuse(similarity, keyword, dense_weight=request.dense_weight)[: request.top_k]:
                legs = tuple(leg for leg, pool_of in (("dense", dense), ("keyword", keyword)) if key in pool_of)
                hits.append(Hit(_chunk(by_key[key]), similarity[key], legs, keyword.get(key), fused))
            return hits

    async def _dense_leg(
        self, conn: asyncpg.Connection, request: SearchRequest, k: int, readable: dict[int, float] | None
    ) -> list[asyncpg.Record]:
        with tracer.start_as_current_span("search.dense") as span:
            rows = await self._dense(conn, request, k, readable)
            span.set_attribute("rag.candidates", len(rows))
            return rows

    async def _keyword_leg(
        self, conn: asyncpg.Connection, request: SearchRequest, k: int, readable: dict[int, float] | None
    ) -> list[tuple[asyncpg.Record, float]]:
        with tracer.start_as_current_span("search.keyword") as span:
            found = await self._keyword(conn, request, k, readable)
            span.set_attribute("rag.candidates", len(found))
            return found
