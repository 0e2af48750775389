from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from rag import numpy_store
from rag.errors import DocumentNotFound, StoreIncompatible
from rag.numpy_store import NumpyVectorStore
from rag.types import Chunk

DIM = 8


def unit(seed: int, n: int = 1) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def chunks_of(doc_id: str, n: int, **meta: object) -> list[Chunk]:
    return [Chunk(f"{doc_id}:{i}", doc_id, f"{doc_id} part {i}", dict(meta)) for i in range(n)]


async def open_store(path: Path, model: str = "toy", dim: int = DIM) -> NumpyVectorStore:
    return await NumpyVectorStore.open(path, model, dim)


async def test_round_trip_through_disk(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    vectors = unit(1, 3)
    await store.upsert(chunks_of("a", 2, lang="en") + chunks_of("b", 1, lang="fr"), vectors)

    reopened = await open_store(tmp_path)
    assert reopened.count == 3
    assert reopened.document_count == 2
    hits = await reopened.search(vectors[2], top_k=1)
    assert hits[0].chunk == Chunk("b:0", "b", "b part 0", {"lang": "fr"})
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


async def test_search_ranks_by_cosine_and_respects_top_k(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    vectors = unit(2, 10)
    await store.upsert([Chunk(f"d{i}:0", f"d{i}", "t") for i in range(10)], vectors)
    query = vectors[4]
    hits = await store.search(query, top_k=3)
    expected = np.argsort(-(vectors @ query))[:3]
    assert [h.chunk.document_id for h in hits] == [f"d{i}" for i in expected]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(await store.search(query, top_k=50)) == 10


async def test_add_appends_and_same_id_replaces(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.upsert(chunks_of("a", 3), unit(3, 3))
    await store.upsert(chunks_of("b", 1), unit(4, 1))
    assert store.count == 4
    await store.upsert(chunks_of("a", 1), unit(5, 1))  # a new version of document a
    reopened = await open_store(tmp_path)
    _, docs = await reopened.list_documents(0, 10)
    assert {(d.id, d.chunks) for d in docs} == {("a", 1), ("b", 1)}


async def test_delete_removes_every_chunk_and_persists(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    vectors = unit(6, 4)
    await store.upsert(chunks_of("a", 3) + chunks_of("b", 1), vectors)
    assert await store.delete("a") == 3
    reopened = await open_store(tmp_path)
    assert reopened.count == 1
    hits = await reopened.search(vectors[0], top_k=5)
    assert [h.chunk.document_id for h in hits] == ["b"]
    with pytest.raises(DocumentNotFound):
        await reopened.delete("a")


async def test_store_of_another_model_or_dimension_is_refused(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.upsert(chunks_of("a", 1), unit(7))
    with pytest.raises(StoreIncompatible, match="other-model"):
        await open_store(tmp_path, model="other-model")
    with pytest.raises(StoreIncompatible, match="dimension 16"):
        await open_store(tmp_path, dim=16)


async def test_write_interrupted_before_manifest_replace_keeps_old_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store(tmp_path)
    await store.upsert(chunks_of("old", 2), unit(8, 2))

    real_replace = os.replace

    def crash_on_manifest(src: str, dst: str | Path) -> None:
        if Path(dst).name == "manifest.json":
            raise OSError("simulated crash between temp file and replace")
        real_replace(src, dst)

    monkeypatch.setattr(numpy_store.os, "replace", crash_on_manifest)
    with pytest.raises(OSError, match="simulated crash"):
        await store.upsert(chunks_of("new", 1), unit(9))
    monkeypatch.setattr(numpy_store.os, "replace", real_replace)

    reopened = await open_store(tmp_path)
    _, docs = await reopened.list_documents(0, 10)
    assert [d.id for d in docs] == ["old"]
    # The orphaned files of the failed generation were cleaned up on open.
    names = sorted(p.name for p in tmp_path.iterdir())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert names == sorted([".lock", "manifest.json", manifest["vectors"], manifest["chunks"]])


async def test_second_instance_sees_writes_of_the_first(tmp_path: Path) -> None:
    # Two stores on one directory stand for two worker processes.
    first = await open_store(tmp_path)
    second = await open_store(tmp_path)
    await first.upsert(chunks_of("a", 1), unit(10))
    await second.upsert(chunks_of("b", 1), unit(11))  # must not drop a
    assert {d.id for d in (await first.list_documents(0, 10))[1]} == {"a", "b"}
    assert second.count == 2


async def test_filters(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    vectors = unit(12, 3)
    await store.upsert(
        chunks_of("en", 1, lang="en", org="1") + chunks_of("fr", 1, lang="fr", org="1") + chunks_of("x", 1, org="2"),
        vectors,
    )
    q = vectors[0]
    assert [h.chunk.document_id for h in await store.search(q, 5, {"lang": "fr"})] == ["fr"]
    assert {h.chunk.document_id for h in await store.search(q, 5, {"lang": {"$in": ["en", "fr"]}})} == {"en", "fr"}
    assert {h.chunk.document_id for h in await store.search(q, 5, {"org": {"$ne": "1"}})} == {"x"}
    assert await store.search(q, 5, {"lang": "de"}) == []


async def test_threshold_drops_weak_matches(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    vectors = unit(13, 5)
    await store.upsert([Chunk(f"d{i}:0", f"d{i}", "t") for i in range(5)], vectors)
    hits = await store.search(vectors[0], 5, threshold=0.99)
    assert [h.chunk.document_id for h in hits] == ["d0"]


FILTER_CASES = [
    {"lang": "en"},
    {"lang": {"$in": ["en", "fr"]}},
    {"lang": {"$ne": "en"}},
    {"lang": {"$ne": None}},
    {"lang": None},
    {"n": 1},
    {"n": {"$in": [1, 2.0, True]}},
    {"tags": "a"},
    {"lang": "fr", "n": {"$ne": 3}},
    {"missing": {"$ne": "x"}},
]


@pytest.mark.parametrize("filters", FILTER_CASES)
async def test_indexed_filters_agree_with_the_reference_predicate(tmp_path: Path, filters: dict) -> None:
    """The store's index-based filtering selects exactly what the plain predicate selects, edge cases included
    (missing fields, None, numbers of different types, unhashable values)."""
    from rag.filters import compile_filters

    metadatas = [
        {"lang": "en", "n": 1},
        {"lang": "fr", "n": 2},
        {"lang": None, "n": 1.0},
        {"n": True},
        {"lang": "fr", "n": 3, "tags": ["a", "b"]},
        {},
        {"lang": "de", "tags": "a"},
    ]
    store = await open_store(tmp_path)
    chunks = [Chunk(f"d{i}:0", f"d{i}", "t", meta) for i, meta in enumerate(metadatas)]
    vectors = unit(20, len(chunks))
    await store.upsert(chunks, vectors)
    predicate = compile_filters(filters)
    expected = {c.document_id for c in chunks if predicate(c.metadata)}
    found = {h.chunk.document_id for h in await store.search(vectors[0], 50, filters)}
    assert found == expected
