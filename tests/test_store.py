"""What only the embedded NumPy store promises: append-only segments, tombstones, compaction that changes no answer,
crash safety at each step, a keyword index that commits in step with the catalog and is rebuilt from it, and the
migration of stores written by the previous format.

The behaviour every backend shares is in `test_store_conformance.py`."""

from __future__ import annotations

import itertools
import json
import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from rag.stores import SearchRequest
from rag.stores.catalog import Catalog
from rag.stores.keyword_index import KeywordIndex
from rag.stores.numpy_store import NumpyVectorStore
from rag.stores.segments import plan_merge, write_segment
from rag.types import Chunk

DIM = 8


def unit(seed: int, n: int = 1) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def chunks_of(doc_id: str, n: int) -> list[Chunk]:
    return [Chunk(f"{doc_id}:{i}", doc_id, f"{doc_id} part {i}", {"doc": doc_id}) for i in range(n)]


def layout(store: NumpyVectorStore) -> dict[str, int]:
    return {key: value for key, value in store.layout().items() if key not in ("compactions", "keyword_documents")}


def files(directory: Path) -> dict[str, tuple[int, int]]:
    """Segment files with their inode and modification time: a rewrite changes one of them."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.glob("seg-*")}


async def dense(store: NumpyVectorStore, query: np.ndarray, k: int = 10) -> list[tuple[str, float]]:
    hits = await store.search(SearchRequest("", query, k))
    return [(h.chunk.id, round(h.score, 5)) for h in hits]


def brute_force(model: dict[str, tuple[Chunk, np.ndarray]], query: np.ndarray, k: int = 10) -> list[tuple[str, float]]:
    scored = sorted(((float(v @ query), cid) for cid, (_, v) in model.items()), reverse=True)[:k]
    return [(cid, round(score, 5)) for score, cid in scored]


async def keyword(store: NumpyVectorStore, text: str, k: int = 10) -> list[str]:
    hits = await store.search(SearchRequest(text, None, k, mode="keyword"))
    return sorted(h.chunk.id for h in hits)


async def test_an_add_writes_only_its_own_segment(tmp_path: Path) -> None:
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM, auto_compact=False)
    await store.upsert(chunks_of("a", 50), unit(1, 50))
    before = files(tmp_path)
    await store.upsert(chunks_of("b", 3), unit(2, 3))
    after = files(tmp_path)
    assert {name: after[name] for name in before} == before  # nothing written was touched
    new = sorted(set(after) - set(before))
    assert len(new) == 2 and new[0].endswith(".keys.npy") and np.load(tmp_path / new[1]).shape == (3, DIM)
    assert layout(store) == {"segments": 2, "rows": 53, "tombstoned": 0}
    await store.aclose()


async def test_delete_and_replace_write_tombstones_that_compaction_drops(tmp_path: Path) -> None:
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM, auto_compact=False)
    vectors = unit(3, 12)
    await store.upsert(chunks_of("a", 4), vectors[:4])
    await store.upsert(chunks_of("b", 4), vectors[4:8])
    before = files(tmp_path)
    await store.delete("a")
    await store.upsert(chunks_of("b", 2), vectors[8:10])  # replaces b's four chunks
    assert {name: files(tmp_path)[name] for name in before} == before
    assert layout(store) == {"segments": 3, "rows": 10, "tombstoned": 8}
    expected = [("b:1", round(float(vectors[9] @ vectors[9]), 5)), ("b:0", round(float(vectors[8] @ vectors[9]), 5))]
    assert await dense(store, vectors[9]) == expected

    assert await store.compact() >= 1
    assert layout(store) == {"segments": 1, "rows": 2, "tombstoned": 0}
    assert await dense(store, vectors[9]) == expected
    assert not set(before) & set(files(tmp_path))  # the merged-away files are gone
    await store.aclose()
    reopened = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    assert await dense(reopened, vectors[9]) == expected
    await reopened.aclose()


async def test_random_operations_with_background_compaction_match_brute_force(tmp_path: Path) -> None:
    rng = random.Random(7)
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    model: dict[str, tuple[Chunk, np.ndarray]] = {}
    documents: set[str] = set()
    for step in range(120):
        if documents and rng.random() < 0.25:
            doc = rng.choice(sorted(documents))
            await store.delete(doc)
            documents.discard(doc)
            model = {cid: item for cid, item in model.items() if item[0].document_id != doc}
        else:
            doc = f"d{rng.randint(0, 60)}"  # often an id already stored: a replacement
            n = rng.randint(1, 6)
            vectors = unit(1000 + step, n)
            await store.upsert(chunks_of(doc, n), vectors)
            model = {cid: item for cid, item in model.items() if item[0].document_id != doc}
            model |= {c.id: (c, v) for c, v in zip(chunks_of(doc, n), vectors, strict=True)}
            documents.add(doc)
        if step % 10 == 0:
            query = unit(5000 + step)[0]
            assert await dense(store, query) == brute_force(model, query), step
    await store.wait_for_compaction()
    assert store.compactions > 0
    layout = store.layout()
    assert layout["rows"] - layout["tombstoned"] == len(model) == store.count
    assert layout["segments"] <= 10  # geometric sizes: a handful, not one per add
    await store.aclose()
    reopened = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    for seed in range(5):
        query = unit(9000 + seed)[0]
        assert await dense(reopened, query, 50) == brute_force(model, query, 50)
    await reopened.aclose()


def tenant_chunks(doc_id: str, n: int, tenant: str | None) -> list[Chunk]:
    extra = {} if tenant is None else {"orgId": tenant}
    return [Chunk(f"{doc_id}:{i}", doc_id, f"{doc_id} part {i}", {"doc": doc_id, "part": i} | extra) for i in range(n)]


def contiguous_tenants(store: NumpyVectorStore) -> bool:
    """Whether every segment holds each tenant's live rows as one run, in ascending key order (a tombstoned row's
    metadata is gone from the catalog, so it is left out)."""
    snap = store._snapshot
    for segment, dead in zip(snap.segments, snap.dead, strict=True):
        live = np.setdiff1d(np.arange(segment.rows), dead)
        tenants, keys = segment.tenants(store.catalog.field_values)[live], segment.keys[live]
        starts = [0] + [i for i in range(1, len(live)) if tenants[i] != tenants[i - 1]]
        if len({tenants[i] for i in starts}) != len(starts):
            return False  # a tenant's rows in two runs
        bounds = [*starts, len(live)]
        if any(np.any(np.diff(keys[a:b]) <= 0) for a, b in itertools.pairwise(bounds)):
            return False
    return True


async def test_rows_grouped_by_tenant_through_adds_and_merges_match_brute_force(tmp_path: Path) -> None:
    """Adds and merges write each tenant's rows as one run per segment; key lookups (deletes, the keyword leg) and
    filtered searches, whose product runs over a tenant's span in place, still give brute force's answers."""
    rng = random.Random(11)
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    model: dict[str, tuple[Chunk, np.ndarray]] = {}
    for step in range(150):
        if model and rng.random() < 0.2:
            doc = rng.choice(sorted({c.document_id for c, _ in model.values()}))
            await store.delete(doc)
            model = {cid: item for cid, item in model.items() if item[0].document_id != doc}
            continue
        # each add mixes tenants (and chunks with none), as a batch of several documents would
        added = []
        for doc in rng.sample([f"d{i}" for i in range(80)], rng.randint(1, 3)):
            model = {cid: item for cid, item in model.items() if item[0].document_id != doc}
            added += tenant_chunks(doc, rng.randint(1, 5), rng.choice(["t1", "t2", "t3", None]))
        vectors = unit(2000 + step, len(added))
        await store.upsert(added, vectors)
        model |= {c.id: (c, v) for c, v in zip(added, vectors, strict=True)}
    await store.wait_for_compaction()
    assert store.compactions > 0 and contiguous_tenants(store)
    for seed, filters in enumerate([{"orgId": "t2"}, {"orgId": {"$in": ["t1", "t3"]}}, {"part": 0}, {"orgId": "t9"}]):
        query = unit(7000 + seed)[0]
        wanted = {
            cid: item
            for cid, item in model.items()
            if all(
                item[0].metadata.get(k) == v or (isinstance(v, dict) and item[0].metadata.get(k) in v["$in"])
                for k, v in filters.items()
            )
        }
        hits = await store.search(SearchRequest("", query, 20, filters))
        assert [(h.chunk.id, round(h.score, 5)) for h in hits] == brute_force(wanted, query, 20), filters
    for doc in sorted({c.document_id for c, _ in model.values()})[:10]:  # keyword hits map back to the right rows
        tenant = next(c.metadata.get("orgId") for c, _ in model.values() if c.document_id == doc)
        filters = None if tenant is None else {"orgId": tenant}
        hits = await store.search(SearchRequest(f"{doc} part", None, 50, filters, mode="keyword"))
        assert {h.chunk.id for h in hits if h.chunk.document_id == doc} == {
            cid for cid, (c, _) in model.items() if c.document_id == doc
        }
    await store.aclose()


async def test_an_add_that_fails_before_its_commit_leaves_the_store_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    vectors = unit(8, 2)
    await store.upsert(chunks_of("old", 2), vectors)
    before = files(tmp_path)

    def crash(*args: object) -> None:
        raise OSError("simulated crash inside the commit")

    monkeypatch.setattr(Catalog, "insert_segment", crash)
    with pytest.raises(OSError, match="simulated crash"):
        await store.upsert(chunks_of("new", 1) + chunks_of("old", 1), unit(9, 2))
    monkeypatch.undo()
    assert files(tmp_path) == before  # the new segment's files went with the failed commit
    assert [cid for cid, _ in await dense(store, vectors[0])] == ["old:0", "old:1"]
    await store.aclose()


async def test_files_of_a_crash_before_commit_are_removed_at_start(tmp_path: Path) -> None:
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    await store.upsert(chunks_of("kept", 2), unit(10, 2))
    await store.aclose()
    committed = files(tmp_path)
    # what a process killed between writing its segment and committing it leaves behind
    write_segment(tmp_path, unit(11, 4), np.arange(100, 104))
    (tmp_path / ".seg-half-written.npy.123.tmp").write_bytes(b"\x93NUMPY")
    reopened = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    assert files(tmp_path) == committed
    assert not list(tmp_path.glob("*.tmp"))
    assert reopened.count == 2
    await reopened.aclose()


async def test_a_merge_that_fails_before_its_commit_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM, auto_compact=False)
    vectors = unit(12, 6)
    for i in range(3):
        await store.upsert(chunks_of(f"d{i}", 2), vectors[2 * i : 2 * i + 2])
    await store.delete("d1")
    before, answer = files(tmp_path), await dense(store, vectors[0])
    real_bump = Catalog.bump

    def crash(self: Catalog, conn: object, **changes: int) -> None:
        raise OSError("simulated crash while swapping segments")

    monkeypatch.setattr(Catalog, "bump", crash)
    with pytest.raises(OSError, match="simulated crash"):
        await store.compact()
    monkeypatch.setattr(Catalog, "bump", real_bump)
    assert files(tmp_path) == before
    assert await dense(store, vectors[0]) == answer
    assert await store.compact() >= 1  # and a later compaction succeeds
    assert await dense(store, vectors[0]) == answer
    await store.aclose()


async def test_another_process_keeps_searching_across_a_compaction(tmp_path: Path) -> None:
    writer = await NumpyVectorStore.open(tmp_path, "toy", DIM, auto_compact=False)
    reader = await NumpyVectorStore.open(tmp_path, "toy", DIM, auto_compact=False)
    vectors = unit(13, 8)
    for i in range(4):
        await writer.upsert(chunks_of(f"d{i}", 2), vectors[2 * i : 2 * i + 2])
    answer = await dense(reader, vectors[3])
    assert len(answer) == 8
    await writer.compact()  # unlinks the segments the reader has mapped
    assert writer.layout()["segments"] == 1
    assert await dense(reader, vectors[3]) == answer
    assert reader.layout()["segments"] == 1
    await writer.aclose()
    await reader.aclose()


async def test_a_store_of_the_previous_format_is_migrated(tmp_path: Path) -> None:
    vectors = unit(14, 3)
    rows = [
        {"id": "a:0", "document_id": "a", "text": "alpha one", "metadata": {"orgId": "x"}},
        {"id": "a:1", "document_id": "a", "text": "alpha two", "metadata": {"orgId": "x"}},
        {"id": "b:0", "document_id": "b", "text": "beta", "metadata": {}},
    ]
    np.save(tmp_path / "vectors-00000004.npy", vectors)
    (tmp_path / "chunks-00000004.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = {
        "format_version": 1,
        "embedding_model": "toy",
        "dimension": DIM,
        "generation": 4,
        "count": 3,
        "vectors": "vectors-00000004.npy",
        "chunks": "chunks-00000004.jsonl",
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    store = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    assert (store.count, store.document_count) == (3, 2)
    assert not list(tmp_path.glob("vectors-*")) and not (tmp_path / "manifest.json").exists()
    hits = await store.search(SearchRequest("alpha", vectors[1], 1, {"orgId": "x"}, mode="hybrid"))
    assert hits[0].chunk == Chunk("a:1", "a", "alpha two", {"orgId": "x"})
    _, docs = await store.list_documents(0, 10)
    assert [(d.id, d.chunks) for d in docs] == [("a", 2), ("b", 1)]
    await store.upsert(chunks_of("c", 1), unit(15))  # and it grows as any other
    await store.aclose()


@pytest.mark.parametrize(
    ("live", "dead", "plan"),
    [
        ([256], [0], None),
        ([256, 256], [0, 0], (0, 2)),
        ([4096, 1024, 256], [0, 0, 0], None),
        ([4096, 512, 256, 256], [0, 0, 0, 0], (1, 4)),
        ([4096, 300], [2000, 0], (0, 1)),  # more than a quarter tombstoned: rewritten alone
        ([1_000_000, 256], [0, 0], None),  # a big segment is not rewritten for a small add
    ],
)
def test_merge_plan_keeps_sizes_geometric(live: list[int], dead: list[int], plan: tuple[int, int] | None) -> None:
    assert plan_merge(live, dead) == plan


async def test_a_lost_keyword_index_is_rebuilt_from_the_catalog(tmp_path: Path) -> None:
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    await store.upsert(chunks_of("alpha", 3) + chunks_of("beta", 2), unit(20, 5))
    await store.delete("beta")
    await store.aclose()
    shutil.rmtree(tmp_path / "keywords")
    reopened = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    assert await keyword(reopened, "alpha") == ["alpha:0", "alpha:1", "alpha:2"]
    assert await keyword(reopened, "beta") == []
    assert reopened.layout()["keyword_documents"] == reopened.count == 3
    await reopened.aclose()


async def test_a_store_with_the_old_fts5_index_drops_it_and_builds_the_keyword_index(tmp_path: Path) -> None:
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    await store.upsert(chunks_of("alpha", 2), unit(21, 2))
    await store.aclose()
    # what a store written before the Tantivy index looked like: an FTS5 table kept by triggers, no keywords/
    with sqlite3.connect(tmp_path / "catalog.sqlite3") as conn:
        conn.execute("CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', content_rowid='key')")
        conn.execute("CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN SELECT 1; END")
    shutil.rmtree(tmp_path / "keywords")
    reopened = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    assert await keyword(reopened, "alpha") == ["alpha:0", "alpha:1"]
    with sqlite3.connect(tmp_path / "catalog.sqlite3") as conn:
        assert not conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'chunks_fts%'").fetchall()
    await reopened.aclose()


async def test_keyword_leftovers_of_an_add_that_crashed_before_its_commit_never_surface(tmp_path: Path) -> None:
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    await store.upsert(chunks_of("kept", 2), unit(22, 2))
    # what a process killed between its keyword index commit and its catalog commit leaves behind
    next_key = int(store.catalog.meta("next_key") or 0)
    store.keywords.add(next_key, chunks_of("ghost", 3))
    assert await keyword(store, "ghost part") == ["kept:0", "kept:1"]  # indexed, but no snapshot holds its keys
    await store.upsert(chunks_of("real", 3), unit(23, 3))  # takes the very keys the ghost was indexed under
    assert await keyword(store, "ghost") == []
    assert await keyword(store, "real") == ["real:0", "real:1", "real:2"]
    store.keywords.add(int(store.catalog.meta("next_key") or 0), chunks_of("ghost", 2))
    await store.aclose()
    reopened = await NumpyVectorStore.open(tmp_path, "toy", DIM)  # the start reconciles the index
    assert reopened.layout()["keyword_documents"] == reopened.count == 5
    assert await keyword(reopened, "ghost") == []
    await reopened.aclose()


async def test_a_delete_the_keyword_index_missed_stays_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM, auto_compact=False)
    await store.upsert(chunks_of("gone", 2), unit(24, 2))
    await store.upsert(chunks_of("kept", 2), unit(25, 2))

    def crash(self: KeywordIndex, keys: object) -> None:
        raise OSError("simulated crash after the catalog's commit")

    monkeypatch.setattr(KeywordIndex, "remove", crash)
    assert await store.delete("gone") == 2  # committed in the catalog: the delete is acknowledged
    await store.upsert(chunks_of("kept", 2), unit(26, 2))  # a replacement the index missed too
    monkeypatch.undo()
    assert store.layout()["keyword_documents"] == 6  # the index still holds them all
    # the tombstones hide the rest, and the search looks further for its k (the hidden ones rank first)
    assert await keyword(store, "gone part", k=2) == ["kept:0", "kept:1"]
    await store.compact()  # drops the tombstones: the rows are gone from every segment
    assert store.layout()["tombstoned"] == 0
    assert await keyword(store, "gone part", k=2) == ["kept:0", "kept:1"]
    await store.aclose()
    reopened = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    assert reopened.layout()["keyword_documents"] == reopened.count == 2
    await reopened.aclose()


async def test_two_processes_write_in_turn_and_search_each_others_keywords(tmp_path: Path) -> None:
    first = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    second = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    for i in range(6):
        await (first if i % 2 else second).upsert(chunks_of(f"doc{i}", 2), unit(30 + i, 2))
    for store in (first, second):
        await store.refresh()
        assert await keyword(store, "doc1 doc4") == ["doc1:0", "doc1:1", "doc4:0", "doc4:1"]
    await second.delete("doc1")
    assert await keyword(first, "doc1 doc4") == ["doc4:0", "doc4:1"]
    assert first.layout()["keyword_documents"] == second.layout()["keyword_documents"] == first.count == 10
    await first.aclose()
    await second.aclose()


async def test_a_keyword_index_of_another_schema_is_rebuilt(tmp_path: Path) -> None:
    import tantivy

    store = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    await store.upsert(chunks_of("alpha", 2), unit(40, 2))
    await store.aclose()
    shutil.rmtree(tmp_path / "keywords")
    (tmp_path / "keywords").mkdir()
    builder = tantivy.SchemaBuilder()  # what an older version of the index (or anything else) left there
    builder.add_text_field("body", stored=True)
    foreign = tantivy.Index(builder.build(), path=str(tmp_path / "keywords"))
    writer = foreign.writer(15_000_000, 1)
    writer.add_document(tantivy.Document(body="alpha"))
    writer.commit()
    writer.wait_merging_threads()
    reopened = await NumpyVectorStore.open(tmp_path, "toy", DIM)
    assert await keyword(reopened, "alpha") == ["alpha:0", "alpha:1"]
    await reopened.aclose()
