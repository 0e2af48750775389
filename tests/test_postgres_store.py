"""What only the PostgreSQL backend needs showing (the shared behaviour is in `test_store_conformance.py`)."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from rag.stores import SearchRequest
from rag.stores.postgres_store import (
    PGVECTOR_EF_CONSTRUCTION,
    PostgresVectorStore,
    exact_tenant_scan,
    search_indexes,
)
from rag.types import Chunk

DIM = 16


def corpus(
    seed: int, n: int, metadata: Callable[[int], dict[str, Any]], text: Callable[[int], str] = "text {}".format
) -> tuple[list[Chunk], np.ndarray]:
    """Chunk i of document d{i}, with its text and metadata, and n random unit vectors."""
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [Chunk(f"d{i}:0", f"d{i}", text(i), metadata(i)) for i in range(n)], vectors


async def test_a_rare_filter_gets_k_rows_even_when_the_index_scan_gives_up_early(pg_dsn: str, tmp_path: Path) -> None:
    """pgvector's iterative scan stops after hnsw.max_scan_tuples; a filter that keeps 8 rows among 3,000 would then
    come back short. The store falls back to an exact scan of the filtered rows."""
    await (await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "keywords")).aclose()  # creates the schema
    conn = await asyncpg.connect(pg_dsn)
    database = await conn.fetchval("SELECT current_database()")
    # Make the planner take the HNSW index (as it does on a large table) and let the scan give up early.
    await conn.execute(f'ALTER DATABASE "{database}" SET enable_seqscan = off')
    await conn.execute(f'ALTER DATABASE "{database}" SET hnsw.max_scan_tuples = 20')
    await conn.close()
    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "keywords")
    chunks, vectors = corpus(3, 3000, lambda i: {"group": "small" if i % 400 == 0 else "big"})
    await store.upsert(chunks, vectors)
    query = vectors[1]  # a big group's vector: the small group's rows are far from it
    hits = await store.search(SearchRequest("", query, 5, {"group": "small"}, mode="dense"))
    assert len(hits) == 5 and {h.chunk.metadata["group"] for h in hits} == {"small"}
    small = [i for i in range(3000) if i % 400 == 0]
    expected = sorted(small, key=lambda i: -float(vectors[i] @ query))[:5]
    assert [h.chunk.document_id for h in hits] == [f"d{i}" for i in expected]
    await store.aclose()


async def index_scans(conn: asyncpg.Connection, index: str, before: int = -1) -> int:
    """The index's scan count once the statistics show more than `before` (they are flushed about once a second)."""
    for _ in range(100):
        scans = int(await conn.fetchval("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = $1", index))
        if scans > before:
            return scans
        await asyncio.sleep(0.1)
    return scans


@pytest.mark.parametrize(
    ("tenant", "total", "exact"),
    [(20_000, 1_000_000, True), (100_000, 1_000_000, False), (30, 3_000, True), (2_970, 3_000, False), (0, 0, True)],
)
def test_a_tenant_is_scored_exactly_while_that_costs_less_than_hnsw(tenant: int, total: int, exact: bool) -> None:
    assert exact_tenant_scan(tenant, total, 100) is exact


async def test_a_small_tenant_is_scored_exactly_from_the_index_holding_its_vectors(pg_dsn: str, tmp_path: Path) -> None:
    """A tenant's dense leg costs in proportion to the tenant while it is small: every one of its chunks is scored
    from the B-tree that holds the tenant's vectors side by side (exact, no HNSW scan). Which plan PostgreSQL takes
    for a large tenant is its own choice on 3,000 rows; the rule that sends it to HNSW is tested above."""
    conn = await asyncpg.connect(pg_dsn)
    # On 3,000 rows the planner would rather read the table; make it choose among the indexes, as on a large one.
    await conn.execute(f'ALTER DATABASE "{await conn.fetchval("SELECT current_database()")}" SET enable_seqscan = off')
    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "keywords")
    chunks, vectors = corpus(4, 3000, lambda i: {"orgId": "small" if i % 100 == 0 else "big"})
    await store.upsert(chunks, vectors)
    await conn.execute("VACUUM rag_chunks")  # all-visible pages: the scan needs no heap page
    by_org, hnsw = "rag_chunks_by_org_with_vectors", "rag_chunks_embedding"
    seen = {index: await index_scans(conn, index) for index in (by_org, hnsw)}
    query = vectors[1]
    hits = await store.search(SearchRequest("", query, 5, {"orgId": "small"}, mode="dense"))
    expected = sorted(range(0, 3000, 100), key=lambda i: -float(vectors[i] @ query))[:5]
    assert [h.chunk.document_id for h in hits] == [f"d{i}" for i in expected]
    seen[by_org] = await index_scans(conn, by_org, seen[by_org])
    assert await index_scans(conn, hnsw, seen[hnsw]) == seen[hnsw]  # HNSW was not asked
    hits = await store.search(SearchRequest("", query, 5, {"orgId": "big"}, mode="dense"))
    assert len(hits) == 5 and {h.chunk.metadata["orgId"] for h in hits} == {"big"}
    await conn.close()
    await store.aclose()


# --- bulk loads ----------------------------------------------------------------------------------------------------


SEARCH_INDEXES = set(search_indexes(PGVECTOR_EF_CONSTRUCTION))


async def built_search_indexes(pg_dsn: str) -> set[str]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'rag_chunks'")
    finally:
        await conn.close()
    return {row["indexname"] for row in rows} & SEARCH_INDEXES


def tenant_corpus(seed: int, n: int) -> tuple[list[Chunk], np.ndarray]:
    return corpus(seed, n, lambda i: {"orgId": f"t{i % 3}"}, lambda i: f"word{i % 7} text {i}")


async def test_a_bulk_load_builds_the_search_indexes_once_at_its_end(pg_dsn: str, tmp_path: Path) -> None:
    """During the load the indexes are gone and every search is still exact and complete, including another
    replica's adds; at its end both indexes exist again and the searches find the same."""
    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "a")
    other = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "b")
    chunks, vectors = tenant_corpus(5, 600)
    query = vectors[0] * -1
    async with store.bulk_load(index_memory="64MB"):
        assert await built_search_indexes(pg_dsn) == set()
        await store.upsert(chunks[:300], vectors[:300])
        await other.upsert(chunks[300:], vectors[300:])  # another replica's add during the load
        during = await other.search(SearchRequest("word3", query, 10, {"orgId": "t1"}, mode="dense"))
        found = await store.search(SearchRequest("word3", None, 400, mode="keyword"))
        assert {h.chunk.id for h in found} == {c.id for c in chunks if c.text.startswith("word3")}
    assert await built_search_indexes(pg_dsn) == SEARCH_INDEXES
    conn = await asyncpg.connect(pg_dsn)
    pages, visible = await conn.fetchrow("SELECT relpages, relallvisible FROM pg_class WHERE relname = 'rag_chunks'")
    await conn.close()
    assert pages > 0 and visible == pages  # vacuumed: a tenant's index-only scan reads no heap page
    in_t1 = [i for i in range(600) if i % 3 == 1]
    expected = [f"d{i}:0" for i in sorted(in_t1, key=lambda i: -float(vectors[i] @ query))[:10]]
    assert [h.chunk.id for h in during] == expected
    after = await store.search(SearchRequest("word3", query, 10, {"orgId": "t1"}, mode="dense"))
    assert [h.chunk.id for h in after] == expected
    await store.refresh()
    assert store.count == 600
    await other.aclose()
    await store.aclose()


async def test_a_bulk_load_that_fails_keeps_its_adds_and_builds_the_indexes(pg_dsn: str, tmp_path: Path) -> None:
    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "a")
    chunks, vectors = tenant_corpus(6, 50)
    with pytest.raises(RuntimeError, match="the source ran dry"):
        async with store.bulk_load(index_memory="64MB"):
            await store.upsert(chunks, vectors)
            raise RuntimeError("the source ran dry")
    assert await built_search_indexes(pg_dsn) == SEARCH_INDEXES
    await store.refresh()
    assert store.count == 50
    await store.aclose()


async def test_one_bulk_load_at_a_time_and_a_start_rebuilds_what_a_dead_one_dropped(
    pg_dsn: str, tmp_path: Path
) -> None:
    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "a")
    chunks, vectors = tenant_corpus(7, 40)
    await store.upsert(chunks, vectors)
    second_entered = asyncio.Event()

    async def second_load() -> None:
        async with store.bulk_load(index_memory="64MB"):
            second_entered.set()

    async with store.bulk_load(index_memory="64MB"):
        waiting = asyncio.create_task(second_load())
        await asyncio.sleep(1)
        assert not second_entered.is_set()  # the second load waits for the first
        # A replica starting meanwhile leaves the indexes to the load that is running
        await (await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "b")).aclose()
        assert await built_search_indexes(pg_dsn) == set()
    await asyncio.wait_for(waiting, 30)
    assert second_entered.is_set() and await built_search_indexes(pg_dsn) == SEARCH_INDEXES
    await store.aclose()
    # A load whose process died: its session ended, its lock with it, and the indexes stayed dropped
    conn = await asyncpg.connect(pg_dsn)
    for name in SEARCH_INDEXES:
        await conn.execute(f"DROP INDEX {name}")
    await conn.close()
    reopened = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "a")
    assert await built_search_indexes(pg_dsn) == SEARCH_INDEXES
    hits = await reopened.search(SearchRequest("", vectors[3], 1, mode="dense"))
    assert hits[0].chunk.id == chunks[3].id
    await reopened.aclose()


async def test_an_unreachable_database_is_store_unavailable(pg_dsn: str, tmp_path: Path) -> None:
    from rag.errors import StoreUnavailable

    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "keywords")
    await store._pool.close()  # as if every connection were gone and none could be made
    with pytest.raises(StoreUnavailable):
        await store.search(SearchRequest("", np.ones(DIM, dtype=np.float32) / 4, 5, mode="dense"))


# --- the replicas' keyword indexes -------------------------------------------------------------------------------


def pg_dsn_of(pg_server: Any) -> str:
    """Another fresh database on the same server."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    pg_server.psql(f"CREATE DATABASE {name};")
    return str(pg_server.get_uri(name))


def chunks_of(doc_id: str, words: str, n: int = 2) -> list[Chunk]:
    return [Chunk(f"{doc_id}:{i}", doc_id, f"{words} part {i}", {"orgId": "acme"}) for i in range(n)]


def unit_rows(seed: int, n: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def keyword(store: PostgresVectorStore, text: str, k: int = 10) -> list[str]:
    hits = await store.search(SearchRequest(text, None, k, mode="keyword"))
    return sorted(h.chunk.id for h in hits)


async def test_a_replica_finds_by_keyword_what_another_wrote_just_before(pg_dsn: str, tmp_path: Path) -> None:
    first = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "first")
    second = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "second")
    await first.upsert(chunks_of("volcano", "basalt eruption"), unit_rows(1, 2))
    assert await keyword(second, "basalt") == ["volcano:0", "volcano:1"]  # no wait: the search caught up first
    await second.upsert(chunks_of("volcano", "glacier melt", 1), unit_rows(2, 1))  # a replacement
    assert await keyword(first, "basalt") == []
    assert await keyword(first, "glacier") == ["volcano:0"]
    await first.delete("volcano")
    assert await keyword(second, "glacier") == []
    hybrid = await second.search(SearchRequest("glacier", unit_rows(3, 1)[0], 5, mode="hybrid"))
    assert hybrid == []
    for store in (first, second):
        assert await keyword(store, "glacier basalt") == []
        assert store.layout()["keyword_documents"] == 0  # a replica's index catches up when it searches
        await store.aclose()


async def test_a_transaction_that_commits_after_a_later_one_is_not_skipped(pg_dsn: str, tmp_path: Path) -> None:
    """Transaction ids order transactions by start, not by commit: the replica must not move past one still
    running when it catches up with a later one."""
    writer = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "writer")
    replica = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "replica")
    slow = await asyncpg.connect(pg_dsn)
    transaction = slow.transaction()
    await transaction.start()
    await slow.execute("SELECT pg_current_xact_id()")  # takes its id now: lower than the add's below
    await writer.upsert(chunks_of("quick", "quartz"), unit_rows(4, 2))
    assert await keyword(replica, "quartz") == ["quick:0", "quick:1"]  # caught up while `slow` still runs
    vector = "[" + ",".join(["0.25"] * DIM) + "]"
    await slow.execute(
        "INSERT INTO rag_documents (id, org_id, chunks, metadata, preview) VALUES ('slow', NULL, 1, '{}', '')"
    )
    await slow.execute(
        "INSERT INTO rag_chunks (id, document_id, org_id, text, metadata, embedding) "
        f"VALUES ('slow:0', 'slow', NULL, 'feldspar crystals', '{{}}', '{vector}')"
    )
    await slow.execute(
        "UPDATE rag_counters SET chunks = chunks + 1, documents = documents + 1, generation = generation + 1"
    )
    await transaction.commit()
    await slow.close()
    assert await keyword(replica, "feldspar quartz") == ["quick:0", "quick:1", "slow:0"]
    await writer.aclose()
    await replica.aclose()


async def test_a_lost_or_foreign_keyword_index_is_rebuilt_and_a_replayed_change_changes_nothing(
    pg_dsn: str, pg_server: Any, tmp_path: Path
) -> None:
    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "keywords")
    await store.upsert(chunks_of("granite", "granite slab", 3), unit_rows(5, 3))
    before = (tmp_path / "keywords" / "followed.json").read_text()
    await store.upsert(chunks_of("marble", "marble slab"), unit_rows(6, 2))
    assert await keyword(store, "slab") == ["granite:0", "granite:1", "granite:2", "marble:0", "marble:1"]
    await store.aclose()
    # a crash after the index committed but before its state was written: the next start replays the change
    (tmp_path / "keywords" / "followed.json").write_text(before)
    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "keywords")
    assert await keyword(store, "slab") == ["granite:0", "granite:1", "granite:2", "marble:0", "marble:1"]
    assert store.layout()["keyword_documents"] == store.count == 5
    await store.aclose()
    shutil.rmtree(tmp_path / "keywords")  # lost: rebuilt from the table
    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "keywords")
    assert await keyword(store, "marble") == ["marble:0", "marble:1"]
    await store.aclose()
    # the same directory pointed at another database: never mixed, rebuilt from that one
    other = await PostgresVectorStore.open(pg_dsn_of(pg_server), "toy", DIM, tmp_path / "keywords")
    assert await keyword(other, "marble") == [] and other.layout()["keyword_documents"] == 0
    await other.aclose()


async def test_two_processes_sharing_a_keyword_directory_stay_consistent(pg_dsn: str, tmp_path: Path) -> None:
    writer = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "writer")
    first = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "shared")
    second = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "shared")
    for i in range(4):
        await writer.upsert(chunks_of(f"rock{i}", f"mineral{i} stone"), unit_rows(10 + i, 2))
        reader = first if i % 2 else second
        assert len(await keyword(reader, "stone", k=20)) == 2 * (i + 1)
    await writer.delete("rock0")
    assert await keyword(first, "mineral0 mineral3") == ["rock3:0", "rock3:1"]
    assert await keyword(second, "mineral0 mineral3") == ["rock3:0", "rock3:1"]
    for store in (first, second):
        assert store.layout()["keyword_documents"] == 6
    assert writer.layout()["keyword_documents"] == 0  # a replica's index catches up when it searches
    assert len(await keyword(writer, "stone")) == 6 and writer.layout()["keyword_documents"] == 6
    for store in (writer, first, second):
        await store.aclose()


async def test_a_replica_that_last_caught_up_before_the_deletions_were_pruned_rebuilds(
    pg_dsn: str, tmp_path: Path
) -> None:
    writer = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "writer")
    idle = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "idle")
    await writer.upsert(chunks_of("old", "obsidian"), unit_rows(20, 2))
    assert await keyword(idle, "obsidian") == ["old:0", "old:1"]
    idle._keywords._state.at -= 8 * 86_400  # as if it had not caught up for eight days
    await writer.delete("old")
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("DELETE FROM rag_deleted_chunks")  # what the retention prunes meanwhile
    await conn.close()
    await writer.upsert(chunks_of("new", "pumice"), unit_rows(21, 2))
    assert await keyword(idle, "obsidian pumice") == ["new:0", "new:1"]
    assert idle.layout()["keyword_documents"] == 2  # rebuilt: the deletion it never saw is not left behind
    await writer.aclose()
    await idle.aclose()


async def test_a_large_catch_up_is_read_and_applied_in_batches(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.stores import pg_keywords

    monkeypatch.setattr(pg_keywords, "REBUILD_BATCH", 3)  # a load of 8 chunks arrives in three batches
    writer = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "writer")
    replica = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "replica")
    await writer.upsert(chunks_of("load", "loess dune", 8), unit_rows(30, 8))
    await writer.delete("load")
    await writer.upsert(chunks_of("kept", "loess plain", 8), unit_rows(31, 8))
    assert await keyword(replica, "loess", k=20) == [f"kept:{i}" for i in range(8)]
    assert replica.layout()["keyword_documents"] == 8
    await writer.aclose()
    await replica.aclose()


async def graph_ef_construction(pg_dsn: str) -> int:
    """The HNSW index's ef_construction, as PostgreSQL holds it (pgvector's default when none was given)."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'rag_chunks_embedding'")
    finally:
        await conn.close()
    return int(dict(option.split("=", 1) for option in options or []).get("ef_construction", PGVECTOR_EF_CONSTRUCTION))


async def test_the_graph_is_built_and_grown_with_the_configured_ef_construction(pg_dsn: str, tmp_path: Path) -> None:
    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "a", ef_construction=40)
    assert await graph_ef_construction(pg_dsn) == 40  # a new database's graph
    chunks, vectors = tenant_corpus(8, 300)
    async with store.bulk_load(index_memory="64MB"):
        await store.upsert(chunks, vectors)
    assert await graph_ef_construction(pg_dsn) == 40  # the graph a bulk load builds
    await store.aclose()
    # Another setting at the next start: inserts link with it from then on, the store still finds what it holds
    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "a", ef_construction=100)
    assert await graph_ef_construction(pg_dsn) == 100
    more, more_vectors = corpus(9, 20, lambda i: {"orgId": "t9"}, "more {}".format)
    more = [Chunk(f"e{i}:0", f"e{i}", c.text, c.metadata) for i, c in enumerate(more)]
    await store.upsert(more, more_vectors)
    for i in (0, 299):
        assert (await store.search(SearchRequest("", vectors[i], 1, mode="dense")))[0].chunk.id == chunks[i].id
    assert (await store.search(SearchRequest("", more_vectors[4], 1, mode="dense")))[0].chunk.id == "e4:0"
    await store.aclose()


async def test_the_chunk_table_is_vacuumed_after_inserts_of_two_percent(pg_dsn: str, tmp_path: Path) -> None:
    """Rows are marked all-visible soon after they are added, which a tenant's index-only scan relies on."""
    await (await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "a")).aclose()
    conn = await asyncpg.connect(pg_dsn)
    options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'rag_chunks'")
    await conn.close()
    assert "autovacuum_vacuum_insert_scale_factor=0.02" in options
