"""The storage protocol's conformance suite: written once against `VectorStore`, run over every backend.

A backend joins by adding itself to `BACKENDS` with a factory that opens a store on one location (a directory, a
database) for a given model and dimension; opening it again on the same location stands for a restart or for
another replica. Nothing here knows which backend it is talking to.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.errors import DocumentNotFound, StoreIncompatible
from rag.filters import compile_filters
from rag.stores import RetrievalMode, SearchRequest, VectorStore
from rag.types import Chunk, Hit

DIM = 8
MODES: list[RetrievalMode] = ["dense", "keyword", "hybrid"]


@dataclass
class Backend:
    name: str
    opener: Callable[[str, int], Awaitable[VectorStore]]
    opened: list[VectorStore] = field(default_factory=list)

    async def open(self, model: str = "toy", dim: int = DIM) -> VectorStore:
        store = await self.opener(model, dim)
        self.opened.append(store)
        return store


def numpy_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    from rag.stores.numpy_store import NumpyVectorStore

    return Backend("numpy", lambda model, dim: NumpyVectorStore.open(tmp_path / "store", model, dim))


def numpy_quantized_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The embedded store with every dense search through binary codes (rag/stores/quantized.py), re-scoring fewer
    rows than some tests store: the codes' path must keep every rule the exact scan keeps."""
    from rag.stores.numpy_store import NumpyVectorStore
    from rag.stores.quantized import QuantizedSearch

    quantized = QuantizedSearch(above=0, candidates=100)
    return Backend(
        "numpy-quantized",
        lambda model, dim: NumpyVectorStore.open(tmp_path / "store", model, dim, quantized=quantized),
    )


def postgres_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A fresh database on the session's real PostgreSQL (see `pg_dsn` in conftest)."""
    from rag.stores.postgres_store import PostgresVectorStore

    dsn = request.getfixturevalue("pg_dsn")
    replicas = iter(range(1_000))  # each open is another replica: a keyword index of its own, on its own disk

    def open_replica(model: str, dim: int) -> Awaitable[VectorStore]:
        return PostgresVectorStore.open(dsn, model, dim, tmp_path / f"keywords-{next(replicas)}")

    return Backend("postgres", open_replica)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Backend]] = {
    "numpy": numpy_backend,
    "numpy-quantized": numpy_quantized_backend,
    "postgres": postgres_backend,
}


@pytest.fixture(params=list(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    chosen = BACKENDS[request.param](request, tmp_path)
    yield chosen
    for store in chosen.opened:
        await store.aclose()


def unit(seed: int, n: int = 1) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def chunks_of(doc_id: str, n: int, text: str | None = None, **meta: Any) -> list[Chunk]:
    return [Chunk(f"{doc_id}:{i}", doc_id, text or f"{doc_id} part {i}", dict(meta)) for i in range(n)]


async def search(
    store: VectorStore,
    vector: np.ndarray | None,
    top_k: int = 5,
    filters: dict[str, Any] | None = None,
    threshold: float | None = None,
    mode: RetrievalMode = "dense",
    text: str = "",
) -> list[Hit]:
    return await store.search(SearchRequest(text, vector, top_k, filters, threshold, mode))


def documents(hits: list[Hit]) -> list[str]:
    return [hit.chunk.document_id for hit in hits]


async def test_round_trip_through_a_restart(backend: Backend) -> None:
    store = await backend.open()
    vectors = unit(1, 3)
    await store.upsert(chunks_of("a", 2, lang="en") + chunks_of("b", 1, lang="fr"), vectors)

    reopened = await backend.open()
    assert (reopened.count, reopened.document_count) == (3, 2)
    hits = await search(reopened, vectors[2], top_k=1)
    assert hits[0].chunk == Chunk("b:0", "b", "b part 0", {"lang": "fr"})
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].found_by == ("dense",)


async def test_dense_search_ranks_by_cosine_and_respects_top_k(backend: Backend) -> None:
    store = await backend.open()
    vectors = unit(2, 30)
    await store.upsert([Chunk(f"d{i}:0", f"d{i}", "t") for i in range(30)], vectors)
    query = vectors[4]
    expected = np.argsort(-(vectors @ query))
    hits = await search(store, query, top_k=3)
    assert documents(hits) == [f"d{i}" for i in expected[:3]]
    assert [h.score for h in hits] == pytest.approx(sorted((vectors @ query)[expected[:3]], reverse=True), abs=1e-5)
    assert len(await search(store, query, top_k=50)) == 30


async def test_add_appends_and_the_same_id_replaces(backend: Backend) -> None:
    store = await backend.open()
    old = unit(3, 3)
    await store.upsert(chunks_of("a", 3, text="obsolete wording"), old)
    await store.upsert(chunks_of("b", 1), unit(4, 1))
    assert (store.count, store.document_count) == (4, 2)
    await store.upsert(chunks_of("a", 1, text="fresh wording"), unit(5, 1))  # a new version of document a
    assert (store.count, store.document_count) == (2, 2)

    reopened = await backend.open()
    _, docs = await reopened.list_documents(0, 10)
    assert {(d.id, d.chunks) for d in docs} == {("a", 1), ("b", 1)}
    for mode in MODES:  # no leg may still find the replaced chunks
        hits = await search(reopened, old[0], 10, mode=mode, text="obsolete wording")
        assert all(h.chunk.text != "obsolete wording" for h in hits), mode


async def test_delete_removes_every_chunk_and_persists(backend: Backend) -> None:
    store = await backend.open()
    vectors = unit(6, 4)
    await store.upsert(chunks_of("a", 3, text="alpha words") + chunks_of("b", 1, text="beta words"), vectors)
    assert await store.delete("a") == 3
    reopened = await backend.open()
    assert (reopened.count, reopened.document_count) == (1, 1)
    for mode in MODES:
        assert documents(await search(reopened, vectors[0], 5, mode=mode, text="alpha words")) == ["b"], mode
    with pytest.raises(DocumentNotFound):
        await reopened.delete("a")


async def test_a_store_of_another_model_or_dimension_is_refused(backend: Backend) -> None:
    store = await backend.open()
    await store.upsert(chunks_of("a", 1), unit(7))
    with pytest.raises(StoreIncompatible, match="other-model"):
        await backend.open(model="other-model")
    with pytest.raises(StoreIncompatible, match="dimension 16"):
        await backend.open(dim=16)
    with pytest.raises(StoreIncompatible, match=r"embedding space.*rag\.import kb\.tar --reembed"):  # ways out
        await backend.open(model="other-model")


async def test_listing_pages_in_order_of_last_addition(backend: Backend) -> None:
    store = await backend.open()
    for i in range(25):
        await store.upsert(chunks_of(f"d{i:02}", 1 + i % 3, rank=i), unit(100 + i, 1 + i % 3))
    await store.upsert(chunks_of("d03", 1, rank=3), unit(99))  # a replaced document counts as added last
    expected = [f"d{i:02}" for i in range(25) if i != 3] + ["d03"]
    seen = []
    for offset in range(0, 30, 10):
        total, page = await store.list_documents(offset, 10)
        assert total == 25
        seen += [d.id for d in page]
    assert seen == expected
    _, page = await store.list_documents(0, 2)
    assert (page[1].id, page[1].chunks, page[1].metadata, page[1].preview) == ("d01", 2, {"rank": 1}, "d01 part 0")
    assert (await store.list_documents(40, 10)) == (25, [])
    assert (await store.list_documents(10**30, 10)) == (25, [])  # past any integer the database holds


FILTER_METADATA = [
    {"lang": "en", "n": 1},
    {"lang": "fr", "n": 2},
    {"lang": None, "n": 1.0},
    {"n": True},
    {"lang": "fr", "n": 3, "tags": ["a", "b"]},
    {},
    {"lang": "de", "tags": "a"},
    {"lang": "en", 'odd "key': "x"},
]
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
    {'odd "key': "x"},
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("filters", FILTER_CASES)
async def test_every_filter_operator_selects_what_the_reference_predicate_selects(
    backend: Backend, filters: dict[str, Any], mode: RetrievalMode
) -> None:
    """Edge cases included: missing fields, None, numbers of different types, unhashable values, odd key names."""
    store = await backend.open()
    chunks = [Chunk(f"d{i}:0", f"d{i}", "shared words", meta) for i, meta in enumerate(FILTER_METADATA)]
    vectors = unit(20, len(chunks))
    await store.upsert(chunks, vectors)
    predicate = compile_filters(filters)
    expected = {c.document_id for c in chunks if predicate(c.metadata)}
    found = await search(store, vectors[0], 50, filters, mode=mode, text="shared words")
    assert set(documents(found)) == expected


@pytest.mark.parametrize("mode", MODES)
async def test_a_tenant_filter_returns_k_rows_whenever_k_match(backend: Backend, mode: RetrievalMode) -> None:
    """One small tenant among many: its rows are few and never the best, yet a scoped search must fill top k."""
    store = await backend.open()
    rng = random.Random(3)
    chunks, n = [], 0
    for org in range(20):
        for d in range(40 if org else 6):
            chunks.append(
                Chunk(f"o{org}d{d}:0", f"o{org}d{d}", f"report on topic {rng.randint(0, 3)}", {"orgId": f"o{org}"})
            )
            n += 1
    vectors = unit(30, n)
    await store.upsert(chunks, vectors)
    query = vectors[-1]  # a vector of another tenant's chunk
    hits = await search(store, query, 5, {"orgId": "o0"}, mode=mode, text="report topic")
    assert len(hits) == 5
    assert {h.chunk.metadata["orgId"] for h in hits} == {"o0"}
    other = await search(store, query, 5, {"orgId": {"$ne": "o0"}}, mode=mode, text="report topic")
    assert len(other) == 5 and "o0" not in {h.chunk.metadata["orgId"] for h in other}


async def test_keyword_leg_ranks_by_bm25_and_survives_query_syntax(backend: Backend) -> None:
    store = await backend.open()
    texts = {
        "rare": "Mitochondrial haplogroups predict longevity in centenarians.",
        "common": "Longevity is a common topic; longevity studies abound.",
        "other": "Bicycle tyres need air.",
    }
    await store.upsert([Chunk(f"{k}:0", k, t) for k, t in texts.items()], unit(40, 3))
    hits = await search(store, None, 5, mode="keyword", text="Which haplogroups predict longevity?")
    assert documents(hits)[0] == "rare"
    assert set(documents(hits)) == {"rare", "common"}
    assert all(h.found_by == ("keyword",) and h.keyword_score is not None and h.keyword_score > 0 for h in hits)
    assert hits[0].score == hits[0].keyword_score
    # FTS syntax in user text is just text; a question of stop words only finds nothing
    for text in ['"unbalanced', "tyres*", "NEAR(air bicycle)", "a:b AND OR NOT (", "-tyres ^air"]:
        assert isinstance(await search(store, None, 5, mode="keyword", text=text), list)
    assert documents(await search(store, None, 5, mode="keyword", text='"tyres"')) == ["other"]
    assert await search(store, None, 5, mode="keyword", text="what is the") == []


async def test_hybrid_finds_by_either_leg_and_says_which(backend: Backend) -> None:
    store = await backend.open()
    vectors = unit(50, 4)
    texts = ["zebrafish regeneration of fins", "unrelated cooking notes", "gardening in spring", "tax forms"]
    await store.upsert([Chunk(f"d{i}:0", f"d{i}", t) for i, t in enumerate(texts)], vectors)
    # the query vector is d2's; its words are d0's
    hits = await search(store, vectors[2], 4, mode="hybrid", text="zebrafish fin regeneration")
    by_doc = {h.chunk.document_id: h for h in hits}
    assert set(by_doc) == {"d0", "d1", "d2", "d3"}
    assert "keyword" in by_doc["d0"].found_by and by_doc["d0"].keyword_score
    assert "dense" in by_doc["d2"].found_by
    assert by_doc["d2"].score == pytest.approx(1.0, abs=1e-5)  # score stays the cosine similarity
    assert by_doc["d0"].score == pytest.approx(float(vectors[0] @ vectors[2]), abs=1e-5)
    assert documents(hits)[0] in {"d0", "d2"}  # each leg's best
    # the keyword match lifts d0 above every chunk that is less similar and has no keyword match
    below = [d for d in ("d1", "d3") if by_doc[d].score < by_doc["d0"].score]
    assert all(documents(hits).index("d0") < documents(hits).index(d) for d in below)
    fused = [h.fused_score for h in hits]
    assert fused == sorted(fused, reverse=True)  # type: ignore[type-var]


async def test_the_threshold_drops_weak_chunks_and_gates_hybrid_questions(backend: Backend) -> None:
    store = await backend.open()
    vectors = unit(13, 5)
    await store.upsert([Chunk(f"d{i}:0", f"d{i}", f"sourdough bread {i}") for i in range(5)], vectors)
    assert documents(await search(store, vectors[0], 5, threshold=0.99)) == ["d0"]
    # hybrid: a question whose best similarity is below the threshold gets nothing, even with matching words
    far = -vectors.mean(axis=0)
    far /= np.linalg.norm(far)
    assert max(vectors @ far) < 0.99
    assert await search(store, far, 5, threshold=0.99, mode="hybrid", text="sourdough bread") == []
    passed = await search(store, vectors[0], 5, threshold=0.99, mode="hybrid", text="sourdough bread")
    assert len(passed) == 5  # the gate passed: chunks above the threshold, and those matching the words
    assert passed[0].chunk.document_id == "d0" and passed[0].found_by == ("dense", "keyword")
    assert all(h.found_by == ("keyword",) for h in passed[1:])
    unmatched = await search(store, vectors[0], 5, threshold=0.99, mode="hybrid", text="pizza")
    assert documents(unmatched) == ["d0"]  # a chunk below the threshold needs a keyword match to come in


async def test_concurrent_writers_lose_nothing(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()  # two instances: two workers or replicas
    vectors = unit(60, 40)

    async def add(n: int) -> None:
        store = first if n % 2 else second
        await store.upsert(chunks_of(f"doc{n}", 2, text=f"writer {n}"), vectors[2 * n : 2 * n + 2])

    await asyncio.gather(*(add(n) for n in range(20)))
    await asyncio.gather(first.delete("doc4"), add(3), add(5))  # a delete beside replacements
    for store in (first, second, await backend.open()):
        await store.refresh()
        total, docs = await store.list_documents(0, 100)
        assert total == 19 and {d.id for d in docs} == {f"doc{n}" for n in range(20)} - {"doc4"}
        assert store.count == 38
        hits = await search(store, vectors[0], 50)
        assert len(hits) == 38 and len({h.chunk.id for h in hits}) == 38
