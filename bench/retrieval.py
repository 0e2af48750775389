"""Dense retrieval on SciFact (BEIR layout) through the service's own chunker, embedder, store and retriever.

Prints nDCG@10 and recall@10 of the dense leg over the test queries, the ingest and query throughput, and the
distribution of similarity scores of relevant versus non-relevant passages, which is what SIMILARITY_THRESHOLD is
chosen from. The default hybrid mode is measured through the API by `bench/retrieval_http.py`, and the fusion is
chosen by `bench/fusion.py`.

    .venv/bin/python bench/retrieval.py                       # defaults from Settings
    .venv/bin/python bench/retrieval.py --chunk-size 100000   # one chunk per document
    .venv/bin/python bench/retrieval.py --quantized           # also through the binary codes (rag/stores/quantized.py)

Documents are "title text", as MTEB embeds them. A document's score is its best chunk's score.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import PROJECT_DIR, Settings
from rag.embedders.local import SentenceTransformerEmbedder
from rag.ingest.indexer import Indexer
from rag.retriever import Retriever
from rag.stores.numpy_store import NumpyVectorStore
from rag.stores.quantized import QuantizedSearch

DEFAULT_DATASET = PROJECT_DIR.parent / "shared" / "datasets" / "scifact"

# Questions a user might type that no scientific abstract answers: their best scores show where "unrelated" lies.
OFF_TOPIC = [
    "What's the weather like in Paris tomorrow?",
    "Should I carry an umbrella today?",
    "How do I reset my router password?",
    "Who won the football world cup in 2018?",
    "Recommend a good pizza place near the station.",
    "How do I change a flat tyre on a bicycle?",
    "What time does the train to Berlin leave?",
    "Write a haiku about autumn leaves.",
    "How much does a new iPhone cost?",
    "What is the capital of Australia?",
    "How do I bake sourdough bread?",
    "Which programming language should I learn first?",
    "Translate 'good morning' into Spanish.",
    "When is the next public holiday?",
    "How do I file my tax return online?",
    "What are the rules of chess castling?",
    "Tell me a joke about cats.",
    "How long should I boil an egg?",
    "What's the best way to learn the guitar?",
    "Book a table for two at eight tonight.",
]


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with path.open(encoding="utf-8") as handle:
        next(handle)  # header
        for line in handle:
            query_id, doc_id, score = line.rstrip("\n").split("\t")
            qrels[query_id][doc_id] = int(score)
    return qrels


def ndcg_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(rel / math.log2(i + 2) for i, rel in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    hits = sum(1 for doc in ranked[:k] if relevant.get(doc, 0) > 0)
    return hits / sum(1 for v in relevant.values() if v > 0)


async def run(args: argparse.Namespace) -> None:
    settings = Settings(_env_file=None)
    chunk_size = args.chunk_size or settings.chunk_size
    chunk_overlap = args.chunk_overlap if args.chunk_overlap is not None else settings.chunk_overlap
    corpus = read_jsonl(args.dataset / "corpus.jsonl")[: args.documents]
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.dataset / "queries.jsonl")}
    qrels = read_qrels(args.dataset / "qrels_test.tsv")
    query_ids = [q for q in qrels if q in queries][: args.limit]

    embedder = await SentenceTransformerEmbedder.load(settings.embedding_model, settings.embedding_batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        store = await NumpyVectorStore.open(Path(tmp), embedder.model_name, embedder.dimension)
        indexer = Indexer(embedder, store, chunk_size, chunk_overlap)
        started = time.perf_counter()
        for i in range(0, len(corpus), args.batch):
            batch = corpus[i : i + args.batch]
            await indexer.add(
                [f"{d.get('title', '')} {d['text']}".strip() for d in batch], None, [d["_id"] for d in batch]
            )
            print(f"  ingested {i + len(batch)}/{len(corpus)}", file=sys.stderr, flush=True)
        ingest_s = time.perf_counter() - started

        if args.quantized:  # the same directory read by the quantized dense leg (rag/stores/quantized.py) as well
            quantized = await NumpyVectorStore.open(
                Path(tmp), embedder.model_name, embedder.dimension, quantized=QuantizedSearch(above=0)
            )
            for name, used in (("exact scan", store), ("quantized", quantized)):
                scores = []
                for query_id in query_ids:
                    hits = await Retriever(embedder, used, top_k=args.depth, threshold=None, mode="dense").retrieve(
                        queries[query_id], top_k=args.depth, threshold=-1.0
                    )
                    scores.append(
                        ndcg_at_k(list(dict.fromkeys(h.chunk.document_id for h in hits)), qrels[query_id], 10)
                    )
                print(f"nDCG@10, dense, {name:<11} {np.mean(scores):.4f}")
            await quantized.aclose()
        retriever = Retriever(embedder, store, top_k=args.depth, threshold=None, mode="dense")
        ndcgs, recalls, relevant_scores, other_scores = [], [], [], []
        started = time.perf_counter()
        for query_id in query_ids:
            hits = await retriever.retrieve(queries[query_id], top_k=args.depth, threshold=-1.0)
            best: dict[str, float] = {}
            for hit in hits:  # best first, so the first score seen per document is its best
                best.setdefault(hit.chunk.document_id, hit.score)
            ranked = list(best)
            ndcgs.append(ndcg_at_k(ranked, qrels[query_id], 10))
            recalls.append(recall_at_k(ranked, qrels[query_id], 10))
            for doc in ranked[:10]:
                (relevant_scores if qrels[query_id].get(doc, 0) > 0 else other_scores).append(best[doc])
        query_s = time.perf_counter() - started
        off_topic = [(await retriever.retrieve(q, top_k=1, threshold=-1.0))[0].score for q in OFF_TOPIC]

    rel, other = np.array(relevant_scores), np.array(other_scores)
    print(f"dataset            {args.dataset.name}: {len(corpus)} documents, {len(query_ids)} test queries")
    print(f"chunks             {store.count} (size {chunk_size}, overlap {chunk_overlap})")
    print(f"ingest             {ingest_s:.1f} s ({store.count / ingest_s:.0f} chunks/s)")
    print(f"queries            {query_s:.1f} s ({1000 * query_s / len(query_ids):.1f} ms/query, embed + search)")
    print(f"nDCG@10            {np.mean(ndcgs):.4f}")
    print(f"recall@10          {np.mean(recalls):.4f}")
    print("score percentiles  p5    p10   p25   p50   p75")
    for name, values in (("relevant in top10", rel), ("others in top10", other)):
        p = np.percentile(values, [5, 10, 25, 50, 75])
        print(f"  {name:17} " + " ".join(f"{v:.3f}" for v in p))
    off = np.array(off_topic)
    print(f"  {'off-topic top1':17} " + " ".join(f"{v:.3f}" for v in np.percentile(off, [5, 10, 25, 50, 75])))
    print(f"  off-topic best score max {off.max():.3f} over {len(off)} questions")
    print("threshold  relevant kept  others kept  off-topic top1 kept")
    for threshold in (0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.1):
        kept = (np.mean(rel >= threshold), np.mean(other >= threshold), np.mean(off >= threshold))
        print(f"  {threshold:<8} {kept[0]:>13.1%}  {kept[1]:>11.1%}  {kept[2]:>19.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="BEIR-layout directory")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test queries")
    parser.add_argument("--documents", type=int, default=None, help="only the first N documents (quick runs)")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: CHUNK_SIZE")
    parser.add_argument("--chunk-overlap", type=int, default=None, help="default: CHUNK_OVERLAP")
    parser.add_argument("--depth", type=int, default=100, help="chunks retrieved per query before ranking documents")
    parser.add_argument("--batch", type=int, default=500, help="documents per add call")
    parser.add_argument(
        "--quantized", action="store_true", help="also nDCG@10 with every dense search through binary codes"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
