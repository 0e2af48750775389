"""What only the PostgreSQL backend needs showing (the shared behaviour is in `test_store_conformance.py`)."""

from __future__ import annotations

import asyncpg
import numpy as np
import pytest

from rag.stores import SearchRequest
from rag.stores.postgres_store import PostgresVectorStore
from rag.types import Chunk

DIM = 16


async def test_a_small_tenant_gets_k_rows_even_when_the_index_scan_gives_up_early(pg_dsn: str) -> None:
    """pgvector's iterative scan stops after hnsw.max_scan_tuples; a tenant of 7 rows among 3,000 would then come
    back short. The store falls back to an exact scan of the tenant's rows."""
    await (await PostgresVectorStore.open(pg_dsn, "toy", DIM)).aclose()  # creates the schema
    conn = await asyncpg.connect(pg_dsn)
    database = await conn.fetchval("SELECT current_database()")
    # Make the planner take the HNSW index (as it does on a large table) and let the scan give up early.
    await conn.execute("DROP INDEX rag_chunks_by_org")
    await conn.execute(f'ALTER DATABASE "{database}" SET enable_seqscan = off')
    await conn.execute(f'ALTER DATABASE "{database}" SET hnsw.max_scan_tuples = 20')
    await conn.close()
    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chunks = [
        Chunk(f"d{i}:0", f"d{i}", f"text {i}", {"orgId": "small" if i % 400 == 0 else "big"}) for i in range(3000)
    ]
    await store.upsert(chunks, vectors)
    query = vectors[1]  # a big tenant's vector: the small tenant's rows are far from it
    hits = await store.search(SearchRequest("", query, 5, {"orgId": "small"}, mode="dense"))
    assert len(hits) == 5 and {h.chunk.metadata["orgId"] for h in hits} == {"small"}
    small = [i for i in range(3000) if i % 400 == 0]
    expected = sorted(small, key=lambda i: -float(vectors[i] @ query))[:5]
    assert [h.chunk.document_id for h in hits] == [f"d{i}" for i in expected]
    await store.aclose()


async def test_an_unreachable_database_is_store_unavailable(pg_dsn: str) -> None:
    from rag.errors import StoreUnavailable

    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM)
    await store._pool.close()  # as if every connection were gone and none could be made
    with pytest.raises(StoreUnavailable):
        await store.search(SearchRequest("", np.ones(DIM, dtype=np.float32) / 4, 5, mode="dense"))
