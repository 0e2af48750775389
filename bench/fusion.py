"""Choose the hybrid fusion on SciFact's train queries, then report every mode on the test queries.

    .venv/bin/python bench/fusion.py

The corpus is chunked as the service chunks it, embedded once with the bundled all-MiniLM-L6-v2 (the vectors are
cached under bench/results/, keyed by chunking and model) and stored in the embedded store. For each query the
dense leg's and the keyword leg's top 100 chunks are taken from the store, and fused here with each method and
weight, exactly as the store fuses them (a keyword-only candidate gets its real cosine similarity). Documents are
ranked by their best chunk. The train queries choose; the test queries only report.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.retrieval import DEFAULT_DATASET, OFF_TOPIC, ndcg_at_k, read_jsonl, read_qrels, recall_at_k
from config import PROJECT_DIR, Settings
from rag.chunking import split_text
from rag.embedders.local import SentenceTransformerEmbedder
from rag.stores import SearchRequest
from rag.stores.fusion import FusionMethod, fuse
from rag.stores.numpy_store import HYBRID_POOL, NumpyVectorStore
from rag.types import Chunk

CACHE = PROJECT_DIR / "bench" / "results"
WEIGHTS = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def rank_documents(scored: list[tuple[str, float]]) -> list[str]:
    best: dict[str, float] = {}
    for chunk_id, score in scored:
        doc = chunk_id.rsplit(":", 1)[0]
        best[doc] = max(best.get(doc, -np.inf), score)
    return sorted(best, key=lambda d: best[d], reverse=True)


async def embed_corpus(
    dataset: Path, settings: Settings, embedder: SentenceTransformerEmbedder
) -> tuple[list[Chunk], np.ndarray]:
    corpus = read_jsonl(dataset / "corpus.jsonl")
    chunks: list[Chunk] = []
    for doc in corpus:
        text = f"{doc.get('title', '')} {doc['text']}".strip()
        pieces = split_text(text, settings.chunk_size, settings.chunk_overlap)
        chunks += [Chunk(f"{doc['_id']}:{i}", doc["_id"], piece, {}) for i, piece in enumerate(pieces)]
    tag = hashlib.sha1(f"{dataset.name}{settings.chunk_size}{settings.chunk_overlap}{embedder.model_name}".encode())
    path = CACHE / f"vectors-{dataset.name}-{tag.hexdigest()[:10]}.npy"
    if path.exists():
        vectors = np.load(path)
    else:
        started = time.perf_counter()
        vectors = await embedder.embed([chunk.text for chunk in chunks])
        print(f"embedded {len(chunks)} chunks in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        CACHE.mkdir(exist_ok=True)
        np.save(path, vectors)
    return chunks, vectors


async def legs(store: NumpyVectorStore, text: str, vector: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    dense = await store.search(SearchRequest(text, vector, HYBRID_POOL, mode="dense"))
    keyword = await store.search(SearchRequest(text, None, HYBRID_POOL, mode="keyword"))
    dense_scores = {h.chunk.id: h.score for h in dense}
    keyword_scores = {h.chunk.id: h.score for h in keyword}
    return dense_scores, keyword_scores


def evaluate(runs: list[tuple[dict, dict, dict]], method: str, weight: float) -> tuple[float, float]:
    ndcgs, recalls = [], []
    for dense, keyword, qrels in runs:
        if method == "dense":
            ranked = rank_documents(list(dense.items()))
        elif method == "keyword":
            ranked = rank_documents(list(keyword.items()))
        else:
            m: FusionMethod = "rrf" if method == "rrf" else "minmax"
            ranked = rank_documents([(str(k), s) for k, s in fuse(dense, keyword, m, weight)])
        ndcgs.append(ndcg_at_k(ranked, qrels, 10))
        recalls.append(recall_at_k(ranked, qrels, 10))
    return float(np.mean(ndcgs)), float(np.mean(recalls))


async def collect(store, embedder, vectors_by_id, queries, qrels) -> list[tuple[dict, dict, dict]]:
    ids = [q for q in qrels if q in queries]
    query_vectors = await embedder.embed([queries[q] for q in ids])
    runs = []
    for query_id, vector in zip(ids, query_vectors, strict=True):
        dense, keyword = await legs(store, queries[query_id], vector)
        for chunk_id in keyword.keys() - dense.keys():  # as the store does: keyword-only candidates get a cosine
            dense[chunk_id] = float(vectors_by_id[chunk_id] @ vector)
        runs.append((dense, keyword, qrels[query_id]))
    return runs


async def as_served(store, embedder, queries, qrels, settings: Settings) -> list[str]:
    """The store's own hybrid search with the defaults (what the service does), without and with the threshold, and
    the off-topic questions that still get context."""
    lines = []
    ids = [q for q in qrels if q in queries]
    vectors = await embedder.embed([queries[q] for q in ids])
    for threshold in (None, settings.similarity_threshold):
        ndcgs, empty = [], 0
        for query_id, vector in zip(ids, vectors, strict=True):
            hits = await store.search(SearchRequest(queries[query_id], vector, 50, None, threshold, "hybrid"))
            empty += not hits
            ranked = rank_documents([(h.chunk.id, h.fused_score or 0.0) for h in hits])
            ndcgs.append(ndcg_at_k(ranked, qrels[query_id], 10))
        lines.append(
            f"store hybrid search, threshold {threshold}: test nDCG@10 {np.mean(ndcgs):.4f}, "
            f"{empty} of {len(ids)} test questions get no context"
        )
    off = await embedder.embed(OFF_TOPIC)
    answered = 0
    for text, vector in zip(OFF_TOPIC, off, strict=True):
        request = SearchRequest(text, vector, 5, None, settings.similarity_threshold, "hybrid")
        answered += bool(await store.search(request))
    lines.append(
        f"off-topic questions that get context (hybrid, threshold {settings.similarity_threshold}): "
        f"{answered} of {len(OFF_TOPIC)}"
    )
    return lines


async def run(args: argparse.Namespace) -> None:
    settings = Settings(_env_file=None)
    embedder = await SentenceTransformerEmbedder.load(settings.embedding_model, 32)
    chunks, vectors = await embed_corpus(args.dataset, settings, embedder)
    vectors_by_id = {chunk.id: vectors[i] for i, chunk in enumerate(chunks)}
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.dataset / "queries.jsonl")}
    train_path = args.dataset / "queries_train.jsonl"
    if train_path.exists():
        queries |= {q["_id"]: q["text"] for q in read_jsonl(train_path)}
    with tempfile.TemporaryDirectory() as tmp:
        store = await NumpyVectorStore.open(Path(tmp), embedder.model_name, embedder.dimension)
        for i in range(0, len(chunks), 2048):
            await store.upsert(chunks[i : i + 2048], vectors[i : i + 2048])
        splits = {}
        for split in ("train", "test"):
            path = args.dataset / f"qrels_{split}.tsv"
            if path.exists():
                splits[split] = await collect(store, embedder, vectors_by_id, queries, read_qrels(path))
        served = await as_served(store, embedder, queries, read_qrels(args.dataset / "qrels_test.tsv"), settings)
        await store.aclose()

    print(f"{args.dataset.name}: {len(chunks)} chunks; nDCG@10 / recall@10 (documents ranked by their best chunk)")
    candidates = [("dense", 0.0), ("keyword", 0.0)] + [(m, w) for m in ("rrf", "minmax") for w in WEIGHTS]
    header = "method   dense weight " + "".join(f"{split:>18}" for split in splits)
    print(header)
    results = {}
    for method, weight in candidates:
        results[(method, weight)] = {split: evaluate(runs, method, weight) for split, runs in splits.items()}
        label = f"{weight:.1f}" if method in ("rrf", "minmax") else "-"
        cells = "".join(f"     {n:.4f} / {r:.4f}" for n, r in results[(method, weight)].values())
        print(f"{method:8} {label:>12} {cells}")
    if "train" in splits:
        fused = [c for c in candidates if c[0] in ("rrf", "minmax")]
        best = max(fused, key=lambda c: results[c]["train"][0])
        test = results[best].get("test")
        print(
            f"chosen on train: {best[0]} with dense weight {best[1]:.1f}"
            + (f"; test nDCG@10 {test[0]:.4f}, recall@10 {test[1]:.4f}" if test else "")
        )
    print("\n".join(served))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="BEIR-layout directory")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
