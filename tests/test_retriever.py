"""The retriever with the real bundled embedder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from rag.embedders.local import SentenceTransformerEmbedder
from rag.errors import InvalidRequest
from rag.ingest.indexer import Indexer
from rag.retriever import Retriever
from rag.stores.numpy_store import NumpyVectorStore

DOCS = {
    "paris": ("Paris is the capital and largest city of France.", {"topic": "geo", "lang": "en"}),
    "berlin": ("Berlin is the capital of Germany.", {"topic": "geo", "lang": "en"}),
    "cell": ("The mitochondrion produces most of the chemical energy of the cell.", {"topic": "bio", "lang": "en"}),
    "photo": ("Photosynthesis converts light into chemical energy in plants.", {"topic": "bio", "lang": "en"}),
    "madrid": ("Madrid es la capital de España.", {"topic": "geo", "lang": "es"}),
}


@pytest.fixture
async def retriever(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Retriever:
    store = await NumpyVectorStore.open(tmp_path, embedder.model_name, embedder.dimension)
    indexer = Indexer(embedder, store, chunk_size=1000, chunk_overlap=100)
    await indexer.add([t for t, _ in DOCS.values()], [m for _, m in DOCS.values()], list(DOCS))
    return Retriever(embedder, store, top_k=3, threshold=None)


async def test_most_relevant_first_and_top_k(retriever: Retriever) -> None:
    hits = await retriever.retrieve("What is the capital of France?")
    assert len(hits) == 3
    assert hits[0].chunk.document_id == "paris"
    assert len(await retriever.retrieve("capital of France", top_k=1)) == 1
    assert len(await retriever.retrieve("capital of France", top_k=50)) == len(DOCS)


async def test_threshold_keeps_only_close_chunks(retriever: Retriever) -> None:
    everything = await retriever.retrieve("How do cells get energy?", top_k=5, threshold=-1.0, mode="dense")
    assert len(everything) == 5
    cutoff = (everything[0].score + everything[1].score) / 2
    close = await retriever.retrieve("How do cells get energy?", top_k=5, threshold=cutoff, mode="dense")
    assert [h.chunk.document_id for h in close] == [everything[0].chunk.document_id]


async def test_hybrid_threshold_is_a_gate_for_off_topic_questions(retriever: Retriever) -> None:
    question = "How do cells get energy?"
    best = (await retriever.retrieve(question, top_k=1, threshold=-1.0, mode="dense"))[0].score
    assert await retriever.retrieve(question, top_k=5, threshold=best + 0.01) == []  # hybrid is the default
    floor = best - 0.01
    passed = await retriever.retrieve(question, top_k=5, threshold=floor)
    # past the gate: the chunks that reach the threshold, and those below it that match the question's words
    assert any(h.found_by == ("keyword",) and h.score < floor for h in passed)
    assert all(h.score >= floor for h in passed if "dense" in h.found_by)
    keyword_only = await retriever.retrieve("mitochondrion energy", top_k=5, mode="keyword")
    assert [h.chunk.document_id for h in keyword_only][:2] == ["cell", "photo"]
    assert all(h.found_by == ("keyword",) for h in keyword_only)


async def test_filters_restrict_the_candidates(retriever: Retriever) -> None:
    hits = await retriever.retrieve("capital city", top_k=5, filters={"topic": "bio"})
    assert {h.chunk.document_id for h in hits} == {"cell", "photo"}
    hits = await retriever.retrieve("capital city", top_k=5, filters={"lang": {"$ne": "en"}})
    assert [h.chunk.document_id for h in hits] == ["madrid"]
    hits = await retriever.retrieve("capital", top_k=5, filters={"topic": {"$in": ["geo"]}, "lang": "en"})
    assert {h.chunk.document_id for h in hits} == {"paris", "berlin"}


@pytest.mark.parametrize(
    "filters",
    [{"topic": {"$regex": "b.*"}}, {"topic": {"$in": "geo"}}, {"topic": ["geo"]}, {"topic": {"$in": [], "$ne": 1}}],
)
async def test_bad_filters_are_refused(retriever: Retriever, filters: dict) -> None:
    with pytest.raises(InvalidRequest):
        await retriever.retrieve("capital", filters=filters)


async def test_empty_query_is_refused(retriever: Retriever) -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        await retriever.retrieve("   ")


async def test_long_document_is_chunked_with_its_id_and_metadata(tmp_path: Path, embedder) -> None:
    store = await NumpyVectorStore.open(tmp_path, embedder.model_name, embedder.dimension)
    indexer = Indexer(embedder, store, chunk_size=200, chunk_overlap=40)
    text = " ".join(f"Fact {i}: the sample number {i} was measured twice." for i in range(40))
    (added,) = await indexer.add([text], [{"source": "lab.txt"}], ["lab"])
    assert added.chunks == store.count > 5
    hits = await Retriever(embedder, store, 5, None).retrieve("sample number 33 was measured")
    assert all(h.chunk.document_id == "lab" and h.chunk.metadata == {"source": "lab.txt"} for h in hits)
    assert "33" in hits[0].chunk.text


async def test_concurrent_questions_share_forward_passes(embedder: SentenceTransformerEmbedder) -> None:
    questions = [f"question number {i} about cats and energy" for i in range(24)]
    alone = [(await embedder.embed([q]))[0] for q in questions[:3]]
    before = embedder.forward_passes
    together = await asyncio.gather(*(embedder.embed([q]) for q in questions))
    passes = embedder.forward_passes - before
    assert passes < len(questions) / 2  # coalesced, not one pass per question
    for single, batched in zip(alone, together, strict=False):
        np.testing.assert_allclose(single, batched[0], atol=1e-5)
    assert all(vectors.shape == (1, embedder.dimension) for vectors in together)


async def test_a_cancelled_question_does_not_break_the_others(embedder: SentenceTransformerEmbedder) -> None:
    tasks = [asyncio.create_task(embedder.embed([f"q{i}"])) for i in range(6)]
    await asyncio.sleep(0)
    tasks[2].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert all(isinstance(r, np.ndarray) for i, r in enumerate(results) if i != 2)
