"""The int8 embedder graph (EMBEDDER_PRECISION=int8) beside the float32 one, in one run: how close its vectors are,
what it gains in ingestion and questions, and what it costs in retrieval quality.

    .venv/bin/python bench/embedding_precision.py [--chunks 2000]

- vectors: cosine of each int8 vector to the float32 one, over `--chunks` SciFact chunks (the service's chunker);
- ingestion: chunks per second through `OnnxEmbedder.embed_documents` (the service's ingestion path: one-thread
  passes, one per core), the same chunks, float32 and int8 in turns (f32, int8, int8, f32), the better run of each;
- a question's embedding: p50 of 200 `embed([question])` calls, a short question (a SciFact claim) and a long one
  (a pasted paragraph: a SciFact abstract of about 200 words), in blocks of 25 taking turns;
- retrieval quality: SciFact's 5,183 abstracts chunked and embedded with each graph, the 300 test claims ranked by
  exact cosine (a document by its best chunk): nDCG@10 and recall@10 of each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.embedding import chunk_texts
from bench.retrieval import DEFAULT_DATASET, ndcg_at_k, read_jsonl, read_qrels, recall_at_k
from config import Settings
from rag.chunking import split_text
from rag.embedders.onnx import OnnxEmbedder

SHORT = "Does vitamin D supplementation reduce the risk of fractures in older adults?"


async def rate(embedder: OnnxEmbedder, texts: list[str]) -> float:
    started = time.perf_counter()
    await embedder.embed_documents(texts)
    return len(texts) / (time.perf_counter() - started)


async def question_p50(embedders: dict[str, OnnxEmbedder], question: str) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in embedders}
    for _ in range(8):
        for name, embedder in embedders.items():
            for _ in range(25):
                started = time.perf_counter()
                await embedder.embed([question])
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


async def scifact_quality(settings: Settings, embedder: OnnxEmbedder) -> tuple[float, float]:
    corpus = read_jsonl(DEFAULT_DATASET / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in read_jsonl(DEFAULT_DATASET / "queries.jsonl")}
    qrels = read_qrels(DEFAULT_DATASET / "qrels_test.tsv")
    chunks, owners = [], []
    for doc in corpus:
        for piece in split_text(
            f"{doc.get('title', '')} {doc['text']}".strip(), settings.chunk_size, settings.chunk_overlap
        ):
            chunks.append(piece)
            owners.append(doc["_id"])
    vectors = await embedder.embed_documents(chunks)
    ids = [q for q in qrels if q in queries]
    asked = await embedder.embed([queries[q] for q in ids])
    ndcgs, recalls = [], []
    for query_id, vector in zip(ids, asked, strict=True):
        order = np.argsort(-(vectors @ vector))[:100]
        ranked = list(dict.fromkeys(owners[i] for i in order))
        ndcgs.append(ndcg_at_k(ranked, qrels[query_id], 10))
        recalls.append(recall_at_k(ranked, qrels[query_id], 10))
    return float(np.mean(ndcgs)), float(np.mean(recalls))


async def run(args: argparse.Namespace) -> None:
    settings = Settings(_env_file=None)
    model, folder = settings.embedding_model, settings.onnx_dir
    embedders = {
        "float32": await OnnxEmbedder.load(model, folder, settings.embedding_batch_size, precision="float32"),
        "int8": await OnnxEmbedder.load(model, folder, settings.embedding_batch_size, precision="int8"),
    }
    texts = chunk_texts(settings, args.chunks)
    f32 = await embedders["float32"].embed_documents(texts)
    i8 = await embedders["int8"].embed_documents(texts)
    cosine = np.sum(f32 * i8, axis=1)
    print(f"vectors, {len(texts):,} SciFact chunks: cosine int8 to float32 mean {cosine.mean():.4f}, "
          f"min {cosine.min():.4f}, 1st percentile {np.percentile(cosine, 1):.4f}")  # fmt: skip
    rates: dict[str, list[float]] = {"float32": [], "int8": []}
    for name in ("float32", "int8", "int8", "float32"):
        rates[name].append(await rate(embedders[name], texts))
    best = {name: max(values) for name, values in rates.items()}
    runs = " / ".join(", ".join(f"{r:.1f}" for r in rates[name]) for name in ("float32", "int8"))
    print(f"ingestion (embed_documents, {len(texts):,} chunks, both cores): float32 {best['float32']:.1f} chunks/s, "
          f"int8 {best['int8']:.1f} chunks/s ({best['int8'] / best['float32']:.2f}x); runs {runs}")  # fmt: skip
    paragraph = next(
        d["text"] for d in read_jsonl(DEFAULT_DATASET / "corpus.jsonl") if 180 <= len(d["text"].split()) <= 220
    )
    for label, question in (("short question", SHORT), (f"long question ({len(paragraph.split())} words)", paragraph)):
        p50 = await question_p50(embedders, question)
        print(f"{label}: p50 float32 {p50['float32']:.2f} ms, int8 {p50['int8']:.2f} ms "
              f"({p50['float32'] / p50['int8']:.2f}x faster)")  # fmt: skip
    for name, embedder in embedders.items():
        started = time.perf_counter()
        ndcg, recall = await scifact_quality(settings, embedder)
        print(f"SciFact dense, exact: {name:8} nDCG@10 {ndcg:.4f}, recall@10 {recall:.4f} "
              f"(embedded in {time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    for embedder in embedders.values():
        await embedder.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=2000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
