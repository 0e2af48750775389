"""The PostgreSQL backend beside the embedded one, on the same data, in one run.

    .venv/bin/python bench/pg_store.py --size 100000
    .venv/bin/python bench/pg_store.py --scifact      # HNSW recall on real embeddings (SciFact's chunks)

Random unit vectors of dimension 384, each chunk in one of 50 organisations, stored in both backends through the
storage protocol (batches of 256 chunks, as adds arrive). Prints, for each backend: add throughput, dense search
p50/p95 without and with a one-tenant filter, hybrid search p50, and for PostgreSQL the recall@10 of its HNSW
index against the exact top 10 (computed with NumPy on the same vectors), with and without the filter, at each
`hnsw.ef_search` tried. Then the same searches through the HTTP API: requests per second with one service replica
and with three, on this machine, all against one PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.service_process import ServiceProcess
from bench.store import DIMENSION, chunks, unit_rows
from config import Settings
from rag.stores import SearchRequest
from rag.stores.numpy_store import NumpyVectorStore
from rag.stores.postgres_store import PostgresVectorStore

BATCH = 256


def percentile(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) * 1000


async def fill(store, matrix: np.ndarray) -> float:
    started = time.perf_counter()
    for start in range(0, matrix.shape[0], BATCH):
        await store.upsert(chunks(start, min(BATCH, matrix.shape[0] - start)), matrix[start : start + BATCH])
    return matrix.shape[0] / (time.perf_counter() - started)


async def timings(store, queries: np.ndarray, template: SearchRequest) -> list[float]:
    out = []
    for query in queries:
        request = SearchRequest(template.text, query, template.top_k, template.filters, None, template.mode)
        started = time.perf_counter()
        await store.search(request)
        out.append(time.perf_counter() - started)
    return out


async def recall(store, matrix: np.ndarray, queries: np.ndarray, org: str | None) -> float:
    keys = np.arange(matrix.shape[0])
    allowed = keys % 50 == int(org[3:]) if org else np.ones(matrix.shape[0], dtype=bool)
    found = []
    for query in queries:
        scores = np.where(allowed, matrix @ query, -np.inf)
        exact = {f"d{i}:0" for i in np.argsort(-scores)[:10]}
        filters = {"orgId": org} if org else None
        hits = await store.search(SearchRequest("", query, 10, filters, None, "dense"))
        found.append(len(exact & {hit.chunk.id for hit in hits}) / 10)
    return float(np.mean(found))


def http_throughput(urls: list[str], seconds: float, concurrency: int) -> float:
    done = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < stop:
                response = http.get(f"{urls[n % len(urls)]}/api/v1/documents/search", params={"query": f"cell {n}"})
                response.raise_for_status()
                with lock:
                    done[0] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0] / seconds


async def run(size: int, repeats: int) -> None:
    warnings.simplefilter("ignore")
    from bench.pg_server import sized_server

    rng = np.random.default_rng(7)
    matrix = unit_rows(rng, size)
    queries = unit_rows(rng, repeats)
    with tempfile.TemporaryDirectory() as tmp:
        server = sized_server(Path(tmp) / "pg")
        dsn = server.get_uri()
        model = Settings(_env_file=None).embedding_model  # the replicas below embed with it: the identity must match
        stores = {
            "numpy": await NumpyVectorStore.open(Path(tmp) / "numpy", model, DIMENSION),
            "postgres": await PostgresVectorStore.open(dsn, model, DIMENSION, Path(tmp) / "keywords"),
        }
        print(f"{size:,} chunks of dimension {DIMENSION}, 50 organisations; {repeats} queries per figure")
        for name, store in stores.items():
            rate = await fill(store, matrix)
            if name == "numpy":
                await store.wait_for_compaction()
            print(f"{name:9} add: {rate:8.0f} chunks/s (batches of {BATCH}, embedding excluded)")
        cases = {
            "dense": SearchRequest("", None, 5, mode="dense"),
            "dense, 1 tenant of 50": SearchRequest("", None, 5, {"orgId": "org7"}, mode="dense"),
            "hybrid": SearchRequest("tumour dose trial", None, 5, mode="hybrid"),
            "hybrid, 1 tenant of 50": SearchRequest("tumour dose trial", None, 5, {"orgId": "org7"}, mode="hybrid"),
        }
        for case, template in cases.items():
            cells = []
            for name, store in stores.items():
                await timings(store, queries[:3], template)  # warm-up
                values = await timings(store, queries, template)
                cells.append(f"{name} p50 {percentile(values, 50):7.2f} ms p95 {percentile(values, 95):7.2f} ms")
            print(f"search {case:<24} " + "   ".join(cells))
        postgres = stores["postgres"]
        assert isinstance(postgres, PostgresVectorStore)
        for ef in (40, 100, 200):
            postgres.ef_search = ef
            plain = await recall(postgres, matrix, queries, None)
            tenant = await recall(postgres, matrix, queries, "org7")
            values = await timings(postgres, queries, cases["dense"])
            print(
                f"postgres HNSW ef_search {ef:3}: recall@10 {plain:.3f} (one tenant: {tenant:.3f}), "
                f"dense p50 {percentile(values, 50):.2f} ms"
            )
        for store in stores.values():
            await store.aclose()

        replicas = [
            ServiceProcess(
                Path(tmp) / f"replica{i}", "http://127.0.0.1:9/v1", vector_store="postgres", database_url=dsn
            )
            for i in range(3)
        ]
        try:
            for replica in replicas:
                replica.wait_ready()
            urls = [replica.url for replica in replicas]
            one = http_throughput(urls[:1], 10, 12)
            three = http_throughput(urls, 10, 12)
            print(
                f"HTTP search (question embedded, hybrid), 12 concurrent clients: 1 replica {one:.1f} req/s, "
                f"3 replicas {three:.1f} req/s ({three / one:.2f}x) on this 2-core machine"
            )
        finally:
            for replica in replicas:
                replica.__exit__()
        server.cleanup()


async def scifact_recall() -> None:
    """Random vectors are HNSW's worst case (no neighbourhoods); this is its recall on real embeddings: SciFact's
    11,641 chunks and 300 test questions, top 10 of the index against the exact top 10."""
    warnings.simplefilter("ignore")
    import pgserver

    from bench.fusion import embed_corpus
    from bench.retrieval import DEFAULT_DATASET, read_jsonl
    from rag.embedders.onnx import OnnxEmbedder

    settings = Settings(_env_file=None)
    embedder = await OnnxEmbedder.load(settings.embedding_model, settings.onnx_dir, 32)
    corpus_chunks, vectors = await embed_corpus(DEFAULT_DATASET, settings, embedder)
    texts = [q["text"] for q in read_jsonl(DEFAULT_DATASET / "queries.jsonl")][:300]
    queries = await embedder.embed(texts)
    with tempfile.TemporaryDirectory() as tmp:
        server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")
        store = await PostgresVectorStore.open(
            server.get_uri(), embedder.model_name, embedder.dimension, Path(tmp) / "keywords"
        )
        for start in range(0, len(corpus_chunks), 2048):
            await store.upsert(corpus_chunks[start : start + 2048], vectors[start : start + 2048])
        for ef in (40, 100, 200):
            store.ef_search = ef
            found = []
            for query in queries:
                exact = {corpus_chunks[i].id for i in np.argsort(-(vectors @ query))[:10]}
                hits = await store.search(SearchRequest("", query, 10, None, None, "dense"))
                found.append(len(exact & {hit.chunk.id for hit in hits}) / 10)
            print(f"SciFact, postgres HNSW ef_search {ef:3}: recall@10 {np.mean(found):.3f}")
        await store.aclose()
        server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--scifact", action="store_true", help="HNSW recall on SciFact's real embeddings")
    args = parser.parse_args()
    asyncio.run(scifact_recall() if args.scifact else run(args.size, args.repeats))


if __name__ == "__main__":
    main()
