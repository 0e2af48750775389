"""Retrieval measured on labelled questions, across a grid of settings: mode, `top_k`, the hybrid fusion's dense
weight and, with a corpus file, the chunk size. Each setting's row: hit rate, MRR@10, nDCG@10, recall@10, the
search's p50 and p95, and the questions that got no result. Searches run against the service's own store, a store
built from a corpus per chunk size, or a running instance over HTTP."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rag.evaluate.metrics import AT, ndcg_at, percentile_ms, recall_at, reciprocal_rank
from rag.evaluate.questions import BadQuestions, Question, json_lines

if TYPE_CHECKING:
    from config import Settings
    from rag.retriever import Retriever
    from rag.stores import RetrievalMode, VectorStore
    from rag.types import Embedder

MODES = ("dense", "keyword", "hybrid")
ADD_BATCH = 256  # documents per add when a corpus is stored for a chunk size


@dataclass(frozen=True, slots=True)
class Setting:
    mode: str
    top_k: int
    fusion_weight: float | None = None  # hybrid: the dense leg's share; None: the service's FUSION_DENSE_WEIGHT
    chunk_size: int | None = None  # None: the store as it is; else a store built from the corpus in chunks this size


@dataclass(frozen=True, slots=True)
class RetrievalReport:
    mode: str
    top_k: int
    fusion_weight: float | None
    chunk_size: int | None
    questions: int
    hit_rate: float
    mrr: float
    ndcg: float
    recall: float
    p50_ms: float
    p95_ms: float
    no_result: int  # questions that got nothing back (the similarity threshold's off-topic gate, or an empty store)


Search = Callable[[str, Setting], Awaitable[list[str]]]  # (question, setting) -> document ids, best first


def grid(
    modes: list[str], top_ks: list[int], weights: list[float] | None, chunk_sizes: list[int] | None
) -> list[Setting]:
    """Every combination, the fusion weight for hybrid only; the first of each list is the baseline."""
    chunks: list[int | None] = list(chunk_sizes) if chunk_sizes else [None]
    hybrid_weights: list[float | None] = list(weights) if weights else [None]
    return [
        Setting(mode, k, weight, chunk)
        for chunk in chunks
        for mode in modes
        for k in top_ks
        for weight in (hybrid_weights if mode == "hybrid" else [None])
    ]


def documents_of(hits: list[dict[str, Any]]) -> list[str]:
    """Document ids ranked by their best chunk (the first sight of each)."""
    return list(dict.fromkeys(hit["document_id"] for hit in hits))


async def evaluate_retrieval(
    questions: list[Question], settings: list[Setting], search: Search
) -> list[RetrievalReport]:
    labelled = [q for q in questions if q.relevant]
    reports = []
    for setting in settings:
        hits, mrrs, ndcgs, recalls, seconds, empty = [], [], [], [], [], 0
        for question in labelled:
            started = time.perf_counter()
            ranked = await search(question.text, setting)
            seconds.append(time.perf_counter() - started)
            empty += not ranked
            hits.append(float(any(doc in question.relevant for doc in ranked[:AT])))
            mrrs.append(reciprocal_rank(ranked, question.relevant))
            ndcgs.append(ndcg_at(ranked, question.relevant))
            recalls.append(recall_at(ranked, question.relevant))
        n = len(labelled)
        figures = (sum(hits) / n, sum(mrrs) / n, sum(ndcgs) / n, sum(recalls) / n)
        latency = (percentile_ms(seconds, 0.5), percentile_ms(seconds, 0.95))
        where = (setting.mode, setting.top_k, setting.fusion_weight, setting.chunk_size)
        reports.append(RetrievalReport(*where, n, *figures, *latency, empty))
    return reports


def http_search(client: Any) -> Search:
    """Searches through a running instance's `GET /api/v1/documents/search` (an httpx.AsyncClient at its URL)."""

    async def search(text: str, setting: Setting) -> list[str]:
        params: dict[str, Any] = {"query": text, "top_k": setting.top_k, "mode": setting.mode}
        if setting.fusion_weight is not None:
            params["fusion_weight"] = setting.fusion_weight
        response = await client.get("/api/v1/documents/search", params=params)
        if response.status_code != 200:
            raise RuntimeError(f"the service answered {response.status_code}: {response.text[:300]}")
        return documents_of(response.json()["results"])

    return search


def configured_retriever(settings: Settings, embedder: Embedder, store: VectorStore) -> Retriever:
    """The retriever the service builds from these settings (its threshold, mode, fusion weight and top_k)."""
    from rag.retriever import Retriever

    threshold, mode, weight = settings.similarity_threshold, settings.retrieval_mode, settings.fusion_dense_weight
    return Retriever(embedder, store, settings.top_k_results, threshold, mode, dense_weight=weight)


def store_search(settings: Settings, embedder: Embedder, store: VectorStore) -> Search:
    retriever = configured_retriever(settings, embedder, store)  # each search gives its own top_k

    async def search(text: str, setting: Setting) -> list[str]:
        mode = cast("RetrievalMode", setting.mode)
        hits = await retriever.retrieve(text, setting.top_k, mode=mode, dense_weight=setting.fusion_weight)
        return documents_of([hit.as_dict() for hit in hits])

    return search


def read_corpus(path: Path) -> list[tuple[str, str]]:
    """(id, text) per line of a corpus file: `{"id" or "_id", "text", "title"?}` (BEIR's corpus.jsonl as it is)."""
    documents = []
    for number, entry in json_lines(path):
        doc_id = entry.get("id", entry.get("_id")) if isinstance(entry, dict) else None
        if not isinstance(doc_id, str) or not doc_id or not isinstance(entry.get("text"), str):
            raise BadQuestions(f'{path}:{number}: each line of a corpus needs "id" (or "_id") and "text"')
        documents.append((doc_id, f"{entry.get('title') or ''} {entry['text']}".strip()))
    if not documents:
        raise BadQuestions(f"{path}: no documents")
    return documents


@contextlib.asynccontextmanager
async def corpus_store(
    settings: Settings, embedder: Embedder, corpus: list[tuple[str, str]], chunk_size: int
) -> AsyncIterator[VectorStore]:
    """The corpus in a throwaway embedded store, in chunks of `chunk_size` (the settings' overlap, at most a fifth
    of the chunk), embedded with the settings' embedder; removed afterwards."""
    from rag.ingest.indexer import Indexer
    from rag.stores import open_store

    overlap = min(settings.chunk_overlap, chunk_size // 5)
    with tempfile.TemporaryDirectory(prefix=f"rag-evaluate-{chunk_size}-") as folder:
        scratch = settings.model_copy(
            update={"data_dir": Path(folder), "vector_store": "numpy", "database_url": None, "chunk_size": chunk_size}
        )
        store = await open_store(scratch, embedder.model_name, embedder.dimension)
        try:
            indexer = Indexer(embedder, store, chunk_size, overlap)
            for start in range(0, len(corpus), ADD_BATCH):
                part = corpus[start : start + ADD_BATCH]
                await indexer.add([text for _, text in part], ids=[doc_id for doc_id, _ in part])
            yield store
        finally:
            await store.aclose()


async def own_reports(
    settings: Settings, questions: list[Question], settings_grid: list[Setting], corpus: list[tuple[str, str]] | None
) -> list[RetrievalReport]:
    """The grid against the service's own store (the active embedding space), or, per chunk size, against the
    corpus stored in chunks of that size."""
    from rag.commands import embedder_and_store
    from rag.embedders import build_embedder

    reports: list[RetrievalReport] = []
    for chunk_size, rows in groupby(settings_grid, key=lambda s: s.chunk_size):
        part = list(rows)
        if chunk_size is None:
            async with embedder_and_store(settings) as (embedder, store):
                reports += await evaluate_retrieval(questions, part, store_search(settings, embedder, store))
            continue
        assert corpus is not None
        embedder = await build_embedder(settings)
        try:
            async with corpus_store(settings, embedder, corpus, chunk_size) as store:
                reports += await evaluate_retrieval(questions, part, store_search(settings, embedder, store))
        finally:
            await embedder.aclose()
    return reports
